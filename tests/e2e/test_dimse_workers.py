"""The DIMSE SCP as two processes on one port (`dimse.workers` = 2): what one process acknowledged is found by
C-FIND (on another association) and QIDO-RS and retrieved at once; the same SOP Instance UID sent at once through
both leaves one decision; a worker killed mid-transfer loses nothing acknowledged and is started again; SIGTERM
to `dicomcloud storescp --workers 2` answers the requests in flight on both; DICOM TLS works on both.

Which process served a C-STORE is read from the archive's log: every line names its worker, and the SCP's
DEBUG line names the SOP Instance UID it stored. The kernel gives each connection to whichever process accepts
it first, so the tests hold several associations open at once, round after round, until both have served
(the bound on rounds only ends a test that would otherwise never end).
"""

from __future__ import annotations

import copy
import io
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import httpx
import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.association import Association

from bench.synthetic import ct_series

from .conftest import AE_TITLE, Archive, wait_until
from .dicom_clients import multipart_parts

pytestmark = [pytest.mark.e2e]

WORKERS = {"DICOMCLOUD_DIMSE__WORKERS": "2", "DICOMCLOUD_LOG_LEVEL": "DEBUG"}
BOTH = {"worker-1", "worker-2"}
PARALLEL = 4
ROUNDS = 20
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
VERIFICATION = "1.2.840.10008.1.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
INSTANCE = 'multipart/related; type="application/dicom"'
Item = TypeVar("Item")
Result = TypeVar("Result")


def stored_by(log_path: Path, sop_uid: str) -> str:
    """The worker whose SCP logged storing `sop_uid`."""
    line = re.compile(rf"\[(worker-\d+)\] dicomcloud\.dimse\.scp: C-STORE {re.escape(sop_uid)} from ")
    found: list[str] = []

    def logged() -> bool:
        found[:] = line.findall(log_path.read_text(errors="replace"))
        return bool(found)

    wait_until(logged, 10, f"the log line of the C-STORE of {sop_uid}")
    return found[-1]


def associate(port: int, **tls: object) -> Association:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CT_IMAGE_STORAGE, EXPLICIT_LE)
    ae.add_requested_context(STUDY_ROOT_FIND)
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE, **tls)  # type: ignore[arg-type]
    assert assoc.is_established, "association refused"
    return assoc


@contextmanager
def held(port: int, count: int) -> Iterator[list[Association]]:
    """`count` associations open at once: a process busy with one leaves the next connection to the other."""
    associations = [associate(port) for _ in range(count)]
    try:
        yield associations
    finally:
        for assoc in associations:
            if assoc.is_established:
                assoc.release()


def at_once(work: Callable[[Item], Result], items: Sequence[Item]) -> list[Result]:
    """`work` on each item, each in a thread of its own, started together; the first failure is raised."""
    start = threading.Barrier(len(items))
    results: dict[int, Result] = {}
    errors: list[BaseException] = []

    def run(number: int) -> None:
        start.wait()
        try:
            results[number] = work(items[number])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(number,)) for number in range(len(items))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [results[number] for number in range(len(items))]


def c_store(assoc: Association, ds: pydicom.Dataset) -> int:
    status = assoc.send_c_store(ds)
    return int(status.Status) if status else -1


def c_find_sops(port: int, ds: pydicom.Dataset) -> list[str]:
    """C-FIND at IMAGE level for `ds`'s SOP Instance UID, on an association of its own."""
    query = pydicom.Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = ds.StudyInstanceUID
    query.SeriesInstanceUID = ds.SeriesInstanceUID
    query.SOPInstanceUID = ds.SOPInstanceUID
    assoc = associate(port)
    try:
        return [
            str(identifier.SOPInstanceUID)
            for status, identifier in assoc.send_c_find(query, STUDY_ROOT_FIND)
            if status and int(status.Status) in (0xFF00, 0xFF01) and identifier is not None
        ]
    finally:
        assoc.release()


