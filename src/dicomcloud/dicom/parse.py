"""Parsing a received object, once: is it a complete Part 10 file, and what does it say about itself.

`parse_instance` is the only reading of an object the archive does to learn about it: its identity,
the catalogue's indexed attributes (dicom/attributes.py), its DICOM JSON, its frame index and its
sha256 come out of one structural walk, one pydicom read and one hash, and travel on from there
(the index row, the bus event, the stored metadata entry); nothing reads the object again to learn them.

pydicom reads what it can and silently stops at a truncated element, so completeness is
checked by our own structural walk over the encoded bytes (tags, VRs, lengths, items,
delimiters) before pydicom reads any value. The walk seeks past values, so Pixel Data is
never read into memory, and notes where the top-level Pixel Data value starts (the frame index
starts there). The object is walked through a read-only memory map (a buffered file costs system
calls per element); only the pages the walk touches are read, and the hash reads the same map.

Files without the 128-byte preamble and "DICM" are accepted when they start directly
with a File Meta Information group (explicit VR little endian, group 0002): some
modalities write that, and the meta still names the transfer syntax. A bare dataset with no
file meta (ACR-NEMA style, as old modalities write) is no Part 10 file, but `part10_header` gives
the preamble and meta that make it one, its own bytes untouched (archive/store.py prepends them).
"""

from __future__ import annotations

import hashlib
import io
import mmap
import os
import struct
import tempfile
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, BinaryIO, Final, Literal, Protocol

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.uid import UID

from dicomcloud.dicom.attributes import extracted
from dicomcloud.dicom.dicomjson import dataset_to_json
from dicomcloud.dicom.frames import PIXEL_DATA_TAGS, PixelElement, index_frames
from dicomcloud.dicom.seriesdoc import InstanceEntry, bulkdata_base
from dicomcloud.dicom.uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    MAX_UID_LENGTH,
    TransferSyntax,
    validate_uid,
)
from dicomcloud.errors import InvalidInput

# Values above this size stay on disk until someone asks for them.
DEFER_SIZE: Final = 4096
# Deflated datasets are inflated to memory up to this size, then to a temporary file.
_INFLATE_SPOOL: Final = 64 * 1024 * 1024
# Sequences nested deeper than this are refused: real objects reach 100 levels, and every level costs stack
# frames in the walk, in pydicom and in DICOM JSON.
_MAX_DEPTH: Final = 128

_ITEM: Final = 0xFFFEE000
_ITEM_DELIMITER: Final = 0xFFFEE00D
_SEQUENCE_DELIMITER: Final = 0xFFFEE0DD
_PIXEL_DATA: Final = 0x7FE00010
_UNDEFINED: Final = 0xFFFFFFFF
# VRs whose explicit encoding has a 4-byte length (PS3.5 7.1.2).
_LONG_VRS: Final = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)

# Top-level values that name the object are refused rather than read when longer than this (a UID has
# 64 characters, a Patient ID 64): SOP Class, SOP Instance, Study, Series, Patient ID, character set.
_MAX_IDENTITY_VALUE: Final = 4096
_IDENTITY_TAGS: Final = frozenset({0x00080016, 0x00080018, 0x0020000D, 0x0020000E, 0x00100020, 0x00080005})
# Everything pydicom raises on a malformed file that our walk let through.
_PYDICOM_ERRORS: Final = (InvalidDicomError, EOFError, OSError, ValueError, KeyError, struct.error, TypeError)



@dataclass(frozen=True)
class Identity:
    """The SOP Class and Instance UIDs of an object, as far as they can be read (a refusal names them)."""

    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None


@dataclass(frozen=True)
class InstanceHeader:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax: TransferSyntax
    patient_id: str

    @property
    def identity(self) -> Identity:
        return Identity(self.sop_class_uid, self.sop_instance_uid)


@dataclass(frozen=True)
class ParsedInstance:
    """What one reading of a received object yields."""

    header: InstanceHeader
    attributes: dict[str, Any]  # the catalogue's extracted attributes, by keyword
    entry: InstanceEntry  # DICOM JSON, frame index, size and sha256


class _Source(Protocol):
    """What the walk reads from: a file, a memory map or an inflated spool."""

    def read(self, size: int = ..., /) -> bytes: ...

    def seek(self, pos: int, whence: Literal[0, 1, 2] = ..., /) -> int | None: ...

    def tell(self) -> int: ...


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _unpack(fmt: str, raw: bytes, little: bool) -> tuple[int, ...]:
    return struct.unpack(("<" if little else ">") + fmt, raw)


