"""Ctrl-C during a storescu batch: what was acknowledged is there after a restart, and nothing failed inside.

dcmtk's storescu sends a few hundred files on one association to `dicomcloud up`; SIGINT arrives while it
is sending. The archive stops accepting, answers the C-STORE it is storing, refuses what comes after
(sending it again later is safe) and closes; restarted on the same data folder, it serves every instance
storescu saw acknowledged, and its log holds no internal error.
"""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pydicom
import pytest

from bench.synthetic import ct_series, write_part10

from .conftest import AE_TITLE, Archive, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FILES = 400
# A stop that lost an acknowledged instance, or refused one half-way because the index was closed under it.
INTERNAL_ERRORS = re.compile(r"Traceback|closed database|Cannot operate|\bERROR\b|CRITICAL")


def acknowledged(storescu_log: str) -> list[Path]:
    """The files storescu reported a Success response for (its -v log: 'Sending file' then the response)."""
    done: list[Path] = []
    sending: Path | None = None
    for line in storescu_log.splitlines():
        if match := re.search(r"Sending file: (.+)$", line):
            sending = Path(match.group(1).strip())
        elif "Received Store Response (Success)" in line and sending is not None:
            done.append(sending)
            sending = None
    return done


def instance_url(archive: Archive, path: Path) -> str:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return (
        f"{archive.dicomweb_url()}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def test_sigint_mid_batch_loses_nothing_acknowledged_and_logs_no_internal_error(
    archive_factory: Callable[..., Archive], tmp_path: Path
) -> None:
    archive = archive_factory("graceful")
    folder = tmp_path / "batch"
    folder.mkdir()
    files = []
    for number, ds in enumerate(ct_series(FILES, rows=64, columns=64, patient_id="GRACEFUL")):
        files.append(folder / f"{number:04d}.dcm")
        write_part10(ds, files[-1])
    command = ["storescu", "-v", "-aet", "BATCH", "-aec", AE_TITLE, "-xe", "127.0.0.1", str(archive.dimse_port)]
    sender = subprocess.Popen(
        [*command, *map(str, files)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    try:
        wait_until(lambda: archive.count_instances(PatientID="GRACEFUL") >= FILES // 8, 120, "the batch under way")
        assert archive.process is not None
        archive.process.send_signal(signal.SIGINT)
        assert archive.process.wait(timeout=90) == 0, archive.log_tail()
        _, sent_log = sender.communicate(timeout=120)
    finally:
        if sender.poll() is None:
            sender.kill()
    acked = acknowledged(sent_log)
    assert FILES // 8 <= len(acked) < FILES, f"the stop should land mid-batch: {len(acked)} acknowledged"
    assert archive.log_path is not None
    log_text = archive.log_path.read_text(errors="replace")
    assert not INTERNAL_ERRORS.findall(log_text), archive.log_tail(80)
    # The first C-STORE after the stop is refused with "out of resources", on which storescu ends its batch.
    assert "Received Store Response (Refused: OutOfResources)" in sent_log, sent_log[-2000:]

    archive.start()
    accept = {"Accept": 'multipart/related; type="application/dicom"'}
    missing = [
        path.name
        for path in acked
        if httpx.get(instance_url(archive, path), headers=accept, timeout=30).status_code != 200
    ]
    assert missing == [], f"{len(missing)} acknowledged instances lost: {missing[:10]}"
