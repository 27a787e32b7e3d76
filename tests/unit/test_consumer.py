"""wado-consumer: storage events become warehouse rows and transcode requests, from the event alone.

The store indexed each instance before acknowledging it; the consumer neither indexes nor reads stored
objects. It skips events the index no longer agrees with, and returns poison to the bus loop, which
dead-letters it to `wado-consumer.dlq`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import pytest
import support
from pydicom.data import get_testdata_file
from support import JournalingBus, counted

from dicomcloud.archive.core import Archive
from dicomcloud.errors import StorageFailure
from dicomcloud.events import (
    DICOM_IMAGE_QUEUE,
    DICOM_STATE_QUEUE,
    STORAGE_QUEUE,
    TRANSCODE_QUEUE,
    DicomImageMeta,
    DicomStateMeta,
    StorageEvent,
    TranscodeRequest,
)
from dicomcloud.ports.bus import Message, Record
from dicomcloud.ports.index import Index, InstanceLocation
from dicomcloud.workers.background import bus_loop
from dicomcloud.workers.consumer import StorageEventConsumer
from dicomcloud.workers.loop import Batching, BusLoop, dead_letter_topic

STUDY, SERIES = "1.2.826.0.2.1", "1.2.826.0.2.1.1"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
HTJ2K_RPCL = "1.2.840.10008.1.2.4.202"
DEAD_LETTERS = dead_letter_topic(StorageEventConsumer.group)
MR_RLE = Path(str(get_testdata_file("MR_small_RLE.dcm")))


def write_ct(path: Path, sop: str, pixel: int = 0) -> Path:
    return support.write_ct(path, STUDY, SERIES, sop, pixel)


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    archive = support.make_archive(
        tmp_path / "data",
        workers={"consumer_poll_timeout": 0.05},
        transcode={"viewer_syntaxes": [EXPLICIT_VR_LITTLE_ENDIAN]},
    )
    yield archive
    archive.close()


def store(archive: Archive, source: Path) -> StorageEvent:
    return support.store(archive, source)


def pending(archive: Archive) -> list[Record]:
    """The storage events the consumer group has not committed, without taking them."""
    consumer = archive.runtime.bus.subscribe(StorageEventConsumer.group, [STORAGE_QUEUE])
    try:
        return consumer.poll(1000, 0.2)
    finally:
        consumer.close()


def handle(archive: Archive, records: Sequence[Record]) -> None:
    """What the consumer service does with a batch before committing it: handle it and publish the outcome."""
    BusLoop(archive.runtime.bus, StorageEventConsumer(archive), Batching(1000), 0.05).process(records)


def read_topic(archive: Archive, topic: str) -> list[bytes]:
    consumer = archive.runtime.bus.subscribe("test-reader", [topic])
    try:
        return [record.value for record in consumer.poll(1000, 0.2)]
    finally:
        consumer.close()


def images(archive: Archive) -> list[DicomImageMeta]:
    return [DicomImageMeta.from_bytes(raw) for raw in read_topic(archive, DICOM_IMAGE_QUEUE)]


def states(archive: Archive) -> list[DicomStateMeta]:
    return [DicomStateMeta.from_bytes(raw) for raw in read_topic(archive, DICOM_STATE_QUEUE)]


def test_a_storage_event_becomes_an_image_row_and_a_state_row_stamped_with_its_receipt(
    archive: Archive, tmp_path: Path
) -> None:
    event = store(archive, write_ct(tmp_path / "a.dcm", f"{SERIES}.1"))
    support.run_pending(archive, StorageEventConsumer(archive))
    [image] = images(archive)
    assert (image.sop_instance_uid, image.series_instance_uid, image.file_path, image.file_size, image.sha256) == (
        event.sop_instance_uid,
        SERIES,
        event.file_path,
        event.file_size,
        event.sha256,
    )
    assert image.values == DicomImageMeta.catalogue_values(event.attributes)
    assert (image.values["rows"], image.values["transfer_syntax"]) == (128, EXPLICIT_VR_LITTLE_ENDIAN)
    assert image.updated_at == event.received_at
    [state] = states(archive)
    assert (state.study_instance_uid, state.series_instance_uid, state.series_related_instances) == (STUDY, SERIES, 1)
    assert state.values == DicomStateMeta.catalogue_values(event.attributes)
    assert (state.values["patient_id"], state.values["modality"]) == (event.patient_id, "CT")
    assert state.updated_at == event.received_at
    assert pending(archive) == []


def test_a_batch_gives_one_state_row_per_series_counted_by_the_index(archive: Archive, tmp_path: Path) -> None:
    for n in (1, 2, 3):
        store(archive, write_ct(tmp_path / f"{n}.dcm", f"{SERIES}.{n}", pixel=n))
    records = pending(archive)
    handle(archive, records[-1:])  # the last event alone still sees the whole series
    handle(archive, records)
    assert [s.series_related_instances for s in states(archive)] == [3, 3]
    assert sorted(i.sop_instance_uid for i in images(archive)) == [f"{SERIES}.{n}" for n in (1, 2, 3, 3)]


def test_a_replayed_event_publishes_the_same_rows_again(archive: Archive, tmp_path: Path) -> None:
    """Rows carry the event's receipt time, not the replay's: the warehouse keeps one version of each."""
    store(archive, write_ct(tmp_path / "a.dcm", f"{SERIES}.1"))
    records = pending(archive)
    handle(archive, records)
    handle(archive, records)
    first, replayed = read_topic(archive, DICOM_IMAGE_QUEUE)
    assert first == replayed
    assert len(set(read_topic(archive, DICOM_STATE_QUEUE))) == 1


def test_a_transcode_request_is_published_only_for_an_instance_outside_the_viewer_syntaxes(
    archive: Archive, tmp_path: Path
) -> None:
    store(archive, write_ct(tmp_path / "ct.dcm", f"{SERIES}.1"))
    rle = store(archive, MR_RLE)
    support.run_pending(archive, StorageEventConsumer(archive))
    requests = [TranscodeRequest.from_bytes(raw) for raw in read_topic(archive, TRANSCODE_QUEUE)]
    assert [(r.sop_instance_uid, r.file_path, r.sha256, r.transfer_syntax, r.target_syntax) for r in requests] == [
        (rle.sop_instance_uid, rle.file_path, rle.sha256, RLE_LOSSLESS, EXPLICIT_VR_LITTLE_ENDIAN)
    ]


def test_each_derived_syntax_is_requested_for_an_image_not_stored_in_it(tmp_path: Path) -> None:
    archive = support.make_archive(
        tmp_path / "data",
        workers={"consumer_poll_timeout": 0.05},
        transcode={"viewer_syntaxes": [EXPLICIT_VR_LITTLE_ENDIAN], "derived_syntaxes": [HTJ2K_RPCL, RLE_LOSSLESS]},
    )
    try:
        ct = store(archive, write_ct(tmp_path / "ct.dcm", f"{SERIES}.1"))
        rle = store(archive, MR_RLE)
        support.run_pending(archive, StorageEventConsumer(archive))
        requests = [TranscodeRequest.from_bytes(raw) for raw in read_topic(archive, TRANSCODE_QUEUE)]
    finally:
        archive.close()
    assert sorted((r.sop_instance_uid, r.target_syntax) for r in requests) == sorted(
        [
            (ct.sop_instance_uid, HTJ2K_RPCL),
            (ct.sop_instance_uid, RLE_LOSSLESS),
            (rle.sop_instance_uid, EXPLICIT_VR_LITTLE_ENDIAN),
            (rle.sop_instance_uid, HTJ2K_RPCL),
        ]
    )


def test_the_consumer_reads_no_stored_object(archive: Archive, tmp_path: Path) -> None:
    store(archive, write_ct(tmp_path / "a.dcm", f"{SERIES}.1"))
    store(archive, MR_RLE)
    watched, storage = counted(archive)
    support.run_pending(watched, StorageEventConsumer(watched))
    assert len(images(archive)) == 2
    assert storage.reads == []


def test_an_event_whose_instance_was_replaced_since_is_skipped_and_the_later_one_published(
    archive: Archive, tmp_path: Path
) -> None:
    sop = f"{SERIES}.9"
    store(archive, write_ct(tmp_path / "old.dcm", sop, pixel=1))
    newer = store(archive, write_ct(tmp_path / "new.dcm", sop, pixel=2))
    first, second = pending(archive)
    handle(archive, [first])
    assert images(archive) == [] and states(archive) == []
    handle(archive, [second])
    handle(archive, [first])
    assert [(i.sop_instance_uid, i.sha256) for i in images(archive)] == [(sop, newer.sha256)]
    assert read_topic(archive, DEAD_LETTERS) == []


def test_an_event_whose_instance_was_deleted_since_is_skipped_and_not_dead_lettered(
    archive: Archive, tmp_path: Path
) -> None:
    store(archive, write_ct(tmp_path / "a.dcm", f"{SERIES}.5"))
    archive.remove.delete("default", STUDY)
    handle(archive, pending(archive))
    assert images(archive) == [] and states(archive) == []
    assert read_topic(archive, TRANSCODE_QUEUE) == []
    assert read_topic(archive, DEAD_LETTERS) == []


def poison(archive: Archive, tmp_path: Path) -> list[bytes]:
    """Messages no retry can fix: not JSON, not an event, a FilePath that lies about its UIDs, Attributes
    that are not an object."""
    event = store(archive, write_ct(tmp_path / "a.dcm", f"{SERIES}.7"))
    body = json.loads(event.to_bytes())
    elsewhere = {**body, "FilePath": f"default/{STUDY}/{SERIES}/../../other/{SERIES}.7.dcm"}
    no_attributes = {**body, "Attributes": ["not", "an", "object"]}
    values = [
        b"\xff not json",
        json.dumps({"SOPInstanceUID": "1.2"}).encode(),
        json.dumps(elsewhere).encode(),
        json.dumps(no_attributes).encode(),
    ]
    archive.runtime.bus.publish([Message(STORAGE_QUEUE, STUDY, value) for value in values])
    return values


def test_poison_is_dead_lettered_to_the_consumers_topic_in_the_one_format(archive: Archive, tmp_path: Path) -> None:
    values = poison(archive, tmp_path)
    records = [r for r in pending(archive) if r.value in values]
    assert len(records) == len(values)
    handle(archive, pending(archive))
    dead = [json.loads(raw) for raw in read_topic(archive, DEAD_LETTERS)]
    assert DEAD_LETTERS == "wado-consumer.dlq"
    assert [d["Offset"] for d in dead] == [r.offset for r in records]
    for letter in dead:
        assert set(letter) == {
            "Error",
            "ErrorType",
            "Group",
            "Topic",
            "Partition",
            "Offset",
            "Key",
            "Value",
            "FailedAt",
        }
        assert letter["Error"] and letter["ErrorType"] == "InvalidInput"
        assert (letter["Group"], letter["Topic"], letter["Key"]) == ("wado-consumer", STORAGE_QUEUE, STUDY)
    assert [d["Value"] for d in dead[1:]] == [value.decode() for value in values[1:]]
    assert [i.sop_instance_uid for i in images(archive)] == [f"{SERIES}.7"], "the good event still made its row"


class FlakyIndex:
    """The archive's index, down for the first `failures` lookups; `journal` records what happened when."""

    def __init__(self, inner: Index, failures: int, journal: list[str]) -> None:
        self.inner, self.failures, self.journal = inner, failures, journal

    def get_instance(self, tenant_id: str, sop_instance_uid: str) -> InstanceLocation | None:
        if self.failures > 0:
            self.failures -= 1
            self.journal.append("index failed")
            raise StorageFailure("index unavailable")
        self.journal.append("index")
        return self.inner.get_instance(tenant_id, sop_instance_uid)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


