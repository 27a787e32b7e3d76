"""DIMSE query/retrieve with real clients: dcmtk's findscu, getscu, movescu and storescp, and Orthanc.

"Byte-identical" for a retrieved file: the dataset's encoded bytes (everything after the File Meta
Information, which each writer fills with its own implementation UID) are exactly those of the
file that was sent, and the File Meta's Transfer Syntax UID is the one it was stored in.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.datadict import tag_for_keyword
from pydicom.uid import generate_uid
from pynetdicom.dsutils import split_dataset

from bench.synthetic import ct_series, multiframe, write_part10

from .conftest import AE_TITLE, Archive, free_port, wait_until
from .dicom_clients import findscu, getscu, movescu, stow
from .orthanc import Orthanc, running_orthanc

pytestmark = pytest.mark.e2e

STORESCP_AE = "STORESCP"
ORTHANC_AE = "ORTHANC"
# Keys the archive adds to every C-FIND response besides the requested ones.
RESPONSE_OWN_KEYS = {"SpecificCharacterSet", "QueryRetrieveLevel", "RetrieveAETitle"}


@dataclass
class Stored:
    """What the tests stored: two patients, three studies, one of them JPEG 2000 compressed."""

    files: dict[str, Path]  # SOP Instance UID -> the file sent
    study_a: str
    series_a_ct: str
    study_b: str
    study_c: str  # patient A's second study, JPEG 2000 Lossless

    def sops(self, **where: str) -> set[str]:
        return {
            sop
            for sop, path in self.files.items()
            if all(str(getattr(pydicom.dcmread(path, stop_before_pixels=True), k)) == v for k, v in where.items())
        }


@dataclass
class Destinations:
    storescp_port: int
    storescp_folder: Path
    orthanc_port: int


@pytest.fixture(scope="module")
def destinations(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Destinations]:
    """dcmtk's storescp, bit-preserving, as the C-MOVE destination STORESCP."""
    folder = tmp_path_factory.mktemp("storescp")
    port = free_port()
    process = subprocess.Popen(
        ["storescp", "-aet", STORESCP_AE, "+B", "-od", str(folder), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def listening() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_until(listening, 30, "dcmtk storescp to listen")
    yield Destinations(port, folder, free_port())
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def qr_archive(archive_factory: Callable[..., Archive], destinations: Destinations) -> Archive:
    """An archive whose C-MOVE destinations are the storescp and Orthanc of this module."""
    move_destinations = {
        STORESCP_AE: {"host": "127.0.0.1", "port": destinations.storescp_port},
        ORTHANC_AE: {"host": "127.0.0.1", "port": destinations.orthanc_port},
    }
    return archive_factory("qr", env={"DICOMCLOUD_DIMSE__MOVE_DESTINATIONS": json.dumps(move_destinations)})


@pytest.fixture(scope="module")
def stored(qr_archive: Archive, tmp_path_factory: pytest.TempPathFactory) -> Stored:
    folder = tmp_path_factory.mktemp("qr-data")
    study_a = list(ct_series(4, rows=32, columns=32, patient_id="QR-A", patient_name="Doe^Jane", seed=3))
    mf = multiframe(3, rows=16, columns=16)
    mf.StudyInstanceUID, mf.PatientID, mf.PatientName = study_a[0].StudyInstanceUID, "QR-A", "Doe^Jane"
    study_b = list(ct_series(2, rows=16, columns=16, patient_id="QR-B", patient_name="Roe^Richard", seed=4))
    files: dict[str, Path] = {}
    for i, ds in enumerate([*study_a, mf, *study_b]):
        path = folder / f"{i}.dcm"
        write_part10(ds, path)
        files[str(ds.SOPInstanceUID)] = path
    jp2k = pydicom.dcmread(str(get_testdata_file("MR_small_jp2klossless.dcm")))
    jp2k.PatientID, jp2k.PatientName = "QR-A", "Doe^Jane"
    jp2k.StudyInstanceUID, jp2k.SeriesInstanceUID, jp2k.SOPInstanceUID = (generate_uid() for _ in range(3))
    jp2k.file_meta.MediaStorageSOPInstanceUID = jp2k.SOPInstanceUID
    jp2k.save_as(folder / "jp2k.dcm", enforce_file_format=True)
    files[str(jp2k.SOPInstanceUID)] = folder / "jp2k.dcm"
    response = stow(qr_archive.dicomweb_url(), [p.read_bytes() for p in files.values()])
    assert response.status_code == 200, response.text
    qr_archive.wait_indexed(len(files), PatientID="QR-*")
    return Stored(
        files=files,
        study_a=str(study_a[0].StudyInstanceUID),
        series_a_ct=str(study_a[0].SeriesInstanceUID),
        study_b=str(study_b[0].StudyInstanceUID),
        study_c=str(jp2k.StudyInstanceUID),
    )


def dicom_text(element: Any) -> str:
    """A C-FIND response value as comparable text (multiple values joined with a backslash)."""
    if element is None or element.value is None or element.value == "":
        return ""
    values = element.value if element.VM > 1 else [element.value]
    return "\\".join(str(int(v)) if element.VR in ("IS", "US", "UL") else str(v) for v in values)


def json_text(attribute: Mapping[str, Any] | None) -> str:
    """A QIDO (DICOM JSON) value as the same comparable text."""
    values = (attribute or {}).get("Value", [])
    return "\\".join(str(v["Alphabetic"]) if isinstance(v, dict) else str(v) for v in values)


def qido(archive: Archive, resource: str, keys: Mapping[str, str]) -> list[dict[str, Any]]:
    """QIDO-RS with the same keys: a matching key with a value, a return key empty."""
    response = httpx.get(f"{archive.dicomweb_url()}/{resource}", params=dict(keys), timeout=30)
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()
    return results


def json_rows(results: list[dict[str, Any]], keywords: list[str]) -> list[tuple[str, ...]]:
    return sorted(tuple(json_text(r.get(f"{tag_for_keyword(k):08X}")) for k in keywords) for r in results)


def find_rows(responses: list[pydicom.Dataset], keywords: list[str]) -> list[tuple[str, ...]]:
    return sorted(tuple(dicom_text(ds.data_element(k)) for k in keywords) for ds in responses)


def assert_exactly_the_requested_keys(responses: list[pydicom.Dataset], keys: Mapping[str, str], level: str) -> None:
    for ds in responses:
        assert {element.keyword for element in ds} == set(keys) | RESPONSE_OWN_KEYS
        assert ds.QueryRetrieveLevel == level
        assert ds.RetrieveAETitle == AE_TITLE
        assert ds.SpecificCharacterSet == "ISO_IR 192"


STUDY_KEYS = {
    "PatientID": "QR-*",
    "PatientName": "",
    "StudyInstanceUID": "",
    "StudyDate": "",
    "StudyTime": "",
    "AccessionNumber": "",
    "StudyDescription": "",
    "ModalitiesInStudy": "",
    "NumberOfStudyRelatedSeries": "",
    "NumberOfStudyRelatedInstances": "",
}


@pytest.mark.parametrize("model", ["patient", "study"])
@pytest.mark.parametrize(
    "keys",
    [STUDY_KEYS, {**STUDY_KEYS, "PatientName": "doe*"}, {**STUDY_KEYS, "StudyDate": "20000101-"}],
    ids=["all", "name-wildcard", "date-range"],
)
def test_findscu_at_study_level_returns_what_qido_returns(
    qr_archive: Archive, stored: Stored, tmp_path: Path, model: str, keys: dict[str, str]
) -> None:
    responses, result = findscu(qr_archive.dimse_port, AE_TITLE, model, "STUDY", keys, tmp_path)
    assert result.returncode == 0, result.stderr
    assert responses, result.stdout + result.stderr
    assert_exactly_the_requested_keys(responses, keys, "STUDY")
    assert find_rows(responses, list(keys)) == json_rows(qido(qr_archive, "studies", keys), list(keys))


@pytest.mark.parametrize("model", ["patient", "study"])
def test_findscu_at_series_level_returns_what_qido_returns(
    qr_archive: Archive, stored: Stored, tmp_path: Path, model: str
) -> None:
    keys = {
        "StudyInstanceUID": stored.study_a,
        "SeriesInstanceUID": "",
        "Modality": "",
        "SeriesNumber": "",
        "SeriesDescription": "",
        "NumberOfSeriesRelatedInstances": "",
    }
    responses, result = findscu(qr_archive.dimse_port, AE_TITLE, model, "SERIES", keys, tmp_path)
    assert len(responses) == 2, result.stdout + result.stderr
    assert_exactly_the_requested_keys(responses, keys, "SERIES")
    assert find_rows(responses, list(keys)) == json_rows(qido(qr_archive, "series", keys), list(keys))


@pytest.mark.parametrize("model", ["patient", "study"])
def test_findscu_at_image_level_returns_what_qido_returns(
    qr_archive: Archive, stored: Stored, tmp_path: Path, model: str
) -> None:
    keys = {
        "StudyInstanceUID": stored.study_a,
        "SeriesInstanceUID": stored.series_a_ct,
        "SOPInstanceUID": "",
        "SOPClassUID": "",
        "InstanceNumber": "",
        "Rows": "",
        "Columns": "",
        "ImageType": "",  # not in the index: from the series metadata document, as in QIDO
    }
    responses, result = findscu(qr_archive.dimse_port, AE_TITLE, model, "IMAGE", keys, tmp_path)
    assert len(responses) == 4, result.stdout + result.stderr
    assert_exactly_the_requested_keys(responses, keys, "IMAGE")
    assert all(ds.ImageType for ds in responses)
    assert find_rows(responses, list(keys)) == json_rows(qido(qr_archive, "instances", keys), list(keys))


def test_findscu_at_patient_level_returns_the_patients_of_the_qido_studies(
    qr_archive: Archive, stored: Stored, tmp_path: Path
) -> None:
    keys = {"PatientID": "QR-*", "PatientName": "", "NumberOfPatientRelatedStudies": "",
            "NumberOfPatientRelatedInstances": ""}  # fmt: skip
    responses, result = findscu(qr_archive.dimse_port, AE_TITLE, "patient", "PATIENT", keys, tmp_path)
    assert result.returncode == 0, result.stderr
    assert_exactly_the_requested_keys(responses, keys, "PATIENT")
    studies = qido(qr_archive, "studies", {"PatientID": "QR-*", "PatientName": "",
                                           "includefield": "NumberOfStudyRelatedInstances"})  # fmt: skip
    patients: dict[tuple[str, str], list[int]] = {}
    for study in studies:
        patient = (json_text(study["00100020"]), json_text(study.get("00100010")))
        patients.setdefault(patient, []).append(int(json_text(study["00201208"])))
    expected = sorted((pid, name, str(len(counts)), str(sum(counts))) for (pid, name), counts in patients.items())
    assert find_rows(responses, list(keys)) == expected
    assert [row[0] for row in expected] == ["QR-A", "QR-B"]


def test_study_root_has_no_patient_level(qr_archive: Archive, stored: Stored, tmp_path: Path) -> None:
    responses, result = findscu(qr_archive.dimse_port, AE_TITLE, "study", "PATIENT", {"PatientID": ""}, tmp_path)
    assert responses == []
    assert "DataSetDoesNotMatchSOPClass" in result.stdout + result.stderr  # 0xA900


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset after the File Meta Information."""
    return path.read_bytes()[split_dataset(path)[1] :]


def test_getscu_retrieves_a_study_byte_identical(qr_archive: Archive, stored: Stored, tmp_path: Path) -> None:
    keys = {"StudyInstanceUID": stored.study_a}
    result = getscu(qr_archive.dimse_port, AE_TITLE, "study", "STUDY", keys, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    received = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in tmp_path.iterdir()}
    assert set(received) == stored.sops(StudyInstanceUID=stored.study_a)
    for sop, path in received.items():
        sent = stored.files[sop]
        sent_ts = pydicom.dcmread(sent, stop_before_pixels=True).file_meta.TransferSyntaxUID
        assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == sent_ts
        assert dataset_bytes(path) == dataset_bytes(sent)
        assert pydicom.dcmread(path).PixelData == pydicom.dcmread(sent).PixelData


def test_getscu_proposing_only_native_syntaxes_gets_compressed_instances_decompressed(
    qr_archive: Archive, stored: Stored, tmp_path: Path
) -> None:
    result = getscu(qr_archive.dimse_port, AE_TITLE, "patient", "STUDY", {"StudyInstanceUID": stored.study_c}, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    (path,) = tmp_path.iterdir()
    received = pydicom.dcmread(path)
    original = pydicom.dcmread(stored.files[str(received.SOPInstanceUID)])
    assert received.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert (received.pixel_array == original.pixel_array).all()


def test_movescu_moves_a_series_to_a_storescp_from_the_ae_map(
    qr_archive: Archive, stored: Stored, destinations: Destinations
) -> None:
    keys = {"StudyInstanceUID": stored.study_a, "SeriesInstanceUID": stored.series_a_ct}
    result = movescu(qr_archive.dimse_port, AE_TITLE, STORESCP_AE, "study", "SERIES", keys)
    assert "Received Final Move Response (Success)" in result.stdout + result.stderr, result.stdout + result.stderr
    expected = stored.sops(SeriesInstanceUID=stored.series_a_ct)
    received = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
                for p in destinations.storescp_folder.iterdir()}  # fmt: skip
    assert set(received) >= expected
    for sop in expected:
        assert dataset_bytes(received[sop]) == dataset_bytes(stored.files[sop])


def test_movescu_to_an_unknown_destination_is_refused_with_a801(qr_archive: Archive, stored: Stored) -> None:
    keys = {"StudyInstanceUID": stored.study_a, "SeriesInstanceUID": stored.series_a_ct}
    result = subprocess.run(
        ["movescu", "-d", "-S", "-aec", AE_TITLE, "-aem", "NOWHERE", "-k", "QueryRetrieveLevel=SERIES",
         *(arg for k, v in keys.items() for arg in ("-k", f"{k}={v}")), "127.0.0.1", str(qr_archive.dimse_port)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert "0xa801" in (result.stdout + result.stderr).lower(), result.stdout + result.stderr


@pytest.fixture(scope="module")
def orthanc(
    qr_archive: Archive, destinations: Destinations, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Orthanc]:
    """Orthanc with the archive as its DICOM modality `archive`, listening for C-STORE as ORTHANC."""
    config = {
        "DicomServerEnabled": True,
        "DicomAet": ORTHANC_AE,
        "DicomPort": destinations.orthanc_port,
        "DicomModalities": {"archive": [AE_TITLE, "127.0.0.1", qr_archive.dimse_port]},
    }
    with running_orthanc(tmp_path_factory.mktemp("orthanc-dimse"), config) as orthanc:
        yield orthanc


def test_orthanc_c_finds_and_c_moves_a_study_from_the_archive(orthanc: Orthanc, stored: Stored) -> None:
    query = httpx.post(
        f"{orthanc.url}/modalities/archive/query",
        json={"Level": "Study", "Query": {"PatientID": "QR-B", "StudyInstanceUID": "", "PatientName": ""}},
        timeout=60,
    )
    assert query.status_code == 200, query.text
    query_id = query.json()["ID"]
    answers = httpx.get(f"{orthanc.url}/queries/{query_id}/answers?expand&simplify", timeout=30).json()
    assert [(a["StudyInstanceUID"], a["PatientName"]) for a in answers] == [(stored.study_b, "Roe^Richard")]
    retrieve = httpx.post(
        f"{orthanc.url}/queries/{query_id}/retrieve",
        json={"TargetAet": ORTHANC_AE, "Synchronous": True},
        timeout=120,
    )
    assert retrieve.status_code == 200, retrieve.text
    instances = httpx.get(f"{orthanc.url}/instances?expand", timeout=30).json()
    received = {i["MainDicomTags"]["SOPInstanceUID"] for i in instances}
    assert received == stored.sops(StudyInstanceUID=stored.study_b)
    for instance in instances:
        data = httpx.get(f"{orthanc.url}/instances/{instance['ID']}/file", timeout=30).content
        sent = stored.files[instance["MainDicomTags"]["SOPInstanceUID"]]
        assert pydicom.dcmread(sent) == pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
