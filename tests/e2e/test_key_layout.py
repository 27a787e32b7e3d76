"""The hashed key layout (`storage.key_layout = "hashed"`, archive/keys.py) with real clients: C-STORE by dcmtk and
STOW-RS in, WADO-RS instances, series metadata and frames out, DELETE, every object under fixed-length SeaHash
names grouped by study date; and an archive refuses to start when its layout setting changed afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pydicom.dataset import Dataset

from bench.synthetic import ct_series, multiframe, write_part10
from dicomcloud.archive.keys import LAYOUT_MARKER, uid_hash

from .conftest import AE_TITLE, start_archive
from .dicom_clients import multipart_parts, storescu, stow

pytestmark = [pytest.mark.e2e]

EXPLICIT_LE = "1.2.840.10008.1.2.1"
HASHED = {"DICOMCLOUD_STORAGE__KEY_LAYOUT": "hashed"}
DICOM_PARTS = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
FRAME_PARTS = {"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}


def test_the_archive_stores_serves_and_deletes_in_the_hashed_layout(tmp_path: Path) -> None:
    sent = list(ct_series(3, rows=16, columns=16))
    for number, ds in enumerate(sent):
        ds.StudyDate = "20240131"
        write_part10(ds, tmp_path / f"ct-{number}.dcm")
    stowed = multiframe(4, rows=16, columns=16, study_uid=sent[0].StudyInstanceUID)
    stowed.StudyDate = ""
    write_part10(stowed, tmp_path / "mf.dcm")
    files = {ds.SOPInstanceUID: tmp_path / f"ct-{n}.dcm" for n, ds in enumerate(sent)}
    files[stowed.SOPInstanceUID] = tmp_path / "mf.dcm"

    archive = start_archive(tmp_path, "hashed", HASHED)
    try:
        assert storescu(archive.dimse_port, AE_TITLE, list(files.values())[:3], EXPLICIT_LE).returncode == 0
        assert stow(archive.dicomweb_url(), [files[stowed.SOPInstanceUID].read_bytes()]).status_code == 200
        archive.wait_indexed(4, StudyInstanceUID=sent[0].StudyInstanceUID)

        stored = sorted(
            str(path.relative_to(archive.data / "storage"))
            for path in (archive.data / "storage").rglob("*.dcm")
        )

        def key_of(ds: Dataset) -> str:
            date = "2024/01/31" if ds.StudyDate else "undated"
            uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
            return f"default/{date}/{'/'.join(uid_hash(uid) for uid in uids)}.dcm"

        expected = sorted(key_of(ds) for ds in [*sent, stowed])
        assert stored == expected

        url = archive.dicomweb_url()
        for ds, key in zip(sorted([*sent, stowed], key=lambda ds: expected.index(key_of(ds))), expected, strict=True):
            instance = f"{url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances"
            response = httpx.get(f"{instance}/{ds.SOPInstanceUID}", headers=DICOM_PARTS, timeout=30)
            assert multipart_parts(response) == [(archive.data / "storage" / key).read_bytes()]
        assert multipart_parts(response)[0] == files[stowed.SOPInstanceUID].read_bytes()  # STOW-RS keeps the bytes
        series = f"{url}/studies/{stowed.StudyInstanceUID}/series/{stowed.SeriesInstanceUID}"
        metadata = httpx.get(f"{series}/metadata", timeout=30)
        assert [item["00080018"]["Value"] for item in metadata.json()] == [[stowed.SOPInstanceUID]]
        frame = httpx.get(f"{series}/instances/{stowed.SOPInstanceUID}/frames/2", headers=FRAME_PARTS, timeout=30)
        assert multipart_parts(frame) == [stowed.PixelData[16 * 16 : 2 * 16 * 16]]  # 8-bit frames

        assert httpx.delete(f"{url}/studies/{sent[0].StudyInstanceUID}", timeout=30).status_code in (200, 204)
        left = [p for p in (archive.data / "storage").rglob("*") if p.is_file() and p.name != LAYOUT_MARKER]
        assert left == [], "the study's originals, entries and series documents are removed"
    finally:
        archive.stop()

    refused = subprocess.run(
        [sys.executable, "-m", "dicomcloud", "server", "--data", str(archive.data)],
        capture_output=True, text=True, timeout=120, check=False, env=dict(os.environ),
    )  # fmt: skip
    assert refused.returncode == 1
    assert "keeps its objects in the 'hashed' key layout" in refused.stderr
    assert "DICOMCLOUD_STORAGE__KEY_LAYOUT=hashed" in refused.stderr
