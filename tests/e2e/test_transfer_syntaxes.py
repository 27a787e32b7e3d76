"""Every syntax in, every common syntax out, against `dicomcloud up`: retired JPEG processes arrive over C-STORE,
come back as stored and render; an instance and a frame asked for in each syntax the archive encodes come back in it,
decoding (with pydicom, the test's own decoder) to the original pixels, or within the documented tolerance."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import UID

from bench.synthetic import multiframe, write_part10
from dicomcloud.dicom.codecs import TRANSCODE_TARGETS
from dicomcloud.dicom.uids import OCTET_STREAM, TransferSyntax

from .conftest import Archive
from .dicom_clients import multipart_parts, pynetdicom_store, stow

pytestmark = pytest.mark.e2e

JPEG_SPECTRAL_SELECTION = "1.2.840.10008.1.2.4.53"  # processes 6 & 8, retired
JPEG_FULL_PROGRESSION = "1.2.840.10008.1.2.4.55"  # processes 10 & 12, retired
# The least PSNR (dB, 8-bit range) of each lossy target, as dicom/codecs.py documents.
MIN_PSNR = {
    "1.2.840.10008.1.2.4.50": 30.0,
    "1.2.840.10008.1.2.4.51": 30.0,
    "1.2.840.10008.1.2.4.81": 40.0,
    "1.2.840.10008.1.2.4.91": 40.0,
    "1.2.840.10008.1.2.4.203": 40.0,
}
FRAME_TARGETS = sorted(t for t in TRANSCODE_TARGETS if TransferSyntax(t).frame_media_type not in (None, OCTET_STREAM))


def pixels(ds: Dataset) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(ds.pixel_array)


def assert_close(original: np.ndarray, decoded: np.ndarray, syntax: str) -> None:
    assert original.shape == decoded.shape
    if syntax not in MIN_PSNR:
        assert np.array_equal(original, decoded)
        return
    mse = np.mean((original.astype(np.float64) - decoded.astype(np.float64)) ** 2)
    assert mse == 0 or 10 * np.log10(255.0**2 / mse) >= MIN_PSNR[syntax]


@pytest.fixture(scope="module")
def source(archive: Archive, tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """A two-frame 8-bit image every encoder takes, stored as Explicit VR Little Endian."""
    ds = multiframe(2, rows=64, columns=64)
    path = tmp_path_factory.mktemp("syntaxes") / "source.dcm"
    write_part10(ds, path)
    assert stow(archive.dicomweb_url(), [path.read_bytes()]).status_code == 200
    return pydicom.dcmread(path)


def instance_url(archive: Archive, ds: Dataset) -> str:
    return (
        f"{archive.dicomweb_url()}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


@pytest.mark.parametrize("syntax", sorted(TRANSCODE_TARGETS))
def test_an_instance_asked_for_in_a_syntax_comes_back_in_it(archive: Archive, source: Dataset, syntax: str) -> None:
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={syntax}'
    response = httpx.get(instance_url(archive, source), headers={"Accept": accept}, timeout=60)
    assert response.status_code == 200, response.text
    (part,) = multipart_parts(response)
    served = pydicom.dcmread(io.BytesIO(part))
    assert served.file_meta.TransferSyntaxUID == syntax
    assert served.SOPInstanceUID == source.SOPInstanceUID
    assert_close(pixels(source), pixels(served), syntax)
    if syntax in MIN_PSNR:
        assert served.LossyImageCompression == "01" and served.LossyImageCompressionMethod


@pytest.mark.parametrize("syntax", FRAME_TARGETS)
def test_a_frame_asked_for_in_a_syntax_comes_back_in_it(archive: Archive, source: Dataset, syntax: str) -> None:
    media_type = TransferSyntax(syntax).frame_media_type
    accept = f'multipart/related; type="{media_type}"; transfer-syntax={syntax}'
    response = httpx.get(f"{instance_url(archive, source)}/frames/2", headers={"Accept": accept}, timeout=60)
    assert response.status_code == 200, response.text
    (bitstream,) = multipart_parts(response)
    one_frame = Dataset()
    for keyword in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored", "HighBit",
                    "PixelRepresentation", "PhotometricInterpretation"):
        setattr(one_frame, keyword, source.get(keyword))
    one_frame.file_meta = FileMetaDataset()
    one_frame.file_meta.TransferSyntaxUID = UID(syntax)
    one_frame.PixelData = encapsulate([bitstream])
    assert_close(pixels(source)[1], pixels(one_frame), syntax)


@pytest.mark.parametrize(
    ("media_type", "default_syntax"),
    [("image/jpeg", "1.2.840.10008.1.2.4.70"), ("image/jphc", "1.2.840.10008.1.2.4.201")],
)
def test_a_frame_asked_for_by_media_type_alone_comes_in_its_default_syntax(
    archive: Archive, source: Dataset, media_type: str, default_syntax: str
) -> None:
    accept = f'multipart/related; type="{media_type}"'
    response = httpx.get(f"{instance_url(archive, source)}/frames/1", headers={"Accept": accept}, timeout=60)
    assert response.status_code == 200, response.text
    part_head = response.content.split(b"\r\n\r\n", 1)[0].decode().lower()  # the first part's headers
    assert f"transfer-syntax={default_syntax}" in part_head.replace('"', "")


def progressive_jpeg_object(syntax: str, folder: Path) -> tuple[Path, np.ndarray]:
    """An 8-bit image whose frame is a progressive JPEG bitstream, labelled with a retired process's syntax, and
    the pixels it was made from."""
    ds = multiframe(1, rows=64, columns=64)
    del ds.NumberOfFrames, ds.FrameIncrementPointer, ds.FrameTime
    gray = pixels(ds)
    out = io.BytesIO()
    Image.fromarray(gray).save(out, "JPEG", progressive=True, quality=95)
    ds.PixelData = encapsulate([out.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    path = folder / f"{syntax}.dcm"
    write_part10(ds, path)
    return path, gray


@pytest.mark.parametrize("syntax", [JPEG_SPECTRAL_SELECTION, JPEG_FULL_PROGRESSION])
def test_a_retired_jpeg_process_is_stored_over_c_store_and_served_as_stored(
    archive: Archive, tmp_path: Path, syntax: str
) -> None:
    path, gray = progressive_jpeg_object(syntax, tmp_path)
    assert pynetdicom_store(archive.dimse_port, "DICOMCLOUD", [path]) == [0]
    original = pydicom.dcmread(path)
    url = instance_url(archive, original)
    response = httpx.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'}, timeout=60)
    assert response.status_code == 200
    (part,) = multipart_parts(response)
    served = pydicom.dcmread(io.BytesIO(part))
    assert served.file_meta.TransferSyntaxUID == syntax
    assert served.PixelData == original.PixelData
    frame = httpx.get(f"{url}/frames/1", headers={"Accept": 'multipart/related; type="image/jpeg"'}, timeout=60)
    assert frame.status_code == 200, frame.text
    assert multipart_parts(frame) == [next(generate_frames(original.PixelData, number_of_frames=1))]
    rendered = httpx.get(f"{url}/rendered", headers={"Accept": "image/png"}, timeout=60)
    assert rendered.status_code == 200
    shown = np.asarray(Image.open(io.BytesIO(rendered.content)), np.float64)
    assert np.corrcoef(shown.ravel(), gray.ravel())[0, 1] > 0.99  # the image, windowed to its value range
