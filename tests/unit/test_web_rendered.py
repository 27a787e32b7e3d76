"""WADO-RS rendered and thumbnail resources (PS3.18 10.4.1.1.3-4): JPEG/PNG, negotiation, packaging."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from numpy.typing import NDArray
from PIL import Image
from pydicom.data import get_testdata_file
from test_web_app import multipart_bodies, stow_all

from bench.synthetic import multiframe, new_uid

pytest_plugins = ["test_web_app"]


def instance_url(ds: pydicom.Dataset) -> str:
    return f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def series_url(ds: pydicom.Dataset) -> str:
    return f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"


def image(data: bytes, fmt: str) -> NDArray[np.uint8]:
    decoded = Image.open(BytesIO(data))
    assert decoded.format == fmt
    return np.asarray(decoded)


def pydicom_file(name: str, study: str, series: str) -> pydicom.Dataset:
    ds = pydicom.dcmread(get_testdata_file(name))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = new_uid()
    return ds


@pytest.fixture
def study(client: TestClient, tmp_path: Path) -> dict[str, pydicom.Dataset]:
    """A CT and an MR series and a 4-frame instance in one study."""
    uid = new_uid()
    ct_series, mr_series = new_uid(), new_uid()
    objects = {
        "ct": pydicom_file("CT_small.dcm", uid, ct_series),
        "ct2": pydicom_file("CT_small.dcm", uid, ct_series),
        "mr": pydicom_file("MR_small.dcm", uid, mr_series),
    }
    frames = multiframe(4, rows=16, columns=16)
    frames.StudyInstanceUID = uid
    objects["multiframe"] = frames
    stow_all(client, list(objects.values()), tmp_path)
    return objects


def test_rendered_instance_is_a_jpeg_by_default(client: TestClient, study: dict[str, pydicom.Dataset]) -> None:
    response = client.get(instance_url(study["ct"]) + "/rendered")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    gray = image(response.content, "JPEG")
    assert gray.shape == (128, 128)
    assert len(np.unique(gray)) > 64


def test_rendered_instance_is_a_png_when_asked(client: TestClient, study: dict[str, pydicom.Dataset]) -> None:
    response = client.get(instance_url(study["mr"]) + "/rendered", headers={"Accept": "image/png"})
    assert response.headers["content-type"] == "image/png"
    assert image(response.content, "PNG").shape == (64, 64)


def test_window_parameter_changes_the_rendering(client: TestClient, study: dict[str, pydicom.Dataset]) -> None:
    url = instance_url(study["ct"]) + "/rendered"
    default = client.get(url, headers={"Accept": "image/png"}).content
    windowed = client.get(url, params={"window": "40,80,linear"}, headers={"Accept": "image/png"}).content
    assert not np.array_equal(image(default, "PNG"), image(windowed, "PNG"))


def test_viewport_is_honoured(client: TestClient, study: dict[str, pydicom.Dataset]) -> None:
    response = client.get(instance_url(study["ct"]) + "/rendered", params={"viewport": "64,48"})
    assert image(response.content, "JPEG").shape == (48, 48)


def test_malformed_parameters_are_bad_requests(client: TestClient, study: dict[str, pydicom.Dataset]) -> None:
    url = instance_url(study["ct"]) + "/rendered"
    for params in ({"window": "40"}, {"viewport": "0,10"}, {"quality": "500"}):
        assert client.get(url, params=params).status_code == 400, params


def test_an_unsupported_accept_is_406(client: TestClient, study: dict[str, pydicom.Dataset]) -> None:
    response = client.get(instance_url(study["ct"]) + "/rendered", headers={"Accept": "application/dicom"})
    assert response.status_code == 406
    thumbnail = client.get(instance_url(study["ct"]) + "/thumbnail", headers={"Accept": "image/webp"})
    assert thumbnail.status_code == 406


def test_a_gif_is_rendered_when_asked(client: TestClient, study: dict[str, pydicom.Dataset]) -> None:
    response = client.get(instance_url(study["ct"]) + "/rendered", headers={"Accept": "image/gif"})
    assert response.headers["content-type"] == "image/gif"
    assert Image.open(BytesIO(response.content)).format == "GIF"


def test_an_unknown_instance_is_404(client: TestClient, study: dict[str, pydicom.Dataset]) -> None:
    url = f"{series_url(study['ct'])}/instances/{new_uid()}"
    assert client.get(url + "/rendered").status_code == 404
    assert client.get(url + "/thumbnail").status_code == 404
    assert client.get(f"/dicom-web/studies/{new_uid()}/rendered").status_code == 404


def test_a_frame_beyond_the_last_is_404(client: TestClient, study: dict[str, pydicom.Dataset]) -> None:
    assert client.get(instance_url(study["ct"]) + "/frames/2/rendered").status_code == 404
    assert client.get(instance_url(study["multiframe"]) + "/frames/1,5/rendered").status_code == 404
    assert client.get(instance_url(study["multiframe"]) + "/frames/5/thumbnail").status_code == 404


def test_one_rendered_frame_is_one_image(client: TestClient, study: dict[str, pydicom.Dataset]) -> None:
    response = client.get(instance_url(study["multiframe"]) + "/frames/3/rendered", headers={"Accept": "image/png"})
    assert response.headers["content-type"] == "image/png"
    assert image(response.content, "PNG").shape == (16, 16)


def test_several_frames_are_multipart_in_the_order_asked(client: TestClient, study: dict[str, pydicom.Dataset]) -> None:
    url = instance_url(study["multiframe"])
    response = client.get(url + "/frames/4,1/rendered", headers={"Accept": 'multipart/related; type="image/png"'})
    assert response.headers["content-type"].startswith('multipart/related; type="image/png"')
    parts = multipart_bodies(response)
    singles = [client.get(f"{url}/frames/{n}/rendered", headers={"Accept": "image/png"}).content for n in (4, 1)]
    assert [body for _, body in parts] == singles
    assert all(headers["content-type"] == "image/png" for headers, _ in parts)


def test_a_multiframe_instance_renders_every_frame(client: TestClient, study: dict[str, pydicom.Dataset]) -> None:
    response = client.get(instance_url(study["multiframe"]) + "/rendered")
    assert response.headers["content-type"].startswith('multipart/related; type="image/jpeg"')
    assert len(multipart_bodies(response)) == 4


def test_a_rendered_series_has_each_instance(client: TestClient, study: dict[str, pydicom.Dataset]) -> None:
    response = client.get(series_url(study["ct"]) + "/rendered")
    parts = multipart_bodies(response)
    assert len(parts) == 2
    assert all(image(body, "JPEG").shape == (128, 128) for _, body in parts)


def test_a_rendered_study_has_every_frame_of_every_instance(
    client: TestClient, study: dict[str, pydicom.Dataset]
) -> None:
    response = client.get(f"/dicom-web/studies/{study['ct'].StudyInstanceUID}/rendered")
    assert len(multipart_bodies(response)) == 2 + 1 + 4


def test_thumbnails_fit_128_and_are_single_images(client: TestClient, study: dict[str, pydicom.Dataset]) -> None:
    urls = [
        f"/dicom-web/studies/{study['ct'].StudyInstanceUID}/thumbnail",
        series_url(study["mr"]) + "/thumbnail",
        instance_url(study["ct"]) + "/thumbnail",
        instance_url(study["multiframe"]) + "/frames/2/thumbnail",
    ]
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, url
        assert response.headers["content-type"] == "image/jpeg"
        shape = image(response.content, "JPEG").shape
        assert max(shape) == 128, url
    series = client.get(series_url(study["mr"]) + "/thumbnail", params={"viewport": "32,32"})
    assert image(series.content, "JPEG").shape == (32, 32)
