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
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pydicom
import pytest

from bench.synthetic import ct_series, write_part10
from dicomcloud.archive.core import Archive as DicomArchive
from dicomcloud.config import load_settings
from dicomcloud.dicom.query import parse_qido

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



IMPORT_FILES = 1500
SUMMARY = re.compile(r"interrupted: imported (\d+) of (\d+) files")


def test_sigint_mid_import_keeps_what_was_stored_and_acknowledges_nothing_more(tmp_path: Path) -> None:
    """`dicomcloud import --jobs 2` gets SIGINT (as from Ctrl-C) once it reports progress: the chunk being stored
    finishes, the ones being parsed are dropped. The summary counts exactly what the index and the storage hold
    (no object without its index row, no scratch file left), and fewer than all the files."""
    folder, data = tmp_path / "files", tmp_path / "data"
    for series in range(IMPORT_FILES // 100):
        (folder / f"{series:02}").mkdir(parents=True)
        for number, ds in enumerate(ct_series(100, rows=8, columns=8, patient_id="STOPPED", seed=series)):
            write_part10(ds, folder / f"{series:02}" / f"{number:03}.dcm")
    command = [sys.executable, "-m", "dicomcloud", "import", "--data", str(data), "--jobs", "2", str(folder)]
    importer = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert importer.stderr is not None
    try:
        lines = []
        for line in importer.stderr:  # not a terminal: a progress line each 100 files
            lines.append(line)
            if f"/{IMPORT_FILES} files" in line:
                importer.send_signal(signal.SIGINT)
                break
        lines += importer.stderr.readlines()
        assert importer.wait(timeout=120) == 2, "".join(lines)
    finally:
        if importer.poll() is None:
            importer.kill()
    output = "".join(lines)
    assert not INTERNAL_ERRORS.findall(output), output
    (summary,) = SUMMARY.findall(output)
    stored = int(summary[0])
    assert 0 < stored < IMPORT_FILES, output
    archive = DicomArchive.from_settings(load_settings(overrides={"storage": {"data_dir": str(data)}}, environ={}))
    try:
        indexed = archive.runtime.index.count("default", parse_qido("instance", {}))
        originals = [key for key in archive.runtime.storage.list("default/") if key.endswith(".dcm")]
    finally:
        archive.close()
    assert indexed == len(originals) == stored
    assert not list((data / "tmp").iterdir())
