"""Frame decoding and the media types frames travel in.

Decoded frames follow pydicom's default processing, which is also what a transcoded Explicit VR
Little Endian dataset would hold (PS3.18 8.7.3.5: a frame in an uncompressed syntax is described by
the dataset as it would be after transcoding, PS3.5 8.2 for the decompressed Photometric
Interpretation):

- YBR_FULL and YBR_FULL_422 are converted to RGB (native YBR_FULL_422 cannot be stored without its
  subsampling, and lossy JPEG decoders yield RGB), so the transcoded dataset says RGB;
- samples are interleaved (Planar Configuration 0) and little endian;
- Bits Allocated 1 stays bit-packed, from bit 0 of the frame's first byte, as native frames are encoded.

JPEG 2000 YBR_RCT/YBR_ICT come out RGB from the decoder already; MONOCHROME and PALETTE COLOR
are left as they are.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels.utils import pack_bits, pixel_array

from dicomcloud.errors import InvalidInput, NotAcceptable, NotFound

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"

# Syntaxes whose frames are served as uncompressed little endian bytes (PS3.18 Table 8.7.3-4).
_NATIVE_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2",  # Implicit VR Little Endian
        EXPLICIT_VR_LITTLE_ENDIAN,
        "1.2.840.10008.1.2.2",  # Explicit VR Big Endian: frames are swapped to little endian
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        "1.2.840.10008.1.2.1.98",  # Encapsulated Uncompressed Explicit VR Little Endian
    }
)

# PS3.18 Table 8.7.3-5, media types of compressed bulk data (frames) by transfer syntax.
_COMPRESSED_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51": "image/jpeg",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57": "image/jpeg",  # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70": "image/jpeg",  # JPEG Lossless, First-Order Prediction
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

# What pydicom raises when it has no decoder for the data, or the data is not what the header says.
_DECODE_ERRORS = (NotImplementedError, RuntimeError, ValueError, AttributeError, KeyError, TypeError)


def frame_media_type(transfer_syntax: str) -> str:
    """The PS3.18 media type of a frame stored in `transfer_syntax`, as `read_frames` returns it."""
    if transfer_syntax in _NATIVE_SYNTAXES:
        return "application/octet-stream"
    try:
        return _COMPRESSED_MEDIA_TYPES[transfer_syntax]
    except KeyError:
        raise NotAcceptable(f"no frame media type for transfer syntax {transfer_syntax}") from None


def frame_transfer_syntax(transfer_syntax: str) -> str:
    """The transfer syntax of the bytes `read_frames` returns: native frames are always little endian."""
    return EXPLICIT_VR_LITTLE_ENDIAN if transfer_syntax in _NATIVE_SYNTAXES else transfer_syntax


def decode_frame(path: Path, number: int) -> bytes:
    """Frame `number` (1-based) as Explicit VR Little Endian native bytes; see the module docstring."""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except (ValueError, EOFError, OSError) as exc:
        raise InvalidInput(f"unreadable DICOM header: {exc}") from exc
    frames = _number_of_frames(header)
    if not 1 <= number <= frames:
        raise NotFound(f"frame {number} is out of range 1-{frames}")
    meta = getattr(header, "file_meta", None)
    transfer_syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    arr = None
    if transfer_syntax and transfer_syntax != DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        # Straight from the file, reading only this frame; pydicom's file reader expects a
        # well-formed Pixel Data header, so a file it cannot follow is read whole below.
        with contextlib.suppress(*_DECODE_ERRORS):
            arr = pixel_array(path, index=number - 1)
    if arr is None:
        try:
            arr = pixel_array(pydicom.dcmread(path, force=True), index=number - 1)
        except _DECODE_ERRORS as exc:
            raise NotAcceptable(f"cannot decode frame {number}: {exc}") from exc
    if header.get("BitsAllocated") == 1:
        return pack_bits(arr, pad=False)
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def _number_of_frames(header: pydicom.Dataset) -> int:
    try:
        number = int(header.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        return 1
    return max(number, 1)
