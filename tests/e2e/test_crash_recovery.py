"""kill -9 of the all-in-one archive while storescu sends: every acknowledged instance survives, once. With one
worker process and with two serving HTTP and DIMSE (the second dies with the archive, and the restart finds the
ports free), and with parallel associations whose stores share group commits (the kill lands while a group is
being placed) and, with two processes, land on both."""

from __future__ import annotations

import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import httpx
import pydicom
import pytest

from bench.synthetic import ct_series, write_part10

from .conftest import AE_TITLE, Archive, wait_until
from .dicom_clients import multipart_parts
from .test_http_workers import gone, started_pids

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SENT = 300
KILL_AFTER = 120
ASSOCIATIONS = 4


def worker_settings(workers: str) -> dict[str, str]:
    """`dicomcloud up --workers N`: N processes, each serving HTTP and DIMSE."""
    return {"DICOMCLOUD_HTTP__WORKERS": workers, "DICOMCLOUD_DIMSE__WORKERS": workers}


def acknowledged_files(storescu_log: str) -> list[Path]:
    """Files whose C-STORE got a Success response, from storescu's verbose log."""
    acknowledged = []
    current: str | None = None
    for line in storescu_log.splitlines():
        sending = re.match(r"I: Sending file: (.+)$", line)
        if sending:
            current = sending.group(1)
        elif "Received Store Response (Success)" in line and current:
            acknowledged.append(Path(current))
            current = None
    return acknowledged


def settle_until_count_is_stable(archive: Archive) -> None:
    """Replayed events beyond the acknowledged set may still be indexing: wait for a steady count."""
    previous = -1
    for _ in range(60):
        current = archive.count_instances(PatientID="CRASH")
        if current == previous:
            return
        previous = current
        time.sleep(1.0)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_kill_9_during_c_store_loses_no_acknowledged_instance(
    archive_factory: Callable[..., Archive], tmp_path: Path, workers: str
) -> None:
    paths = []
    for i, ds in enumerate(ct_series(SENT, rows=64, columns=64, patient_id="CRASH", seed=3)):
        path = tmp_path / f"i{i:03d}.dcm"
        write_part10(ds, path)
        paths.append(path)
    archive = archive_factory(f"crash-{workers}", worker_settings(workers))
    log_path = tmp_path / "storescu.log"
    with log_path.open("w") as log:
        sender = subprocess.Popen(
            ["storescu", "-v", "-aec", AE_TITLE, "-R", "-xe", "127.0.0.1", str(archive.dimse_port), *map(str, paths)],
            stdout=log, stderr=subprocess.STDOUT, text=True,
        )
        wait_until(lambda: len(acknowledged_files(log_path.read_text())) >= KILL_AFTER, 120, "acknowledgements")
        archive.kill9()
        sender.wait(timeout=60)
    acknowledged = acknowledged_files(log_path.read_text())
    assert KILL_AFTER <= len(acknowledged) < SENT, "the kill must land in the middle of the transfer"

    assert_survived(archive, acknowledged)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_kill_9_during_parallel_c_store_loses_no_acknowledged_instance(
    archive_factory: Callable[..., Archive], tmp_path: Path, workers: str
) -> None:
    folders = [tmp_path / f"association-{n}" for n in range(ASSOCIATIONS)]
    for folder in folders:
        folder.mkdir()
    for i, ds in enumerate(ct_series(SENT, rows=64, columns=64, patient_id="CRASH", seed=4)):
        write_part10(ds, folders[i % ASSOCIATIONS] / f"i{i:03d}.dcm")
    archive = archive_factory(f"crash-parallel-{workers}", worker_settings(workers))
    assert archive.log_path is not None
    worker_pids = started_pids(archive, "worker 2") + started_pids(archive, "the background worker")
    assert len(worker_pids) == (2 if workers == "2" else 0)
    logs = [tmp_path / f"storescu-{n}.log" for n in range(ASSOCIATIONS)]

    def acknowledged_by_all() -> list[Path]:
        return [path for log in logs for path in acknowledged_files(log.read_text())]

    senders = []
    for folder, log_path in zip(folders, logs, strict=True):
        with log_path.open("w") as log:
            command = ["storescu", "-v", "-aec", AE_TITLE, "-R", "-xe", "+sd", "127.0.0.1", str(archive.dimse_port)]
            senders.append(subprocess.Popen([*command, str(folder)], stdout=log, stderr=subprocess.STDOUT, text=True))
    wait_until(lambda: len(acknowledged_by_all()) >= KILL_AFTER, 120, "acknowledgements")
    archive.kill9()
    for pid in worker_pids:
        wait_until(lambda: gone(pid), 10, f"worker pid {pid} to die with the archive")  # noqa: B023
    for sender in senders:
        sender.wait(timeout=60)
    acknowledged = acknowledged_by_all()
    assert KILL_AFTER <= len(acknowledged) < SENT, "the kill must land in the middle of the transfer"
    assert_survived(archive, acknowledged)


def assert_survived(archive: Archive, acknowledged: list[Path]) -> None:
    """Restart the killed archive: each acknowledged file is there once, its study counts right, its pixels intact."""
    archive.start()
    archive.wait_indexed(len(acknowledged), PatientID="CRASH", timeout=180)
    settle_until_count_is_stable(archive)

    found = httpx.get(
        f"{archive.dicomweb_url()}/instances", params={"PatientID": "CRASH", "limit": "1000"}, timeout=30
    ).json()
    uids = Counter(item["00080018"]["Value"][0] for item in found)
    assert all(count == 1 for count in uids.values()), "an instance was indexed twice"
    for path in acknowledged:
        assert str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) in uids

    study = httpx.get(
        f"{archive.dicomweb_url()}/studies", params={"PatientID": "CRASH"}, timeout=30
    ).json()
    assert study[0]["00201208"]["Value"] == [len(uids)]

    for path in acknowledged[:: max(1, len(acknowledged) // 10)]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        url = (
            f"{archive.dicomweb_url()}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}"
        )
        response = httpx.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'}, timeout=30)
        assert response.status_code == 200
        stored = pydicom.dcmread(BytesIO(multipart_parts(response)[0]))
        assert stored.PixelData == pydicom.dcmread(path).PixelData
