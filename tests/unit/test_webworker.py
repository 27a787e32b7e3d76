"""Series metadata documents: built when stale, incrementally, and served without rebuilding."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import support

from dicomcloud.archive import metadata as metadata_module
from dicomcloud.archive.metadata import SeriesMetadata, cache_key, document_key
from dicomcloud.errors import StorageFailure
from dicomcloud.ports.index import SeriesKey
from dicomcloud.runtime import Runtime
from dicomcloud.workers import webworker
from dicomcloud.workers.webworker import Webworker

STUDY, SERIES, OTHER_SERIES = "1.2.826.0.3.1", "1.2.826.0.3.1.1", "1.2.826.0.3.1.2"
KEY = SeriesKey("default", STUDY, SERIES)


def write_ct(path: Path, sop: str, series: str = SERIES, pixel: int = 0) -> Path:
    return support.write_ct(path, STUDY, series, sop, pixel)


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    rt = support.make_runtime(tmp_path / "data", workers={"webworker_interval": 0.01})
    yield rt
    rt.close()


@pytest.fixture
def add(runtime: Runtime, tmp_path: Path) -> Callable[..., None]:
    """Store an instance and index it, as C-STORE plus wado-consumer would."""

    def add_instance(sop: str, series: str = SERIES, pixel: int = 0) -> None:
        support.ingest(runtime, write_ct(tmp_path / "in.dcm", sop, series, pixel))
        support.index_pending(runtime)

    return add_instance


@pytest.fixture
def indexed_files(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The instance files each build had to open."""
    opened: list[str] = []
    real = metadata_module.index_instance

    def counting(path: Path, **options: Any) -> Any:
        opened.append(options["file_path"])
        return real(path, **options)

    monkeypatch.setattr(metadata_module, "index_instance", counting)
    return opened


def test_the_webworker_builds_every_stale_series_document(runtime: Runtime, add: Callable[..., None]) -> None:
    add("1.2.826.0.3.1.1.1")
    add("1.2.826.0.3.1.2.1", series=OTHER_SERIES)
    assert Webworker(runtime, SeriesMetadata(runtime)).run_once() is True
    assert runtime.index.stale_series(10) == []
    for series in (SERIES, OTHER_SERIES):
        stored = runtime.storage.read_document(document_key(SeriesKey("default", STUDY, series)))
        assert stored is not None


