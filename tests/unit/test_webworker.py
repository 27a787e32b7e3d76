"""Series metadata documents: composed on request from the stored entries (always the index's version),
written by the webworker when stale, and never re-read whole for one new instance."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import support
from support import CountingStorage, counted

from dicomcloud.archive.core import Archive
from dicomcloud.archive.keys import document_key, entry_key, original_key
from dicomcloud.archive.metadata import SeriesMetadata, cache_key
from dicomcloud.dicom.seriesdoc import SeriesDocument
from dicomcloud.errors import StorageFailure
from dicomcloud.ports.index import SeriesKey
from dicomcloud.workers import webworker
from dicomcloud.workers.webworker import Webworker

STUDY, SERIES, OTHER_SERIES = "1.2.826.0.3.1", "1.2.826.0.3.1.1", "1.2.826.0.3.1.2"
KEY = SeriesKey("default", STUDY, SERIES)


def write_ct(path: Path, sop: str, series: str = SERIES, pixel: int = 0) -> Path:
    return support.write_ct(path, STUDY, series, sop, pixel)


@pytest.fixture
def plain(tmp_path: Path) -> Iterator[Archive]:
    archive = support.make_archive(tmp_path / "data", workers={"webworker_interval": 0.01})
    yield archive
    archive.close()


@pytest.fixture
def watched(plain: Archive) -> tuple[Archive, CountingStorage]:
    """The archive, its storage counting reads."""
    return counted(plain)


@pytest.fixture
def archive(watched: tuple[Archive, CountingStorage]) -> Archive:
    return watched[0]


@pytest.fixture
def storage(watched: tuple[Archive, CountingStorage]) -> CountingStorage:
    return watched[1]


@pytest.fixture
def add(archive: Archive, tmp_path: Path) -> Callable[..., None]:
    """Store an instance, as a C-STORE does: indexed when this returns."""

    def add_instance(sop: str, series: str = SERIES, pixel: int = 0) -> None:
        support.store(archive, write_ct(tmp_path / "in.dcm", sop, series, pixel))

    return add_instance


def entry_of(sop: str, series: str = SERIES) -> str:
    return entry_key(original_key("default", STUDY, series, sop))


def entries_read(storage: CountingStorage, since: int = 0) -> list[str]:
    """The metadata entries (`<sop>.json`, not series documents) read after the `since`-th read."""
    return [key for _, key in storage.reads[since:] if key.endswith(".json") and not key.endswith("/series.json")]


def test_the_webworker_writes_every_stale_series_document(archive: Archive, add: Callable[..., None]) -> None:
    add("1.2.826.0.3.1.1.1")
    add("1.2.826.0.3.1.2.1", series=OTHER_SERIES)
    assert Webworker(archive).run_once() is True
    assert archive.runtime.index.stale_series(10) == []
    for series in (SERIES, OTHER_SERIES):
        key = SeriesKey("default", STUDY, series)
        stored = SeriesDocument.from_bytes(archive.runtime.storage.read(document_key(key)))
        assert stored.version == archive.runtime.index.series_version(key)
        assert list(stored.instances) == [f"{series}.1"]


def test_a_growing_series_is_rewritten_at_most_once_per_spacing(
    archive: Archive, add: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])  # the webworker's clock
    worker = Webworker(archive)
    add("1.2.826.0.3.1.1.1")
    assert worker.run_once() is True
    add("1.2.826.0.3.1.1.2")
    clock[0] += webworker.REBUILD_SPACING / 2
    assert worker.run_once() is False
    assert [stale.key for stale in archive.runtime.index.stale_series(10)] == [KEY]
    doc = SeriesMetadata(archive.runtime).document(KEY)
    assert doc is not None and len(doc.instances) == 2, "a request still gets the current version"
    add("1.2.826.0.3.1.1.3")
    clock[0] += webworker.REBUILD_SPACING
    assert worker.run_once() is True
    assert archive.runtime.index.stale_series(10) == []


def test_a_series_whose_build_costs_more_waits_in_proportion_before_it_is_rewritten(
    archive: Archive, add: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])  # the webworker's clock
    build_seconds = 2 * webworker.REBUILD_SPACING / webworker.REBUILD_COST_FACTOR
    processor = iter([0.0, build_seconds])  # before and after the first build
    monkeypatch.setattr(time, "thread_time", lambda: next(processor, 0.0))
    worker = Webworker(archive)
    add("1.2.826.0.3.1.1.1")
    assert worker.run_once() is True
    add("1.2.826.0.3.1.1.2")
    clock[0] += 1.5 * webworker.REBUILD_SPACING
    assert worker.run_once() is False, "waits REBUILD_COST_FACTOR times its build's processor time"
    clock[0] += webworker.REBUILD_SPACING
    assert worker.run_once() is True
    assert archive.runtime.index.stale_series(10) == []


def test_a_series_written_one_instance_at_a_time_is_current_after_each_store_reading_only_the_new_entry(
    archive: Archive, storage: CountingStorage, add: Callable[..., None]
) -> None:
    sops: list[str] = []
    for n in range(1, 9):
        sop = f"{SERIES}.{n}"
        add(sop)
        sops.append(sop)
        before = len(storage.reads)
        doc = archive.metadata.document(KEY)
        assert doc is not None and sorted(doc.instances) == sorted(sops)
        assert doc.version == archive.runtime.index.series_version(KEY)
        assert entries_read(storage, before) == [entry_of(sop)], f"store {n}"
    assert storage.originals_read() == []


def test_consolidating_reads_only_new_or_changed_entries(
    archive: Archive, storage: CountingStorage, add: Callable[..., None]
) -> None:
    add("1.2.826.0.3.1.1.1")
    add("1.2.826.0.3.1.1.2")
    archive.metadata.consolidate(KEY)
    assert sorted(entries_read(storage)) == [entry_of("1.2.826.0.3.1.1.1"), entry_of("1.2.826.0.3.1.1.2")]
    add("1.2.826.0.3.1.1.3")
    add("1.2.826.0.3.1.1.1", pixel=9)
    before = len(storage.reads)
    doc = SeriesMetadata(archive.runtime).consolidate(KEY)  # cold: it starts from the stored document
    assert doc is not None
    assert document_key(KEY) in [key for _, key in storage.reads[before:]]
    assert sorted(entries_read(storage, before)) == [entry_of("1.2.826.0.3.1.1.1"), entry_of("1.2.826.0.3.1.1.3")]
    assert sorted(doc.instances) == ["1.2.826.0.3.1.1.1", "1.2.826.0.3.1.1.2", "1.2.826.0.3.1.1.3"]
    assert doc.version == archive.runtime.index.series_version(KEY)
    assert storage.originals_read() == []


def test_an_instance_that_left_the_series_leaves_its_document(archive: Archive, add: Callable[..., None]) -> None:
    add("1.2.826.0.3.1.1.1")
    add("1.2.826.0.3.1.1.2")
    archive.metadata.consolidate(KEY)
    add("1.2.826.0.3.1.1.2", series=OTHER_SERIES)
    doc = archive.metadata.document(KEY)
    assert doc is not None and sorted(doc.instances) == ["1.2.826.0.3.1.1.1"]


def test_a_written_document_is_served_without_reading_an_entry(
    archive: Archive, storage: CountingStorage, add: Callable[..., None]
) -> None:
    add("1.2.826.0.3.1.1.1")
    Webworker(archive).run_once()
    before = len(storage.reads)
    for metadata in (SeriesMetadata(archive.runtime), SeriesMetadata(archive.runtime)):
        doc = metadata.document(KEY)
        assert doc is not None and doc.version == archive.runtime.index.series_version(KEY)
        assert metadata.document(KEY) is doc
    assert entries_read(storage, before) == []
    assert [key for _, key in storage.reads[before:]] == [document_key(KEY)] * 2


def test_only_a_shared_cache_gets_a_copy_of_the_document(
    archive: Archive, add: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process, the parsed document is kept already; other processes read the shared cache's copy."""
    add("1.2.826.0.3.1.1.1")
    doc = SeriesMetadata(archive.runtime).consolidate(KEY)
    assert doc is not None and archive.runtime.cache.get(cache_key(KEY, doc.version)) is None
    add("1.2.826.0.3.1.1.2")
    monkeypatch.setattr(archive.runtime.cache, "shared", True)
    doc = SeriesMetadata(archive.runtime).consolidate(KEY)
    assert doc is not None and archive.runtime.cache.get(cache_key(KEY, doc.version)) == doc.to_bytes()


