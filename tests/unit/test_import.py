"""`dicomcloud import PATH…`: every DICOM file under the paths stored as C-STORE would store it (indexed and
announced at once), a file that is not DICOM counted and named, never fatal; a DICOMDIR read as the media's
directory (the files it references stored, itself not counted as a failure)."""

from __future__ import annotations

import logging
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from support import make_archive, stored_keys

from bench.synthetic import ct_series, write_part10
from dicomcloud.archive import bulk_import
from dicomcloud.archive.bulk_import import FileImport
from dicomcloud.cli import build_parser, iter_files, run_import
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



# Small chunks, so a few dozen files make several chunks for each of two worker processes.
CHUNK = 6
TRUNCATED, NOT_DICOM, EMPTY = "04-truncated.dcm", "00-notes.txt", "05-empty.dcm"
COPY, OTHER = "06-copy.dcm", "07-other.dcm"


@dataclass
class MixedFolder:
    """Good files among bad ones and duplicates, named so that the walk meets them in this order."""

    root: Path
    good: dict[str, bytes]  # SOP Instance UID -> the bytes it ends up with under "replace"
    first: dict[str, bytes]  # the same under "reject": the other content is refused
    files: int


def mixed_folder(root: Path) -> MixedFolder:
    """Three studies of 8 small CT files; a truncated file, a text file and an empty one among them; then an
    identical copy of one good file, and another good file's UIDs with other pixels."""
    good: dict[str, bytes] = {}
    for study in range(3):
        folder = root / f"study-{study}"
        folder.mkdir(parents=True)
        for n, ds in enumerate(ct_series(8, rows=8, columns=8, seed=study)):
            write_part10(ds, folder / f"{n:02}.dcm")
            good[str(ds.SOPInstanceUID)] = (folder / f"{n:02}.dcm").read_bytes()
    (truncated,) = ct_series(1, rows=8, columns=8)
    write_part10(truncated, root / "study-1" / TRUNCATED)
    whole = (root / "study-1" / TRUNCATED).read_bytes()
    (root / "study-1" / TRUNCATED).write_bytes(whole[: len(whole) // 2])
    (root / "study-2" / NOT_DICOM).write_text("not an image")
    (root / "study-2" / EMPTY).write_bytes(b"")
    shutil.copy(root / "study-0" / "00.dcm", root / "study-2" / COPY)
    other = pydicom.dcmread(root / "study-1" / "03.dcm")
    other.PixelData = bytes(len(other.PixelData))
    write_part10(other, root / "study-2" / OTHER)
    first = dict(good)
    good[str(other.SOPInstanceUID)] = (root / "study-2" / OTHER).read_bytes()
    return MixedFolder(root, good, first, files=24 + 5)


NOT_IMPORTED = re.compile(r"not imported: (?P<path>/[^:]+): (?P<reason>.+)")


def import_folder(
    folder: Path, data: Path, jobs: int, caplog: pytest.LogCaptureFixture, policy: str = "replace"
) -> tuple[int, dict[str, str]]:
    """`dicomcloud import --jobs N` of the folder: its exit status, and why each file it did not import was not."""
    settings = load_settings(overrides={"storage": {"data_dir": str(data), "duplicate_policy": policy}}, environ={})
    args = build_parser().parse_args(["import", "--jobs", str(jobs), str(folder)])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dicomcloud"):
        status = run_import(settings, args)
    # Read as written: a filter of the process's logging may have formatted the message into `msg` already.
    failed = [NOT_IMPORTED.fullmatch(record.getMessage()) for record in caplog.records]
    return status, {Path(match["path"]).name: match["reason"] for match in failed if match}


def stored_instances(data: Path) -> dict[str, bytes]:
    """Each indexed instance's stored bytes, by SOP Instance UID."""
    archive = make_archive(data)
    try:
        rows = archive.runtime.index.search("default", parse_qido("instance", {}))
        found = {}
        for row in rows:
            location = archive.runtime.index.get_instance("default", row["SOPInstanceUID"])
            assert location is not None
            found[row["SOPInstanceUID"]] = archive.runtime.storage.read(location.file_path)
        return found
    finally:
        archive.close()


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bulk_import, "CHUNK_FILES", CHUNK)


@pytest.mark.usefixtures("small_chunks")
def test_parallel_import_stores_every_good_file_and_names_each_bad_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = mixed_folder(tmp_path / "incoming")
    data = tmp_path / "data"
    status, failed = import_folder(folder.root, data, 2, caplog)
    assert status == 2
    assert failed == {
        TRUNCATED: failed[TRUNCATED],
        NOT_DICOM: "not a DICOM Part 10 file",
        EMPTY: "not a DICOM Part 10 file",
    }
    assert failed[TRUNCATED].startswith("truncated file")
    assert stored_instances(data) == folder.good
    assert not list((data / "tmp").iterdir())
    summary = [m for m in caplog.messages if m.startswith("imported")]
    assert summary == [f"imported {folder.files - 3} of {folder.files} files into tenant default (3 failed)"]


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("policy", ["replace", "reject"])
def test_parallel_import_decides_duplicates_by_the_duplicate_policy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, policy: str
) -> None:
    """An identical copy is stored again (nothing changes); other content under a stored UID replaces it or is
    refused, as storage.duplicate_policy says, even with the two in different workers' chunks."""
    folder = mixed_folder(tmp_path / "incoming")
    data = tmp_path / "data"
    _, failed = import_folder(folder.root, data, 2, caplog, policy)
    assert COPY not in failed
    assert (OTHER in failed) == (policy == "reject")
    assert stored_instances(data) == (folder.good if policy == "replace" else folder.first)


@pytest.mark.usefixtures("small_chunks")
def test_import_with_one_job_and_with_two_builds_the_same_archive(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = mixed_folder(tmp_path / "incoming")
    outcomes, archives = [], []
    for jobs in (1, 2):
        data = tmp_path / f"data-{jobs}"
        outcomes.append(import_folder(folder.root, data, jobs, caplog))
        archive = make_archive(data)
        try:
            archives.append({key: archive.runtime.storage.read(key) for key in stored_keys(archive)})
        finally:
            archive.close()
    assert outcomes[0] == outcomes[1]
    assert archives[0] == archives[1]
    assert len(archives[0]) == 2 * len(folder.good)  # each original and its metadata entry


@pytest.mark.usefixtures("small_chunks")
def test_a_stopped_import_keeps_what_it_stored_and_acknowledges_nothing_more(tmp_path: Path) -> None:
    """Stopped (as by Ctrl-C) once the first chunk is stored: that chunk stays; the chunks the workers were
    parsing are discarded, not counted and not stored."""
    folder = mixed_folder(tmp_path / "incoming")
    data = tmp_path / "data"
    archive = make_archive(data)
    stop = threading.Event()
    try:
        outcome = FileImport(archive, "default", 2, lambda tally: stop.set(), stop).run(
            list(iter_files([folder.root]))
        )
    finally:
        archive.close()
    assert outcome.interrupted and not outcome.complete
    assert outcome.tally.stored == CHUNK and outcome.tally.failed == 0
    assert len(stored_instances(data)) == CHUNK
    assert not list((data / "tmp").iterdir())
