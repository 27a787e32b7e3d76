"""The frame index, and reading frames and bulk data from an instance's bytes.

The frame index says where each frame lies in the stored object, so a frame is one ranged read
(`pread` on a file, a ranged GET on an object store) of what the archive's storage holds; ingest
computes it once, from the structure `dicom/parse.py` walked (where the top-level Pixel Data value
starts), and keeps it in the instance's metadata entry. Frames it cannot locate by offset (big endian
or deflated syntaxes, bit-packed frames, ambiguous fragments) are cut from the whole value as pydicom
reads it (`unindexed_frames`).
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from dicomcloud.dicom.dicomjson import bulk_value
from dicomcloud.dicom.uids import EXPLICIT_VR_BIG_ENDIAN, TransferSyntax
from dicomcloud.errors import CannotConvert, InvalidInput, NotFound

PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})  # Pixel, Float Pixel, Double Float Pixel
UNDEFINED_LENGTH = 0xFFFFFFFF
_EXTENDED_OFFSET_TABLE = 0x7FE00001
_EXTENDED_OFFSET_TABLE_LENGTHS = 0x7FE00002
_ITEM = 0xFFFEE000
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_JPEG_END_MARKER = b"\xff\xd9"  # JPEG EOI, JPEG 2000 EOC

ByteRange = tuple[int, int]


@dataclass(frozen=True)
class FrameIndex:
    """Where each frame of an instance lies in its file.

    `frames` holds, per frame, the (file offset, length) ranges that make it: one range for a native
    frame, the fragments of an encapsulated one. It is empty when frames cannot be located by offset
    (big endian or deflated syntax, bit-packed frames not byte aligned, encapsulated data whose frame
    boundaries are ambiguous); `unindexed_frames` then reads the whole value with pydicom.
    """

    transfer_syntax: TransferSyntax
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
            transfer_syntax=TransferSyntax(str(data["transfer_syntax"])),
            encapsulated=bool(data["encapsulated"]),
            number_of_frames=int(data["number_of_frames"]),
            frames=tuple(tuple((int(offset), int(length)) for offset, length in frame) for frame in data["frames"]),
        )


@dataclass(frozen=True)
class PixelElement:
    """Where the top-level pixel data value is: its offset in the stored bytes (None when the bytes are
    deflated, so offsets mean nothing) and its length (UNDEFINED_LENGTH when encapsulated)."""

    value_offset: int | None
    length: int


def index_frames(
    stream: BinaryIO, header: Dataset, element: PixelElement, size: int, transfer_syntax: TransferSyntax
) -> FrameIndex:
    """The frame index of an instance whose `size` bytes are `stream`, `header` its dataset as read."""
    number_of_frames = _number_of_frames(header)
    encapsulated = element.length == UNDEFINED_LENGTH
    locatable = element.value_offset is not None and transfer_syntax != EXPLICIT_VR_BIG_ENDIAN
    frames: tuple[tuple[ByteRange, ...], ...] = ()
    if locatable and encapsulated:
        frames = _encapsulated_frames(stream, header, element, number_of_frames)
    elif locatable:
        frames = _native_frames(header, element, number_of_frames, size)
    return FrameIndex(
        transfer_syntax=transfer_syntax,
        encapsulated=encapsulated,
        frames=frames,
        number_of_frames=number_of_frames,
    )


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
    header: Dataset, element: PixelElement, count: int, file_size: int
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
        if tag != _ITEM or length == UNDEFINED_LENGTH:
            return
        offset += 8 + length


def _encapsulated_frames(
    f: BinaryIO, header: Dataset, element: PixelElement, count: int
) -> tuple[tuple[ByteRange, ...], ...]:
    """Frame boundaries as pydicom's `generate_fragmented_frames` finds them, as file ranges."""
    assert element.value_offset is not None
    items = list(_read_items(f, element.value_offset))
    if not items or any(tag != _ITEM or length == UNDEFINED_LENGTH for tag, _, length in items):
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



def check_frame_numbers(index: FrameIndex, numbers: Sequence[int]) -> None:
    for number in numbers:
        if not 1 <= number <= index.number_of_frames:
            raise NotFound(f"frame {number} is out of range 1-{index.number_of_frames}")


def unindexed_frames(stream: BinaryIO, index: FrameIndex, numbers: Sequence[int]) -> list[bytes]:
    """Frames (1-based) the index could not locate, cut from the whole value as pydicom reads it
    (inflated, byte-swapped, or bit-realigned): native little endian bytes. Encapsulated frames the
    index could not bound are refused, as pydicom could not bound them either."""
    check_frame_numbers(index, numbers)
    if index.encapsulated:
        raise CannotConvert("the frame boundaries of the encapsulated pixel data are ambiguous")
    ds = read_full(stream)
    element = next((ds[tag] for tag in sorted(PIXEL_DATA_TAGS) if tag in ds), None)
    if element is None:
        raise NotFound("instance has no pixel data")
    value = bytes(element.value)
    if index.transfer_syntax == EXPLICIT_VR_BIG_ENDIAN:
        value = _to_little_endian(value, _swap_width(element.VR, _optional_int(ds.get("BitsAllocated"))))
    bits = _frame_bits(ds)
    if bits == 0:
        raise CannotConvert("the Image Pixel module does not give the size of a frame")
    if len(value) * 8 < bits * index.number_of_frames:
        raise CannotConvert("native pixel data is shorter than its frames")
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



def read_bulkdata(stream: BinaryIO, tag_path: str) -> bytes:
    """The value bytes of the element at `tag_path`, as its InlineBinary would carry them.

    Pixel Data gives its whole value: native frames back to back, or the encapsulated items.
    """
    return bulk_value(read_full(stream), tag_path)[1]


def read_full(stream: BinaryIO) -> Dataset:
    """The whole dataset of a stored instance."""
    stream.seek(0)
    try:
        return pydicom.dcmread(stream, force=True)
    except (ValueError, EOFError, struct.error, OSError) as exc:
        raise InvalidInput(f"unreadable DICOM object: {exc}") from exc
