"""Orthanc's own DICOMweb client searches and retrieves from the archive with nothing special-cased."""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import httpx
import pydicom
import pytest

from bench.synthetic import ct_series, multiframe, write_part10

from .conftest import Archive
from .dicom_clients import stow
from .orthanc import Orthanc, running_orthanc

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def orthanc(archive: Archive, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    config = {"DicomWeb": {"Enable": True, "Servers": {"archive": [archive.dicomweb_url() + "/"]}}}
    with running_orthanc(tmp_path_factory.mktemp("orthanc"), config) as orthanc:
        yield orthanc


@pytest.fixture(scope="module")
def peer_study(archive: Archive, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("peer")
    paths = []
    series = list(ct_series(5, rows=32, columns=32, patient_id="ORTHANC-PEER", patient_name="Peer^Orthanc"))
    mf = multiframe(3, rows=16, columns=16)
    mf.StudyInstanceUID = series[0].StudyInstanceUID
    mf.PatientID = "ORTHANC-PEER"
    for i, ds in enumerate([*series, mf]):
        path = folder / f"{i}.dcm"
        write_part10(ds, path)
        paths.append(path)
    assert stow(archive.dicomweb_url(), [p.read_bytes() for p in paths]).status_code == 200
    archive.wait_indexed(len(paths), PatientID="ORTHANC-PEER")
    return paths


def test_orthanc_finds_the_study_with_qido(orthanc: Orthanc, peer_study: list[Path]) -> None:
    response = httpx.post(
        f"{orthanc.url}/dicom-web/servers/archive/qido",
        json={"Uri": "/studies", "Arguments": {"PatientID": "ORTHANC-PEER"}},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    studies = response.json()
    assert len(studies) == 1
    study_uid = str(pydicom.dcmread(peer_study[0], stop_before_pixels=True).StudyInstanceUID)
    assert studies[0]["0020000D"]["Value"] == study_uid  # Orthanc simplifies DICOM JSON to plain values


def test_orthanc_retrieves_the_study_byte_for_byte(orthanc: Orthanc, peer_study: list[Path]) -> None:
    study_uid = str(pydicom.dcmread(peer_study[0], stop_before_pixels=True).StudyInstanceUID)
    response = httpx.post(
        f"{orthanc.url}/dicom-web/servers/archive/retrieve",
        json={"Resources": [{"Study": study_uid}]},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    instances = httpx.get(f"{orthanc.url}/instances", timeout=30).json()
    assert len(instances) == len(peer_study)
    received = {httpx.get(f"{orthanc.url}/instances/{i}/file", timeout=30).content for i in instances}
    expected = {p.read_bytes() for p in peer_study}
    assert {pydicom.dcmread(BytesIO(r)).SOPInstanceUID for r in received} == {
        pydicom.dcmread(p).SOPInstanceUID for p in peer_study
    }
    assert received == expected


def test_orthanc_sends_a_study_with_its_stow_client(
    archive: Archive, orthanc: Orthanc, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Orthanc -> dicomcloud, the common migration path: Orthanc's STOW-RS client writes a 73-character
    multipart boundary, which the archive reads like any other."""
    folder = tmp_path_factory.mktemp("orthanc-stow")
    datasets = list(ct_series(20, rows=32, columns=32, patient_id="ORTHANC-STOW", patient_name="Stow^Orthanc"))
    originals = {}
    for i, ds in enumerate(datasets):
        path = folder / f"{i}.dcm"
        write_part10(ds, path)
        originals[str(ds.SOPInstanceUID)] = path.read_bytes()
        uploaded = httpx.post(f"{orthanc.url}/instances", content=originals[str(ds.SOPInstanceUID)], timeout=30)
        assert uploaded.status_code == 200, uploaded.text
    study = uploaded.json()["ParentStudy"]

    sent = httpx.post(f"{orthanc.url}/dicom-web/servers/archive/stow", json={"Resources": [study]}, timeout=300)

    assert sent.status_code == 200, sent.text
    study_uid = str(datasets[0].StudyInstanceUID)
    client = archive.client()
    assert len(client.search_for_instances(study_uid)) == 20
    for ds in datasets:
        path = f"/studies/{study_uid}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        response = httpx.get(archive.dicomweb_url() + path, headers={"Accept": "application/dicom"}, timeout=30)
        assert response.status_code == 200
        assert response.content == originals[str(ds.SOPInstanceUID)]
