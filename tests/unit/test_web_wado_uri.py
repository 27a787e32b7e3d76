"""WADO-URI (PS3.18 chapter 9): the URI form of one instance, as a DICOM file or a rendered image."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.uid import UID
from test_web_app import part10, stow_all

from bench.synthetic import ct_series, multiframe, new_uid
from dicomcloud.archive.core import Archive
from dicomcloud.archive.keys import original_key

pytest_plugins = ["test_web_app", "test_web_wado"]

EXPLICIT_LE = "1.2.840.10008.1.2.1"
RLE = "1.2.840.10008.1.2.5"


def params(ds: pydicom.Dataset, **extra: str) -> dict[str, str]:
    return {
        "requestType": "WADO",
        "studyUID": ds.StudyInstanceUID,
        "seriesUID": ds.SeriesInstanceUID,
        "objectUID": ds.SOPInstanceUID,
        **extra,
    }


def picture(data: bytes, fmt: str = "JPEG") -> Image.Image:
    decoded = Image.open(BytesIO(data))
    assert decoded.format == fmt
    return decoded


@pytest.fixture
def ct(series: list[pydicom.Dataset]) -> pydicom.Dataset:
    """A stored 32 x 32 CT image (test_web_wado's series)."""
    return series[0]


def test_application_dicom_is_the_stored_explicit_little_endian_file(
    client: TestClient, archive: Archive, ct: pydicom.Dataset
) -> None:
    response = client.get("/wado", params=params(ct, contentType="application/dicom"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom"  # PS3.18 forbids parameters here
    key = original_key("default", ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID)
    assert response.content == archive.runtime.storage.read(key)


def test_application_dicom_defaults_to_explicit_little_endian(client: TestClient, rle_mf: pydicom.Dataset) -> None:
    response = client.get("/wado", params=params(rle_mf, contentType="application/dicom"))
    assert response.status_code == 200
    served = pydicom.dcmread(BytesIO(response.content))
    assert served.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert np.array_equal(served.pixel_array, rle_mf.pixel_array)


def test_transfer_syntax_names_the_syntax_served(client: TestClient, ct: pydicom.Dataset) -> None:
    response = client.get("/wado", params=params(ct, contentType="application/dicom", transferSyntax=RLE))
    assert response.status_code == 200
    served = pydicom.dcmread(BytesIO(response.content))
    assert served.file_meta.TransferSyntaxUID == RLE
    assert np.array_equal(served.pixel_array, ct.pixel_array)
    mpeg2 = "1.2.840.10008.1.2.4.100"
    unmade = client.get("/wado", params=params(ct, contentType="application/dicom", transferSyntax=mpeg2))
    assert unmade.status_code == 406
    bad = client.get("/wado", params=params(ct, contentType="application/dicom", transferSyntax="1.2.x"))
    assert bad.status_code == 400


@pytest.mark.parametrize("accept", [None, "*/*", "text/html,application/xhtml+xml,*/*;q=0.8", "image/*"])
def test_an_image_is_a_jpeg_unless_asked_otherwise(client: TestClient, ct: pydicom.Dataset, accept: str | None) -> None:
    headers = {"Accept": accept} if accept else {}
    response = client.get("/wado", params=params(ct), headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert picture(response.content).size == (32, 32)


def test_content_type_chooses_among_what_is_offered(client: TestClient, ct: pydicom.Dataset) -> None:
    png = client.get("/wado", params=params(ct, contentType="video/mp4, image/png;q=0.5"))
    assert png.headers["content-type"] == "image/png"
    picture(png.content, "PNG")
    # The current edition's name for the parameter, and the Accept header when neither is given.
    assert client.get("/wado", params=params(ct, accept="image/png")).headers["content-type"] == "image/png"
    by_header = client.get("/wado", params=params(ct), headers={"Accept": "application/dicom"})
    assert by_header.headers["content-type"] == "application/dicom"
    assert client.get("/wado", params=params(ct, contentType="video/mp4")).status_code == 406
    refused_jpeg = client.get("/wado", params=params(ct, contentType="image/jpeg;q=0, image/*"))
    assert refused_jpeg.headers["content-type"] == "image/png"


def test_frame_number_picks_the_frame(client: TestClient, tmp_path: Path) -> None:
    ds = multiframe(3, rows=16, columns=16)
    arr = ds.pixel_array.copy()
    ramp = np.arange(16 * 16, dtype=arr.dtype).reshape(16, 16)
    arr[0], arr[2] = ramp, ramp[::-1]  # the same values, the image upside down
    ds.PixelData = arr.tobytes()
    stow_all(client, [ds], tmp_path)
    def frame(**extra: str) -> np.ndarray:
        response = client.get("/wado", params=params(ds, contentType="image/png", **extra))
        return np.asarray(picture(response.content, "PNG"))

    assert np.array_equal(frame(), frame(frameNumber="1"))
    assert np.array_equal(frame(frameNumber="3"), frame()[::-1])
    for frame in ("0", "4", "x", "1.5"):
        assert client.get("/wado", params=params(ds, frameNumber=frame)).status_code == 400, frame


def test_rows_columns_and_region_shape_the_image(client: TestClient, ct: pydicom.Dataset) -> None:
    def size(**extra: str) -> tuple[int, int]:
        response = client.get("/wado", params=params(ct, **extra))
        assert response.status_code == 200, response.text
        return picture(response.content).size

    assert size(rows="16", columns="16") == (16, 16)
    assert size(columns="8") == (8, 8)  # one bound alone keeps the aspect ratio
    assert size(rows="64", columns="16") == (16, 16)  # both are maxima
    assert size(region="0,0,0.5,0.25") == (16, 8)  # a region of 16 x 8 pixels, at its own size
    assert size(region="0.5,0.5,1,1", columns="64") == (64, 64)
    regions = ("0,0,1", "0.5,0,0.2,1", "0,0,1.5,1")
    for bad in [*({"region": region} for region in regions), {"rows": "0"}, {"columns": "x"}]:
        assert client.get("/wado", params=params(ct, **bad)).status_code == 400, bad


def test_window_center_and_width_change_the_image(client: TestClient, ct: pydicom.Dataset) -> None:
    plain = client.get("/wado", params=params(ct, contentType="image/png")).content
    windowed = client.get("/wado", params=params(ct, contentType="image/png", windowCenter="10", windowWidth="20"))
    assert windowed.status_code == 200
    assert windowed.content != plain
    assert client.get("/wado", params=params(ct, windowCenter="10")).status_code == 400
    assert client.get("/wado", params=params(ct, windowCenter="10", windowWidth="wide")).status_code == 400
    assert client.get("/wado", params=params(ct, imageQuality="50")).status_code == 200
    assert client.get("/wado", params=params(ct, imageQuality="0")).status_code == 400


def test_rendering_parameters_do_not_go_with_application_dicom(client: TestClient, ct: pydicom.Dataset) -> None:
    for extra in ({"rows": "16"}, {"frameNumber": "1"}, {"windowCenter": "1", "windowWidth": "2"}):
        response = client.get("/wado", params=params(ct, contentType="application/dicom", **extra))
        assert response.status_code == 400, extra
    assert client.get("/wado", params=params(ct, transferSyntax=EXPLICIT_LE)).status_code == 400  # an image


@pytest.mark.parametrize(
    "change",
    [
        {"requestType": "WADO-RS"},
        {"objectUID": ""},
        {"studyUID": "1.2.bad"},
        {"anonymize": "yes"},
        {"presentationUID": "1.2.3"},
    ],
)
def test_requests_the_archive_cannot_answer_rightly_are_400(
    client: TestClient, ct: pydicom.Dataset, change: dict[str, str]
) -> None:
    assert client.get("/wado", params=params(ct, **change)).status_code == 400


def test_an_unknown_instance_is_404_and_annotation_a_warning(client: TestClient, ct: pydicom.Dataset) -> None:
    assert client.get("/wado", params=params(ct, objectUID="1.2.3.4.5")).status_code == 404
    annotated = client.get("/wado", params=params(ct, annotation="patient"))
    assert annotated.status_code == 200
    assert annotated.headers["warning"].startswith("299 ")


def test_an_instance_without_pixels_is_application_dicom_by_default(client: TestClient, tmp_path: Path) -> None:
    ds = next(ct_series(1, rows=8, columns=8))
    for keyword in ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                    "SamplesPerPixel", "PhotometricInterpretation"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.88.11")  # Basic Text SR
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(new_uid())
    raw = part10(ds, tmp_path)
    stow_all(client, [ds], tmp_path)
    response = client.get("/wado", params=params(ds))
    assert response.headers["content-type"] == "application/dicom"
    assert response.content == raw
    assert client.get("/wado", params=params(ds, contentType="image/jpeg")).status_code == 406


def test_a_tenant_has_its_own_wado(client: TestClient, tmp_path: Path) -> None:
    ds = next(ct_series(1, rows=8, columns=8))
    stow_all(client, [ds], tmp_path, tenant="clinic-b")
    assert client.get("/clinic-b/wado", params=params(ds, contentType="application/dicom")).status_code == 200
    assert client.get("/wado", params=params(ds, contentType="application/dicom")).status_code == 404
