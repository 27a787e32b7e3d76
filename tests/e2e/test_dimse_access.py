"""DIMSE access control: with access control on, a peer not in the list, or a listed AE title from
another host, cannot associate; a peer allowed only C-FIND for tenant A is refused C-STORE and C-GET and
sees none of tenant B's data; a C-STORE that would replace a stored instance from a peer not allowed to
replace is refused with 0x0111 and the stored instance stays byte-exact. dcmtk's storescu, findscu and
getscu and pynetdicom are the clients; every refusal is a log line and a row in the warehouse.

(The client certificate a peer's entry may require is tests/unit/test_dimse_access.py's.)"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet, Verification

from bench.synthetic import ct_series, write_part10

from .conftest import Archive, wait_until
from .dicom_clients import findscu, getscu, multipart_parts, pynetdicom_store, storescu

pytestmark = pytest.mark.e2e

EXPLICIT_LE = "1.2.840.10008.1.2.1"
STATUS_NOT_AUTHORIZED = 0x0124
STATUS_DUPLICATE = 0x0111
PEERS = {
    "MODALITY": {
        "hosts": ["127.0.0.1"],
        "tenants": ["tenant-a", "tenant-b"],
        "operations": ["echo", "store", "find", "get"],
    },
    "READER_A": {"hosts": ["127.0.0.0/8"], "tenants": ["tenant-a"], "operations": ["find"]},
    "ELSEWHERE": {"hosts": ["192.0.2.0/24"], "tenants": ["tenant-a"]},
}


@dataclass
class Study:
    uid: str
    patient_id: str
    files: list[Path]


@dataclass
class Secured:
    archive: Archive
    a: Study
    b: Study


def write_study(folder: Path, uid: str, patient_id: str, seed: int) -> Study:
    folder.mkdir(parents=True)
    files = []
    for n, ds in enumerate(ct_series(3, rows=16, columns=16, patient_id=patient_id, study_uid=uid, seed=seed)):
        write_part10(ds, folder / f"{n}.dcm")
        files.append(folder / f"{n}.dcm")
    return Study(uid, patient_id, files)


@pytest.fixture(scope="module")
def secured(archive_factory: Callable[..., Archive], tmp_path_factory: pytest.TempPathFactory) -> Secured:
    """An archive with access control on, tenant A's study stored through AE_A and tenant B's through AE_B."""
    archive = archive_factory(
        "dimse-access",
        {
            "DICOMCLOUD_DIMSE__ACCESS_CONTROL": "true",
            "DICOMCLOUD_DIMSE__AE_TENANTS": json.dumps({"AE_A": "tenant-a", "AE_B": "tenant-b"}),
            "DICOMCLOUD_DIMSE__PEERS": json.dumps(PEERS),
            "DICOMCLOUD_WAREHOUSE__BATCH_SECONDS": "0.2",
        },
    )
    root = tmp_path_factory.mktemp("dimse-access")
    a = write_study(root / "a", "1.2.826.0.19.1", "PATIENT-A", seed=1)
    b = write_study(root / "b", "1.2.826.0.19.2", "PATIENT-B", seed=2)
    for called, study in (("AE_A", a), ("AE_B", b)):
        result = storescu(archive.dimse_port, called, study.files, EXPLICIT_LE, calling_ae="MODALITY")
        assert result.returncode == 0, result.stdout + result.stderr
    assert archive.count_instances("tenant-a") == 3 and archive.count_instances("tenant-b") == 3
    return Secured(archive, a, b)


def associate(archive: Archive, calling: str, called: str, *contexts: str) -> Any:
    ae = AE(ae_title=calling)
    for context in contexts or (Verification,):
        ae.add_requested_context(context)
    return ae.associate("127.0.0.1", archive.dimse_port, ae_title=called)


@pytest.mark.parametrize(
    ("calling", "called"),
    [
        ("STRANGER", "AE_A"),  # not in the list
        ("modality", "AE_A"),  # AE titles are case-sensitive
        ("ELSEWHERE", "AE_A"),  # a listed AE title from a host not its own
        ("READER_A", "AE_B"),  # a listed peer calling a tenant it may not reach
        ("MODALITY", "UNMAPPED"),  # a called AE title that names no tenant
    ],
)
def test_a_peer_not_in_the_list_cannot_associate(secured: Secured, tmp_path: Path, calling: str, called: str) -> None:
    archive = secured.archive
    assoc = associate(archive, calling, called)
    assert assoc.is_rejected, f"{calling} -> {called} was let in"

    stored = storescu(archive.dimse_port, called, secured.a.files[:1], EXPLICIT_LE, calling_ae=calling)
    assert stored.returncode != 0
    assert "Association Rejected" in stored.stdout + stored.stderr

    found, result = findscu(
        archive.dimse_port, called, "study", "STUDY", {"StudyInstanceUID": ""}, tmp_path / "find", calling_ae=calling
    )
    assert found == [] and "Association Rejected" in result.stdout + result.stderr
    assert f"DIMSE associate from {calling!r}" in archive.log_tail(400)


def test_a_find_only_peer_finds_its_tenant_and_nothing_of_another(secured: Secured, tmp_path: Path) -> None:
    archive = secured.archive
    found, result = findscu(
        archive.dimse_port, "AE_A", "study", "STUDY", {"StudyInstanceUID": "", "PatientID": ""}, tmp_path / "all",
        calling_ae="READER_A",
    )
    assert result.returncode == 0, result.stderr
    assert [(str(ds.StudyInstanceUID), str(ds.PatientID)) for ds in found] == [(secured.a.uid, "PATIENT-A")]

    found, _ = findscu(
        archive.dimse_port, "AE_A", "patient", "PATIENT", {"PatientID": secured.b.patient_id}, tmp_path / "b",
        calling_ae="READER_A",
    )
    assert found == []


def test_a_find_only_peer_is_refused_c_store(secured: Secured, tmp_path: Path) -> None:
    archive = secured.archive
    ds = next(ct_series(1, rows=16, columns=16, patient_id="INTRUDER", study_uid="1.2.826.0.19.3", seed=3))
    path = tmp_path / "intruder.dcm"
    write_part10(ds, path)
    assert pynetdicom_store(archive.dimse_port, "AE_A", [path], calling_ae="READER_A") == [STATUS_NOT_AUTHORIZED]
    result = storescu(archive.dimse_port, "AE_A", [path], EXPLICIT_LE, calling_ae="READER_A")
    assert re.search(r"Store Response \(.*0x0?124\)", result.stdout + result.stderr)
    assert archive.count_instances("tenant-a", PatientID="INTRUDER") == 0
    assert archive.count_instances("tenant-a") == 3


def test_a_find_only_peer_is_refused_c_get(secured: Secured, tmp_path: Path) -> None:
    archive = secured.archive
    result = getscu(
        archive.dimse_port, "AE_A", "study", "STUDY", {"StudyInstanceUID": secured.a.uid}, tmp_path / "got",
        calling_ae="READER_A",
    )
    assert re.search(r"0x0?124", result.stdout + result.stderr)
    assert list((tmp_path / "got").iterdir()) == []

    assoc = associate(archive, "READER_A", "AE_A", StudyRootQueryRetrieveInformationModelGet)
    assert assoc.is_established
    try:
        identifier = pydicom.Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = secured.a.uid
        responses = assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)
        statuses = [int(status.Status) for status, _ in responses if status]
    finally:
        assoc.release()
    assert statuses == [STATUS_NOT_AUTHORIZED]


def test_a_peer_may_do_what_its_entry_lists(secured: Secured, tmp_path: Path) -> None:
    archive = secured.archive
    assoc = associate(archive, "MODALITY", "AE_B")
    assert assoc.is_established
    try:
        assert int(assoc.send_c_echo().Status) == 0
    finally:
        assoc.release()
    result = getscu(
        archive.dimse_port, "AE_B", "study", "STUDY", {"StudyInstanceUID": secured.b.uid}, tmp_path / "got",
        calling_ae="MODALITY",
    )
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "got").iterdir())) == 3


def wado_instance(archive: Archive, tenant: str, path: Path) -> bytes:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    url = (
        f"{archive.dicomweb_url(tenant)}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    response = httpx.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'}, timeout=30)
    assert response.status_code == 200, response.text
    (part,) = multipart_parts(response)
    return part


def test_a_peer_not_allowed_to_replace_cannot_overwrite_a_stored_instance(secured: Secured, tmp_path: Path) -> None:
    archive = secured.archive
    original = secured.b.files[0]
    before = wado_instance(archive, "tenant-b", original)
    forged = pydicom.dcmread(original)
    forged.PatientName = "Forged^Patient"
    forged.save_as(tmp_path / "forged.dcm", enforce_file_format=True)

    assert pynetdicom_store(archive.dimse_port, "AE_B", [tmp_path / "forged.dcm"], calling_ae="MODALITY") == [
        STATUS_DUPLICATE
    ]
    result = storescu(archive.dimse_port, "AE_B", [tmp_path / "forged.dcm"], EXPLICIT_LE, calling_ae="MODALITY")
    assert re.search(r"Store Response \(.*0x0?111\)", result.stdout + result.stderr)
    assert wado_instance(archive, "tenant-b", original) == before
    # The same content again (a modality retrying after a lost response) is no replacement.
    assert pynetdicom_store(archive.dimse_port, "AE_B", [original], calling_ae="MODALITY") == [0]
    assert wado_instance(archive, "tenant-b", original) == before


def refusals(archive: Archive) -> set[tuple[str, str]]:
    response = httpx.get(f"{archive.base_url}/api/stats/dimse_refusals", timeout=30)
    assert response.status_code == 200, response.text
    return {(row["calling_ae"], row["operation"]) for row in response.json()}


def test_every_refusal_is_in_the_warehouse(secured: Secured) -> None:
    """Runs after the tests above (pytest keeps file order): their refusals are the ones counted."""
    expected = {
        ("STRANGER", "associate"),
        ("ELSEWHERE", "associate"),
        ("READER_A", "store"),
        ("READER_A", "get"),
        ("MODALITY", "store"),
    }
    wait_until(lambda: expected <= refusals(secured.archive), 60, f"refusals {sorted(expected)} in the warehouse")


STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def attempt(archive: Archive, calling: str, called: str, operation: str, study: Study) -> str:
    """What the archive answers `calling` asking `called` for one operation on `study`: "rejected" (no
    association), "refused" (0x0124) or "done"."""
    contexts = {
        "echo": Verification,
        "store": CT_IMAGE_STORAGE,
        "find": STUDY_ROOT_FIND,
        "get": StudyRootQueryRetrieveInformationModelGet,
    }
    assoc = associate(archive, calling, called, contexts[operation])
    if assoc.is_rejected:
        return "rejected"
    assert assoc.is_established
    try:
        identifier = pydicom.Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = study.uid
        if operation == "echo":
            statuses = [int(assoc.send_c_echo().Status)]
        elif operation == "store":
            statuses = [int(assoc.send_c_store(pydicom.dcmread(study.files[0])).Status)]
        elif operation == "find":
            statuses = [int(status.Status) for status, _ in assoc.send_c_find(identifier, STUDY_ROOT_FIND) if status]
        else:
            responses = assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)
            statuses = [int(status.Status) for status, _ in responses if status]
    finally:
        assoc.release()
    return "refused" if statuses[-1] == STATUS_NOT_AUTHORIZED else "done"


@pytest.mark.parametrize("operation", ["echo", "store", "find", "get"])
@pytest.mark.parametrize("calling", ["MODALITY", "READER_A", "ELSEWHERE", "STRANGER"])
@pytest.mark.parametrize("called", ["AE_A", "AE_B"])
def test_the_peer_operation_tenant_matrix(secured: Secured, calling: str, called: str, operation: str) -> None:
    """Each listed peer does exactly what its entry allows, in exactly its tenants; nobody else does anything.
    (C-GET is answered "done" when it ran: the peer proposed no storage role, so its sub-operations fail.)"""
    peer = PEERS.get(calling)
    tenant = {"AE_A": "tenant-a", "AE_B": "tenant-b"}[called]
    if peer is None or calling == "ELSEWHERE" or tenant not in peer["tenants"]:
        expected = "rejected"
    else:
        expected = "done" if operation in peer.get("operations", ["echo", "store", "find", "get"]) else "refused"
    study = secured.a if called == "AE_A" else secured.b
    assert attempt(secured.archive, calling, called, operation, study) == expected


def test_the_startup_log_says_whether_access_control_is_on(secured: Secured, archive: Archive) -> None:
    assert "access control on: 3 known peer(s)" in secured.archive.log_tail(10_000)
    assert "access control off: any peer may associate" in archive.log_tail(10_000)