@contextmanager
def consumer_service(archive: Archive) -> Iterator[None]:
    """wado-consumer as `dicomcloud consumer` runs it: the consumer on the one bus loop."""
    stop = threading.Event()
    thread = threading.Thread(target=bus_loop(archive, StorageEventConsumer(archive)), args=(stop,))
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(20)


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_batch_whose_index_is_down_is_retried_with_backoff_and_committed_only_once_durable_logging_one_outage(
    archive: Archive, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    event = store(archive, write_ct(tmp_path / "ct.dcm", f"{SERIES}.9"))
    journal: list[str] = []
    flaky = cast(Index, FlakyIndex(archive.runtime.index, failures=3, journal=journal))
    bus = JournalingBus(archive.runtime.bus, journal)
    down = Archive(dataclasses.replace(archive.runtime, index=flaky, bus=bus))
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="dicomcloud.workers.loop"), consumer_service(down):
        wait_for(lambda: "commit" in journal)
    assert journal == ["subscribe"] + ["index failed"] * 3 + ["index", "publish", "commit"]
    assert time.monotonic() - started >= 0.2 + 0.4 + 0.8, "three pauses, each twice the one before"
    assert [i.sha256 for i in images(archive)] == [event.sha256]
    assert pending(archive) == []
    outage = [r.getMessage() for r in caplog.records]
    assert len(outage) == 2, outage
    assert "index unavailable" in outage[0] and "after 3 failed attempts" in outage[1]


def test_a_batch_whose_bus_is_down_is_retried_and_committed_only_once_its_rows_are_published(
    archive: Archive, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    event = store(archive, write_ct(tmp_path / "ct.dcm", f"{SERIES}.9"))
    journal: list[str] = []
    flaky = JournalingBus(archive.runtime.bus, journal, publish_failures=2)
    down = Archive(dataclasses.replace(archive.runtime, bus=flaky))
    with caplog.at_level(logging.WARNING, logger="dicomcloud.workers.loop"), consumer_service(down):
        wait_for(lambda: "commit" in journal)
    assert journal == ["subscribe", "publish failed", "publish failed", "publish", "commit"]
    assert [i.sha256 for i in images(archive)] == [event.sha256]
    assert pending(archive) == []
    outage = [r.getMessage() for r in caplog.records]
    assert len(outage) == 2, outage
    assert "broker gone" in outage[0] and "after 2 failed attempts" in outage[1]
