"""Transcoding each of pydicom's test files to each target this archive can encode."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.multival import MultiValue
from pydicom.uid import UID
from test_codecs import DECODABLE, TEST_FILES

from dicomcloud.dicom.codecs import (
    HTJ2K,
    HTJ2K_LOSSLESS,
    HTJ2K_LOSSLESS_RPCL,
    JPEG_2000,
    JPEG_2000_LOSSLESS,
    JPEG_BASELINE,
    JPEG_EXTENDED,
    JPEG_LS_NEAR_LOSSLESS,
    RLE_LOSSLESS,
    TRANSCODE_TARGETS,
    check_transcodable,
    encode_frame,
    transcode,
)
from dicomcloud.dicom.uids import DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN as DEFLATED
from dicomcloud.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN
from dicomcloud.errors import CannotConvert, InvalidInput

# The documented tolerances of the lossy targets (dicom/codecs.py): least PSNR relative to the Bits Stored range.
JPEG_LS_NEAR = 2
MIN_PSNR = {JPEG_2000: 40.0, HTJ2K: 40.0, JPEG_BASELINE: 30.0, JPEG_EXTENDED: 30.0}


def _pixels(ds: Dataset) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ds.pixel_array


def _read(data: bytes | Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data) if isinstance(data, bytes) else data, force=True)


def _transcode(path: Path, target: str) -> bytes:
    with path.open("rb") as stream:
        return transcode(stream, target)


def _encode_frame(path: Path, number: int, target: str) -> bytes:
    with path.open("rb") as stream:
        return encode_frame(stream, number, target)


def assert_within_tolerance(original: np.ndarray, converted: np.ndarray, target: str, bits_stored: int) -> None:
    assert original.shape == converted.shape
    if target == JPEG_LS_NEAR_LOSSLESS:
        assert np.abs(original.astype(np.int64) - converted.astype(np.int64)).max() <= JPEG_LS_NEAR
    elif target in MIN_PSNR:
        mse = np.mean((original.astype(np.float64) - converted.astype(np.float64)) ** 2)
        peak = float(2**bits_stored - 1)
        assert mse == 0 or 10 * np.log10(peak**2 / mse) >= MIN_PSNR[target]
    else:
        assert np.array_equal(original, converted)


@pytest.mark.parametrize("target", sorted(TRANSCODE_TARGETS))
@pytest.mark.parametrize("path", DECODABLE, ids=lambda p: p.name)
def test_transcoded_files_decode_to_the_original_pixels_or_are_refused_with_a_reason(path: Path, target: str) -> None:
    original = _read(path)
    before = path.read_bytes()
    try:
        converted = _read(_transcode(path, target))
    except (CannotConvert, InvalidInput) as exc:
        assert exc.message
        return
    finally:
        assert path.read_bytes() == before
    assert converted.file_meta.TransferSyntaxUID == target
    assert converted.SOPInstanceUID == original.SOPInstanceUID
    assert_within_tolerance(_pixels(original), _pixels(converted), target, int(original.BitsStored))


def test_every_decodable_file_decompresses_to_explicit_little_endian() -> None:
    for path in DECODABLE:
        assert (
            _read(_transcode(path, EXPLICIT_VR_LITTLE_ENDIAN)).file_meta.TransferSyntaxUID == EXPLICIT_VR_LITTLE_ENDIAN
        )


def test_lossless_targets_take_the_common_images() -> None:
    for name in ("CT_small.dcm", "MR_small_RLE.dcm", "SC_rgb_rle.dcm", "examples_palette.dcm"):
        for target in (RLE_LOSSLESS, JPEG_2000_LOSSLESS):
            converted = _read(_transcode(TEST_FILES / name, target))
            assert np.array_equal(_pixels(converted), _pixels(_read(TEST_FILES / name)))


def test_lossy_pixels_are_not_claimed_lossless() -> None:
    with pytest.raises(CannotConvert, match="lossy"):
        _transcode(TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm", JPEG_2000_LOSSLESS)
    with pytest.raises(CannotConvert, match="lossy"):
        check_transcodable(EXPLICIT_VR_LITTLE_ENDIAN, RLE_LOSSLESS, lossy_content=True)
    with pytest.raises(CannotConvert, match="lossy"):
        check_transcodable(JPEG_2000, JPEG_2000_LOSSLESS)
    check_transcodable(JPEG_2000, JPEG_2000)
    check_transcodable(JPEG_2000_LOSSLESS, RLE_LOSSLESS)


def test_lossy_pixels_may_be_decompressed() -> None:
    converted = _read(_transcode(TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm", EXPLICIT_VR_LITTLE_ENDIAN))
    assert converted.PhotometricInterpretation == "RGB"
    assert converted.LossyImageCompression == "01"


def test_a_target_without_encoder_cannot_be_converted() -> None:
    with pytest.raises(CannotConvert, match="no encoder"):
        _transcode(TEST_FILES / "CT_small.dcm", "1.2.840.10008.1.2.4.57")


def test_a_file_without_pixels_is_invalid_input() -> None:
    with pytest.raises(InvalidInput):
        _transcode(TEST_FILES / "nested_priv_SQ.dcm", EXPLICIT_VR_LITTLE_ENDIAN)


def _decode_bitstream(header: Dataset, bitstream: bytes, syntax: str) -> np.ndarray:
    """The frame as a one-frame dataset in `syntax` would give it."""
    ds = Dataset()
    for keyword in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored", "PixelRepresentation"):
        setattr(ds, keyword, header.get(keyword, 1 if keyword == "SamplesPerPixel" else 0))
    ds.HighBit = ds.BitsStored - 1
    photometric = header.PhotometricInterpretation
    ds.PhotometricInterpretation = "RGB" if photometric.startswith("YBR") else photometric
    if ds.SamplesPerPixel > 1:
        ds.PlanarConfiguration = 0
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.PixelData = encapsulate([bitstream])
    return _pixels(ds)


FRAME_FILES = [
    "CT_small.dcm",
    "MR_small_RLE.dcm",
    "SC_rgb_rle_2frame.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
    "MR_small_jp2klossless.dcm",
]


# The most Bits Stored of the lossy JPEG processes (baseline 8, extended 12).
JPEG_LOSSY_BITS = {JPEG_BASELINE: 8, JPEG_EXTENDED: 12}


@pytest.mark.parametrize("target", sorted(TRANSCODE_TARGETS - {EXPLICIT_VR_LITTLE_ENDIAN, DEFLATED}))
@pytest.mark.parametrize("name", FRAME_FILES)
def test_frames_encoded_in_each_syntax_decode_to_the_original_pixels(name: str, target: str) -> None:
    path = TEST_FILES / name
    original = _read(path)
    frames = int(original.get("NumberOfFrames") or 1)
    expected = _pixels(original) if frames > 1 else _pixels(original)[np.newaxis]
    if original.BitsStored > JPEG_LOSSY_BITS.get(target, 16):
        with pytest.raises(CannotConvert, match="exceed this JPEG process"):
            _encode_frame(path, 1, target)
        return
    for number in range(1, frames + 1):
        decoded = _decode_bitstream(original, _encode_frame(path, number, target), target)
        assert_within_tolerance(expected[number - 1], decoded, target, int(original.BitsStored))


@pytest.mark.parametrize("syntax", [EXPLICIT_VR_LITTLE_ENDIAN, DEFLATED])
def test_a_frame_in_an_uncompressed_syntax_is_the_decoded_frame(syntax: str) -> None:
    path = TEST_FILES / "MR_small_RLE.dcm"
    assert _encode_frame(path, 1, syntax) == _pixels(_read(path)).astype("<i2").tobytes()


def test_a_lossy_target_records_lossy_compression_as_ps3_3_asks() -> None:
    converted = _read(_transcode(TEST_FILES / "SC_rgb_rle.dcm", JPEG_BASELINE))
    assert converted.LossyImageCompression == "01"
    assert converted.LossyImageCompressionMethod == "ISO_10918_1"
    assert float(converted.LossyImageCompressionRatio) > 1
    assert converted.PhotometricInterpretation == "YBR_FULL_422"


def test_lossy_compression_again_appends_to_the_history() -> None:
    source = _read(TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm")
    converted = _read(_transcode(TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm", HTJ2K))
    before = source.get("LossyImageCompressionMethod")
    methods = [] if before is None else list(before) if isinstance(before, MultiValue) else [before]
    assert list(converted.LossyImageCompressionMethod) == [*methods, "ISO_15444_15"]
    assert converted.LossyImageCompression == "01"


def test_a_lossless_target_leaves_the_lossy_attributes_alone() -> None:
    converted = _read(_transcode(TEST_FILES / "CT_small.dcm", HTJ2K_LOSSLESS))
    assert "LossyImageCompressionMethod" not in converted
    assert converted.get("LossyImageCompression") in (None, "00")


def test_htj2k_rpcl_codestreams_have_rpcl_progression_and_a_tlm_marker() -> None:
    codestream = _encode_frame(TEST_FILES / "CT_small.dcm", 1, HTJ2K_LOSSLESS_RPCL)
    cod = codestream.index(b"\xff\x52")
    assert codestream[cod + 5] == 2  # SGcod progression order: RPCL (ISO 15444-1 Table A.16)
    assert b"\xff\x55" in codestream  # TLM
