"""`dicomcloud import PATH…`: every DICOM file under the paths stored as C-STORE would store it (indexed and
announced at once), a file that is not DICOM counted and named, never fatal; a DICOMDIR read as the media's
directory (the files it references stored, itself not counted as a failure)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from support import make_archive

from bench.synthetic import ct_series, write_part10
from dicomcloud.cli import build_parser, run_import
from dicomcloud.config import load_settings
from dicomcloud.dicom.query import parse_qido

STUDY, SERIES = "1.2.826.0.9.1", "1.2.826.0.9.1.1"


def test_import_stores_every_dicom_file_under_a_folder_and_counts_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "incoming" / "nested"
    folder.mkdir(parents=True)
    # Small files (a few KB, as the bench's index studies): they fit in a writer's buffer.
    for n, ds in enumerate(ct_series(3, rows=8, columns=8, study_uid=STUDY, series_uid=SERIES)):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{SERIES}.{n}"
        write_part10(ds, folder / f"{n}.dcm")
    (folder / "notes.txt").write_text("not an image")
    data = tmp_path / "data"
    settings = load_settings(overrides={"storage": {"data_dir": str(data)}}, environ={})
    args = build_parser().parse_args(["import", str(tmp_path / "incoming")])
    with caplog.at_level(logging.WARNING, logger="dicomcloud"):
        assert run_import(settings, args) == 2
    assert any("notes.txt" in message for message in caplog.messages)
    archive = make_archive(data)
    try:
        rows = archive.runtime.index.search("default", parse_qido("instance", {}, study_instance_uid=STUDY))
        assert sorted(row["SOPInstanceUID"] for row in rows) == [f"{SERIES}.{n}" for n in range(3)]
        assert archive.runtime.storage.list("default/") and not list((data / "tmp").iterdir())
    finally:
        archive.close()


@pytest.mark.parametrize("named", ["the folder", "the DICOMDIR"])
def test_import_of_dicom_media_stores_the_files_its_dicomdir_references(tmp_path: Path, named: str) -> None:
    """pydicom's file set: a DICOMDIR and the 31 files it references, in folders of its own naming."""
    original = Path(get_testdata_file("DICOMDIR"))
    media = tmp_path / "media"
    media.mkdir()
    shutil.copy(original, media / "DICOMDIR")
    for folder in ("77654033", "98892001", "98892003"):
        shutil.copytree(original.parent / folder, media / folder)
    referenced = [
        media.joinpath(*record.ReferencedFileID)
        for record in pydicom.dcmread(original).DirectoryRecordSequence
        if "ReferencedFileID" in record
    ]
    data = tmp_path / "data"
    settings = load_settings(overrides={"storage": {"data_dir": str(data)}}, environ={})
    args = build_parser().parse_args(["import", str(media if named == "the folder" else media / "DICOMDIR")])
    assert run_import(settings, args) == 0
    archive = make_archive(data)
    try:
        rows = archive.runtime.index.search("default", parse_qido("instance", {}))
        expected = {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in referenced}
        assert len(referenced) == 31
        assert {row["SOPInstanceUID"] for row in rows} == expected
    finally:
        archive.close()