class _Walker:
    """Walks an encoded dataset, checking that every element and item lies inside its parent.

    Where the top-level Pixel Data (or Float / Double Float Pixel Data) value starts, and its length,
    are kept in `pixel`.
    """

    def __init__(self, fp: _Source) -> None:
        self.fp = fp
        self.pixel: PixelElement | None = None

    def _read(self, count: int, end: int, what: str, tag: int | None = None) -> bytes:
        at = self.fp.tell()
        raw = self.fp.read(min(count, max(end - at, 0)))
        if len(raw) < count:
            where = what if tag is None else f"{what} {_tag_text(tag)}"
            raise InvalidInput(f"truncated file: {where} at offset {at} needs {count} bytes, {len(raw)} left")
        return raw

    def _within(self, length: int, end: int, what: str, tag: int) -> int:
        """`length`, if the value that starts here fits before `end`."""
        at = self.fp.tell()
        if length > end - at:
            where = f"{what} {_tag_text(tag)} at offset {at}"
            raise InvalidInput(f"truncated file: {where} has length {length}, only {end - at} bytes left")
        return length

    def dataset(self, end: int, implicit: bool, little: bool, delimited: bool, depth: int) -> None:
        """A dataset up to `end`, or up to its Item Delimitation Item when `delimited`."""
        if depth > _MAX_DEPTH:
            raise InvalidInput("sequences nested too deeply")
        while self.fp.tell() < end:
            if self.element(end, implicit, little, depth)[0] == _ITEM_DELIMITER:
                if delimited:
                    return
                raise InvalidInput(f"unexpected item delimiter at offset {self.fp.tell() - 8}")
        if delimited:
            raise InvalidInput(f"truncated file: item without its delimiter, ended at offset {self.fp.tell()}")

    def element(self, end: int, implicit: bool, little: bool, depth: int) -> tuple[int, int]:
        """One element, header and value; returns its tag and value length."""
        head = self._read(8, end, "element header")
        group, number = _unpack("HH", head[:4], little)
        tag: int = group << 16 | number
        if tag == _ITEM_DELIMITER:
            return tag, 0
        vr = head[4:6]
        # Like pydicom, accept implicit VR elements inside an explicit VR dataset (seen in the wild).
        explicit = not implicit and group != 0xFFFE and vr.isalpha() and vr.isupper()
        if not explicit:
            (length,) = _unpack("L", head[4:], little)
        elif vr in _LONG_VRS:
            (length,) = _unpack("L", self._read(4, end, "length of", tag), little)
        else:
            (length,) = _unpack("H", head[6:], little)
        self._value(tag, vr if explicit else None, length, end, little, depth)
        return tag, length

    def _value(self, tag: int, vr: bytes | None, length: int, end: int, little: bool, depth: int) -> None:
        if depth == 0 and tag in PIXEL_DATA_TAGS:
            self.pixel = PixelElement(self.fp.tell(), length)
        if length != _UNDEFINED:
            length = self._within(length, end, "element", tag)
            if vr == b"SQ":
                self.items(tag, self.fp.tell() + length, False, little, depth)
            elif depth == 0 and tag in _IDENTITY_TAGS and length > _MAX_IDENTITY_VALUE:
                raise InvalidInput(f"element {_tag_text(tag)} is {length} bytes long")
            else:
                self.fp.seek(length, 1)
        elif vr is None:
            # Implicit VR: an undefined length is a sequence, or the fragments of Pixel Data.
            self.items(tag, end, True, little, depth, fragments=tag == _PIXEL_DATA, implicit=True)
        elif vr == b"SQ":
            self.items(tag, end, True, little, depth)
        elif vr == b"UN":
            # PS3.5 6.2.2: an undefined-length UN is a sequence in implicit VR little endian.
            self.items(tag, end, True, True, depth, implicit=True)
        elif vr in _LONG_VRS:
            self.items(tag, end, True, little, depth, fragments=True)
        else:
            raise InvalidInput(f"element {_tag_text(tag)} with VR {vr.decode()} cannot have undefined length")

    def items(
        self,
        tag: int,
        end: int,
        delimited: bool,
        little: bool,
        depth: int,
        *,
        fragments: bool = False,
        implicit: bool = False,
    ) -> None:
        """The items of a sequence, or the fragments of encapsulated data."""
        while delimited or self.fp.tell() < end:
            group, number, length = _unpack("HHL", self._read(8, end, "item of", tag), little)
            item_tag = group << 16 | number
            if item_tag == _SEQUENCE_DELIMITER and delimited:
                return
            if item_tag != _ITEM:
                raise InvalidInput(f"expected an item in {_tag_text(tag)}, found {_tag_text(item_tag)}")
            if fragments:
                if length == _UNDEFINED:
                    raise InvalidInput(f"fragment of {_tag_text(tag)} with undefined length")
                self.fp.seek(self._within(length, end, "item of", tag), 1)
            elif length == _UNDEFINED:
                self.dataset(end, implicit, little, True, depth + 1)
            else:
                self.dataset(
                    self.fp.tell() + self._within(length, end, "item of", tag), implicit, little, False, depth + 1
                )


