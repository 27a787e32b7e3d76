"""The series metadata document and its frame index.

One document per series makes WADO-RS `/metadata` a single read, and its frame index makes
a frame one `pread`: for every instance it keeps the DICOM JSON (BulkDataURIs written against
BASE_PLACEHOLDER, so one stored document serves every host name and tenant prefix) and the byte
ranges of each frame in the instance file.
"""

from __future__ import annotations

import bisect
import json
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from dicomcloud.dicom.dicomjson import bulk_value, dataset_to_json, dumps
from dicomcloud.dicom.parse import read_dataset
from dicomcloud.dicom.uids import validate_uid
from dicomcloud.errors import InvalidInput, NotAcceptable, NotFound, StorageFailure

BASE_PLACEHOLDER = "{{DICOMCLOUD_BASE}}"
DOCUMENT_FORMAT = 1

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"

PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})  # Pixel, Float Pixel, Double Float Pixel
_EXTENDED_OFFSET_TABLE = 0x7FE00001
_EXTENDED_OFFSET_TABLE_LENGTHS = 0x7FE00002
_ITEM = 0xFFFEE000
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_UNDEFINED_LENGTH = 0xFFFFFFFF
_LONG_LENGTH_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_JPEG_END_MARKER = b"\xff\xd9"  # JPEG EOI, JPEG 2000 EOC

ByteRange = tuple[int, int]


@dataclass(frozen=True)
class FrameIndex:
    """Where each frame of an instance lies in its file.

    `frames` holds, per frame, the (file offset, length) ranges that make it: one range for a native
    frame, the fragments of an encapsulated one. It is empty when frames cannot be located by offset
    (big endian or deflated syntax, bit-packed frames not byte aligned, encapsulated data whose frame
    boundaries are ambiguous); `read_frames` then reads the whole value with pydicom.
    """

    transfer_syntax: str
    encapsulated: bool
    frames: tuple[tuple[ByteRange, ...], ...]
    number_of_frames: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "transfer_syntax": self.transfer_syntax,
            "encapsulated": self.encapsulated,
            "number_of_frames": self.number_of_frames,
            "frames": self.frames,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FrameIndex:
        return cls(
            transfer_syntax=str(data["transfer_syntax"]),
            encapsulated=bool(data["encapsulated"]),
            number_of_frames=int(data["number_of_frames"]),
            frames=tuple(tuple((int(offset), int(length)) for offset, length in frame) for frame in data["frames"]),
        )


