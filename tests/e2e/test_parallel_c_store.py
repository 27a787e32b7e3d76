"""Parallel C-STORE associations share their commits (archive/store.py group commit), and an acknowledgement still
means "there": each success, on any association, is answered only once its instance is queryable, and every
instance one sender is refused stays that sender's. Real senders: pynetdicom associations in threads and dcmtk
storescu processes, on the embedded archive (`dicomcloud up`)."""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE

from bench.synthetic import ct_series, new_uid, write_part10

from .conftest import AE_TITLE, Archive

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ASSOCIATIONS = 4
PER_ASSOCIATION = 25
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


def found_by_qido(archive: Archive, study: str, sop: str) -> bool:
    response = httpx.get(
        f"{archive.dicomweb_url()}/studies/{study}/instances", params={"SOPInstanceUID": sop}, timeout=30
    )
    return response.status_code == 200 and [i["00080018"]["Value"][0] for i in response.json()] == [sop]


def series(study: str, patient: str, seed: int) -> list[Dataset]:
    return list(ct_series(PER_ASSOCIATION, rows=32, columns=32, patient_id=patient, study_uid=study, seed=seed))


def test_parallel_pynetdicom_associations_find_each_acknowledged_instance_at_once(
    archive_factory: Callable[..., Archive],
) -> None:
    archive = archive_factory("parallel-c-store-pynetdicom")
    study = new_uid()
    senders = [series(study, "PARALLEL-PYNETDICOM", seed) for seed in range(ASSOCIATIONS)]
    missed: list[str] = []
    statuses: list[int] = []

    def send(datasets: list[Dataset]) -> None:
        ae = AE(ae_title="PARALLELSCU")
        ae.add_requested_context(CT_IMAGE_STORAGE, EXPLICIT_VR_LITTLE_ENDIAN)
        assoc = ae.associate("127.0.0.1", archive.dimse_port, ae_title=AE_TITLE)
        assert assoc.is_established
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                statuses.append(int(status.Status))
                if status.Status == 0x0000 and not found_by_qido(archive, study, str(ds.SOPInstanceUID)):
                    missed.append(str(ds.SOPInstanceUID))
        finally:
            assoc.release()

    threads = [threading.Thread(target=send, args=(datasets,)) for datasets in senders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert statuses == [0x0000] * ASSOCIATIONS * PER_ASSOCIATION
    assert missed == [], f"{len(missed)} acknowledged instances were not queryable at once"
    assert archive.count_instances(StudyInstanceUID=study) == ASSOCIATIONS * PER_ASSOCIATION


def acknowledged(storescu_log: str) -> int:
    """How many C-STOREs got a Success response, from storescu's verbose log."""
    return len(re.findall(r"Received Store Response \(Success\)", storescu_log))


def test_parallel_storescu_associations_are_all_queryable_when_the_senders_exit(
    archive_factory: Callable[..., Archive], tmp_path: Path
) -> None:
    archive = archive_factory("parallel-c-store-storescu")
    study = new_uid()
    folders = []
    for seed in range(ASSOCIATIONS):
        folder = tmp_path / f"series-{seed}"
        folder.mkdir()
        for n, ds in enumerate(series(study, "PARALLEL-STORESCU", seed)):
            write_part10(ds, folder / f"{n:03d}.dcm")
        folders.append(folder)
    senders = [
        subprocess.Popen(
            ["storescu", "-v", "-aec", AE_TITLE, "+sd", "+r", "127.0.0.1", str(archive.dimse_port), str(folder)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for folder in folders
    ]
    logs = [sender.communicate(timeout=300)[0] for sender in senders]
    assert [sender.returncode for sender in senders] == [0] * ASSOCIATIONS, logs
    assert [acknowledged(log) for log in logs] == [PER_ASSOCIATION] * ASSOCIATIONS
    # No wait: every instance was acknowledged, so every one is there.
    assert archive.count_instances(StudyInstanceUID=study) == ASSOCIATIONS * PER_ASSOCIATION