def test_a_request_composes_a_stale_series_at_once_and_leaves_writing_it_to_the_webworker(
    archive: Archive, add: Callable[..., None]
) -> None:
    add("1.2.826.0.3.1.1.1")
    doc = archive.metadata.document(KEY)
    assert doc is not None and list(doc.instances) == ["1.2.826.0.3.1.1.1"]
    assert [stale.key for stale in archive.runtime.index.stale_series(10)] == [KEY]
    assert archive.runtime.storage.size(document_key(KEY)) is None


def test_document_of_an_unknown_series_is_none(archive: Archive) -> None:
    assert archive.metadata.document(SeriesKey("default", "1.2.3", "4.5")) is None


def test_concurrent_requests_for_a_stale_series_compose_it_once(
    archive: Archive, storage: CountingStorage, add: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministic: the first request is held inside its entry read until every other request waits for
    the series' lock; then exactly one entry read serves all of them."""
    add("1.2.826.0.3.1.1.1")
    metadata = archive.metadata
    reading, release = threading.Event(), threading.Event()
    read = storage.read

    def held_read(key: str) -> bytes:
        if key.endswith(".json") and not reading.is_set():
            reading.set()
            assert release.wait(20)
        return read(key)

    monkeypatch.setattr(storage, "read", held_read)
    docs: list[Any] = []
    threads = [threading.Thread(target=lambda: docs.append(metadata.document(KEY))) for _ in range(8)]
    threads[0].start()
    assert reading.wait(20)
    for thread in threads[1:]:
        thread.start()
    deadline = time.monotonic() + 20
    while metadata._locks._locks.get(KEY, (None, 0))[1] < len(threads):
        assert time.monotonic() < deadline, "the other requests never waited for the series"
        time.sleep(0.01)
    release.set()
    for thread in threads:
        thread.join(20)
    assert entries_read(storage) == [entry_of("1.2.826.0.3.1.1.1")]
    assert len(docs) == len(threads) and docs[0] is not None
    assert all(doc is docs[0] for doc in docs)


def test_a_failing_series_is_logged_and_not_retried_in_the_same_breath(
    archive: Archive, add: Callable[..., None], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    add("1.2.826.0.3.1.1.1")
    attempts: list[SeriesKey] = []

    def broken(key: SeriesKey) -> None:
        attempts.append(key)
        raise StorageFailure("disk full")

    monkeypatch.setattr(archive.metadata, "consolidate", broken)
    worker = Webworker(archive)
    assert worker.run_once() is False
    assert worker.run_once() is False
    assert attempts == [KEY]
    assert "disk full" in caplog.text
    monkeypatch.undo()
    assert archive.runtime.index.stale_series(10) != []


def test_background_writes_refresh_documents_requests_read_and_keep_no_others(
    archive: Archive, add: Callable[..., None]
) -> None:
    """After a bulk load the process holds what viewers read, not every series the webworker wrote."""
    add("1.2.826.0.3.1.1.1")
    add("1.2.826.0.3.1.2.1", series=OTHER_SERIES)
    read = archive.metadata.document(KEY)
    assert read is not None
    add("1.2.826.0.3.1.1.2")
    assert Webworker(archive).run_once() is True
    other = SeriesKey("default", STUDY, OTHER_SERIES)
    assert archive.metadata._parsed.get(other) is None
    refreshed = archive.metadata._parsed.get(KEY)
    assert refreshed is not None and len(refreshed.instances) == 2
