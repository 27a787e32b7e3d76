"""The frame index of an instance and reading its frames and bulk data, checked against pydicom on its test files.

The index comes from parsing the object (`parse_instance(stream).entry.frame_index`); an indexed frame is
the file's bytes at the index's (offset, length) ranges, as the archive reads it from storage, and a frame
the index could not locate comes from `unindexed_frames`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.pixels.utils import get_expected_length, pack_bits
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from dicomcloud.dicom.frames import FrameIndex, check_frame_numbers, read_bulkdata, unindexed_frames
from dicomcloud.dicom.parse import parse_instance
from dicomcloud.dicom.uids import TransferSyntax
from dicomcloud.errors import CannotConvert, NotFound

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
IDENTITY = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"

# Big endian files and the little endian file with the same pixel values.
BIG_ENDIAN_TWINS = [
    ("MR_small_bigendian.dcm", "MR_small.dcm"),
    ("MR_small_expb.dcm", "MR_small.dcm"),
    ("rtdose_expb.dcm", "rtdose.dcm"),
    ("rtdose_expb_1frame.dcm", "rtdose_1frame.dcm"),
    ("SC_rgb_small_odd_big_endian.dcm", "SC_rgb_small_odd.dcm"),
    ("liver_expb_1frame.dcm", "liver_1frame.dcm"),
]


def _read(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, force=True)


def _decodable(ds: Dataset) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.pixel_array  # noqa: B018
    except Exception:  # pydicom's verdict is the oracle here, whatever it raises
        return False
    return True


def _syntax(ds: Dataset) -> str:
    return str(ds.file_meta.get("TransferSyntaxUID", ""))


def _pixel_files() -> list[Path]:
    return [p for p in sorted(TEST_FILES.glob("*.dcm")) if any(t in _read(p) for t in PIXEL_TAGS)]


DECODABLE = [p for p in _pixel_files() if _decodable(_read(p))]
LITTLE_ENDIAN_DECODABLE = [p for p in DECODABLE if _syntax(_read(p)) != BIG_ENDIAN]


def _with_identity(path: Path, tmp_path: Path) -> Path:
    """`path`, or a copy of it with the identity UIDs it lacks (an object without them is never stored);
    the copy keeps the transfer syntax and the encoded pixel data."""
    ds = _read(path)
    missing = [keyword for keyword in IDENTITY if not ds.get(keyword)]
    if not missing:
        return path
    for keyword in missing:
        setattr(ds, keyword, generate_uid())
    copy = tmp_path / path.name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(copy)
    return copy


def _frame_index(path: Path) -> FrameIndex | None:
    with path.open("rb") as stream:
        return parse_instance(stream).entry.frame_index


def _frames(path: Path, index: FrameIndex, numbers: Sequence[int]) -> list[bytes]:
    """Frames as the archive reads them: the indexed byte ranges of the file, else `unindexed_frames`."""
    if not index.frames:
        with path.open("rb") as stream:
            return unindexed_frames(stream, index, numbers)
    check_frame_numbers(index, numbers)
    data = path.read_bytes()
    return [b"".join(data[offset : offset + length] for offset, length in index.frames[n - 1]) for n in numbers]


def _pydicom_frames(ds: Dataset) -> list[bytes]:
    """The frames as pydicom sees them in the stored syntax."""
    n = int(ds.get("NumberOfFrames") or 1)
    if ds["PixelData"].is_undefined_length:
        extended = None
        if "ExtendedOffsetTable" in ds:
            extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
        return list(generate_frames(ds.PixelData, number_of_frames=n, extended_offsets=extended))[:n]
    length = get_expected_length(ds) // n
    return [ds.PixelData[i * length : (i + 1) * length] for i in range(n)]


def _all_frames(path: Path) -> list[bytes]:
    index = _frame_index(path)
    assert index is not None
    return _frames(path, index, range(1, index.number_of_frames + 1))


def _write(tmp_path: Path, ds: Dataset, name: str, transfer_syntax: str) -> Path:
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def _image(rows: int, columns: int, frames: int, bits: int, samples: int = 1) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    return ds


def _jpeg_frames() -> tuple[Dataset, list[bytes]]:
    source = _read(TEST_FILES / "examples_ybr_color.dcm")
    return source, list(generate_frames(source.PixelData, number_of_frames=source.NumberOfFrames))


def _encapsulated_copy(tmp_path: Path, name: str, pixel_data: bytes, **elements: bytes) -> Path:
    source, _ = _jpeg_frames()
    ds = _image(source.Rows, source.Columns, source.NumberOfFrames, 8, samples=3)
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PixelData = pixel_data
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return _write(tmp_path, ds, name, JPEGBaseline8Bit)


# --- frame index and frames -------------------------------------------------------------------


@pytest.mark.parametrize("source", LITTLE_ENDIAN_DECODABLE, ids=lambda p: p.name)
def test_read_frames_equal_pydicom_frames(source: Path, tmp_path: Path) -> None:
    path = _with_identity(source, tmp_path)
    assert _all_frames(path) == _pydicom_frames(_read(path))


@pytest.mark.parametrize("source", LITTLE_ENDIAN_DECODABLE, ids=lambda p: p.name)
def test_frames_are_located_by_offset_unless_deflated(source: Path, tmp_path: Path) -> None:
    index = _frame_index(_with_identity(source, tmp_path))
    assert index is not None
    assert bool(index.frames) == (index.transfer_syntax != DEFLATED)
    assert len(index.frames) in (0, index.number_of_frames)


@pytest.mark.parametrize(("big", "little"), BIG_ENDIAN_TWINS, ids=lambda name: name)
def test_big_endian_frames_are_served_little_endian(big: str, little: str) -> None:
    index = _frame_index(TEST_FILES / big)
    assert index is not None and index.frames == ()
    assert _all_frames(TEST_FILES / big) == _all_frames(TEST_FILES / little)


def test_multiframe_files_give_every_frame() -> None:
    for name, count in [
        ("examples_ybr_color.dcm", 30),
        ("rtdose.dcm", 15),
        ("rtdose_rle.dcm", 15),
        ("SC_rgb_rle_2frame.dcm", 2),
        ("SC_rgb_rle_32bit_2frame.dcm", 2),
    ]:
        frames = _all_frames(TEST_FILES / name)
        assert len(frames) == count
        assert len(set(frames)) > 1, name


def test_basic_offset_table_groups_fragments_into_frames(tmp_path: Path) -> None:
    _, frames = _jpeg_frames()
    path = _encapsulated_copy(tmp_path, "bot.dcm", encapsulate(frames, fragments_per_frame=3, has_bot=True))
    index = _frame_index(path)
    assert index is not None and index.frames and all(len(ranges) == 3 for ranges in index.frames)
    assert _all_frames(path) == frames


def test_extended_offset_table_locates_frames(tmp_path: Path) -> None:
    _, frames = _jpeg_frames()
    pixel_data, offsets, lengths = encapsulate_extended(frames)
    path = _encapsulated_copy(
        tmp_path, "eot.dcm", pixel_data, ExtendedOffsetTable=offsets, ExtendedOffsetTableLengths=lengths
    )
    index = _frame_index(path)
    assert index is not None and len(index.frames) == len(frames)
    assert _all_frames(path) == frames


def test_fragments_without_offsets_split_on_jpeg_end_markers(tmp_path: Path) -> None:
    _, frames = _jpeg_frames()
    path = _encapsulated_copy(tmp_path, "eoi.dcm", encapsulate(frames, fragments_per_frame=2, has_bot=False))
    index = _frame_index(path)
    assert index is not None and index.frames
    assert _all_frames(path) == frames == _pydicom_frames(_read(path))


def test_ambiguous_fragments_are_refused(tmp_path: Path) -> None:
    source = _read(TEST_FILES / "SC_rgb_rle_2frame.dcm")
    frames = list(generate_frames(source.PixelData, number_of_frames=2))
    source.PixelData = encapsulate(frames, fragments_per_frame=2, has_bot=False)
    path = tmp_path / "rle.dcm"
    source.save_as(path)
    index = _frame_index(path)
    assert index is not None and index.transfer_syntax == RLELossless and index.frames == ()
    with path.open("rb") as stream, pytest.raises(CannotConvert):
        unindexed_frames(stream, index, [1])


def test_float_pixel_data_frames(tmp_path: Path) -> None:
    ds = _image(4, 5, 3, 32)
    values = np.arange(60, dtype="<f4") / 7
    ds.FloatPixelData = values.tobytes()
    path = _write(tmp_path, ds, "float.dcm", ExplicitVRLittleEndian)
    assert _all_frames(path) == [values[i * 20 : (i + 1) * 20].tobytes() for i in range(3)]


def test_single_bit_frames_off_byte_boundaries_are_repacked(tmp_path: Path) -> None:
    bits = np.random.default_rng(7).integers(0, 2, size=(3, 3, 3), dtype=np.uint8)
    ds = _image(3, 3, 3, 1)
    ds.PixelData = pack_bits(bits)
    path = _write(tmp_path, ds, "bits.dcm", ExplicitVRLittleEndian)
    index = _frame_index(path)
    assert index is not None and index.frames == ()
    assert _all_frames(path) == [pack_bits(frame, pad=False) for frame in bits]


def test_single_bit_frames_on_byte_boundaries_are_indexed(tmp_path: Path) -> None:
    bits = np.random.default_rng(8).integers(0, 2, size=(2, 4, 4), dtype=np.uint8)
    ds = _image(4, 4, 2, 1)
    ds.PixelData = pack_bits(bits)
    path = _write(tmp_path, ds, "bits.dcm", ExplicitVRLittleEndian)
    index = _frame_index(path)
    assert index is not None and len(index.frames) == 2
    assert _all_frames(path) == [pack_bits(frame, pad=False) for frame in bits]


def test_frame_out_of_range_is_not_found_with_its_number() -> None:
    index = _frame_index(TEST_FILES / "SC_rgb_rle_2frame.dcm")
    assert index is not None and index.frames
    for number in (0, 3):
        with pytest.raises(NotFound, match=str(number)):
            check_frame_numbers(index, [1, number])


def test_unindexed_frame_out_of_range_is_not_found_with_its_number() -> None:
    path = TEST_FILES / "MR_small_bigendian.dcm"
    index = _frame_index(path)
    assert index is not None and index.frames == ()
    for number in (0, 2):
        with path.open("rb") as stream, pytest.raises(NotFound, match=str(number)):
            unindexed_frames(stream, index, [1, number])


def test_no_frame_index_without_pixel_data() -> None:
    assert _frame_index(TEST_FILES / "rtplan.dcm") is None


def test_frame_index_round_trips_through_its_dict() -> None:
    index = FrameIndex(TransferSyntax("1.2.840.10008.1.2.5"), True, (((10, 4), (22, 6)), ((36, 8),)), 2)
    again = FrameIndex.from_dict(json.loads(json.dumps(index.to_dict())))
    assert again == index
    assert isinstance(again.transfer_syntax, TransferSyntax)


# --- bulk data --------------------------------------------------------------------------------


def _bulkdata(path: Path, tag_path: str) -> bytes:
    with path.open("rb") as stream:
        return read_bulkdata(stream, tag_path)


@pytest.mark.parametrize("name", ["CT_small.dcm", "SC_rgb_rle_2frame.dcm", "image_dfl.dcm", "JPEG2000.dcm"])
def test_bulkdata_pixel_data_is_the_whole_value(name: str) -> None:
    assert _bulkdata(TEST_FILES / name, "7FE00010") == _read(TEST_FILES / name).PixelData


def test_bulkdata_of_big_endian_pixel_data_is_little_endian() -> None:
    assert _bulkdata(TEST_FILES / "MR_small_bigendian.dcm", "7FE00010") == _read(TEST_FILES / "MR_small.dcm").PixelData


def test_bulkdata_reads_other_elements() -> None:
    path = TEST_FILES / "examples_overlay.dcm"
    assert _bulkdata(path, "60003000") == _read(path)[0x60003000].value


def test_bulkdata_inside_a_sequence(tmp_path: Path) -> None:
    ds = _image(2, 2, 1, 8)
    ds.PixelData = b"\x01\x02\x03\x04"
    icon = _image(2, 2, 1, 8)
    del icon.SOPClassUID, icon.SOPInstanceUID
    icon.PixelData = b"\x05\x06\x07\x08"
    ds.IconImageSequence = DicomSequence([icon])
    path = _write(tmp_path, ds, "icon.dcm", ExplicitVRLittleEndian)
    assert _bulkdata(path, "00880200/0/7FE00010") == b"\x05\x06\x07\x08"


def test_bulkdata_of_a_missing_element_is_not_found() -> None:
    with pytest.raises(NotFound):
        _bulkdata(TEST_FILES / "CT_small.dcm", "60003000")
