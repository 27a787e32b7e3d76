"""wado-consumer: storage events become index rows and metadata messages, at least once, idempotently."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import support

from dicomcloud.archive.store import file_digest
from dicomcloud.errors import StorageFailure
from dicomcloud.events import (
    DICOM_IMAGE_QUEUE,
    DICOM_STATE_QUEUE,
    STORAGE_QUEUE,
    DicomImageMeta,
    DicomStateMeta,
    StorageEvent,
)
from dicomcloud.ports.bus import BusConsumer, Message, Record
from dicomcloud.ports.index import Index, SeriesKey, UpsertOutcome
from dicomcloud.runtime import Runtime
from dicomcloud.workers.consumer import DEAD_LETTER_TOPIC, GROUP, IndexConsumer

STUDY, SERIES = "1.2.826.0.2.1", "1.2.826.0.2.1.1"
KEY = SeriesKey("default", STUDY, SERIES)


def write_ct(path: Path, sop: str, pixel: int = 0) -> Path:
    return support.write_ct(path, STUDY, SERIES, sop, pixel)


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    rt = support.make_runtime(tmp_path / "data", workers={"consumer_poll_timeout": 0.05})
    yield rt
    rt.close()


def store(runtime: Runtime, source: Path) -> StorageEvent:
    return support.ingest(runtime, source)


def pending(runtime: Runtime) -> list[Record]:
    """The storage events the consumer group has not committed, without taking them."""
    consumer = runtime.bus.subscribe(GROUP, [STORAGE_QUEUE])
    try:
        return consumer.poll(1000, 0.2)
    finally:
        consumer.close()


def read_topic(runtime: Runtime, topic: str) -> list[bytes]:
    consumer = runtime.bus.subscribe("test-reader", [topic])
    try:
        return [record.value for record in consumer.poll(1000, 0.2)]
    finally:
        consumer.close()


def test_a_stored_instance_is_indexed_and_its_state_and_image_metadata_published(
    runtime: Runtime, tmp_path: Path
) -> None:
    event = store(runtime, write_ct(tmp_path / "a.dcm", "1.2.826.0.2.1.1.1"))
    IndexConsumer(runtime).process(pending(runtime))
    indexed = runtime.index.get_instance("default", event.sop_instance_uid)
    assert indexed is not None and (indexed.file_path, indexed.sha256) == (event.file_path, event.sha256)
    images = [json.loads(raw) for raw in read_topic(runtime, DICOM_IMAGE_QUEUE)]
    assert [(i["SOPInstanceUID"], i["Sha256"]) for i in images] == [(event.sop_instance_uid, event.sha256)]
    assert images[0]["UpdatedAt"]
    states = [DicomStateMeta.from_bytes(raw) for raw in read_topic(runtime, DICOM_STATE_QUEUE)]
    assert [(s.series_instance_uid, s.series_related_instances) for s in states] == [(SERIES, 1)]
    assert states[0].updated_at


def test_replayed_events_change_nothing(runtime: Runtime, tmp_path: Path) -> None:
    for number in range(3):
        store(runtime, write_ct(tmp_path / f"{number}.dcm", f"1.2.826.0.2.1.1.{number + 1}", pixel=number))
    records = pending(runtime)
    consumer = IndexConsumer(runtime)
    consumer.process(records)
    version = runtime.index.series_version(KEY)
    instances = runtime.index.list_instances("default", STUDY, SERIES)
    consumer.process(records)
    consumer.process(records[:1])
    assert runtime.index.series_version(KEY) == version
    assert runtime.index.list_instances("default", STUDY, SERIES) == instances


def test_an_event_whose_file_was_replaced_since_is_skipped_and_the_later_one_indexes_it(
    runtime: Runtime, tmp_path: Path
) -> None:
    sop = "1.2.826.0.2.1.1.9"
    store(runtime, write_ct(tmp_path / "old.dcm", sop, pixel=1))
    newer = store(runtime, write_ct(tmp_path / "new.dcm", sop, pixel=2))
    first, second = pending(runtime)
    consumer = IndexConsumer(runtime)
    consumer.process([first])
    assert runtime.index.get_instance("default", sop) is None
    consumer.process([second])
    consumer.process([first])
    indexed = runtime.index.get_instance("default", sop)
    assert indexed is not None and indexed.sha256 == newer.sha256


def test_an_event_whose_file_is_gone_is_skipped(runtime: Runtime, tmp_path: Path) -> None:
    event = store(runtime, write_ct(tmp_path / "a.dcm", "1.2.826.0.2.1.1.5"))
    runtime.storage.remove_instance(event.file_path)
    IndexConsumer(runtime).process(pending(runtime))
    assert runtime.index.get_instance("default", event.sop_instance_uid) is None
    assert read_topic(runtime, DEAD_LETTER_TOPIC) == []


def poison(runtime: Runtime, tmp_path: Path) -> list[bytes]:
    """Three messages no retry can fix: not JSON, not an event, a file that is not DICOM."""
    junk = store(runtime, write_ct(tmp_path / "a.dcm", "1.2.826.0.2.1.1.7"))
    path = runtime.storage.path(junk.file_path)
    path.write_bytes(b"not DICOM")
    sha256, size = file_digest(path)
    bad_file = json.loads(junk.to_bytes())
    bad_file.update(Sha256=sha256, FileSize=size)
    values = [b"\xff not json", json.dumps({"SOPInstanceUID": "1.2"}).encode(), json.dumps(bad_file).encode()]
    runtime.bus.publish([Message(STORAGE_QUEUE, STUDY, value) for value in values])
    return values


def test_poison_messages_go_to_the_dead_letter_topic_with_their_error(runtime: Runtime, tmp_path: Path) -> None:
    values = poison(runtime, tmp_path)
    records = [r for r in pending(runtime) if r.value in values]
    IndexConsumer(runtime).process(records)
    dead = [json.loads(raw) for raw in read_topic(runtime, DEAD_LETTER_TOPIC)]
    assert [d["Offset"] for d in dead] == [r.offset for r in records]
    assert all(d["Error"] and d["Topic"] == STORAGE_QUEUE for d in dead)
    assert dead[1]["Value"] == values[1].decode()


def test_run_commits_poison_so_it_never_blocks_the_events_behind_it(runtime: Runtime, tmp_path: Path) -> None:
    poison(runtime, tmp_path)
    good = store(runtime, write_ct(tmp_path / "good.dcm", "1.2.826.0.2.1.1.8"))
    stop = threading.Event()
    worker = threading.Thread(target=IndexConsumer(runtime).run, args=(stop,))
    worker.start()
    try:
        for _ in range(200):
            if runtime.index.get_instance("default", good.sop_instance_uid) is not None:
                break
            stop.wait(0.05)
    finally:
        stop.set()
        worker.join(10)
    assert runtime.index.get_instance("default", good.sop_instance_uid) is not None
    assert pending(runtime) == []
    assert len(read_topic(runtime, DEAD_LETTER_TOPIC)) == 3


class FlakyIndex:
    """The runtime's index, down for the first `failures` upserts; `journal` records what happened when."""

    def __init__(self, inner: Index, failures: int, journal: list[str]) -> None:
        self.inner, self.failures, self.journal = inner, failures, journal

    def upsert(self, state: DicomStateMeta, image: DicomImageMeta) -> UpsertOutcome:
        if self.failures > 0:
            self.failures -= 1
            self.journal.append("upsert failed")
            raise StorageFailure("index unavailable")
        self.journal.append("upsert")
        return self.inner.upsert(state, image)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


