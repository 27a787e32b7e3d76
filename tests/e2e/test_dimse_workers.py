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
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.association import Association

from bench.synthetic import ct_series, write_part10
from dicomcloud.archive.core import Archive as DicomArchive
from dicomcloud.config import load_settings

from .conftest import AE_TITLE, Archive, answers, free_port, wait_until
from .dicom_clients import multipart_parts
from .test_crash_recovery import acknowledged_files
from .test_graceful_stop import INTERNAL_ERRORS
from .test_http_workers import gone

pytestmark = [pytest.mark.e2e]

WORKERS = {"DICOMCLOUD_DIMSE__WORKERS": "2", "DICOMCLOUD_LOG_LEVEL": "DEBUG"}
BOTH = {"worker-1", "worker-2"}
PARALLEL = 4
ROUNDS = 20
# Instances each storescu sends in the kill and stop tests, and how many each worker must have stored when the
# kill or stop lands (the senders still sending).
FILES_PER_SENDER = 150
BUSY = 5
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
VERIFICATION = "1.2.840.10008.1.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
INSTANCE = 'multipart/related; type="application/dicom"'
TlsArgs = tuple[ssl.SSLContext, str] | None
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


def associate(port: int, tls: TlsArgs = None) -> Association:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CT_IMAGE_STORAGE, EXPLICIT_LE)
    ae.add_requested_context(STUDY_ROOT_FIND)
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE, tls_args=tls)
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


def c_find_sops(port: int, ds: pydicom.Dataset, tls: TlsArgs = None) -> list[str]:
    """C-FIND at IMAGE level for `ds`'s SOP Instance UID, on an association of its own."""
    query = pydicom.Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = ds.StudyInstanceUID
    query.SeriesInstanceUID = ds.SeriesInstanceUID
    query.SOPInstanceUID = ds.SOPInstanceUID
    assoc = associate(port, tls)
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


def what_is_missing(archive: Archive, ds: pydicom.Dataset, tls: TlsArgs = None) -> list[str]:
    """What does not yet answer for an instance whose C-STORE succeeded."""
    missing = []
    if c_find_sops(archive.dimse_port, ds, tls) != [ds.SOPInstanceUID]:
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


def worker_stores(log_path: Path, worker: str) -> int:
    """How many C-STOREs `worker` logged storing."""
    return log_path.read_text(errors="replace").count(f"[{worker}] dicomcloud.dimse.scp: C-STORE ")


def worker_pids(log_path: Path) -> list[int]:
    """The pids worker 2 was started with, in order."""
    return [int(pid) for pid in re.findall(r"started worker 2 \(pid (\d+)\)", log_path.read_text(errors="replace"))]


@dataclass
class Senders:
    """dcmtk storescu processes, one association each, sending folders of new instances."""

    logs: list[Path]
    processes: list[subprocess.Popen[str]]
    files: list[Path]

    def running(self) -> bool:
        return any(process.poll() is None for process in self.processes)

    def wait(self) -> None:
        for process in self.processes:
            process.wait(timeout=180)

    def acknowledged(self) -> list[Path]:
        return [path for log in self.logs for path in acknowledged_files(log.read_text())]


def send_in_parallel(
    port: int, folder: Path, patient_id: str, seed: int, *tls: str, per_sender: int = FILES_PER_SENDER
) -> Senders:
    """`PARALLEL` storescu processes at once, each `per_sender` new CT instances on one association."""
    logs, processes, files = [], [], []
    series = ct_series(PARALLEL * per_sender, rows=128, columns=128, patient_id=patient_id, seed=seed)
    for number, ds in enumerate(series):
        sender_folder = folder / f"sender-{number % PARALLEL}"
        sender_folder.mkdir(parents=True, exist_ok=True)
        files.append(sender_folder / f"{number:04d}.dcm")
        write_part10(ds, files[-1])
    for sender in range(PARALLEL):
        logs.append(folder / f"storescu-{sender}.log")
        command = ["storescu", "-v", *tls, "-aec", AE_TITLE, "-xe", "+sd", "127.0.0.1", str(port)]
        with logs[-1].open("w") as log:
            processes.append(
                subprocess.Popen(
                    [*command, str(folder / f"sender-{sender}")], stdout=log, stderr=subprocess.STDOUT, text=True
                )
            )
    return Senders(logs, processes, files)


