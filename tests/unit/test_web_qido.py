"""QIDO-RS (PS3.18 10.6): results, attributes returned, limits and negotiation."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from test_web_app import stow_all

from bench.synthetic import ct_series
from dicomcloud.web import qido

pytest_plugins = ["test_web_app"]

STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
RETRIEVE_URL = "00081190"


@pytest.fixture
def three(client: TestClient, tmp_path: Path) -> list[pydicom.Dataset]:
    datasets = list(ct_series(3, rows=8, columns=8, patient_id="QIDO-1"))
    stow_all(client, datasets, tmp_path)
    return datasets


def test_studies_match_with_counts_and_retrieve_url(client: TestClient, three: list[pydicom.Dataset]) -> None:
    response = client.get("/dicom-web/studies", params={"PatientID": "QIDO-1"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+json"
    (study,) = response.json()
    assert study[STUDY_UID]["Value"] == [three[0].StudyInstanceUID]
    assert study["00201208"]["Value"] == [3]  # NumberOfStudyRelatedInstances
    assert study[RETRIEVE_URL]["Value"] == [f"http://archive.test/dicom-web/studies/{three[0].StudyInstanceUID}"]


def test_study_results_hold_only_default_attributes_unless_included(
    client: TestClient, three: list[pydicom.Dataset]
) -> None:
    (plain,) = client.get("/dicom-web/studies").json()
    assert "00081030" not in plain  # StudyDescription is not a default study attribute
    (included,) = client.get("/dicom-web/studies", params={"includefield": "StudyDescription"}).json()
    assert "00081030" in included


def test_no_match_is_200_with_an_empty_array(client: TestClient, three: list[pydicom.Dataset]) -> None:
    response = client.get("/dicom-web/studies", params={"PatientID": "NOBODY"})
    assert response.status_code == 200
    assert response.json() == []


def test_series_of_a_study_have_series_urls(client: TestClient, three: list[pydicom.Dataset]) -> None:
    ds = three[0]
    (series,) = client.get(f"/dicom-web/studies/{ds.StudyInstanceUID}/series").json()
    assert series[SERIES_UID]["Value"] == [ds.SeriesInstanceUID]
    assert series[RETRIEVE_URL]["Value"][0].endswith(f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}")


def test_all_instances_carry_their_parents_uids_and_urls(client: TestClient, three: list[pydicom.Dataset]) -> None:
    found = client.get("/dicom-web/instances", params={"PatientID": "QIDO-1"}).json()
    assert [f[SOP_UID]["Value"][0] for f in found] == [ds.SOPInstanceUID for ds in three]
    first = found[0]
    assert first[STUDY_UID]["Value"] == [three[0].StudyInstanceUID]
    assert first[SERIES_UID]["Value"] == [three[0].SeriesInstanceUID]
    assert first["00100020"]["Value"] == ["QIDO-1"]  # study attributes: the URL names no study
    assert first[RETRIEVE_URL]["Value"][0].endswith(f"/instances/{three[0].SOPInstanceUID}")


def test_a_search_scoped_to_a_study_or_series_leaves_out_that_parents_default_attributes(
    client: TestClient, three: list[pydicom.Dataset]
) -> None:
    """PS3.18 Tables 10.6.3-4 and -5: a parent the URL fixes is not repeated in each result, its UID aside."""
    ds = three[0]
    (series,) = client.get(f"/dicom-web/studies/{ds.StudyInstanceUID}/series").json()
    assert series[STUDY_UID]["Value"] == [ds.StudyInstanceUID]
    assert "00100020" not in series and "00080020" not in series  # PatientID, StudyDate: study attributes
    url = f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances"
    first = client.get(url).json()[0]
    assert first[SERIES_UID]["Value"] == [ds.SeriesInstanceUID]
    assert "00080060" not in first and "00100020" not in first  # Modality (series), PatientID (study)
    in_study = client.get(f"/dicom-web/studies/{ds.StudyInstanceUID}/instances").json()[0]
    assert in_study["00080060"]["Value"] == ["CT"] and "00100020" not in in_study


def test_instance_includefield_comes_from_the_series_document(client: TestClient, three: list[pydicom.Dataset]) -> None:
    ds = three[1]
    url = f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances"
    found = client.get(url, params={"SOPInstanceUID": ds.SOPInstanceUID, "includefield": "SliceThickness"}).json()
    assert found[0]["00180050"]["Value"] == [2.5]


def test_includefield_names_parent_and_private_attributes_beyond_the_defaults(
    client: TestClient, tmp_path: Path
) -> None:
    ds = next(ct_series(1, rows=8, columns=8, patient_id="QIDO-INC", patient_name="Include^Me"))
    ds.StudyDescription = "Included study"
    ds.private_block(0x0009, "ACME 1.0", create=True).add_new(0x01, "LO", "vendor value")
    stow_all(client, [ds], tmp_path)
    study = f"/dicom-web/studies/{ds.StudyInstanceUID}"
    fields = "PatientName,StudyDescription,WindowCenter,00091001,Rows,Columns,NoSuchKeyword,1234567"
    for url in (f"{study}/series/{ds.SeriesInstanceUID}/instances", f"{study}/instances", "/dicom-web/instances"):
        (found,) = client.get(url, params={"includefield": fields, "PatientID": "QIDO-INC"}).json()
        assert found["00100010"]["Value"] == [{"Alphabetic": "Include^Me"}], url  # patient, named
        assert found["00081030"]["Value"] == ["Included study"], url  # study, named
        assert found["00281050"]["Value"] == [40.0], url  # from the metadata entry
        assert found["00091001"]["Value"] == ["vendor value"], url  # a private tag, by its tag
        assert (found["00280010"]["Value"], found["00280011"]["Value"]) == ([8], [8]), url
    (series,) = client.get(f"{study}/series", params={"includefield": "PatientName,StudyDescription"}).json()
    assert series["00100010"]["Value"] == [{"Alphabetic": "Include^Me"}]
    assert series["00081030"]["Value"] == ["Included study"]
    response = client.get("/dicom-web/studies", params={"PatientID": "QIDO-INC", "includefield": "Rows,00091001"})
    assert response.status_code == 200 and "warning" not in response.headers
    (found_study,) = response.json()
    assert "00280010" not in found_study and "00091001" not in found_study  # unknowable for a study: left out


def test_instance_includefield_all_has_no_bulk_data(client: TestClient, three: list[pydicom.Dataset]) -> None:
    ds = three[0]
    url = f"/dicom-web/studies/{ds.StudyInstanceUID}/instances"
    found = client.get(url, params={"includefield": "all"}).json()
    assert len(found) == 3
    assert "00200032" in found[0]  # ImagePositionPatient, from the document
    assert "7FE00010" not in found[0]
    assert list(found[0]) == sorted(found[0])


def test_limit_and_offset_page_through_results(client: TestClient, three: list[pydicom.Dataset]) -> None:
    pages = [client.get("/dicom-web/instances", params={"limit": "2", "offset": str(o)}).json() for o in (0, 2)]
    assert [len(p) for p in pages] == [2, 1]
    assert "warning" not in client.get("/dicom-web/instances", params={"limit": "2"}).headers


def test_a_limit_over_the_maximum_is_capped_with_a_warning(
    client: TestClient, three: list[pydicom.Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(qido, "MAX_RESULTS", 2)
    asked = client.get("/dicom-web/instances", params={"limit": "100"})
    assert len(asked.json()) == 2
    assert asked.headers["warning"].startswith("299 ")
    unasked = client.get("/dicom-web/instances")
    assert len(unasked.json()) == 2
    assert unasked.headers["warning"].startswith("299 ")


def test_a_key_the_index_cannot_match_is_named_in_a_warning(client: TestClient, three: list[pydicom.Dataset]) -> None:
    response = client.get("/dicom-web/studies", params={"SliceThickness": "2.5"})
    assert response.status_code == 200
    assert "SliceThickness" in response.headers["warning"]


def test_a_vendor_query_parameter_is_ignored_with_a_warning(client: TestClient) -> None:
    response = client.get("/dicom-web/studies", params={"NotAKeyword": "x", "_": "1700000000"})
    assert response.status_code == 200
    assert response.headers["warning"].startswith("299 ")
    assert "NotAKeyword, _" in response.headers["warning"]


def test_the_warning_names_ignored_parameters_as_a_header_can_carry_them(client: TestClient) -> None:
    response = client.get("/dicom-web/studies?caf%C3%A9=1&a%0D%0Ab=2&q%22%5C=3")
    assert response.status_code == 200
    assert 'ignored: a??b, caf?, q??"' in response.headers["warning"]
    many = client.get("/dicom-web/studies", params={f"vendor{n:02}": "1" for n in range(25)})
    assert many.headers["warning"].endswith('vendor09 and 15 more"')


@pytest.mark.parametrize("accept", ["application/json", "application/*", "*/*", "application/dicom+json; q=0.5"])
def test_json_accepts_are_served(client: TestClient, accept: str) -> None:
    assert client.get("/dicom-web/studies", headers={"Accept": accept}).status_code == 200


@pytest.mark.parametrize(
    ("accept", "status"),
    [
        ("toto, application/dicom+json", 200),
        ("image/png, application/json;q=0.5", 200),
        ("application/dicom+json; charset=utf-8", 200),
        ("application/dicom+json; charset=ISO-8859-1, application/dicom+json; charset=UTF-8; q=0.2", 200),
        ("application/dicom+xml", 406),
        ("toto", 406),
        ("application/dicom+json; charset=ISO-8859-1", 406),
        ("application/dicom+json; q=0, image/png", 406),
        ("application/dicom+json; q=0, */*", 406),
    ],
)
def test_dicom_json_is_served_for_any_list_that_accepts_it_else_406(
    client: TestClient, accept: str, status: int
) -> None:
    response = client.get("/dicom-web/studies", headers={"Accept": accept})
    assert response.status_code == status
    if status == 200:
        assert response.headers["content-type"] == "application/dicom+json"


@pytest.mark.parametrize("accept", ["application/dicom+json; q=high", 'application/dicom+json; x="open'])
def test_an_accept_header_that_cannot_be_read_is_400(client: TestClient, accept: str) -> None:
    assert client.get("/dicom-web/studies", headers={"Accept": accept}).status_code == 400


def test_the_accept_query_parameter_is_read_instead_of_the_header(client: TestClient) -> None:
    headers = {"Accept": "image/png"}
    assert client.get("/dicom-web/studies", headers=headers).status_code == 406
    response = client.get("/dicom-web/studies", params={"accept": "application/dicom+json"}, headers=headers)
    assert response.status_code == 200
