"""UIDs, tenant ids and transfer syntaxes, validated once at the edge and trusted inside.

A value that passes these checks can be joined into a storage key or a cache key: digits and dots for UIDs, or
one token of letters, digits and hyphens (never a dot then, a slash or a NUL), a short lowercase slug for
tenants. A `TransferSyntax` knows its own facts (pydicom's `UID` knows the encoding; this adds what the archive
decides on: how frames travel, whether the pixels are lossy, whether a dataset can be re-encoded into another
syntax without its pixels).
"""

from __future__ import annotations

import re
from typing import cast

from pydicom.uid import UID, AllTransferSyntaxes

from dicomcloud.errors import InvalidUID

# Conformant UIDs are digits and dots (PS3.5 9.1; leading zeros tolerated). Real objects also carry hex digests
# and GUID-like text: one token of ASCII letters and digits, hyphens between, with a digit somewhere (so never
# "series" or another fixed name), which is as safe as one key component; letters never mix with dots (no ".dcm").
LENIENT_UID_PATTERN = re.compile(r"^([0-9]+(\.[0-9]+)*|(?=[^0-9]*[0-9])[0-9A-Za-z]+(-[0-9A-Za-z]+)*)$")
TENANT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MAX_UID_LENGTH = 64


def validate_uid(value: object, what: str = "UID") -> str:
    """Return the UID, or raise InvalidUID.

    Leading zeros in a component and non-conformant tokens of letters, digits and hyphens are tolerated (real
    modalities emit them), so this checks the lenient form; what matters for safety is that no character can name
    another folder or key, and at most 64 characters.
    """
    if not isinstance(value, str):
        raise InvalidUID(f"{what} must be a string")
    uid = value.strip("\x00 ")
    if not uid or len(uid) > MAX_UID_LENGTH or not LENIENT_UID_PATTERN.fullmatch(uid):
        raise InvalidUID(f"invalid {what}: {value[:80]!r}")
    return uid


def validate_tenant(value: object) -> str:
    if not isinstance(value, str) or not TENANT_PATTERN.fullmatch(value):
        shown = value[:80] if isinstance(value, str) else type(value).__name__
        raise InvalidUID(f"invalid tenant id: {shown!r}")
    return value


OCTET_STREAM = "application/octet-stream"

# PS3.18 Table 8.7.3-5, media types of compressed bulk data (frames) by transfer syntax.
_COMPRESSED_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51": "image/jpeg",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57": "image/jpeg",  # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70": "image/jpeg",  # JPEG Lossless, First-Order Prediction
    # The retired JPEG processes (3-13, 15-29): JPEG bitstreams too, which PS3.18 no longer lists.
    **{f"1.2.840.10008.1.2.4.{process}": "image/jpeg" for process in (52, 53, 54, 55, 56, *range(58, 67))},
    "1.2.840.10008.1.2.5": "image/dicom-rle",  # RLE Lossless (was image/x-dicom-rle before 2017)
    "1.2.840.10008.1.2.4.80": "image/jls",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": "image/jls",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": "image/jp2",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91": "image/jp2",  # JPEG 2000
    "1.2.840.10008.1.2.4.92": "image/jpx",  # JPEG 2000 Part 2 Multi-component Lossless
    "1.2.840.10008.1.2.4.93": "image/jpx",  # JPEG 2000 Part 2 Multi-component
    "1.2.840.10008.1.2.4.201": "image/jphc",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": "image/jphc",  # HTJ2K with RPCL Options Lossless
    "1.2.840.10008.1.2.4.203": "image/jphc",  # HTJ2K
    "1.2.840.10008.1.2.4.110": "image/jxl",  # JPEG XL Lossless
    "1.2.840.10008.1.2.4.111": "image/jxl",  # JPEG XL JPEG Recompression
    "1.2.840.10008.1.2.4.112": "image/jxl",  # JPEG XL
    "1.2.840.10008.1.2.4.100": "video/mpeg",  # MPEG2 Main Profile / Main Level
    "1.2.840.10008.1.2.4.100.1": "video/mpeg",
    "1.2.840.10008.1.2.4.101": "video/mpeg",  # MPEG2 Main Profile / High Level
    "1.2.840.10008.1.2.4.101.1": "video/mpeg",
    "1.2.840.10008.1.2.4.102": "video/mp4",  # MPEG-4 AVC/H.264 family
    "1.2.840.10008.1.2.4.102.1": "video/mp4",
    "1.2.840.10008.1.2.4.103": "video/mp4",
    "1.2.840.10008.1.2.4.103.1": "video/mp4",
    "1.2.840.10008.1.2.4.104": "video/mp4",
    "1.2.840.10008.1.2.4.104.1": "video/mp4",
    "1.2.840.10008.1.2.4.105": "video/mp4",
    "1.2.840.10008.1.2.4.105.1": "video/mp4",
    "1.2.840.10008.1.2.4.106": "video/mp4",
    "1.2.840.10008.1.2.4.106.1": "video/mp4",
    "1.2.840.10008.1.2.4.107": "video/H265",  # HEVC/H.265 Main Profile
    "1.2.840.10008.1.2.4.108": "video/H265",  # HEVC/H.265 Main 10 Profile
}
# PS3.18 Table 8.7.3-5's defaults: the transfer syntax a frame media type means when none is named (the
# lossless one of each family). Whether the archive can make it is dicom/codecs.py's to say.
DEFAULT_FRAME_SYNTAX = {
    "image/jpeg": "1.2.840.10008.1.2.4.70",
    "image/dicom-rle": "1.2.840.10008.1.2.5",
    "image/jls": "1.2.840.10008.1.2.4.80",
    "image/jp2": "1.2.840.10008.1.2.4.90",
    "image/jpx": "1.2.840.10008.1.2.4.92",
    "image/jphc": "1.2.840.10008.1.2.4.201",
    "image/jxl": "1.2.840.10008.1.2.4.110",
}
# Lossy transfer syntaxes (PS3.5 Section 8 and Annex A: "lossy" processes), video included.
_LOSSY = frozenset(
    {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        # Retired DCT-based JPEG processes, non-hierarchical (3-13) and hierarchical (16-27).
        *(f"1.2.840.10008.1.2.4.{process}" for process in (52, 53, 54, 55, 56, *range(59, 65))),
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.93",
        "1.2.840.10008.1.2.4.203",
        "1.2.840.10008.1.2.4.111",
        "1.2.840.10008.1.2.4.112",
        *(syntax for syntax, media in _COMPRESSED_MEDIA_TYPES.items() if media.startswith("video/")),
    }
)
_NATIVE = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"})
# Syntaxes whose frames are plain pixel bytes besides the native ones: deflated, encapsulated uncompressed.
_UNCOMPRESSED_FRAMES = _NATIVE | {"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.1.98"}