def _meta_offset(fp: _Source) -> tuple[int, bool]:
    """Where the file meta group starts, and whether the file has its preamble."""
    head = fp.read(132)
    if len(head) == 132 and head[128:132] == b"DICM":
        return 132, True
    if len(head) >= 8 and head[:2] == b"\x02\x00" and head[4:6].isalpha() and head[4:6].isupper():
        return 0, False
    raise InvalidInput("not a DICOM Part 10 file")


def _read_file_meta(fp: _Source, meta_start: int, size: int) -> tuple[int, TransferSyntax]:
    """Walk the file meta group (explicit VR little endian): where the dataset begins, and its syntax."""
    walker = _Walker(fp)
    fp.seek(meta_start)
    transfer_syntax = ""
    while size - fp.tell() >= 8:
        at = fp.tell()
        if fp.read(2) != b"\x02\x00":
            fp.seek(at)
            break
        fp.seek(at)
        tag, length = walker.element(size, False, True, 0)
        if tag == 0x00020010 and length != _UNDEFINED:
            end = fp.tell()
            fp.seek(end - length)
            transfer_syntax = fp.read(length).decode("ascii", "replace").strip("\x00 ")
    if not transfer_syntax:
        raise InvalidInput("the file meta information has no TransferSyntaxUID")
    if size - fp.tell() < 8:
        raise InvalidInput("truncated file: no dataset after the file meta information")
    return fp.tell(), TransferSyntax(transfer_syntax)


def _encoding(transfer_syntax: str) -> tuple[bool, bool]:
    """(implicit VR, little endian); unknown syntaxes are explicit VR little endian (PS3.5 10)."""
    if transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN:
        return True, True
    if transfer_syntax == EXPLICIT_VR_BIG_ENDIAN:
        return False, False
    return False, True


def _starts_implicit(fp: _Source, assumed: bool) -> bool:
    """pydicom trusts the first element's VR bytes over the transfer syntax; so do we."""
    at = fp.tell()
    head = fp.read(6)
    fp.seek(at)
    if len(head) < 6:
        return assumed
    vr = head[4:6]
    return not (vr.isalpha() and vr.isupper())