@dataclass(frozen=True)
class InstanceEntry:
    sop_instance_uid: str
    instance_number: int | None
    file_path: str  # relative to the storage root
    file_size: int
    sha256: str
    metadata: dict[str, Any]  # DICOM JSON with BulkDataURIs under BASE_PLACEHOLDER
    frame_index: FrameIndex | None  # None when the instance has no pixel data

    def to_dict(self) -> dict[str, Any]:
        return {
            "sop_instance_uid": self.sop_instance_uid,
            "instance_number": self.instance_number,
            "file_path": self.file_path,
            "file_size": self.file_size,
            "sha256": self.sha256,
            "frame_index": None if self.frame_index is None else self.frame_index.to_dict(),
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InstanceEntry:
        frame_index = data["frame_index"]
        number = data["instance_number"]
        return cls(
            sop_instance_uid=str(data["sop_instance_uid"]),
            instance_number=None if number is None else int(number),
            file_path=str(data["file_path"]),
            file_size=int(data["file_size"]),
            sha256=str(data["sha256"]),
            metadata=dict(data["metadata"]),
            frame_index=None if frame_index is None else FrameIndex.from_dict(frame_index),
        )


def bulkdata_base(study_uid: str, series_uid: str, sop_uid: str) -> str:
    """The BulkDataURI prefix of an instance, before the server puts its own base in front."""
    return f"{BASE_PLACEHOLDER}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/bulkdata"


def index_instance(
    path: Path,
    *,
    file_path: str,
    file_size: int,
    sha256: str,
    study_uid: str,
    series_uid: str,
    threshold: int = 1024,
) -> InstanceEntry:
    """Read an instance file once for its DICOM JSON and once more (header only) for its frame index."""
    ds = read_dataset(path)
    sop_uid = validate_uid(ds.get("SOPInstanceUID"), "SOP Instance UID")
    base = bulkdata_base(study_uid, series_uid, sop_uid)
    metadata = dataset_to_json(ds, lambda tag_path: f"{base}/{tag_path}", threshold)
    return InstanceEntry(
        sop_instance_uid=sop_uid,
        instance_number=_optional_int(ds.get("InstanceNumber")),
        file_path=file_path,
        file_size=file_size,
        sha256=sha256,
        metadata=metadata,
        frame_index=index_frames(path),
    )


@dataclass
class SeriesDocument:
    """Everything WADO-RS needs about a series without opening its instance files.

    Treat a document as immutable once served: the serialized metadata is computed on first use
    and kept on the object; a changed series gets a new document with a new version.
    """

    tenant_id: str
    study_instance_uid: str
    series_instance_uid: str
    version: int
    instances: dict[str, InstanceEntry]  # by SOP Instance UID
    _serialized: dict[str, bytes] | None = field(default=None, init=False, repr=False, compare=False)

    def to_bytes(self) -> bytes:
        return dumps(
            {
                "format": DOCUMENT_FORMAT,
                "tenant_id": self.tenant_id,
                "study_instance_uid": self.study_instance_uid,
                "series_instance_uid": self.series_instance_uid,
                "version": self.version,
                "instances": [entry.to_dict() for entry in self.ordered_instances()],
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> SeriesDocument:
        try:
            data = json.loads(raw)
            if data["format"] != DOCUMENT_FORMAT:
                raise InvalidInput(f"series document format {data['format']!r} is not {DOCUMENT_FORMAT}")
            entries = [InstanceEntry.from_dict(item) for item in data["instances"]]
            return cls(
                tenant_id=str(data["tenant_id"]),
                study_instance_uid=str(data["study_instance_uid"]),
                series_instance_uid=str(data["series_instance_uid"]),
                version=int(data["version"]),
                instances={entry.sop_instance_uid: entry for entry in entries},
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInput(f"malformed series document: {exc}") from exc

    def ordered_instances(self) -> list[InstanceEntry]:
        """By Instance Number (instances without one last), then SOP Instance UID."""
        return sorted(
            self.instances.values(),
            key=lambda e: (e.instance_number is None, e.instance_number or 0, e.sop_instance_uid),
        )

    def metadata_body(self, base_url: str) -> bytes:
        """The WADO-RS series metadata response: a JSON array of the instances' DICOM JSON."""
        return _with_base(self._serialized_metadata()[""], base_url)

    def instance_metadata_body(self, sop_uid: str, base_url: str) -> bytes:
        """The WADO-RS instance metadata response: a JSON array with one object."""
        serialized = self._serialized_metadata()
        if sop_uid not in serialized:
            raise NotFound(f"instance {sop_uid} is not in series {self.series_instance_uid}")
        return _with_base(serialized[sop_uid], base_url)

    def _serialized_metadata(self) -> dict[str, bytes]:
        """Serialized arrays keyed by SOP Instance UID, and the whole series under ""."""
        if self._serialized is None:
            objects = [(entry.sop_instance_uid, dumps(entry.metadata)) for entry in self.ordered_instances()]
            serialized = {sop: b"[" + body + b"]" for sop, body in objects}
            serialized[""] = b"[" + b",".join(body for _, body in objects) + b"]"
            self._serialized = serialized
        return self._serialized


def _with_base(body: bytes, base_url: str) -> bytes:
    # As a JSON string body, so a quote or backslash in the base cannot break the document.
    escaped = json.dumps(base_url.rstrip("/"), ensure_ascii=False)[1:-1].encode()
    return body.replace(BASE_PLACEHOLDER.encode(), escaped)


# ---------------------------------------------------------------------------------------------
# Frame index


@dataclass(frozen=True)
class _PixelElement:
    value_offset: int | None  # None when the file offset means nothing (deflated)
    length: int


def index_frames(path: Path) -> FrameIndex | None:
    """The frame index of an instance file, or None when it has no (float) pixel data."""
    with path.open("rb") as f:
        header, element = _read_header(f)
        if element is None:
            return None
        transfer_syntax = _transfer_syntax(header)
        number_of_frames = _number_of_frames(header)
        encapsulated = element.length == _UNDEFINED_LENGTH
        locatable = element.value_offset is not None and transfer_syntax != EXPLICIT_VR_BIG_ENDIAN
        frames: tuple[tuple[ByteRange, ...], ...] = ()
        if locatable and encapsulated:
            frames = _encapsulated_frames(f, header, element, number_of_frames)
        elif locatable:
            frames = _native_frames(header, element, number_of_frames, os.fstat(f.fileno()).st_size)
    return FrameIndex(
        transfer_syntax=transfer_syntax,
        encapsulated=encapsulated,
        frames=frames,
        number_of_frames=number_of_frames,
    )


def _read_header(f: BinaryIO) -> tuple[Dataset, _PixelElement | None]:
    """The dataset up to its top-level pixel data element, and where that element's value starts."""
    try:
        header = pydicom.dcmread(f, stop_before_pixels=True, force=True)
    except (ValueError, EOFError, OSError, struct.error) as exc:
        raise InvalidInput(f"unreadable DICOM header: {exc}") from exc
    if _transfer_syntax(header) == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        return header, _deflated_pixel_element(f)
    implicit, little = header.original_encoding
    if implicit is None or little is None:
        return header, None
    start = f.tell()
    head = f.read(12)
    if len(head) < 8:
        return header, None
    endian = "<" if little else ">"
    group, elem = struct.unpack(endian + "HH", head[:4])
    tag = group << 16 | elem
    if tag not in PIXEL_DATA_TAGS:
        return header, None
    vr_bytes = head[4:6]
    if not implicit and vr_bytes.isalpha() and vr_bytes.isupper():
        if vr_bytes in _LONG_LENGTH_VRS:
            header_length, length = 12, struct.unpack(endian + "L", head[8:12])[0]
        else:
            header_length, length = 8, struct.unpack(endian + "H", head[6:8])[0]
    else:
        header_length, length = 8, struct.unpack(endian + "L", head[4:8])[0]
    return header, _PixelElement(value_offset=start + header_length, length=length)


def _deflated_pixel_element(f: BinaryIO) -> _PixelElement | None:
    """A deflated file's offsets are in the inflated stream: only presence and length can be known."""
    f.seek(0)
    ds = pydicom.dcmread(f, force=True)
    tag = next((t for t in sorted(PIXEL_DATA_TAGS) if t in ds), None)
    if tag is None:
        return None
    element = ds[tag]
    length = _UNDEFINED_LENGTH if element.is_undefined_length else len(element.value)
    return _PixelElement(value_offset=None, length=length)


def _transfer_syntax(header: Dataset) -> str:
    meta = getattr(header, "file_meta", None)
    declared = meta.get("TransferSyntaxUID") if meta is not None else None
    if declared:
        return str(declared)
    implicit, little = header.original_encoding
    if implicit:
        return IMPLICIT_VR_LITTLE_ENDIAN
    return EXPLICIT_VR_LITTLE_ENDIAN if little else EXPLICIT_VR_BIG_ENDIAN


def _optional_int(value: object) -> int | None:
    try:
        return int(str(value)) if value is not None and str(value).strip() else None
    except ValueError:
        return None


def _number_of_frames(header: Dataset) -> int:
    number = _optional_int(header.get("NumberOfFrames"))
    return number if number is not None and number > 0 else 1


def _frame_bits(header: Dataset) -> int:
    """Bits in one native frame: 0 when the Image Pixel module does not say."""
    rows = _optional_int(header.get("Rows")) or 0
    columns = _optional_int(header.get("Columns")) or 0
    samples = _optional_int(header.get("SamplesPerPixel")) or 1
    bits = _optional_int(header.get("BitsAllocated")) or 0
    total = rows * columns * samples * bits
    if header.get("PhotometricInterpretation") == "YBR_FULL_422":
        total = total // 3 * 2  # native YBR_FULL_422 stores two chroma samples per two pixels
    return total


def _native_frames(
    header: Dataset, element: _PixelElement, count: int, file_size: int
) -> tuple[tuple[ByteRange, ...], ...]:
    bits = _frame_bits(header)
    if bits == 0 or bits % 8 or element.value_offset is None:
        return ()  # bit-packed frames that do not start on a byte boundary
    length = bits // 8
    if count * length > min(element.length, file_size - element.value_offset):
        return ()  # truncated: let pydicom say what it can make of it
    return tuple(((element.value_offset + i * length, length),) for i in range(count))


def _read_items(f: BinaryIO, offset: int) -> Iterator[tuple[int, int, int]]:
    """(tag, value offset, length) of each item of an encapsulated value, up to the delimiter."""
    while True:
        f.seek(offset)
        raw = f.read(8)
        if len(raw) < 8:
            return
        group, elem, length = struct.unpack("<HHL", raw)
        tag = group << 16 | elem
        if tag == _SEQUENCE_DELIMITER:
            return
        yield tag, offset + 8, length
        if tag != _ITEM or length == _UNDEFINED_LENGTH:
            return
        offset += 8 + length


def _encapsulated_frames(
    f: BinaryIO, header: Dataset, element: _PixelElement, count: int
) -> tuple[tuple[ByteRange, ...], ...]:
    """Frame boundaries as pydicom's `generate_fragmented_frames` finds them, as file ranges."""
    assert element.value_offset is not None
    items = list(_read_items(f, element.value_offset))
    if not items or any(tag != _ITEM or length == _UNDEFINED_LENGTH for tag, _, length in items):
        return ()
    _, bot_offset, bot_length = items[0]
    fragments = [(offset, length) for _, offset, length in items[1:]]
    if not fragments or bot_length % 4:
        return ()
    first_item = fragments[0][0] - 8
    f.seek(bot_offset)
    basic_offsets = list(struct.unpack(f"<{bot_length // 4}L", f.read(bot_length)))
    extended = _extended_offsets(header)

    frames: list[tuple[ByteRange, ...]]
    if extended:
        frames = [((first_item + offset + 8, length),) for offset, length in zip(*extended, strict=True)]
    elif basic_offsets:
        grouped: list[list[ByteRange]] = [[] for _ in basic_offsets]
        for offset, length in fragments:
            frame = bisect.bisect_right(basic_offsets, offset - 8 - first_item) - 1
            if frame < 0:
                return ()
            grouped[frame].append((offset, length))
        frames = [tuple(group) for group in grouped]
    elif len(fragments) == 1 or len(fragments) == count:
        frames = [(fragment,) for fragment in fragments]
    elif count == 1:
        frames = [tuple(fragments)]
    else:
        frames = _split_on_end_markers(f, fragments)
    if len(frames) != count or any(not frame for frame in frames):
        return ()
    return tuple(frames)


def _extended_offsets(header: Dataset) -> tuple[list[int], list[int]] | None:
    offsets, lengths = header.get(_EXTENDED_OFFSET_TABLE), header.get(_EXTENDED_OFFSET_TABLE_LENGTHS)
    if offsets is None or lengths is None or not offsets.value or not lengths.value:
        return None
    raw_offsets, raw_lengths = bytes(offsets.value), bytes(lengths.value)
    if len(raw_offsets) != len(raw_lengths) or len(raw_offsets) % 8:
        return None
    n = len(raw_offsets) // 8
    return list(struct.unpack(f"<{n}Q", raw_offsets)), list(struct.unpack(f"<{n}Q", raw_lengths))


def _split_on_end_markers(f: BinaryIO, fragments: list[ByteRange]) -> list[tuple[ByteRange, ...]]:
    """More fragments than frames and no offset table: a frame ends with the fragment whose last
    bytes hold a JPEG EOI / JPEG 2000 EOC marker (pydicom's rule)."""
    frames: list[tuple[ByteRange, ...]] = []
    current: list[ByteRange] = []
    for offset, length in fragments:
        current.append((offset, length))
        tail = min(length, 10)
        f.seek(offset + length - tail)
        if _JPEG_END_MARKER in f.read(tail):
            frames.append(tuple(current))
            current = []
    if current:
        frames.append(tuple(current))
    return frames


# ---------------------------------------------------------------------------------------------
# Reading frames and bulk data


def read_frames(path: Path, index: FrameIndex, numbers: Sequence[int]) -> list[bytes]:
    """The frames (1-based numbers) in their stored transfer syntax, native ones as little endian.

    Indexed frames cost one `pread` per range. Native frames the index could not locate are cut
    from the whole value as pydicom reads it (inflated, byte-swapped, or bit-realigned); encapsulated
    frames the index could not bound are refused, as pydicom could not bound them either.
    """
    for number in numbers:
        if not 1 <= number <= index.number_of_frames:
            raise NotFound(f"frame {number} is out of range 1-{index.number_of_frames}")
    if not index.frames:
        return _unindexed_frames(path, index, numbers)
    fd = os.open(path, os.O_RDONLY)
    try:
        return [b"".join(_pread(fd, offset, length) for offset, length in index.frames[n - 1]) for n in numbers]
    finally:
        os.close(fd)


def _pread(fd: int, offset: int, length: int) -> bytes:
    data = os.pread(fd, length, offset)
    while len(data) < length:
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            raise StorageFailure(f"instance file is shorter than its frame index ({offset}+{length})")
        data += more
    return data


def _unindexed_frames(path: Path, index: FrameIndex, numbers: Sequence[int]) -> list[bytes]:
    if index.encapsulated:
        # The index follows pydicom's own rules, so pydicom would not find these frames either.
        raise NotAcceptable("the frame boundaries of the encapsulated pixel data are ambiguous")
    ds = _read_full(path)
    element = next((ds[tag] for tag in sorted(PIXEL_DATA_TAGS) if tag in ds), None)
    if element is None:
        raise NotFound("instance has no pixel data")
    value = bytes(element.value)
    if index.transfer_syntax == EXPLICIT_VR_BIG_ENDIAN:
        value = _to_little_endian(value, _swap_width(element.VR, _optional_int(ds.get("BitsAllocated"))))
    bits = _frame_bits(ds)
    if bits == 0:
        raise NotAcceptable("the Image Pixel module does not give the size of a frame")
    if len(value) * 8 < bits * index.number_of_frames:
        raise NotAcceptable("native pixel data is shorter than its frames")
    if bits % 8 == 0:
        length = bits // 8
        return [value[(n - 1) * length : n * length] for n in numbers]
    # Bit-packed frames not on byte boundaries: cut each frame's bits and pack them from bit 0.
    unpacked = np.unpackbits(np.frombuffer(value, dtype=np.uint8), bitorder="little")
    return [np.packbits(unpacked[(n - 1) * bits : n * bits], bitorder="little").tobytes() for n in numbers]


def _swap_width(vr: str | None, bits_allocated: int | None) -> int:
    """Bytes per value to reverse in big endian pixel data: the pixel cell, or the OW word for 8-bit data."""
    return max((bits_allocated or 0) // 8, 2 if vr == "OW" else 1)


def _to_little_endian(value: bytes, width: int) -> bytes:
    if width <= 1:
        return value
    usable = len(value) - len(value) % width
    swapped = np.frombuffer(value[:usable], dtype=np.uint8).reshape(-1, width)[:, ::-1].tobytes()
    return swapped + value[usable:]


def read_bulkdata(path: Path, tag_path: str) -> bytes:
    """The value bytes of the element at `tag_path`, as its InlineBinary would carry them.

    Pixel Data gives its whole value: native frames back to back, or the encapsulated items.
    """
    return bulk_value(_read_full(path), tag_path)[1]


def _read_full(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path, force=True)
    except (ValueError, EOFError, struct.error) as exc:
        raise InvalidInput(f"unreadable DICOM file: {exc}") from exc
    except OSError as exc:
        raise NotFound(f"instance file cannot be read: {exc}") from exc