def test_a_growing_series_is_rebuilt_at_most_once_per_spacing(
    runtime: Runtime, add: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(webworker.time, "monotonic", lambda: clock[0])
    worker = Webworker(runtime, SeriesMetadata(runtime))
    add("1.2.826.0.3.1.1.1")
    assert worker.run_once() is True
    add("1.2.826.0.3.1.1.2")
    clock[0] += webworker.REBUILD_SPACING / 2
    assert worker.run_once() is False
    assert [stale.key for stale in runtime.index.stale_series(10)] == [KEY]
    doc = SeriesMetadata(runtime).document(KEY)
    assert doc is not None and len(doc.instances) == 2, "a request still gets the current version"
    add("1.2.826.0.3.1.1.3")
    clock[0] += webworker.REBUILD_SPACING
    assert worker.run_once() is True
    assert runtime.index.stale_series(10) == []


def test_a_build_reads_only_new_or_changed_instances(
    runtime: Runtime, add: Callable[..., None], indexed_files: list[str]
) -> None:
    metadata = SeriesMetadata(runtime)
    add("1.2.826.0.3.1.1.1")
    add("1.2.826.0.3.1.1.2")
    metadata.build(KEY)
    assert len(indexed_files) == 2
    add("1.2.826.0.3.1.1.3")
    add("1.2.826.0.3.1.1.1", pixel=9)
    doc = SeriesMetadata(runtime).build(KEY)
    assert doc is not None
    assert sorted(indexed_files[2:]) == sorted(
        f"default/{STUDY}/{SERIES}/{sop}.dcm" for sop in ("1.2.826.0.3.1.1.1", "1.2.826.0.3.1.1.3")
    )
    assert sorted(doc.instances) == ["1.2.826.0.3.1.1.1", "1.2.826.0.3.1.1.2", "1.2.826.0.3.1.1.3"]
    assert doc.version == runtime.index.series_version(KEY)


def test_an_instance_that_left_the_series_leaves_its_document(runtime: Runtime, add: Callable[..., None]) -> None:
    metadata = SeriesMetadata(runtime)
    add("1.2.826.0.3.1.1.1")
    add("1.2.826.0.3.1.1.2")
    metadata.build(KEY)
    add("1.2.826.0.3.1.1.2", series=OTHER_SERIES)
    doc = metadata.document(KEY)
    assert doc is not None and sorted(doc.instances) == ["1.2.826.0.3.1.1.1"]


def test_document_serves_the_current_version_without_rebuilding(
    runtime: Runtime, add: Callable[..., None], indexed_files: list[str]
) -> None:
    add("1.2.826.0.3.1.1.1")
    Webworker(runtime, SeriesMetadata(runtime)).run_once()
    opened = len(indexed_files)
    for metadata in (SeriesMetadata(runtime), SeriesMetadata(runtime)):
        doc = metadata.document(KEY)
        assert doc is not None and doc.version == runtime.index.series_version(KEY)
        assert metadata.document(KEY) is doc
    assert len(indexed_files) == opened


def test_only_a_shared_cache_gets_a_copy_of_the_document(
    runtime: Runtime, add: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process, the parsed document is kept already; other processes read the shared cache's copy."""
    add("1.2.826.0.3.1.1.1")
    doc = SeriesMetadata(runtime).build(KEY)
    assert doc is not None and runtime.cache.get(cache_key(KEY, doc.version)) is None
    add("1.2.826.0.3.1.1.2")
    monkeypatch.setattr(runtime.cache, "shared", True)
    doc = SeriesMetadata(runtime).build(KEY)
    assert doc is not None and runtime.cache.get(cache_key(KEY, doc.version)) == doc.to_bytes()


def test_document_builds_a_stale_series_on_demand(runtime: Runtime, add: Callable[..., None]) -> None:
    add("1.2.826.0.3.1.1.1")
    doc = SeriesMetadata(runtime).document(KEY)
    assert doc is not None and list(doc.instances) == ["1.2.826.0.3.1.1.1"]
    assert runtime.index.stale_series(10) == []


def test_document_of_an_unknown_series_is_none(runtime: Runtime) -> None:
    assert SeriesMetadata(runtime).document(SeriesKey("default", "1.2.3", "4.5")) is None


def test_concurrent_requests_for_a_stale_series_build_it_once(
    runtime: Runtime, add: Callable[..., None], indexed_files: list[str]
) -> None:
    add("1.2.826.0.3.1.1.1")
    metadata = SeriesMetadata(runtime)
    docs: list[object] = []
    threads = [threading.Thread(target=lambda: docs.append(metadata.document(KEY))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(indexed_files) == 1
    assert all(doc is docs[0] for doc in docs)


def test_a_failing_series_is_logged_and_not_retried_in_the_same_breath(
    runtime: Runtime, add: Callable[..., None], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    add("1.2.826.0.3.1.1.1")
    metadata = SeriesMetadata(runtime)
    attempts: list[SeriesKey] = []

    def broken(key: SeriesKey) -> None:
        attempts.append(key)
        raise StorageFailure("disk full")

    monkeypatch.setattr(metadata, "build", broken)
    worker = Webworker(runtime, metadata)
    assert worker.run_once() is False
    assert worker.run_once() is False
    assert attempts == [KEY]
    assert "disk full" in caplog.text
    monkeypatch.undo()
    assert runtime.index.stale_series(10) != []


def test_background_builds_refresh_documents_requests_read_and_keep_no_others(
    runtime: Runtime, add: Callable[..., None]
) -> None:
    """After a bulk load the process holds what viewers read, not every series the webworker built."""
    add("1.2.826.0.3.1.1.1")
    add("1.2.826.0.3.1.2.1", series=OTHER_SERIES)
    read = SeriesMetadata(runtime).document(KEY)
    assert read is not None
    add("1.2.826.0.3.1.1.2")
    Webworker(runtime, SeriesMetadata(runtime)).run_once()
    other = SeriesKey("default", STUDY, OTHER_SERIES)
    scope = str(runtime.settings.data_path)
    assert metadata_module._PARSED.get((scope, other)) is None
    refreshed = metadata_module._PARSED.get((scope, KEY))
    assert refreshed is not None and len(refreshed.instances) == 2
