"""Header parsing: is this a complete Part 10 file, and what does it say about itself.

pydicom reads what it can and silently stops at a truncated element, so completeness is
checked by our own structural walk over the encoded bytes (tags, VRs, lengths, items,
delimiters) before pydicom reads any value. The walk seeks past values, so Pixel Data is
never read into memory. The file is walked through a read-only memory map (a buffered file
costs system calls per element); only the pages the walk touches are read. The identity
(`read_header`) is taken from the walk itself, with pydicom's value conversions but without a
second read by pydicom.

Files without the 128-byte preamble and "DICM" are accepted only when they start directly
with a File Meta Information group (explicit VR little endian, group 0002): some
modalities write that, and the meta still names the transfer syntax. A bare dataset with no
file meta is refused.
"""

from __future__ import annotations

import mmap
import os
import struct
import tempfile
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, Literal, Protocol

import pydicom
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian
from pydicom.values import convert_string, convert_text, convert_UI

from dicomcloud.dicom.uids import validate_uid
from dicomcloud.errors import InvalidInput
from dicomcloud.events import DicomImageMeta, DicomStateMeta

# Values above this size stay on disk until someone asks for them.
DEFER_SIZE: Final = 4096
# Deflated datasets are inflated to memory up to this size, then to a temporary file.
_INFLATE_SPOOL: Final = 64 * 1024 * 1024
_MAX_DEPTH: Final = 64

_ITEM: Final = 0xFFFEE000
_ITEM_DELIMITER: Final = 0xFFFEE00D
_SEQUENCE_DELIMITER: Final = 0xFFFEE0DD
_PIXEL_DATA: Final = 0x7FE00010
_UNDEFINED: Final = 0xFFFFFFFF
# VRs whose explicit encoding has a 4-byte length (PS3.5 7.1.2).
_LONG_VRS: Final = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)

# Everything pydicom raises on a malformed file that our walk let through.
_PYDICOM_ERRORS: Final = (InvalidDicomError, EOFError, OSError, ValueError, KeyError, struct.error, TypeError)

_SOP_CLASS: Final = 0x00080016
_SOP_INSTANCE: Final = 0x00080018
_STUDY: Final = 0x0020000D
_SERIES: Final = 0x0020000E
_PATIENT_ID: Final = 0x00100020
_CHARSET: Final = 0x00080005
_HEADER_TAGS: Final = frozenset({_SOP_CLASS, _SOP_INSTANCE, _STUDY, _SERIES, _PATIENT_ID, _CHARSET})
# A header value longer than this is refused rather than read (UIDs have 64 characters, LO 64).
_MAX_HEADER_VALUE: Final = 4096


@dataclass(frozen=True)
class InstanceHeader:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax: str
    patient_id: str


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

    The values of the top-level elements named in `capture` are kept in `captured`, raw.
    """

    def __init__(self, fp: _Source, capture: frozenset[int] = frozenset()) -> None:
        self.fp = fp
        self.capture = capture
        self.captured: dict[int, bytes] = {}

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
        if length != _UNDEFINED:
            length = self._within(length, end, "element", tag)
            if vr == b"SQ":
                self.items(tag, self.fp.tell() + length, False, little, depth)
            elif depth == 0 and tag in self.capture:
                if length > _MAX_HEADER_VALUE:
                    raise InvalidInput(f"element {_tag_text(tag)} is {length} bytes long")
                self.captured[tag] = self.fp.read(length)
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


def _read_file_meta(fp: _Source, meta_start: int, size: int) -> tuple[int, str]:
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
    return fp.tell(), validate_uid(transfer_syntax, "TransferSyntaxUID")


def _encoding(transfer_syntax: str) -> tuple[bool, bool]:
    """(implicit VR, little endian); unknown syntaxes are explicit VR little endian (PS3.5 10)."""
    if transfer_syntax == ImplicitVRLittleEndian:
        return True, True
    if transfer_syntax == ExplicitVRBigEndian:
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
    """What the structural walk learnt about a complete file."""

    has_preamble: bool
    transfer_syntax: str
    captured: dict[int, bytes]


@contextmanager
def _open(path: Path) -> Iterator[tuple[_Source, int]]:
    """The file mapped read-only, and its size (an empty file cannot be mapped: it stays a file)."""
    try:
        fp = path.open("rb")
    except OSError as exc:
        raise InvalidInput(f"cannot open {path.name}: {exc.strerror}") from exc
    with fp:
        size = os.fstat(fp.fileno()).st_size
        if not size:
            yield fp, 0
            return
        with mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            yield mapped, size


def _validate(path: Path, capture: frozenset[int] = frozenset()) -> _Checked:
    """Raise InvalidInput unless `path` is a complete Part 10 file; keeps the `capture` top-level values."""
    with _open(path) as (fp, size):
        meta_start, has_preamble = _meta_offset(fp)
        start, transfer_syntax = _read_file_meta(fp, meta_start, size)
        implicit, little = _encoding(transfer_syntax)
        if transfer_syntax == DeflatedExplicitVRLittleEndian:
            with tempfile.SpooledTemporaryFile(max_size=_INFLATE_SPOOL) as inflated:
                _inflate(fp, start, inflated)
                end = inflated.tell()
                inflated.seek(0)
                walker = _Walker(inflated, capture)
                walker.dataset(end, _starts_implicit(inflated, implicit), little, False, 0)
        else:
            fp.seek(start)
            walker = _Walker(fp, capture)
            walker.dataset(size, _starts_implicit(fp, implicit), little, False, 0)
    return _Checked(has_preamble, transfer_syntax, walker.captured)


@contextmanager
def _quiet() -> Iterator[None]:
    """pydicom warns about every odd value it reads; we either accept the file or raise precisely."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _dcmread(path: Path, has_preamble: bool, **options: Any) -> Dataset:
    try:
        return pydicom.dcmread(path, force=not has_preamble, defer_size=DEFER_SIZE, **options)
    except _PYDICOM_ERRORS as exc:
        raise InvalidInput(f"unreadable DICOM file: {exc}") from exc


