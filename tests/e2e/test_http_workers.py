"""`dicomcloud up` with two HTTP workers: two processes answer DICOMweb on one port. What one worker stores or
deletes is answered at once by the other, which kept its own answers from before; concurrent objects under
one SOP Instance UID through both workers leave one decision; a worker that dies is started again; SIGTERM
stops every worker, each after its requests (a restarted one too). The background work (series documents,
the warehouse) runs in a third process, which no request waits for and which is started again too.

Which worker answered a request is read from the archive's log: every line names its worker, and uvicorn's
access line (at DEBUG) names the client's port, which is this test's own end of a new connection.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest

from bench.synthetic import ct_series, write_part10
from dicomcloud.process import BACKGROUND_NICENESS

from .conftest import Archive, answers, free_port, wait_until
from .dicom_clients import stow_body

pytestmark = [pytest.mark.e2e]

WORKERS = {"DICOMCLOUD_HTTP__WORKERS": "2", "DICOMCLOUD_LOG_LEVEL": "DEBUG"}
SOP_INSTANCE_UID = "00080018"
# Fresh connections made to see a read answered by the other worker: the kernel gives each to whichever
# worker accepts first, so a few suffice; the bound only ends a test that would otherwise never end.
ATTEMPTS = 200
ROUNDS = 20


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    worker: str


def ask(archive: Archive, method: str, path: str, body: bytes | None = None, **headers: str) -> Answer:
    """One request on a new connection, and the worker that answered it."""
    assert archive.log_path is not None
    connection = http.client.HTTPConnection("127.0.0.1", archive.http_port, timeout=60)
    connection.connect()
    assert connection.sock is not None
    port = connection.sock.getsockname()[1]
    line = re.compile(rf"\[(worker-\d+)\] uvicorn\.access: 127\.0\.0\.1:{port} - ")
    before = len(line.findall(archive.log_path.read_text(errors="replace")))
    connection.request(method, path, body=body, headers={**headers, "Connection": "close"})
    response = connection.getresponse()
    answer = response.read()
    connection.close()
    workers: list[str] = []

    def logged() -> bool:
        assert archive.log_path is not None
        workers[:] = line.findall(archive.log_path.read_text(errors="replace"))
        return len(workers) > before

    wait_until(logged, 10, f"the access line of {method} {path} from port {port}")
    return Answer(response.status, answer, workers[-1])


def part10(ds: pydicom.Dataset, folder: Path) -> bytes:
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    write_part10(ds, path)
    return path.read_bytes()


def stow(archive: Archive, raw: bytes) -> Answer:
    body, content_type = stow_body([raw])
    return ask(archive, "POST", "/dicom-web/studies", body, **{"Content-Type": content_type})


def listed_sops(answer: Answer) -> set[str]:
    return {item[SOP_INSTANCE_UID]["Value"][0] for item in json.loads(answer.body)} if answer.body else set()


@dataclass(frozen=True)
class Read:
    """One kind of read about an instance, and what it says about whether the instance is there."""

    name: str
    path: Callable[[pydicom.Dataset], str]
    shows: Callable[[Answer, pydicom.Dataset], bool]
    accept: str = "application/dicom+json"


def series_path(ds: pydicom.Dataset) -> str:
    return f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"


READS = [
    Read(
        "QIDO-RS instances of the series",
        lambda ds: f"{series_path(ds)}/instances",
        lambda answer, ds: answer.status == 200 and ds.SOPInstanceUID in listed_sops(answer),
    ),
    Read(
        "series metadata",
        lambda ds: f"{series_path(ds)}/metadata",
        lambda answer, ds: answer.status == 200 and ds.SOPInstanceUID in listed_sops(answer),
    ),
    Read(
        "WADO-RS retrieve",
        lambda ds: f"{series_path(ds)}/instances/{ds.SOPInstanceUID}",
        lambda answer, ds: answer.status == 200 and ds.SOPInstanceUID.encode() in answer.body,
        accept='multipart/related; type="application/dicom"',
    ),
]


def read_by_another_worker(archive: Archive, read: Read, ds: pydicom.Dataset, writer: str) -> list[Answer]:
    """`read` on new connections until a worker other than `writer` answered it; every answer on the way."""
    answers = []
    for _ in range(ATTEMPTS):
        answers.append(ask(archive, "GET", read.path(ds), Accept=read.accept))
        if answers[-1].worker != writer:
            return answers
    raise AssertionError(f"{ATTEMPTS} new connections for {read.name} all reached {writer}")


@pytest.fixture(scope="module")
def archive(archive_factory: Callable[..., Archive]) -> Archive:
    return archive_factory("http-workers", WORKERS)


def test_what_one_worker_stores_or_deletes_the_other_answers_at_once(archive: Archive, tmp_path: Path) -> None:
    first, second = ct_series(2, rows=16, columns=16, patient_id="WORKERS", seed=5)
    assert stow(archive, part10(first, tmp_path)).status == 200
    # Each worker answers each read once before the write, so what it kept from then would be served after.
    for read in READS:
        seen_by = set()
        for _ in range(ATTEMPTS):
            answer = ask(archive, "GET", read.path(first), Accept=read.accept)
            assert read.shows(answer, first), f"{read.name} by {answer.worker} without the first instance"
            seen_by.add(answer.worker)
            if len(seen_by) == 2:
                break
        assert seen_by == {"worker-1", "worker-2"}, f"only {seen_by} answered {read.name}"

    stored = stow(archive, part10(second, tmp_path))
    assert stored.status == 200
    wrong = [
        f"{read.name} by {answer.worker} after the store by {stored.worker}"
        for read in READS
        for answer in read_by_another_worker(archive, read, second, stored.worker)
        if not read.shows(answer, second)
    ]
    assert wrong == [], "an acknowledged instance was missing:\n" + "\n".join(wrong)

    deleted = ask(archive, "DELETE", f"{series_path(second)}/instances/{second.SOPInstanceUID}")
    assert deleted.status == 204
    wrong = [
        f"{read.name} by {answer.worker} after the delete by {deleted.worker}"
        for read in READS
        for answer in read_by_another_worker(archive, read, second, deleted.worker)
        if read.shows(answer, second)
    ]
    assert wrong == [], "a deleted instance was still served:\n" + "\n".join(wrong)


def send_at_once(archive: Archive, ds: pydicom.Dataset, folder: Path, count: int) -> list[Answer]:
    """`count` objects under `ds`'s UIDs (InstanceNumber 1..count), each STOW-RS on its own connection, at once."""
    variants = []
    for number in range(count):
        ds.InstanceNumber = number + 1
        (folder / str(number)).mkdir(parents=True)
        variants.append(part10(ds, folder / str(number)))
    answers = [Answer(0, b"", "")] * count

    def send(number: int) -> None:
        answers[number] = stow(archive, variants[number])

    senders = [threading.Thread(target=send, args=(number,)) for number in range(count)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    return answers


@pytest.mark.parametrize("policy", ["reject", "replace"])
def test_objects_sent_at_once_under_one_uid_through_both_workers_leave_one_decision(
    archive_factory: Callable[..., Archive], tmp_path: Path, policy: str
) -> None:
    """Rounds of 8 at once, each round a new UID, until a round reached both workers; every round must hold."""
    duplicates = archive_factory(f"http-workers-{policy}", {**WORKERS, "DICOMCLOUD_STORAGE__DUPLICATE_POLICY": policy})
    for round_number in range(ROUNDS):
        (ds,) = ct_series(1, rows=16, columns=16, patient_id="DUPLICATES", seed=round_number)
        answers = send_at_once(duplicates, ds, tmp_path / str(round_number), 8)
        statuses = [(answer.status, answer.worker) for answer in answers]
        accepted = [number for number, answer in enumerate(answers) if answer.status == 200]
        if policy == "reject":
            assert sorted(answer.status for answer in answers) == [200] + [409] * 7, statuses
        else:
            assert len(accepted) == len(answers), statuses
        listed = ask(duplicates, "GET", f"{series_path(ds)}/instances", Accept="application/dicom+json")
        assert listed_sops(listed) == {ds.SOPInstanceUID}
        (entry,) = json.loads(listed.body)
        retrieved = ask(duplicates, "GET", f"{series_path(ds)}/instances/{ds.SOPInstanceUID}/metadata")
        (metadata,) = json.loads(retrieved.body)
        number = metadata["00200013"]["Value"][0]
        assert entry["00200013"]["Value"] == [number], "the index and the stored metadata name one object"
        if policy == "reject":
            assert number == accepted[0] + 1, "the object kept is the one acknowledged"
        if {answer.worker for answer in answers} == {"worker-1", "worker-2"}:
            return
    raise AssertionError(f"in {ROUNDS} rounds, no round reached both workers")


def started_pids(archive: Archive, process: str) -> list[int]:
    """The pids the log names for `process` ("worker 2", "the background worker"), oldest first."""
    assert archive.log_path is not None
    text = archive.log_path.read_text(errors="replace")
    return [int(pid) for pid in re.findall(rf"started {process} \(pid (\d+)\)", text)]


def started_pid(archive: Archive, process: str, after: int = 0) -> int:
    """The pid of `process` the log names last, waiting for one past the first `after` it names."""
    pids: list[int] = []

    def started() -> bool:
        pids[:] = started_pids(archive, process)
        return len(pids) > after

    wait_until(started, 30, f"{process} to start")
    return pids[-1]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_worker_that_dies_is_started_again_serves_and_stops_gracefully(
    archive_factory: Callable[..., Archive],
) -> None:
    ops = free_port()
    archive = archive_factory("http-workers-restart", {**WORKERS, "DICOMCLOUD_OPS__PORT": str(ops)})
    assert archive.log_path is not None
    assert "http" in httpx.get(f"http://127.0.0.1:{ops}/ready", timeout=30).json()["checks"]
    starts = len(re.findall(r"started worker 2 ", archive.log_path.read_text(errors="replace")))
    killed = started_pid(archive, "worker 2")
    os.kill(killed, signal.SIGKILL)
    wait_until(lambda: gone(killed), 10, f"worker pid {killed} to die")
    replacement = started_pid(archive, "worker 2", after=starts)
    assert replacement != killed
    serving = "[worker-2] uvicorn.error: Application startup complete"
    wait_until(lambda: archive.log_tail(10_000).count(serving) > starts, 30, "the new worker 2 to serve")
    workers = set()
    for _ in range(ATTEMPTS):
        answer = ask(archive, "GET", "/dicom-web/studies", Accept="application/dicom+json")
        assert answer.status in (200, 204)
        workers.add(answer.worker)
        if workers == {"worker-1", "worker-2"}:
            break
    assert workers == {"worker-1", "worker-2"}
    wait_until(lambda: answers(f"http://127.0.0.1:{ops}/ready"), 30, "ready again with the new worker")
    archive.stop()
    assert f"[worker-2] uvicorn.error: Finished server process [{replacement}]" in archive.log_tail(200)


def document_written(archive: Archive, ds: pydicom.Dataset) -> bool:
    """Whether the webworker wrote the series document of `ds`'s series."""
    return any((archive.data / "storage").rglob(f"{ds.SeriesInstanceUID}/series.json"))


def test_the_background_work_runs_in_a_process_of_its_own_no_request_waits_for(
    archive_factory: Callable[..., Archive], tmp_path: Path
) -> None:
    archive = archive_factory("http-workers-background", WORKERS)
    background = started_pid(archive, "the background worker")
    assert "PYTHONMALLOC=malloc" in environment_of(background), "its large builds' memory goes back (process.py)"
    assert "PYTHONMALLOC=malloc" not in environment_of(started_pid(archive, "worker 2"))
    assert niceness_of(background) == BACKGROUND_NICENESS, "it yields the processor to the serving processes"
    assert niceness_of(started_pid(archive, "worker 2")) == 0
    first, second = (next(ct_series(1, rows=16, columns=16, seed=seed)) for seed in (31, 32))

    os.kill(background, signal.SIGSTOP)
    try:
        assert stow(archive, part10(first, tmp_path)).status == 200
        for read in READS:
            answer = ask(archive, "GET", read.path(first), Accept=read.accept)
            assert read.shows(answer, first), f"{read.name} answered by {answer.worker}: {answer.status}"
        time.sleep(3)  # several webworker rounds (it scans the index every 0.5 s)
        assert not document_written(archive, first), "a serving process wrote the series document"
    finally:
        os.kill(background, signal.SIGCONT)
    wait_until(lambda: document_written(archive, first), 30, "the background worker to write the series document")

    os.kill(background, signal.SIGKILL)
    wait_until(lambda: gone(background), 10, f"background worker pid {background} to die")
    assert started_pid(archive, "the background worker", after=1) != background
    assert stow(archive, part10(second, tmp_path)).status == 200
    wait_until(lambda: document_written(archive, second), 30, "the restarted background worker to write a document")


def environment_of(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/environ").read_text().split("\0")


def niceness_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def test_sigterm_stops_every_worker(archive_factory: Callable[..., Archive]) -> None:
    stopping = archive_factory("http-workers-stop", WORKERS)
    worker = started_pid(stopping, "worker 2")
    assert stopping.process is not None
    stopping.process.send_signal(signal.SIGTERM)
    assert stopping.process.wait(timeout=30) == 0
    assert gone(worker)
    assert "[worker-2] uvicorn.error: Finished server process" in stopping.log_tail(200)


def test_both_workers_answer_the_warehouse_statistics(archive: Archive) -> None:
    """DuckDB lets one process open its file: the workers take turns (and the loader with them)."""
    workers = set()
    for _ in range(ATTEMPTS):
        answer = ask(archive, "GET", "/api/stats/summary")
        assert answer.status == 200, f"{answer.worker}: {answer.status} {answer.body[:200]!r}"
        workers.add(answer.worker)
        if workers == {"worker-1", "worker-2"}:
            break
    assert workers == {"worker-1", "worker-2"}
