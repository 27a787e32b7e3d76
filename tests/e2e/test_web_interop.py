"""How real DICOMweb clients negotiate, query and retrieve: dicomweb-client (Python) against the archive."""

from __future__ import annotations

from io import BytesIO

import httpx
import pydicom
import pytest
import requests
from PIL import Image

from bench.synthetic import ct_series, multiframe, write_part10

from .conftest import Archive
from .dicom_clients import stow

pytestmark = pytest.mark.e2e

JPEG_LS = "1.2.840.10008.1.2.4.80"
RLE = "1.2.840.10008.1.2.5"


@pytest.fixture(scope="module")
def study(archive: Archive, tmp_path_factory: pytest.TempPathFactory) -> list[pydicom.Dataset]:
    """A CT series and a multi-frame image in one study."""
    folder = tmp_path_factory.mktemp("interop")
    datasets = list(ct_series(3, rows=32, columns=32, patient_id="INTEROP-16", patient_name="Interop^Web"))
    mf = multiframe(3, rows=64, columns=64)
    mf.StudyInstanceUID, mf.PatientID, mf.PatientName = datasets[0].StudyInstanceUID, "INTEROP-16", "Interop^Web"
    datasets.append(mf)
    parts = []
    for i, ds in enumerate(datasets):
        write_part10(ds, folder / f"{i}.dcm")
        parts.append((folder / f"{i}.dcm").read_bytes())
    assert stow(archive.dicomweb_url(), parts).status_code == 200
    return datasets


def test_dicomweb_client_negotiates_frames_and_instances(archive: Archive, study: list[pydicom.Dataset]) -> None:
    client = archive.client()
    mf = study[-1]
    uids = (mf.StudyInstanceUID, mf.SeriesInstanceUID, mf.SOPInstanceUID)
    (jls,) = client.retrieve_instance_frames(*uids, frame_numbers=[2], media_types=(("image/jls", JPEG_LS),))
    assert jls[:2] == b"\xff\xd8"  # a JPEG-LS bitstream, encoded from the stored native frame
    (native,) = client.retrieve_instance_frames(*uids, frame_numbers=[2])
    assert native == mf.pixel_array[1].tobytes()
    rle = client.retrieve_instance(*uids, media_types=(("application/dicom", RLE),))
    assert rle.file_meta.TransferSyntaxUID == RLE
    assert (rle.pixel_array == mf.pixel_array).all()
    metadata = client.retrieve_series_metadata(mf.StudyInstanceUID, mf.SeriesInstanceUID)
    assert metadata[0]["00080018"]["Value"] == [mf.SOPInstanceUID]


@pytest.mark.parametrize(
    "accept",
    [
        "toto, application/dicom+json",
        "application/json",
        "text/html, */*;q=0.1",
        "application/dicom+json; charset=utf-8",
    ],
)
def test_an_accept_list_is_read_as_ps3_18_says(archive: Archive, study: list[pydicom.Dataset], accept: str) -> None:
    response = httpx.get(
        f"{archive.dicomweb_url()}/studies", params={"PatientID": "INTEROP-16"}, headers={"Accept": accept}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+json"
    assert [s["0020000D"]["Value"] for s in response.json()] == [[study[0].StudyInstanceUID]]


def test_nothing_acceptable_is_406_and_an_unreadable_header_400(archive: Archive, study: list[pydicom.Dataset]) -> None:
    url = f"{archive.dicomweb_url()}/studies"
    assert httpx.get(url, headers={"Accept": "toto, image/png"}).status_code == 406
    assert httpx.get(url, headers={"Accept": "application/dicom+json; q=maybe"}).status_code == 400




def test_dicomweb_client_includefields_beyond_the_defaults_and_vendor_parameters(
    archive: Archive, study: list[pydicom.Dataset]
) -> None:
    client = archive.client()
    ct = study[0]
    instances = client.search_for_instances(
        ct.StudyInstanceUID,
        ct.SeriesInstanceUID,
        fields=["PatientName", "StudyDate", "WindowWidth", "NoSuchAttribute"],
        search_filters={"SOPInstanceUID": ct.SOPInstanceUID, "vendor-cache-buster": "1700000000"},
    )
    (found,) = instances
    assert found["00100010"]["Value"] == [{"Alphabetic": "Interop^Web"}]
    assert found["00080020"]["Value"] == [ct.StudyDate]
    assert found["00281051"]["Value"] == [float(ct.WindowWidth)]
    found_series = client.search_for_series(ct.StudyInstanceUID, fields=["PatientID"])
    (series,) = [s for s in found_series if s["0020000E"]["Value"] == [ct.SeriesInstanceUID]]
    assert series["00100020"]["Value"] == ["INTEROP-16"]
    response = httpx.get(f"{archive.dicomweb_url()}/studies", params={"PatientID": "INTEROP-16", "orthanc": "x"})
    assert response.status_code == 200
    assert "orthanc" in response.headers["warning"]


def test_a_legacy_wado_uri_client_gets_the_file_and_rendered_frames(
    archive: Archive, study: list[pydicom.Dataset]
) -> None:
    """What a reporting tool written against WADO-URI does: requests builds the URL, pydicom reads the file."""
    mf = study[-1]
    base = (
        f"{archive.base_url}/wado?requestType=WADO&studyUID={mf.StudyInstanceUID}"
        f"&seriesUID={mf.SeriesInstanceUID}&objectUID={mf.SOPInstanceUID}"
    )
    response = requests.get(f"{base}&contentType=application%2Fdicom", timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/dicom"
    served = pydicom.dcmread(BytesIO(response.content))
    assert served.SOPInstanceUID == mf.SOPInstanceUID
    assert (served.pixel_array == mf.pixel_array).all()
    as_rle = requests.get(f"{base}&contentType=application/dicom&transferSyntax={RLE}", timeout=30)
    rle = pydicom.dcmread(BytesIO(as_rle.content))
    assert rle.file_meta.TransferSyntaxUID == RLE
    jpeg = requests.get(f"{base}&contentType=image/jpeg&frameNumber=2&rows=32&columns=32", timeout=30)
    assert jpeg.status_code == 200 and jpeg.headers["Content-Type"] == "image/jpeg"
    assert Image.open(BytesIO(jpeg.content)).size == (32, 32)
    region = requests.get(f"{base}&region=0,0,0.5,0.5&windowCenter=100&windowWidth=200", timeout=30)
    assert Image.open(BytesIO(region.content)).size == (32, 32)
