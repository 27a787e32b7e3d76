"""Ingest: one path to durable storage; acknowledged means on disk under its final name and on the bus."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import support
from support import FailingBus

from dicomcloud.archive.store import file_digest
from dicomcloud.errors import Conflict, DuplicateInstance, InvalidInput, StorageFailure
from dicomcloud.events import LOG_QUEUE, STORAGE_QUEUE, StorageEvent
from dicomcloud.runtime import Runtime
from dicomcloud.workers.consumer import IndexConsumer

STUDY, SERIES, SOP = "1.2.826.0.1.1", "1.2.826.0.1.1.1", "1.2.826.0.1.1.1.1"


def write_ct(path: Path, study: str = STUDY, series: str = SERIES, sop: str = SOP, pixel: int = 0) -> Path:
    return support.write_ct(path, study, series, sop, pixel)


def make_runtime(data: Path, policy: str = "replace") -> Runtime:
    return support.make_runtime(data, storage={"duplicate_policy": policy})


@pytest.fixture(params=["replace", "reject"])
def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Runtime]:
    rt = make_runtime(tmp_path / "data", request.param)
    yield rt
    rt.close()


@pytest.fixture
def replacing(tmp_path: Path) -> Iterator[Runtime]:
    rt = make_runtime(tmp_path / "data", "replace")
    yield rt
    rt.close()


@pytest.fixture
def rejecting(tmp_path: Path) -> Iterator[Runtime]:
    rt = make_runtime(tmp_path / "data", "reject")
    yield rt
    rt.close()


def store(runtime: Runtime, source: Path, **options: str) -> StorageEvent:
    return support.ingest(runtime, source, "stow", **options)


def published(runtime: Runtime, topic: str) -> list[bytes]:
    consumer = runtime.bus.subscribe("test-reader", [topic])
    try:
        return [record.value for record in consumer.poll(1000, 0.2)]
    finally:
        consumer.close()


def index_all(runtime: Runtime) -> None:
    """What wado-consumer would do with everything published so far."""
    consumer = runtime.bus.subscribe("wado-consumer", [STORAGE_QUEUE])
    try:
        records = consumer.poll(1000, 0.2)
        IndexConsumer(runtime).process(records)
        consumer.commit(records)
    finally:
        consumer.close()


def temp_files(runtime: Runtime) -> list[Path]:
    return list((runtime.settings.data_path / "tmp").iterdir())


def test_store_makes_the_file_durable_under_its_final_name_and_announces_it(runtime: Runtime, tmp_path: Path) -> None:
    source = write_ct(tmp_path / "a.dcm")
    event = store(runtime, source)
    assert event.file_path == f"default/{STUDY}/{SERIES}/{SOP}.dcm"
    assert runtime.storage.path(event.file_path).read_bytes() == source.read_bytes()
    assert (event.sha256, event.file_size) == file_digest(source)
    assert published(runtime, STORAGE_QUEUE) == [event.to_bytes()]
    assert published(runtime, LOG_QUEUE) == [event.to_bytes()]
    assert temp_files(runtime) == []


def test_an_identical_resend_succeeds_without_rewriting(runtime: Runtime, tmp_path: Path) -> None:
    source = write_ct(tmp_path / "a.dcm")
    first = store(runtime, source)
    before = runtime.storage.path(first.file_path).stat()
    second = store(runtime, source)
    after = runtime.storage.path(first.file_path).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert second.sha256 == first.sha256
    assert temp_files(runtime) == []


def test_reject_policy_refuses_a_different_object_with_a_stored_uid(rejecting: Runtime, tmp_path: Path) -> None:
    original = write_ct(tmp_path / "a.dcm", pixel=1)
    event = store(rejecting, original)
    with pytest.raises(DuplicateInstance):
        store(rejecting, write_ct(tmp_path / "b.dcm", pixel=2))
    assert rejecting.storage.path(event.file_path).read_bytes() == original.read_bytes()
    assert len(published(rejecting, STORAGE_QUEUE)) == 1
    assert temp_files(rejecting) == []


def test_reject_policy_refuses_an_indexed_uid_sent_under_another_study(rejecting: Runtime, tmp_path: Path) -> None:
    store(rejecting, write_ct(tmp_path / "a.dcm"))
    index_all(rejecting)
    with pytest.raises(DuplicateInstance):
        store(rejecting, write_ct(tmp_path / "b.dcm", study="1.2.826.0.1.2"))
    assert not rejecting.storage.path(f"default/1.2.826.0.1.2/{SERIES}/{SOP}.dcm").exists()


def test_replace_policy_replaces_the_object_at_the_same_location(replacing: Runtime, tmp_path: Path) -> None:
    store(replacing, write_ct(tmp_path / "a.dcm", pixel=1))
    newer = write_ct(tmp_path / "b.dcm", pixel=2)
    event = store(replacing, newer)
    assert replacing.storage.path(event.file_path).read_bytes() == newer.read_bytes()
    index_all(replacing)
    indexed = replacing.index.get_instance("default", SOP)
    assert indexed is not None and indexed.sha256 == event.sha256


def test_replace_policy_moves_a_uid_to_its_new_study_and_removes_the_old_file(
    replacing: Runtime, tmp_path: Path
) -> None:
    old = store(replacing, write_ct(tmp_path / "a.dcm"))
    index_all(replacing)
    new = store(replacing, write_ct(tmp_path / "b.dcm", study="1.2.826.0.1.2"))
    assert replacing.storage.path(new.file_path).is_file()
    assert not replacing.storage.path(old.file_path).exists()
    index_all(replacing)
    indexed = replacing.index.get_instance("default", SOP)
    assert indexed is not None and indexed.file_path == new.file_path


def test_a_study_uid_other_than_the_requested_one_is_a_conflict(runtime: Runtime, tmp_path: Path) -> None:
    with pytest.raises(Conflict):
        store(runtime, write_ct(tmp_path / "a.dcm"), expected_study_uid="1.2.3")
    assert not runtime.storage.path(f"default/{STUDY}/{SERIES}/{SOP}.dcm").exists()
    assert temp_files(runtime) == []


def test_a_bus_failure_is_a_storage_failure_and_leaves_no_new_file(runtime: Runtime, tmp_path: Path) -> None:
    broken = dataclasses.replace(runtime, bus=FailingBus(runtime))
    with pytest.raises(StorageFailure):
        store(broken, write_ct(tmp_path / "a.dcm"))
    assert not runtime.storage.path(f"default/{STUDY}/{SERIES}/{SOP}.dcm").exists()
    assert temp_files(runtime) == []


def test_a_bus_failure_on_a_cross_study_replace_keeps_the_old_object(replacing: Runtime, tmp_path: Path) -> None:
    original = write_ct(tmp_path / "a.dcm")
    old = store(replacing, original)
    index_all(replacing)
    broken = dataclasses.replace(replacing, bus=FailingBus(replacing))
    with pytest.raises(StorageFailure):
        store(broken, write_ct(tmp_path / "b.dcm", study="1.2.826.0.1.2"))
    assert replacing.storage.path(old.file_path).read_bytes() == original.read_bytes()
    assert not replacing.storage.path(f"default/1.2.826.0.1.2/{SERIES}/{SOP}.dcm").exists()


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI", "ignore:The value length")
@pytest.mark.parametrize("hostile", ["1.2.3/../../../etc", "../1.2.3", "1.2.abc", "1." + "2" * 70])
def test_a_hostile_uid_is_refused_before_it_reaches_a_path(runtime: Runtime, tmp_path: Path, hostile: str) -> None:
    with pytest.raises(InvalidInput):
        store(runtime, write_ct(tmp_path / "a.dcm", series=hostile))
    assert [p for p in (runtime.settings.data_path / "storage").rglob("*") if p.is_file()] == []
    assert temp_files(runtime) == []


def test_a_file_that_is_not_dicom_is_invalid_input_and_its_temp_is_removed(runtime: Runtime, tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"this is not DICOM at all")
    with pytest.raises(InvalidInput):
        store(runtime, junk)
    assert temp_files(runtime) == []