class JournalingConsumer:
    """A subscription that records its commits in the journal."""

    def __init__(self, inner: BusConsumer, journal: list[str]) -> None:
        self.inner, self.journal = inner, journal

    def poll(self, max_records: int, timeout: float) -> list[Record]:
        return self.inner.poll(max_records, timeout)

    def commit(self, records: Sequence[Record]) -> None:
        self.inner.commit(records)
        self.journal.append("commit")

    def lag(self) -> int:
        return self.inner.lag()

    def close(self) -> None:
        self.inner.close()


def test_a_batch_whose_index_is_down_is_retried_with_backoff_and_committed_only_once_durable_logging_the_outage_once(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    event = store(runtime, write_ct(tmp_path / "ct.dcm", "1.2.826.0.2.1.1.9"))
    journal: list[str] = []
    runtime.index = FlakyIndex(runtime.index, failures=3, journal=journal)  # type: ignore[assignment]
    subscribe = runtime.bus.subscribe
    monkeypatch.setattr(runtime.bus, "subscribe", lambda g, t: JournalingConsumer(subscribe(g, t), journal))
    stop = threading.Event()
    worker = threading.Thread(target=IndexConsumer(runtime).run, args=(stop,))
    with caplog.at_level(logging.WARNING, logger="dicomcloud.workers.consumer"):
        worker.start()
        try:
            for _ in range(400):
                if "commit" in journal:
                    break
                stop.wait(0.05)
        finally:
            stop.set()
            worker.join(10)
    assert journal == ["upsert failed"] * 3 + ["upsert", "commit"]
    assert runtime.index.get_instance("default", event.sop_instance_uid) is not None
    assert pending(runtime) == []
    outage = [r.getMessage() for r in caplog.records]
    assert len(outage) == 2, outage
    assert "index unavailable" in outage[0] and "after 3 failed attempts" in outage[1]
