"""The store: acknowledged means durable under its final key, indexed and announced; duplicates are decided
from the index; nothing refused leaves an object, an index row or a staged file behind."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import support
from support import FailingBus, counted

from dicomcloud.archive.core import Archive
from dicomcloud.archive.keys import LAYOUT_MARKER, derived_prefix, document_key, entry_key, original_key
from dicomcloud.dicom.query import parse_qido
from dicomcloud.dicom.seriesdoc import InstanceEntry
from dicomcloud.errors import Conflict, DuplicateInstance, InvalidInput, NotFound, StorageFailure
from dicomcloud.events import LOG_QUEUE, STORAGE_QUEUE, StorageEvent
from dicomcloud.ports.index import SeriesKey
from dicomcloud.workers.consumer import StorageEventConsumer
from dicomcloud.workers.loader import Loader
from dicomcloud.workers.webworker import Webworker

STUDY, SERIES, SOP = "1.2.826.0.1.1", "1.2.826.0.1.1.1", "1.2.826.0.1.1.1.1"
OTHER_STUDY = "1.2.826.0.1.2"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"


def write_ct(path: Path, study: str = STUDY, series: str = SERIES, sop: str = SOP, pixel: int = 0) -> Path:
    return support.write_ct(path, study, series, sop, pixel)


def make_archive(data: Path, policy: str = "replace") -> Archive:
    return support.make_archive(data, storage={"duplicate_policy": policy})


@pytest.fixture(params=["replace", "reject"])
def archive(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Archive]:
    archive = make_archive(tmp_path / "data", request.param)
    yield archive
    archive.close()


@pytest.fixture
def replacing(tmp_path: Path) -> Iterator[Archive]:
    archive = make_archive(tmp_path / "data", "replace")
    yield archive
    archive.close()


@pytest.fixture
def rejecting(tmp_path: Path) -> Iterator[Archive]:
    archive = make_archive(tmp_path / "data", "reject")
    yield archive
    archive.close()


def store(archive: Archive, source: Path, **options: str) -> StorageEvent:
    return support.store(archive, source, "stow", **options)


def with_bus_down(archive: Archive) -> Archive:
    """The same archive (storage, index) whose bus refuses every publish."""
    return Archive(dataclasses.replace(archive.runtime, bus=FailingBus(archive)))


def published(archive: Archive, topic: str) -> list[bytes]:
    consumer = archive.runtime.bus.subscribe("test-reader", [topic])
    try:
        return [record.value for record in consumer.poll(1000, 0.2)]
    finally:
        consumer.close()


def staging(archive: Archive) -> list[Path]:
    return list((archive.settings.data_path / "tmp").iterdir())


def objects(archive: Archive) -> list[str]:
    """Every key in storage."""
    return support.stored_keys(archive)


def file_of(archive: Archive, key: str) -> Path:
    """The file FsStorage keeps `key` in (to look at its inode and mtime)."""
    return archive.settings.data_path / "storage" / key


def series_rows(archive: Archive, study: str) -> dict[str, int]:
    """Series UID -> NumberOfSeriesRelatedInstances, as QIDO-RS and C-FIND see them."""
    matches = archive.search.find("default", parse_qido("series", {}, study_instance_uid=study), None)
    return {str(m.values["SeriesInstanceUID"]): int(m.values["NumberOfSeriesRelatedInstances"]) for m in matches}


def study_rows(archive: Archive, study: str) -> list[int]:
    """NumberOfStudyRelatedInstances of the study, [] when the index holds no such study."""
    matches = archive.search.find("default", parse_qido("study", {"StudyInstanceUID": [study]}), None)
    return [int(m.values["NumberOfStudyRelatedInstances"]) for m in matches]


def test_store_makes_the_object_durable_under_its_final_key_and_announces_it(archive: Archive, tmp_path: Path) -> None:
    source = write_ct(tmp_path / "a.dcm")
    event = store(archive, source)
    data = source.read_bytes()
    assert event.file_path == original_key("default", STUDY, SERIES, SOP) == f"default/{STUDY}/{SERIES}/{SOP}.dcm"
    assert archive.runtime.storage.read(event.file_path) == data
    assert (event.sha256, event.file_size) == (hashlib.sha256(data).hexdigest(), len(data))
    entry = InstanceEntry.from_bytes(archive.runtime.storage.read(entry_key(event.file_path)))
    assert (entry.sop_instance_uid, entry.sha256) == (SOP, event.sha256)
    assert published(archive, STORAGE_QUEUE) == [event.to_bytes()]
    assert published(archive, LOG_QUEUE) == [event.to_bytes()]
    assert staging(archive) == []


def test_a_stored_instance_is_found_at_once_by_the_index_search_and_metadata(archive: Archive, tmp_path: Path) -> None:
    event = store(archive, write_ct(tmp_path / "a.dcm"))
    indexed = archive.runtime.index.get_instance("default", SOP)
    assert indexed is not None and (indexed.file_path, indexed.sha256) == (event.file_path, event.sha256)
    query = parse_qido("instance", {"SOPInstanceUID": [SOP]})
    assert [m.values["SOPInstanceUID"] for m in archive.search.find("default", query, None)] == [SOP]
    assert study_rows(archive, STUDY) == [1]
    doc = archive.metadata.document(SeriesKey("default", STUDY, SERIES))
    assert doc is not None and list(doc.instances) == [SOP]


def test_an_identical_resend_succeeds_without_rewriting_and_is_announced_again(
    archive: Archive, tmp_path: Path
) -> None:
    source = write_ct(tmp_path / "a.dcm")
    first = store(archive, source)
    key = SeriesKey("default", STUDY, SERIES)
    version = archive.runtime.index.series_version(key)
    files = [file_of(archive, first.file_path), file_of(archive, entry_key(first.file_path))]
    before = [(f.stat().st_ino, f.stat().st_mtime_ns) for f in files]
    second = store(archive, source)
    assert [(f.stat().st_ino, f.stat().st_mtime_ns) for f in files] == before
    assert (second.file_path, second.sha256) == (first.file_path, first.sha256)
    assert archive.runtime.index.series_version(key) == version
    announced = [StorageEvent.from_bytes(raw) for raw in published(archive, STORAGE_QUEUE)]
    assert [(e.file_path, e.sha256) for e in announced] == [(first.file_path, first.sha256)] * 2
    assert staging(archive) == []


def test_reject_policy_refuses_other_content_under_a_stored_uid_with_0111(rejecting: Archive, tmp_path: Path) -> None:
    original = write_ct(tmp_path / "a.dcm", pixel=1)
    event = store(rejecting, original)
    with pytest.raises(DuplicateInstance) as refused:
        store(rejecting, write_ct(tmp_path / "b.dcm", pixel=2))
    assert refused.value.dimse_status == 0x0111
    assert rejecting.runtime.storage.read(event.file_path) == original.read_bytes()
    indexed = rejecting.runtime.index.get_instance("default", SOP)
    assert indexed is not None and indexed.sha256 == event.sha256
    assert len(published(rejecting, STORAGE_QUEUE)) == 1
    assert staging(rejecting) == []


def test_replace_policy_replaces_the_object_at_the_same_key_and_drops_its_derived_copies(
    replacing: Archive, tmp_path: Path
) -> None:
    store(replacing, write_ct(tmp_path / "a.dcm", pixel=1))
    old = replacing.runtime.index.get_instance("default", SOP)
    assert old is not None
    copy = replacing.retrieve.derived(old, RLE_LOSSLESS)
    newer = write_ct(tmp_path / "b.dcm", pixel=2)
    event = store(replacing, newer)
    assert replacing.runtime.storage.read(event.file_path) == newer.read_bytes()
    assert replacing.runtime.storage.size(copy) is None
    indexed = replacing.runtime.index.get_instance("default", SOP)
    assert indexed is not None and (indexed.file_path, indexed.sha256) == (event.file_path, event.sha256)
    entry = InstanceEntry.from_bytes(replacing.runtime.storage.read(entry_key(event.file_path)))
    assert entry.sha256 == event.sha256


def test_replace_policy_keeps_one_uid_sent_into_two_studies_back_to_back_only_in_the_second(
    replacing: Archive, tmp_path: Path
) -> None:
    """No consumer runs in between: the index, written by the first store, decides the second."""
    storage = replacing.runtime.storage
    old = store(replacing, write_ct(tmp_path / "a.dcm"))
    store(replacing, write_ct(tmp_path / "b.dcm", sop=f"{SERIES}.2"))  # keeps the old series alive
    old_location = replacing.runtime.index.get_instance("default", SOP)
    assert old_location is not None
    copy = replacing.retrieve.derived(old_location, RLE_LOSSLESS)
    assert series_rows(replacing, STUDY) == {SERIES: 2}
    moved = write_ct(tmp_path / "c.dcm", study=OTHER_STUDY)
    new = store(replacing, moved)

    assert [key for key in objects(replacing) if key.endswith(f"/{SOP}.dcm")] == [new.file_path]
    assert storage.size(old.file_path) is None
    assert storage.size(entry_key(old.file_path)) is None
    assert storage.list(derived_prefix(old.file_path)) == [] and storage.size(copy) is None
    location = replacing.retrieve.instance("default", OTHER_STUDY, SERIES, SOP)
    [stored] = replacing.retrieve.stored([location], None)
    assert storage.read(stored.key) == moved.read_bytes()
    with pytest.raises(NotFound):
        replacing.retrieve.instance("default", STUDY, SERIES, SOP)
    assert series_rows(replacing, STUDY) == {SERIES: 1}
    assert study_rows(replacing, STUDY) == [1]
    assert series_rows(replacing, OTHER_STUDY) == {SERIES: 1}


def test_replace_policy_prunes_the_study_a_uid_left_empty_when_it_moved(replacing: Archive, tmp_path: Path) -> None:
    old = store(replacing, write_ct(tmp_path / "a.dcm"))
    replacing.metadata.document(SeriesKey("default", STUDY, SERIES))
    store(replacing, write_ct(tmp_path / "b.dcm", study=OTHER_STUDY))
    assert study_rows(replacing, STUDY) == []
    assert replacing.runtime.index.series_version(SeriesKey("default", STUDY, SERIES)) is None
    assert replacing.runtime.index.list_instances("default", STUDY) == []
    assert study_rows(replacing, OTHER_STUDY) == [1]
    assert replacing.runtime.storage.size(old.file_path) is None
    assert replacing.metadata.document(SeriesKey("default", STUDY, SERIES)) is None


def test_replace_policy_removes_the_written_document_of_a_series_a_move_left_empty(
    replacing: Archive, tmp_path: Path
) -> None:
    """As a DELETE that empties a series does (archive/remove.py): no document outlives its series."""
    old_series = SeriesKey("default", STUDY, SERIES)
    store(replacing, write_ct(tmp_path / "a.dcm"))
    replacing.metadata.consolidate(old_series)
    assert replacing.runtime.storage.size(document_key(old_series)) is not None
    store(replacing, write_ct(tmp_path / "b.dcm", study=OTHER_STUDY))
    assert replacing.runtime.storage.list(f"default/{STUDY}/") == []


def test_reject_policy_refuses_one_uid_sent_into_another_study_right_after_the_first_with_0111(
    rejecting: Archive, tmp_path: Path
) -> None:
    """No consumer runs in between: the index, written by the first store, decides the second."""
    original = write_ct(tmp_path / "a.dcm")
    event = store(rejecting, original)
    with pytest.raises(DuplicateInstance) as refused:
        store(rejecting, write_ct(tmp_path / "b.dcm", study=OTHER_STUDY))
    assert refused.value.dimse_status == 0x0111
    assert rejecting.runtime.storage.list(f"default/{OTHER_STUDY}/") == []
    assert rejecting.runtime.storage.read(event.file_path) == original.read_bytes()
    indexed = rejecting.runtime.index.get_instance("default", SOP)
    assert indexed is not None and indexed.file_path == event.file_path
    assert study_rows(rejecting, OTHER_STUDY) == []
    assert len(published(rejecting, STORAGE_QUEUE)) == 1
    assert staging(rejecting) == []


def test_a_study_uid_other_than_the_requested_one_is_a_conflict(archive: Archive, tmp_path: Path) -> None:
    with pytest.raises(Conflict):
        store(archive, write_ct(tmp_path / "a.dcm"), expected_study_uid="1.2.3")
    assert objects(archive) == []
    assert archive.runtime.index.get_instance("default", SOP) is None
    assert staging(archive) == []


def test_a_bus_failure_is_a_storage_failure_and_withdraws_the_new_object_and_its_index_row(
    archive: Archive, tmp_path: Path
) -> None:
    with pytest.raises(StorageFailure):
        store(with_bus_down(archive), write_ct(tmp_path / "a.dcm"))
    assert objects(archive) == []
    assert archive.runtime.index.get_instance("default", SOP) is None
    assert study_rows(archive, STUDY) == []
    assert staging(archive) == []


def test_a_bus_failure_leaves_a_replaced_instance_replaced_and_its_resend_announces_it(
    replacing: Archive, tmp_path: Path
) -> None:
    store(replacing, write_ct(tmp_path / "a.dcm", pixel=1))
    newer = write_ct(tmp_path / "b.dcm", pixel=2)
    with pytest.raises(StorageFailure):
        store(with_bus_down(replacing), newer)
    sha = hashlib.sha256(newer.read_bytes()).hexdigest()
    key = original_key("default", STUDY, SERIES, SOP)
    assert replacing.runtime.storage.read(key) == newer.read_bytes()
    assert InstanceEntry.from_bytes(replacing.runtime.storage.read(entry_key(key))).sha256 == sha
    indexed = replacing.runtime.index.get_instance("default", SOP)
    assert indexed is not None and indexed.sha256 == sha
    resent = store(replacing, newer)
    assert resent.sha256 in {StorageEvent.from_bytes(raw).sha256 for raw in published(replacing, STORAGE_QUEUE)}
    assert staging(replacing) == []


def test_a_bus_failure_on_a_move_to_another_study_leaves_it_moved_and_its_resend_removes_the_old_objects(
    replacing: Archive, tmp_path: Path
) -> None:
    old = store(replacing, write_ct(tmp_path / "a.dcm"))
    moved = write_ct(tmp_path / "b.dcm", study=OTHER_STUDY)
    with pytest.raises(StorageFailure):
        store(with_bus_down(replacing), moved)
    new_key = original_key("default", OTHER_STUDY, SERIES, SOP)
    indexed = replacing.runtime.index.get_instance("default", SOP)
    assert indexed is not None and indexed.file_path == new_key
    assert replacing.runtime.storage.read(new_key) == moved.read_bytes()
    store(replacing, moved)
    assert [key for key in objects(replacing) if key.endswith(f"/{SOP}.dcm")] == [new_key]
    assert replacing.runtime.storage.size(entry_key(old.file_path)) is None


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI", "ignore:The value length")
@pytest.mark.parametrize("hostile", ["1.2.3/../../../etc", "../1.2.3", "1.2.abc", "1." + "2" * 70])
def test_a_hostile_uid_is_refused_before_it_becomes_a_key(archive: Archive, tmp_path: Path, hostile: str) -> None:
    with pytest.raises(InvalidInput):
        store(archive, write_ct(tmp_path / "a.dcm", series=hostile))
    root = archive.settings.data_path / "storage"
    assert [p for p in root.rglob("*") if p.is_file() and p != root / LAYOUT_MARKER] == []
    assert archive.runtime.index.get_instance("default", SOP) is None
    assert staging(archive) == []


def test_a_file_that_is_not_dicom_is_invalid_input_and_its_staged_file_is_gone(
    archive: Archive, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"this is not DICOM at all")
    stream = support.staged(archive, junk)
    with pytest.raises(InvalidInput):
        archive.store.store(stream, tenant_id="default", source="stow")
    assert not Path(stream.name).exists()
    assert staging(archive) == []
    assert objects(archive) == []


def test_no_original_is_opened_or_read_after_its_store_is_acknowledged(replacing: Archive, tmp_path: Path) -> None:
    """Parse once: the consumer, the loader, the webworker and every series document (warm, cold, in
    another archive on the same folder) work from what the store learnt, never from the originals."""
    archive, storage = counted(replacing)
    stow = [support.staged(archive, write_ct(tmp_path / f"{n}.dcm", sop=f"{SERIES}.{n}")) for n in (1, 2, 3)]
    outcomes = archive.store.store_many(stow, tenant_id="default", source="stow")
    assert all(isinstance(outcome, StorageEvent) for outcome in outcomes)
    other_series = f"{STUDY}.2"
    received = write_ct(tmp_path / "c-store.dcm", series=other_series, sop=f"{other_series}.1")
    with received.open("rb") as dataset:  # as pynetdicom hands over a received dataset
        archive.store.store(dataset, tenant_id="default", source="dimse", calling_ae="SCU", called_ae="SCP")
    keys = [SeriesKey("default", STUDY, SERIES), SeriesKey("default", STUDY, other_series)]

    support.run_pending(archive, StorageEventConsumer(archive))
    support.run_pending(archive, Loader(archive))
    assert archive.runtime.warehouse.count("dicom_image_meta") == 4
    assert Webworker(archive).run_once() is True
    assert archive.runtime.index.stale_series(10) == []
    warm = [archive.metadata.document(key) for key in keys]
    cold_archive, _ = counted(replacing, storage.reads)
    cold = [cold_archive.metadata.document(key) for key in keys]
    second = support.make_archive(replacing.settings.data_path)
    try:
        elsewhere, _ = counted(second, storage.reads)
        remote = [elsewhere.metadata.document(key) for key in keys]
    finally:
        second.close()

    for docs in (warm, cold, remote):
        assert [sorted(doc.instances) if doc else None for doc in docs] == [
            [f"{SERIES}.1", f"{SERIES}.2", f"{SERIES}.3"],
            [f"{other_series}.1"],
        ]
    assert storage.originals_read() == []
    read = set(storage.keys_read())
    assert {document_key(key) for key in keys} <= read, "the documents were read from storage"
    assert all(key.endswith(".json") for key in read)
    archive.close()