def _inflate(fp: _Source, start: int, out: IO[bytes]) -> None:
    """Inflate the dataset of a Deflated Explicit VR Little Endian file into `out`, complete or refused."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    crc = size = 0
    fp.seek(start)
    try:
        while not inflater.eof and (chunk := fp.read(1 << 20)):
            inflated = inflater.decompress(chunk)
            crc, size = zlib.crc32(inflated, crc), size + len(inflated)
            out.write(inflated)
    except zlib.error as exc:
        raise InvalidInput(f"corrupt deflated dataset: {exc}") from exc
    if not inflater.eof:
        raise InvalidInput("truncated file: the deflated dataset ends before its end of stream")
    trailing = inflater.unused_data + fp.read()
    # PS3.5 A.5 pads an odd-length stream with one NUL; some writers append a gzip-style
    # CRC-32 and size instead, which we accept when it matches what we inflated.
    if trailing not in (b"", b"\x00", struct.pack("<LL", crc, size & 0xFFFFFFFF)):
        raise InvalidInput(f"{len(trailing)} unexpected bytes after the end of the deflated dataset")


@dataclass(frozen=True)
class _Checked:
    """What the structural walk learnt about a complete object."""

    has_preamble: bool
    transfer_syntax: TransferSyntax
    pixel: PixelElement | None
    size: int
    sha256: str


@contextmanager
def _mapped(stream: BinaryIO) -> Iterator[tuple[_Source, memoryview | bytes, int]]:
    """The object read-only: a memory map of its file (or its bytes, for a stream without one), and its size.

    What a writer still buffers is flushed first, so the map sees every byte written."""
    stream.flush()
    try:
        fd = stream.fileno()
    except (OSError, AttributeError, io.UnsupportedOperation):
        stream.seek(0)
        data = stream.read()
        yield io.BytesIO(data), data, len(data)
        return
    size = os.fstat(fd).st_size
    if not size:
        yield io.BytesIO(b""), b"", 0
        return
    with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)
        try:
            yield mapped, view, size
        finally:
            view.release()


def _check(stream: BinaryIO) -> _Checked:
    """Raise InvalidInput unless `stream` holds a complete Part 10 object; hash it on the way."""
    with _mapped(stream) as (fp, data, size):
        meta_start, has_preamble = _meta_offset(fp)
        start, transfer_syntax = _read_file_meta(fp, meta_start, size)
        implicit, little = _encoding(transfer_syntax)
        pixel: PixelElement | None
        if transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
            with tempfile.SpooledTemporaryFile(max_size=_INFLATE_SPOOL) as inflated:
                _inflate(fp, start, inflated)
                end = inflated.tell()
                inflated.seek(0)
                walker = _Walker(inflated)
                walker.dataset(end, _starts_implicit(inflated, implicit), little, False, 0)
            # Offsets in the inflated stream are no offsets in the stored bytes.
            pixel = None if walker.pixel is None else PixelElement(None, walker.pixel.length)
        else:
            fp.seek(start)
            walker = _Walker(fp)
            walker.dataset(size, _starts_implicit(fp, implicit), little, False, 0)
            pixel = walker.pixel
        sha256 = hashlib.sha256(data).hexdigest()
    return _Checked(has_preamble, transfer_syntax, pixel, size, sha256)


@contextmanager
def _quiet() -> Iterator[None]:
    """pydicom warns about every odd value it reads; we either accept the file or raise precisely."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _dcmread(stream: BinaryIO, has_preamble: bool) -> Dataset:
    stream.seek(0)
    try:
        return pydicom.dcmread(stream, force=not has_preamble, defer_size=DEFER_SIZE)
    except _PYDICOM_ERRORS as exc:
        raise InvalidInput(f"unreadable DICOM file: {exc}") from exc


def _text(ds: Dataset, keyword: str) -> str:
    """A text attribute as decoded str: "" when missing or empty; multiple values joined by backslash."""
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value)


def _header(ds: Dataset, transfer_syntax: TransferSyntax) -> InstanceHeader:
    def uid(keyword: str) -> str:
        value = ds.get(keyword)
        if value is None or value == "":
            raise InvalidInput(f"missing {keyword}")
        return validate_uid(str(value), keyword)

    return InstanceHeader(
        sop_class_uid=uid("SOPClassUID"),
        sop_instance_uid=uid("SOPInstanceUID"),
        study_instance_uid=uid("StudyInstanceUID"),
        series_instance_uid=uid("SeriesInstanceUID"),
        transfer_syntax=transfer_syntax,
        patient_id=_text(ds, "PatientID"),
    )


def _shown_uid(value: object) -> str | None:
    """A UID value fit to be named in a response: printable ASCII, one value, at most 64 characters."""
    text = str(value).strip("\x00 ") if isinstance(value, str) else ""
    if not text or len(text) > MAX_UID_LENGTH or not text.isascii() or not text.isprintable() or "\\" in text:
        return None
    return text


# The groups a bare dataset starts with (little or big endian): identifying and command-free.
_BARE_DATASET_STARTS: Final = (b"\x08\x00", b"\x00\x08")


def part10_header(stream: BinaryIO) -> bytes | None:
    """The preamble, "DICM" and File Meta Information that make a bare dataset (one starting with group 0008, no
    meta) a Part 10 file: its encoding as pydicom finds it, its SOP Class and Instance UIDs. None for anything
    else (a Part 10 file, meta without preamble, or bytes pydicom cannot read as a dataset with those UIDs)."""
    stream.seek(0)
    head = stream.read(132)
    if head[128:132] == b"DICM" or head[:2] not in _BARE_DATASET_STARTS:
        return None
    with _quiet():
        try:
            stream.seek(0)
            ds = pydicom.dcmread(stream, force=True, stop_before_pixels=True, defer_size=DEFER_SIZE)
            implicit, little = ds.original_encoding
            sop_class, sop_instance = _shown_uid(ds.get("SOPClassUID")), _shown_uid(ds.get("SOPInstanceUID"))
        except Exception:  # not a dataset pydicom reads: no header makes it one
            return None
    if sop_class is None or sop_instance is None or (implicit and not little):
        return None
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = IMPLICIT_VR_LITTLE_ENDIAN if implicit else (
        EXPLICIT_VR_LITTLE_ENDIAN if little else EXPLICIT_VR_BIG_ENDIAN
    )
    out = DicomBytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    return out.getvalue()