def busy(log_path: Path, before: dict[str, int]) -> bool:
    """Whether each worker stored `BUSY` more instances than `before`."""
    return all(worker_stores(log_path, worker) >= count + BUSY for worker, count in before.items())


def until_both_store(log_path: Path, start: Callable[[int], Senders]) -> Senders:
    """Rounds of parallel senders (`start(round)`) until, in one round, each worker stored `BUSY` instances while
    senders are still sending; that round's senders."""
    for round_number in range(ROUNDS):
        before = {worker: worker_stores(log_path, worker) for worker in BOTH}
        senders = start(round_number)
        wait_until(
            lambda: busy(log_path, before) or not senders.running(),  # noqa: B023 - called before the loop moves on
            120,
            "the senders to reach both workers or end",
        )
        if busy(log_path, before) and senders.running():
            return senders
        senders.wait()
    raise AssertionError(f"in {ROUNDS} rounds of {PARALLEL} senders, no round kept both workers busy")


def assert_kept(archive: Archive, acknowledged: list[Path], patient_id: str, tls: TlsArgs = None) -> None:
    """Every acknowledged instance found once by QIDO-RS, and (a sample) by C-FIND and retrieved intact."""
    found = httpx.get(
        f"{archive.dicomweb_url()}/instances", params={"PatientID": patient_id, "limit": "100000"}, timeout=60
    ).json()
    uids = Counter(item["00080018"]["Value"][0] for item in found)
    assert all(count == 1 for count in uids.values()), "an instance was indexed twice"
    datasets = [pydicom.dcmread(path) for path in acknowledged]
    lost = [ds.SOPInstanceUID for ds in datasets if ds.SOPInstanceUID not in uids]
    assert lost == [], f"{len(lost)} acknowledged instances lost: {lost[:5]}"
    wrong = [what for ds in datasets[:: max(1, len(datasets) // 10)] if (what := what_is_missing(archive, ds, tls))]
    assert wrong == []


@pytest.mark.slow
def test_a_dimse_worker_killed_mid_c_store_loses_nothing_acknowledged_and_serves_again(
    archive_factory: Callable[..., Archive], tmp_path: Path
) -> None:
    ops = free_port()
    archive = archive_factory("dimse-workers-kill", {**WORKERS, "DICOMCLOUD_OPS__PORT": str(ops)})
    log_path = archive.log_path
    assert log_path is not None
    (killed,) = worker_pids(log_path)
    senders = until_both_store(
        log_path, lambda n: send_in_parallel(archive.dimse_port, tmp_path / f"round-{n}", "DIMSE-KILL", n)
    )
    os.kill(killed, signal.SIGKILL)
    senders.wait()
    acknowledged = senders.acknowledged()
    assert len(acknowledged) < len(senders.files), "the kill must land in the middle of the transfer"
    wait_until(lambda: gone(killed), 10, f"worker pid {killed} to die")

    wait_until(lambda: len(worker_pids(log_path)) == 2, 30, "worker 2 to be started again")
    wait_until(lambda: answers(f"http://127.0.0.1:{ops}/ready"), 60, "ready again with the new worker 2")
    assert_kept(archive, acknowledged, "DIMSE-KILL")
    for _ in range(ROUNDS):
        with held(archive.dimse_port, PARALLEL) as associations:
            served = {worker for assoc in associations for worker in _serving_worker(archive, assoc)}
        if "worker-2" in served:
            break
    assert "worker-2" in served, "the new worker 2 accepted no association"
    archive.stop()
    assert archive.process is not None
    assert archive.process.returncode == 0
    assert "did not stop" not in archive.log_tail(50), "a worker hung on the stop and was killed"


@pytest.mark.slow
def test_sigterm_to_storescp_with_two_workers_answers_what_both_are_storing(tmp_path: Path) -> None:
    """`dicomcloud storescp --workers 2` gets SIGTERM while both processes store: each answers the C-STORE it is
    storing, refuses what comes after untouched, and exits; every acknowledged instance is in the index and the
    storage, and nothing failed inside."""
    data, port, ops = tmp_path / "data", free_port(), free_port()
    log_path = tmp_path / "storescp.log"
    command = [
        sys.executable, "-m", "dicomcloud", "storescp", "--data", str(data), "--dimse-port", str(port),
        "--ae-title", AE_TITLE, "--workers", "2",
    ]
    env = {**os.environ, **WORKERS, "DICOMCLOUD_OPS__PORT": str(ops)}
    with log_path.open("w") as log:
        service = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{ops}/ready"), 60, "storescp to be ready")
        (worker,) = worker_pids(log_path)
        senders = until_both_store(
            log_path, lambda n: send_in_parallel(port, tmp_path / f"round-{n}", "DIMSE-STOP", n)
        )
        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=120) == 0, log_path.read_text()[-3000:]
        senders.wait()
    finally:
        if service.poll() is None:
            service.kill()
    assert gone(worker)
    acknowledged = senders.acknowledged()
    assert len(acknowledged) < len(senders.files), "the stop must land in the middle of the transfer"
    text = log_path.read_text(errors="replace")
    assert not INTERNAL_ERRORS.findall(text), text[-3000:]
    assert "did not stop" not in text, "a worker hung on the stop and was killed"
    responses = [line for log in senders.logs for line in log.read_text().splitlines() if "Store Response" in line]
    assert {re.sub(r".*Received Store Response ", "", line) for line in responses} <= {
        "(Success)", "(Refused: OutOfResources)"
    }, "a request being answered got no clean answer"
    archive = DicomArchive.from_settings(load_settings(overrides={"storage": {"data_dir": str(data)}}, environ={}))
    try:
        for path in acknowledged:
            ds = pydicom.dcmread(path)
            location = archive.runtime.index.get_instance("default", ds.SOPInstanceUID)
            assert location is not None, f"{ds.SOPInstanceUID} acknowledged, not indexed"
            stored = pydicom.dcmread(io.BytesIO(archive.runtime.storage.read(location.file_path)))
            assert stored.PixelData == ds.PixelData
    finally:
        archive.close()


def test_dicom_tls_through_either_dimse_worker(
    archive_factory: Callable[..., Archive], pki: Path, tmp_path: Path
) -> None:
    """An SCP that speaks only DICOM TLS, with a client certificate required, as two processes: storescu over TLS
    stores through each, and pynetdicom over TLS finds what it stored."""
    tls_env = {
        "DICOMCLOUD_DIMSE__TLS_CERT_FILE": str(pki / "server.pem"),
        "DICOMCLOUD_DIMSE__TLS_KEY_FILE": str(pki / "server.key"),
        "DICOMCLOUD_DIMSE__TLS_CA_FILE": str(pki / "ca.pem"),
        "DICOMCLOUD_DIMSE__TLS_REQUIRE_CLIENT_CERT": "true",
    }
    archive = archive_factory("dimse-workers-tls", {**WORKERS, **tls_env})
    assert archive.log_path is not None
    client = ("+tls", str(pki / "client-STORESCU.key"), str(pki / "client-STORESCU.pem"), "+cf", str(pki / "ca.pem"))
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    context.load_cert_chain(str(pki / "client-STORESCU.pem"), str(pki / "client-STORESCU.key"))
    served: set[str] = set()
    for round_number in range(ROUNDS):
        folder = tmp_path / f"round-{round_number}"
        senders = send_in_parallel(archive.dimse_port, folder, "DIMSE-TLS", round_number, *client, per_sender=5)
        senders.wait()
        assert [process.returncode for process in senders.processes] == [0] * PARALLEL, senders.logs[0].read_text()
        assert_kept(archive, senders.acknowledged(), "DIMSE-TLS", (context, "127.0.0.1"))
        served |= {stored_by(archive.log_path, str(pydicom.dcmread(path).SOPInstanceUID)) for path in senders.files}
        if served == BOTH:
            return
    raise AssertionError(f"in {ROUNDS} rounds only {served} stored over TLS")
