"""The series metadata document and its frame index, checked against pydicom on its own test files."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.pixels import pack_bits
from pydicom.pixels.utils import get_expected_length
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from dicomcloud.dicom.seriesdoc import (
    BASE_PLACEHOLDER,
    FrameIndex,
    SeriesDocument,
    index_frames,
    index_instance,
    read_bulkdata,
    read_frames,
)
from dicomcloud.errors import InvalidInput, NotAcceptable, NotFound

TEST_FILES = Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent
PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
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
    index = index_frames(path)
    assert index is not None
    return read_frames(path, index, range(1, index.number_of_frames + 1))


def _write(tmp_path: Path, ds: Dataset, name: str, transfer_syntax: str) -> Path:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
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


@pytest.mark.parametrize("path", LITTLE_ENDIAN_DECODABLE, ids=lambda p: p.name)
def test_read_frames_equal_pydicom_frames(path: Path) -> None:
    assert _all_frames(path) == _pydicom_frames(_read(path))


@pytest.mark.parametrize("path", LITTLE_ENDIAN_DECODABLE, ids=lambda p: p.name)
def test_frames_are_located_by_offset_unless_deflated(path: Path) -> None:
    index = index_frames(path)
    assert index is not None
    assert bool(index.frames) == (index.transfer_syntax != DEFLATED)
    assert len(index.frames) in (0, index.number_of_frames)


@pytest.mark.parametrize(("big", "little"), BIG_ENDIAN_TWINS, ids=lambda name: name)
def test_big_endian_frames_are_served_little_endian(big: str, little: str) -> None:
    index = index_frames(TEST_FILES / big)
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
    index = index_frames(path)
    assert index is not None and all(len(ranges) == 3 for ranges in index.frames)
    assert _all_frames(path) == frames


def test_extended_offset_table_locates_frames(tmp_path: Path) -> None:
    _, frames = _jpeg_frames()
    pixel_data, offsets, lengths = encapsulate_extended(frames)
    path = _encapsulated_copy(
        tmp_path, "eot.dcm", pixel_data, ExtendedOffsetTable=offsets, ExtendedOffsetTableLengths=lengths
    )
    assert _all_frames(path) == frames


def test_fragments_without_offsets_split_on_jpeg_end_markers(tmp_path: Path) -> None:
    _, frames = _jpeg_frames()
    path = _encapsulated_copy(tmp_path, "eoi.dcm", encapsulate(frames, fragments_per_frame=2, has_bot=False))
    index = index_frames(path)
    assert index is not None and index.frames
    assert _all_frames(path) == frames == _pydicom_frames(_read(path))


def test_ambiguous_fragments_are_refused(tmp_path: Path) -> None:
    source = _read(TEST_FILES / "SC_rgb_rle_2frame.dcm")
    frames = list(generate_frames(source.PixelData, number_of_frames=2))
    source.PixelData = encapsulate(frames, fragments_per_frame=2, has_bot=False)
    path = tmp_path / "rle.dcm"
    source.save_as(path)
    index = index_frames(path)
    assert index is not None and index.transfer_syntax == RLELossless and index.frames == ()
    with pytest.raises(NotAcceptable):
        read_frames(path, index, [1])


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
    index = index_frames(path)
    assert index is not None and index.frames == ()
    assert _all_frames(path) == [pack_bits(frame, pad=False) for frame in bits]


def test_single_bit_frames_on_byte_boundaries_are_indexed(tmp_path: Path) -> None:
    bits = np.random.default_rng(8).integers(0, 2, size=(2, 4, 4), dtype=np.uint8)
    ds = _image(4, 4, 2, 1)
    ds.PixelData = pack_bits(bits)
    path = _write(tmp_path, ds, "bits.dcm", ExplicitVRLittleEndian)
    index = index_frames(path)
    assert index is not None and len(index.frames) == 2
    assert _all_frames(path) == [pack_bits(frame, pad=False) for frame in bits]


def test_frame_out_of_range_is_not_found_with_its_number() -> None:
    path = TEST_FILES / "SC_rgb_rle_2frame.dcm"
    index = index_frames(path)
    assert index is not None
    for number in (0, 3):
        with pytest.raises(NotFound, match=str(number)):
            read_frames(path, index, [1, number])


def test_no_frame_index_without_pixel_data() -> None:
    assert index_frames(TEST_FILES / "rtplan.dcm") is None


# --- bulk data --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["CT_small.dcm", "SC_rgb_rle_2frame.dcm", "image_dfl.dcm", "JPEG2000.dcm"])
def test_bulkdata_pixel_data_is_the_whole_value(name: str) -> None:
    assert read_bulkdata(TEST_FILES / name, "7FE00010") == _read(TEST_FILES / name).PixelData


def test_bulkdata_of_big_endian_pixel_data_is_little_endian() -> None:
    assert (
        read_bulkdata(TEST_FILES / "MR_small_bigendian.dcm", "7FE00010") == _read(TEST_FILES / "MR_small.dcm").PixelData
    )


def test_bulkdata_reads_other_elements() -> None:
    path = TEST_FILES / "examples_overlay.dcm"
    assert read_bulkdata(path, "60003000") == _read(path)[0x60003000].value


def test_bulkdata_inside_a_sequence(tmp_path: Path) -> None:
    ds = _image(2, 2, 1, 8)
    ds.PixelData = b"\x01\x02\x03\x04"
    icon = _image(2, 2, 1, 8)
    del icon.SOPClassUID, icon.SOPInstanceUID
    icon.PixelData = b"\x05\x06\x07\x08"
    ds.IconImageSequence = Sequence([icon])
    path = _write(tmp_path, ds, "icon.dcm", ExplicitVRLittleEndian)
    assert read_bulkdata(path, "00880200/0/7FE00010") == b"\x05\x06\x07\x08"


def test_bulkdata_of_a_missing_element_is_not_found() -> None:
    with pytest.raises(NotFound):
        read_bulkdata(TEST_FILES / "CT_small.dcm", "60003000")


# --- the document -----------------------------------------------------------------------------


def _series(tmp_path: Path, numbers: list[int | None]) -> tuple[SeriesDocument, list[str]]:
    """A series of CT_small copies with the given Instance Numbers, indexed into a document."""
    study_uid, series_uid = generate_uid(), generate_uid()
    entries = {}
    sops = []
    for i, number in enumerate(numbers):
        ds = _read(TEST_FILES / "CT_small.dcm")
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        if number is None:
            del ds.InstanceNumber
        else:
            ds.InstanceNumber = number
        path = tmp_path / f"{i}.dcm"
        ds.save_as(path)
        entry = index_instance(
            path,
            file_path=f"t/{i}.dcm",
            file_size=path.stat().st_size,
            sha256="0" * 64,
            study_uid=study_uid,
            series_uid=series_uid,
        )
        entries[entry.sop_instance_uid] = entry
        sops.append(entry.sop_instance_uid)
    doc = SeriesDocument("t1", study_uid, series_uid, version=3, instances=entries)
    return doc, sops


def test_document_round_trips_through_bytes(tmp_path: Path) -> None:
    doc, _ = _series(tmp_path, [2, 1])
    shutil.copy(TEST_FILES / "SC_rgb_rle_2frame.dcm", tmp_path / "rle.dcm")
    rle = index_instance(
        tmp_path / "rle.dcm",
        file_path="rle.dcm",
        file_size=1,
        sha256="1" * 64,
        study_uid=doc.study_instance_uid,
        series_uid=doc.series_instance_uid,
    )
    doc.instances[rle.sop_instance_uid] = rle
    again = SeriesDocument.from_bytes(doc.to_bytes())
    assert again == doc
    assert again.instances[rle.sop_instance_uid].frame_index == index_frames(tmp_path / "rle.dcm")


def test_metadata_body_orders_by_instance_number_and_substitutes_the_base(tmp_path: Path) -> None:
    doc, sops = _series(tmp_path, [3, None, 1, 2])
    base = "http://host:8080/t1/dicom-web"
    body = doc.metadata_body(base)
    assert BASE_PLACEHOLDER.encode() not in body
    objects = json.loads(body)
    assert [o.get("00200013", {}).get("Value", [None])[0] for o in objects] == [1, 2, 3, None]
    uri = objects[0]["7FE00010"]["BulkDataURI"]
    assert (
        uri == f"{base}/studies/{doc.study_instance_uid}/series/{doc.series_instance_uid}"
        f"/instances/{sops[2]}/bulkdata/7FE00010"
    )


def test_metadata_body_serves_each_base_from_one_document(tmp_path: Path) -> None:
    doc, _ = _series(tmp_path, [1])
    first = json.loads(doc.metadata_body("http://a/dicom-web"))
    second = json.loads(doc.metadata_body('http://b/"x"/dicom-web/'))
    assert first[0]["7FE00010"]["BulkDataURI"].startswith("http://a/dicom-web/studies/")
    assert second[0]["7FE00010"]["BulkDataURI"].startswith('http://b/"x"/dicom-web/studies/')


def test_instance_metadata_body_is_an_array_of_one(tmp_path: Path) -> None:
    doc, sops = _series(tmp_path, [1, 2])
    objects = json.loads(doc.instance_metadata_body(sops[1], "http://h/dicom-web"))
    assert len(objects) == 1 and objects[0]["00080018"]["Value"] == [sops[1]]
    with pytest.raises(NotFound):
        doc.instance_metadata_body("1.2.3", "http://h/dicom-web")


def test_index_instance_keeps_file_facts_and_frame_index(tmp_path: Path) -> None:
    path = tmp_path / "rt.dcm"
    shutil.copy(TEST_FILES / "rtdose.dcm", path)
    entry = index_instance(path, file_path="a/b.dcm", file_size=42, sha256="f" * 64, study_uid="1.2", series_uid="1.3")
    assert (entry.file_path, entry.file_size, entry.sha256) == ("a/b.dcm", 42, "f" * 64)
    assert entry.sop_instance_uid == _read(path).SOPInstanceUID
    assert entry.frame_index is not None and entry.frame_index.number_of_frames == 15


def test_from_bytes_refuses_a_malformed_document() -> None:
    for raw in (b"{", b"{}", b'{"format": 99}', b'{"format": 1, "instances": [{}]}'):
        with pytest.raises(InvalidInput):
            SeriesDocument.from_bytes(raw)


def test_frame_index_round_trips_through_its_dict() -> None:
    index = FrameIndex("1.2.840.10008.1.2.5", True, (((10, 4), (22, 6)), ((36, 8),)), 2)
    assert FrameIndex.from_dict(json.loads(json.dumps(index.to_dict()))) == index