def read_identity(stream: BinaryIO) -> Identity:
    """What a refused object says it is: its SOP Class and Instance UIDs read as leniently as pydicom can (with
    force, no value above DEFER_SIZE loaded), else the Media Storage UIDs of its file meta; None where unreadable.
    Only for naming the object in a refusal: nothing stored depends on it."""
    with _quiet():
        try:
            stream.seek(0)
            ds = pydicom.dcmread(stream, force=True, stop_before_pixels=True, defer_size=DEFER_SIZE)
        except Exception:  # whatever a hostile file makes pydicom raise, the answer is "unknown"
            return Identity()
        meta = getattr(ds, "file_meta", None) or Dataset()

        def first(*found: tuple[Dataset, str]) -> str | None:
            for dataset, keyword in found:
                try:
                    shown = _shown_uid(dataset.get(keyword))
                except Exception:  # an unreadable value is an unknown one
                    shown = None
                if shown is not None:
                    return shown
            return None

        return Identity(
            first((ds, "SOPClassUID"), (meta, "MediaStorageSOPClassUID")),
            first((ds, "SOPInstanceUID"), (meta, "MediaStorageSOPInstanceUID")),
        )


def indexed_values(metadata: dict[str, Any], header: InstanceHeader) -> dict[str, Any]:
    """The catalogue's attributes of one instance, from its DICOM JSON (decoded once, for both): text with
    multiple values joined by backslash and person names as `Alphabetic=Ideographic=Phonetic`, integers
    as int or None, the identity as validated in `header`."""
    known = {
        "StudyInstanceUID": header.study_instance_uid,
        "SeriesInstanceUID": header.series_instance_uid,
        "SOPInstanceUID": header.sop_instance_uid,
        "SOPClassUID": header.sop_class_uid,
        "TransferSyntaxUID": str(header.transfer_syntax),
    }
    values: dict[str, Any] = {}
    for attribute in extracted():
        keyword = attribute.keyword
        if keyword in known:
            values[keyword] = known[keyword]
        elif attribute.integer:
            values[keyword] = _json_int(metadata.get(f"{attribute.tag:08X}"))
        else:
            text = _json_text(metadata.get(f"{attribute.tag:08X}"))
            if not text and attribute.fallback:
                text = "".join(_json_text(metadata.get(f"{tag_for_keyword(k):08X}")) for k in attribute.fallback)
            values[keyword] = text
    return values


def _json_values(entry: Any) -> list[Any]:
    return entry.get("Value", []) if isinstance(entry, dict) else []


def _json_text(entry: Any) -> str:
    """A DICOM JSON attribute's values as text ("" when missing or empty)."""
    parts = []
    for value in _json_values(entry):
        if isinstance(value, dict):  # a person name's component groups
            groups = [str(value.get(group, "")) for group in ("Alphabetic", "Ideographic", "Phonetic")]
            while groups and not groups[-1]:
                groups.pop()
            parts.append("=".join(groups))
        else:
            parts.append("" if value is None else str(value))
    return "\\".join(parts)


def _json_int(entry: Any) -> int | None:
    values = _json_values(entry)
    try:
        return int(values[0]) if values and values[0] is not None else None
    except (TypeError, ValueError):
        return None


def parse_instance(stream: BinaryIO, *, bulkdata_threshold: int = 1024) -> ParsedInstance:
    """Everything the archive learns from a received object, reading it once; InvalidInput when it is
    not a complete Part 10 object or lacks its identity. Values longer than `bulkdata_threshold` bytes
    become BulkDataURIs in its DICOM JSON."""
    checked = _check(stream)
    with _quiet():
        ds = _dcmread(stream, checked.has_preamble)
        header = _header(ds, checked.transfer_syntax)
        base = bulkdata_base(header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid)
        try:
            metadata = dataset_to_json(ds, lambda path: f"{base}/{path}", bulkdata_threshold)
            frame_index = (
                None
                if checked.pixel is None
                else index_frames(stream, ds, checked.pixel, checked.size, checked.transfer_syntax)
            )
        except _PYDICOM_ERRORS as exc:
            raise InvalidInput(f"unreadable DICOM file: {exc}") from exc
        attributes = indexed_values(metadata, header)
    entry = InstanceEntry(
        sop_instance_uid=header.sop_instance_uid,
        instance_number=attributes["InstanceNumber"],
        file_size=checked.size,
        sha256=checked.sha256,
        metadata=metadata,
        frame_index=frame_index,
        has_preamble=checked.has_preamble,
    )
    return ParsedInstance(header, attributes, entry)