class TransferSyntax(UID):
    """A validated transfer syntax UID and what the archive needs to know of it.

    The archive's own facts are decided from its own tables, so a syntax pydicom does not know (a newer
    or a private one) is simply compressed, with no frame media type, rather than an error.
    """

    def __new__(cls, value: str) -> TransferSyntax:
        return cast(TransferSyntax, super().__new__(cls, validate_uid(str(value), "TransferSyntaxUID")))

    @property
    def is_native(self) -> bool:
        """Implicit VR LE, Explicit VR LE or Explicit VR BE (PS3.5 8.1): a dataset in one of them can be
        written in another by re-encoding, its pixel data untouched (what pynetdicom does for C-STORE)."""
        return self in _NATIVE

    @property
    def has_uncompressed_frames(self) -> bool:
        """Frames are plain pixel bytes (served as little endian octet-stream), not a compressed bitstream."""
        return self in _UNCOMPRESSED_FRAMES

    @property
    def is_lossy(self) -> bool:
        return self in _LOSSY

    @property
    def frame_media_type(self) -> str | None:
        """The PS3.18 media type of a frame stored in this syntax; None for a syntax PS3.18 gives none."""
        if self.has_uncompressed_frames:
            return OCTET_STREAM
        return _COMPRESSED_MEDIA_TYPES.get(self)

    @property
    def frame_syntax(self) -> TransferSyntax:
        """The syntax of this syntax's frames as served: uncompressed frames are always little endian."""
        return EXPLICIT_VR_LITTLE_ENDIAN if self.has_uncompressed_frames else self


IMPLICIT_VR_LITTLE_ENDIAN = TransferSyntax("1.2.840.10008.1.2")
EXPLICIT_VR_LITTLE_ENDIAN = TransferSyntax("1.2.840.10008.1.2.1")
EXPLICIT_VR_BIG_ENDIAN = TransferSyntax("1.2.840.10008.1.2.2")
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = TransferSyntax("1.2.840.10008.1.2.1.99")
NATIVE_SYNTAXES = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN)

# Transfer syntaxes of PS3.6 Table A-1 that pydicom's AllTransferSyntaxes leaves out: the retired JPEG processes
# (still sent: Extended 3 & 5, Spectral Selection 6-9, Full Progression 10-13, Lossless 15, the hierarchical ones),
# JPIP, Encapsulated Uncompressed, JPEG XL and Deflated Image Frame Compression.
_MORE_SYNTAXES = (
    *(f"1.2.840.10008.1.2.4.{process}" for process in (52, 53, 54, 55, 56, *range(58, 67), 94, 95, 110, 111, 112)),
    "1.2.840.10008.1.2.1.98",
    "1.2.840.10008.1.2.8.1",
)
# Every transfer syntax of the standard whose objects are binary datasets, retired ones included: the archive
# stores each as received and serves it as stored, decoded or not. The native ones come first.
ACCEPTED_SYNTAXES: tuple[TransferSyntax, ...] = NATIVE_SYNTAXES + tuple(
    TransferSyntax(uid) for uid in dict.fromkeys([*AllTransferSyntaxes, *_MORE_SYNTAXES]) if uid not in NATIVE_SYNTAXES
)