def instance_url(archive: Archive, ds: pydicom.Dataset) -> str:
    return (
        f"{archive.dicomweb_url()}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def qido_sops(archive: Archive, ds: pydicom.Dataset) -> list[str]:
    response = httpx.get(
        f"{archive.dicomweb_url()}/instances", params={"SOPInstanceUID": ds.SOPInstanceUID}, timeout=30
    )
    assert response.status_code in (200, 204), response.text
    return [item["00080018"]["Value"][0] for item in response.json()] if response.content else []


def what_is_missing(archive: Archive, ds: pydicom.Dataset) -> list[str]:
    """What does not yet answer for an instance whose C-STORE succeeded."""
    missing = []
    if c_find_sops(archive.dimse_port, ds) != [ds.SOPInstanceUID]:
        missing.append("C-FIND")
    if qido_sops(archive, ds) != [ds.SOPInstanceUID]:
        missing.append("QIDO-RS")
    retrieved = httpx.get(instance_url(archive, ds), headers={"Accept": INSTANCE}, timeout=30)
    if retrieved.status_code != 200 or pydicom.dcmread(
        io.BytesIO(multipart_parts(retrieved)[0])
    ).PixelData != ds.PixelData:
        missing.append(f"WADO-RS ({retrieved.status_code})")
    return missing


def store_then_read(archive: Archive, assoc: Association, ds: pydicom.Dataset) -> list[str]:
    """C-STORE `ds`, and right after its success, what does not answer for it yet."""
    status = c_store(assoc, ds)
    return what_is_missing(archive, ds) if status == 0x0000 else [f"C-STORE 0x{status:04X}"]


@pytest.fixture(scope="module")
def archive(archive_factory: Callable[..., Archive]) -> Archive:
    return archive_factory("dimse-workers", WORKERS)


def test_what_either_dimse_worker_acknowledged_is_found_and_retrieved_at_once(archive: Archive) -> None:
    """`PARALLEL` associations at once, each a C-STORE; right after each success a C-FIND (another association,
    perhaps another process), QIDO-RS and WADO-RS (the service's own process) find and retrieve it."""
    assert archive.log_path is not None
    served: set[str] = set()
    for round_number in range(ROUNDS):
        datasets = list(ct_series(PARALLEL, rows=16, columns=16, patient_id="DIMSE-WORKERS", seed=round_number))
        with held(archive.dimse_port, PARALLEL) as associations:
            pairs = list(zip(associations, datasets, strict=True))
            missing = at_once(lambda pair: store_then_read(archive, *pair), pairs)
        wrong = [f"{ds.SOPInstanceUID}: {what}" for ds, what in zip(datasets, missing, strict=True) if what]
        assert wrong == [], "an acknowledged instance was not there:\n" + "\n".join(wrong)
        served |= {stored_by(archive.log_path, ds.SOPInstanceUID) for ds in datasets}
        if served == BOTH:
            return
    raise AssertionError(f"in {ROUNDS} rounds only {served} stored")


@pytest.mark.parametrize("policy", ["reject", "replace"])
def test_objects_sent_at_once_under_one_uid_through_both_dimse_workers_leave_one_decision(
    archive_factory: Callable[..., Archive], policy: str
) -> None:
    """Rounds of 8 associations at once, each a different object under one new SOP Instance UID, until a round
    reached both processes; every round must hold: what the policy says, one object, index and storage agree."""
    duplicates = archive_factory(f"dimse-workers-{policy}", {**WORKERS, "DICOMCLOUD_STORAGE__DUPLICATE_POLICY": policy})
    assert duplicates.log_path is not None
    count = 8
    for round_number in range(ROUNDS):
        (ds,) = ct_series(1, rows=16, columns=16, patient_id="DIMSE-DUPLICATES", seed=round_number)
        variants = []
        for number in range(count):
            variant = copy.deepcopy(ds)
            variant.InstanceNumber = number + 1
            variants.append(variant)
        with held(duplicates.dimse_port, count) as associations:
            statuses = at_once(lambda pair: c_store(*pair), list(zip(associations, variants, strict=True)))
            workers = {worker for assoc in associations for worker in _serving_worker(duplicates, assoc)}
        accepted = [number for number, status in enumerate(statuses) if status == 0x0000]
        if policy == "reject":
            assert sorted(statuses) == [0x0000] + [0x0111] * (count - 1), statuses
        else:
            assert len(accepted) == count, statuses
        assert qido_sops(duplicates, ds) == [ds.SOPInstanceUID]
        metadata = httpx.get(f"{instance_url(duplicates, ds)}/metadata", timeout=30).json()
        listed = httpx.get(
            f"{duplicates.dicomweb_url()}/instances",
            params={"SOPInstanceUID": ds.SOPInstanceUID, "includefield": "00200013"},
            timeout=30,
        ).json()
        number = metadata[0]["00200013"]["Value"][0]
        assert listed[0]["00200013"]["Value"] == [number], "the index and the stored object name one object"
        retrieved = httpx.get(instance_url(duplicates, ds), headers={"Accept": INSTANCE}, timeout=30)
        (part,) = multipart_parts(retrieved)
        assert pydicom.dcmread(io.BytesIO(part)).InstanceNumber == number
        if policy == "reject":
            assert number == accepted[0] + 1, "the object kept is the one acknowledged"
        if workers == BOTH:
            return
    raise AssertionError(f"in {ROUNDS} rounds, no round reached both processes")


def _serving_worker(archive: Archive, assoc: Association) -> set[str]:
    """The worker that accepted `assoc`, from the SCP's log line naming its peer's port."""
    assert archive.log_path is not None
    port = assoc.dul.socket.socket.getsockname()[1]  # type: ignore[union-attr]
    line = re.compile(rf"\[(worker-\d+)\] dicomcloud\.dimse\.scp: association from .* at 127\.0\.0\.1:{port}$", re.M)
    found: list[str] = []

    def logged() -> bool:
        assert archive.log_path is not None
        found[:] = line.findall(archive.log_path.read_text(errors="replace"))
        return bool(found)

    wait_until(logged, 10, f"the log line of the association from port {port}")
    return set(found)
