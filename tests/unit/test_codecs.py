"""Frame decoding against pydicom's pixel_array, and the PS3.18 media types of frames (TransferSyntax)."""

from __future__ import annotations

import warnings
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels.utils import pack_bits
from pydicom.uid import UID

from dicomcloud.dicom.codecs import decode_frame
from dicomcloud.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN, TransferSyntax
from dicomcloud.errors import CannotConvert, NotFound

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _read(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, force=True)


def _pixel_array(ds: Dataset) -> np.ndarray | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ds.pixel_array
    except Exception:  # pydicom's verdict is the oracle here, whatever it raises
        return None


PIXEL_FILES = [p for p in sorted(TEST_FILES.glob("*.dcm")) if any(t in _read(p) for t in PIXEL_TAGS)]
DECODABLE = [p for p in PIXEL_FILES if _pixel_array(_read(p)) is not None]
UNDECODABLE = [p for p in PIXEL_FILES if p not in DECODABLE]


def _decode(path: Path, number: int) -> bytes:
    with path.open("rb") as stream:
        return decode_frame(stream, number)


def _expected_frames(ds: Dataset) -> list[bytes]:
    arr = _pixel_array(ds)
    assert arr is not None
    frames = arr if int(ds.get("NumberOfFrames") or 1) > 1 else arr[np.newaxis]
    if ds.BitsAllocated == 1:
        return [pack_bits(frame, pad=False) for frame in frames]
    return [np.ascontiguousarray(frame, dtype=frame.dtype.newbyteorder("<")).tobytes() for frame in frames]


@pytest.mark.parametrize("path", DECODABLE, ids=lambda p: p.name)
def test_decode_frame_equals_pydicom_pixel_array(path: Path) -> None:
    expected = _expected_frames(_read(path))
    with path.open("rb") as stream:
        assert [decode_frame(stream, n) for n in range(1, len(expected) + 1)] == expected


@pytest.mark.parametrize("path", UNDECODABLE, ids=lambda p: p.name)
def test_decode_frame_refuses_what_pydicom_cannot_decode(path: Path) -> None:
    with pytest.raises(CannotConvert):
        _decode(path, 1)


def test_undecodable_set_is_not_empty() -> None:
    assert {"JPEG-lossy.dcm", "MR_truncated.dcm"} <= {p.name for p in UNDECODABLE}


def test_decoded_ybr_full_422_is_full_resolution_rgb() -> None:
    path = TEST_FILES / "SC_ybr_full_422_uncompressed.dcm"
    ds = _read(path)
    frame = _decode(path, 1)
    assert len(frame) == ds.Rows * ds.Columns * 3
    assert len(ds.PixelData) == ds.Rows * ds.Columns * 2


def test_decoded_big_endian_frame_is_little_endian() -> None:
    assert _decode(TEST_FILES / "MR_small_bigendian.dcm", 1) == _decode(TEST_FILES / "MR_small.dcm", 1)


def test_decode_frame_out_of_range_is_not_found() -> None:
    with pytest.raises(NotFound, match="3"):
        _decode(TEST_FILES / "SC_rgb_rle_2frame.dcm", 3)


@pytest.mark.parametrize(
    ("syntax", "media_type"),
    [
        ("1.2.840.10008.1.2", "application/octet-stream"),
        ("1.2.840.10008.1.2.1", "application/octet-stream"),
        ("1.2.840.10008.1.2.2", "application/octet-stream"),
        ("1.2.840.10008.1.2.1.99", "application/octet-stream"),
        ("1.2.840.10008.1.2.1.98", "application/octet-stream"),
        ("1.2.840.10008.1.2.4.50", "image/jpeg"),
        ("1.2.840.10008.1.2.4.51", "image/jpeg"),
        ("1.2.840.10008.1.2.4.57", "image/jpeg"),
        ("1.2.840.10008.1.2.4.70", "image/jpeg"),
        ("1.2.840.10008.1.2.5", "image/dicom-rle"),
        ("1.2.840.10008.1.2.4.80", "image/jls"),
        ("1.2.840.10008.1.2.4.81", "image/jls"),
        ("1.2.840.10008.1.2.4.90", "image/jp2"),
        ("1.2.840.10008.1.2.4.91", "image/jp2"),
        ("1.2.840.10008.1.2.4.92", "image/jpx"),
        ("1.2.840.10008.1.2.4.201", "image/jphc"),
        ("1.2.840.10008.1.2.4.203", "image/jphc"),
        ("1.2.840.10008.1.2.4.110", "image/jxl"),
        ("1.2.840.10008.1.2.4.100", "video/mpeg"),
        ("1.2.840.10008.1.2.4.102", "video/mp4"),
        ("1.2.840.10008.1.2.4.107", "video/H265"),
    ],
)
def test_frame_media_type_follows_ps3_18(syntax: str, media_type: str) -> None:
    assert TransferSyntax(syntax).frame_media_type == media_type


def test_frame_media_type_of_an_unknown_syntax_is_none() -> None:
    assert TransferSyntax("1.2.3.4").frame_media_type is None


def test_native_frames_travel_as_explicit_little_endian() -> None:
    assert TransferSyntax("1.2.840.10008.1.2.2").frame_syntax == EXPLICIT_VR_LITTLE_ENDIAN
    assert TransferSyntax("1.2.840.10008.1.2").frame_syntax == EXPLICIT_VR_LITTLE_ENDIAN
    assert TransferSyntax("1.2.840.10008.1.2.1.99").frame_syntax == EXPLICIT_VR_LITTLE_ENDIAN
    assert TransferSyntax("1.2.840.10008.1.2.4.50").frame_syntax == "1.2.840.10008.1.2.4.50"


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.4.53", "1.2.840.10008.1.2.4.55"])
def test_a_retired_progressive_jpeg_frame_is_decoded(tmp_path: Path, syntax: str) -> None:
    gray = (np.add.outer(np.arange(32), np.arange(32)) * 4).astype(np.uint8)
    out = BytesIO()
    Image.fromarray(gray).save(out, "JPEG", progressive=True, quality=100)
    ds = pydicom.dcmread(TEST_FILES / "MR_small.dcm")
    ds.Rows = ds.Columns = 32
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([out.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    path = tmp_path / "progressive.dcm"
    ds.save_as(path, enforce_file_format=True)
    decoded = np.frombuffer(_decode(path, 1), np.uint8).reshape(32, 32)
    assert np.abs(decoded.astype(int) - gray).max() <= 2
