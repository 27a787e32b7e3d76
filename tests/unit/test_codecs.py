"""Frame decoding against pydicom's pixel_array, and the PS3.18 media types of frames."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicomcloud.dicom.codecs import decode_frame, frame_media_type, frame_transfer_syntax
from dicomcloud.errors import NotAcceptable, NotFound

TEST_FILES = Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent
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


def _expected_frames(ds: Dataset) -> list[bytes]:
    arr = _pixel_array(ds)
    assert arr is not None
    frames = arr if int(ds.get("NumberOfFrames") or 1) > 1 else arr[np.newaxis]
    if ds.BitsAllocated == 1:
        return [pydicom.pixels.pack_bits(frame, pad=False) for frame in frames]
    return [np.ascontiguousarray(frame, dtype=frame.dtype.newbyteorder("<")).tobytes() for frame in frames]


@pytest.mark.parametrize("path", DECODABLE, ids=lambda p: p.name)
def test_decode_frame_equals_pydicom_pixel_array(path: Path) -> None:
    expected = _expected_frames(_read(path))
    assert [decode_frame(path, n) for n in range(1, len(expected) + 1)] == expected


@pytest.mark.parametrize("path", UNDECODABLE, ids=lambda p: p.name)
def test_decode_frame_refuses_what_pydicom_cannot_decode(path: Path) -> None:
    with pytest.raises(NotAcceptable):
        decode_frame(path, 1)


def test_undecodable_set_is_not_empty() -> None:
    assert {"JPEG-lossy.dcm", "MR_truncated.dcm"} <= {p.name for p in UNDECODABLE}


def test_decoded_ybr_full_422_is_full_resolution_rgb() -> None:
    path = TEST_FILES / "SC_ybr_full_422_uncompressed.dcm"
    ds = _read(path)
    frame = decode_frame(path, 1)
    assert len(frame) == ds.Rows * ds.Columns * 3
    assert len(ds.PixelData) == ds.Rows * ds.Columns * 2


def test_decoded_big_endian_frame_is_little_endian() -> None:
    assert decode_frame(TEST_FILES / "MR_small_bigendian.dcm", 1) == decode_frame(TEST_FILES / "MR_small.dcm", 1)


def test_decode_frame_out_of_range_is_not_found() -> None:
    with pytest.raises(NotFound, match="3"):
        decode_frame(TEST_FILES / "SC_rgb_rle_2frame.dcm", 3)


@pytest.mark.parametrize(
    ("syntax", "media_type"),
    [
        ("1.2.840.10008.1.2", "application/octet-stream"),
        ("1.2.840.10008.1.2.1", "application/octet-stream"),
        ("1.2.840.10008.1.2.2", "application/octet-stream"),
        ("1.2.840.10008.1.2.1.99", "application/octet-stream"),
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
    assert frame_media_type(syntax) == media_type


def test_frame_media_type_refuses_an_unknown_syntax() -> None:
    with pytest.raises(NotAcceptable):
        frame_media_type("1.2.3.4")


def test_native_frames_travel_as_explicit_little_endian() -> None:
    assert frame_transfer_syntax("1.2.840.10008.1.2.2") == "1.2.840.10008.1.2.1"
    assert frame_transfer_syntax("1.2.840.10008.1.2") == "1.2.840.10008.1.2.1"
    assert frame_transfer_syntax("1.2.840.10008.1.2.4.50") == "1.2.840.10008.1.2.4.50"