def _text(ds: Dataset, keyword: str) -> str:
    """A text attribute as decoded str: "" when missing or empty; multiple values joined by backslash."""
    return _joined(ds.get(keyword))


def _joined(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value)


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    if isinstance(value, pydicom.multival.MultiValue):
        value = value[0] if value else None
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _header(ds: Dataset) -> InstanceHeader:
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
        transfer_syntax=validate_uid(str(ds.file_meta.get("TransferSyntaxUID", "")), "TransferSyntaxUID"),
        patient_id=_text(ds, "PatientID"),
    )


def read_header(path: Path) -> InstanceHeader:
    """The identity of a Part 10 file, after checking it is complete; Pixel Data is never loaded.

    Values are converted as pydicom converts them (`_header` of a dcmread dataset gives the same).
    """
    checked = _validate(path, _HEADER_TAGS)
    values = checked.captured
    with _quiet():
        charset = values.get(_CHARSET)
        encodings = convert_encodings(convert_string(charset, True)) if charset else [default_encoding]

        def uid(tag: int, keyword: str) -> str:
            raw = values.get(tag)
            value = convert_UI(raw, True) if raw else ""
            if value == "":
                raise InvalidInput(f"missing {keyword}")
            return validate_uid(str(value), keyword)

        patient = values.get(_PATIENT_ID)
        return InstanceHeader(
            sop_class_uid=uid(_SOP_CLASS, "SOPClassUID"),
            sop_instance_uid=uid(_SOP_INSTANCE, "SOPInstanceUID"),
            study_instance_uid=uid(_STUDY, "StudyInstanceUID"),
            series_instance_uid=uid(_SERIES, "SeriesInstanceUID"),
            transfer_syntax=checked.transfer_syntax,
            patient_id=_joined(convert_text(patient, encodings)) if patient else "",
        )


def read_dataset(path: Path) -> Dataset:
    """The whole dataset of a complete Part 10 file; values over DEFER_SIZE are read on access."""
    checked = _validate(path)
    with _quiet():
        return _dcmread(path, checked.has_preamble)


def extract_meta(
    path: Path, tenant_id: str, file_path: str, file_size: int, sha256: str
) -> tuple[DicomStateMeta, DicomImageMeta]:
    """The index and warehouse records of one received file."""
    checked = _validate(path)
    with _quiet():
        return _records(
            _dcmread(path, checked.has_preamble, stop_before_pixels=True), tenant_id, file_path, file_size, sha256
        )


def _records(
    ds: Dataset, tenant_id: str, file_path: str, file_size: int, sha256: str
) -> tuple[DicomStateMeta, DicomImageMeta]:
    header = _header(ds)
    acquisition = _text(ds, "AcquisitionDateTime") or _text(ds, "AcquisitionDate") + _text(ds, "AcquisitionTime")
    state = DicomStateMeta(
        tenant_id=tenant_id,
        patient_id=header.patient_id,
        patient_name=_text(ds, "PatientName"),
        patient_birth_date=_text(ds, "PatientBirthDate"),
        patient_sex=_text(ds, "PatientSex"),
        study_instance_uid=header.study_instance_uid,
        study_date=_text(ds, "StudyDate"),
        study_time=_text(ds, "StudyTime"),
        accession_number=_text(ds, "AccessionNumber"),
        study_id=_text(ds, "StudyID"),
        study_description=_text(ds, "StudyDescription"),
        referring_physician_name=_text(ds, "ReferringPhysicianName"),
        series_instance_uid=header.series_instance_uid,
        modality=_text(ds, "Modality"),
        series_number=_int(ds, "SeriesNumber"),
        series_description=_text(ds, "SeriesDescription"),
        series_date=_text(ds, "SeriesDate"),
        series_time=_text(ds, "SeriesTime"),
        body_part_examined=_text(ds, "BodyPartExamined"),
        performed_procedure_step_start_date=_text(ds, "PerformedProcedureStepStartDate"),
        performed_procedure_step_start_time=_text(ds, "PerformedProcedureStepStartTime"),
        institution_name=_text(ds, "InstitutionName"),
        station_name=_text(ds, "StationName"),
    )
    image = DicomImageMeta(
        tenant_id=tenant_id,
        study_instance_uid=header.study_instance_uid,
        series_instance_uid=header.series_instance_uid,
        sop_instance_uid=header.sop_instance_uid,
        sop_class_uid=header.sop_class_uid,
        instance_number=_int(ds, "InstanceNumber"),
        transfer_syntax=header.transfer_syntax,
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        bits_allocated=_int(ds, "BitsAllocated"),
        number_of_frames=_int(ds, "NumberOfFrames"),
        photometric_interpretation=_text(ds, "PhotometricInterpretation"),
        content_date=_text(ds, "ContentDate"),
        content_time=_text(ds, "ContentTime"),
        acquisition_date_time=acquisition,
        image_type=_text(ds, "ImageType"),
        file_path=file_path,
        file_size=file_size,
        sha256=sha256,
    )
    return state, image
