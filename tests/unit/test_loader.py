"""The warehouse loader: events reach their tables, commits follow the warehouse, replays load nothing twice.

The loop mechanics it shares with every worker (retries, outage logging, batching across polls, the flush
at stop) are tested once, in test_bus_loop.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import support

from dicomcloud.archive.core import Archive
from dicomcloud.errors import StorageFailure
from dicomcloud.events import DICOM_IMAGE_QUEUE, DICOM_STATE_QUEUE, LOG_QUEUE, AccessLog, TranscodeFailure
from dicomcloud.ports.bus import Message, Record
from dicomcloud.ports.warehouse import Batch
from dicomcloud.workers import loader
from dicomcloud.workers.background import bus_workers
from dicomcloud.workers.consumer import StorageEventConsumer
from dicomcloud.workers.loader import ROUTES, Loader
from dicomcloud.workers.loop import Batching, BusLoop, dead_letter_topic

STUDY, SERIES = "1.2.826.0.3.1", "1.2.826.0.3.1.1"
DEAD_LETTERS = dead_letter_topic(Loader.group)


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    archive = support.make_archive(
        tmp_path / "data",
        workers={"consumer_poll_timeout": 0.05},
        warehouse={"batch_rows": 1000, "batch_seconds": 0.1},
    )
    yield archive
    archive.close()


def access(status: int | str = 200, route: str = "/dicom-web/studies") -> Message:
    event = AccessLog(
        accessed_at="2026-03-04T05:06:07.890+00:00", tenant_id="default", user_id="", client_address="127.0.0.1",
        method="GET", route=route, study_instance_uid=STUDY, series_instance_uid="", sop_instance_uid="",
        status=200, bytes_sent=10, duration_ms=1.5,
    )
    body = {**event.to_dict(), "Status": status}
    return Message(event.topic, event.key, json.dumps(body).encode())


def failure(sop: str) -> Message:
    event = TranscodeFailure(
        tenant_id="default", study_instance_uid=STUDY, series_instance_uid=SERIES, sop_instance_uid=sop,
        transfer_syntax="1.2.840.10008.1.2.4.50", target_syntax="1.2.840.10008.1.2.1", reason="x", attempts=1,
        failed_at="2026-03-04T05:06:07+00:00",
    )
    return Message(event.topic, event.key, event.to_bytes())


def take(archive: Archive) -> list[Record]:
    """What the loader group has not committed, as a restarted loader would receive it."""
    consumer = archive.runtime.bus.subscribe(Loader.group, list(ROUTES))
    try:
        return consumer.poll(10_000, 0.2)
    finally:
        consumer.close()


def load_pending(archive: Archive, *, commit: bool = True) -> list[Record]:
    consumer = archive.runtime.bus.subscribe(Loader.group, list(ROUTES))
    try:
        records = consumer.poll(10_000, 0.2)
        BusLoop(archive.runtime.bus, Loader(archive), Batching(10_000), 0.05).process(records)
        if commit:
            consumer.commit(records)
        return records
    finally:
        consumer.close()


def dead_letters(archive: Archive) -> list[dict[str, object]]:
    consumer = archive.runtime.bus.subscribe("test", [DEAD_LETTERS])
    try:
        return [json.loads(record.value) for record in consumer.poll(10, 0.2)]
    finally:
        consumer.close()


def test_stored_instances_reach_the_image_state_and_receive_log_tables(archive: Archive, tmp_path: Path) -> None:
    for n in range(3):
        support.store(archive, support.write_ct(tmp_path / f"{n}.dcm", STUDY, SERIES, f"{SERIES}.{n}"))
    support.run_pending(archive, StorageEventConsumer(archive))
    load_pending(archive)
    warehouse = archive.runtime.warehouse
    assert warehouse.count("dicom_image_meta") == 3
    assert warehouse.count("dicom_state_meta") == 1
    assert warehouse.count("dicom_object_meta") == 3
    assert warehouse.statistics("totals")[0]["instances"] == 3


def test_access_logs_and_transcode_failures_reach_their_tables(archive: Archive) -> None:
    archive.runtime.bus.publish([access(), access(), failure("1.2.3.1")])
    load_pending(archive)
    assert archive.runtime.warehouse.count("wado_access_log") == 2
    assert archive.runtime.warehouse.count("transcode_failure") == 1


def test_a_batch_replayed_after_a_crash_is_not_loaded_twice(archive: Archive) -> None:
    archive.runtime.bus.publish([access(), access()])
    load_pending(archive, commit=False)  # loaded, then the loader died before committing
    archive.runtime.bus.publish([access()])  # the replay is cut differently: it also holds a new record
    replayed = load_pending(archive)
    assert len(replayed) == 3
    assert archive.runtime.warehouse.count("wado_access_log") == 3
    assert take(archive) == []


def test_a_refused_row_is_dead_lettered_to_the_loaders_topic_and_the_others_loaded(archive: Archive) -> None:
    archive.runtime.bus.publish([access(), access(status="not a number"), access()])
    load_pending(archive)
    assert archive.runtime.warehouse.count("wado_access_log") == 2
    [dead] = dead_letters(archive)
    assert DEAD_LETTERS == "warehouse-loader.dlq"
    assert (dead["Group"], dead["Topic"]) == (Loader.group, AccessLog.topic)
    assert json.loads(str(dead["Value"]))["Status"] == "not a number"
    assert take(archive) == []


def test_a_message_that_is_not_its_event_is_dead_lettered(archive: Archive) -> None:
    archive.runtime.bus.publish(
        [Message(LOG_QUEUE, "k", b"{not json"), Message(DICOM_STATE_QUEUE, "k", b'{"TenantID": 1}')]
    )
    load_pending(archive)
    dead = dead_letters(archive)
    assert {d["Topic"] for d in dead} == {LOG_QUEUE, DICOM_STATE_QUEUE}
    assert {d["ErrorType"] for d in dead} == {"InvalidInput"}
    assert take(archive) == []


class DownWarehouse:
    def load(self, batch: Batch, rows: object) -> bool:
        raise StorageFailure("warehouse unavailable")

    def loaded_until(self, topic: str, partition: int) -> int:
        return -1


def test_nothing_is_committed_while_the_warehouse_is_down_and_nothing_is_dead_lettered(archive: Archive) -> None:
    """A warehouse outage is transient: the batch raises (the loop retries it), it is never poison."""
    archive.runtime.bus.publish([access(), Message(DICOM_IMAGE_QUEUE, "k", b"{}")])
    archive.runtime._warehouse = DownWarehouse()  # type: ignore[assignment]
    with pytest.raises(StorageFailure):
        load_pending(archive)
    archive.runtime._warehouse = None
    assert len(take(archive)) == 2
    assert dead_letters(archive) == []


def test_the_loader_batches_rows_by_its_warehouse_settings(archive: Archive) -> None:
    assert loader.batching(archive.settings) == Batching(1000, 0.1)


@contextmanager
def loader_service(archive: Archive) -> Iterator[None]:
    """The warehouse loader as `dicomcloud loader` runs it."""
    stop = threading.Event()
    thread = threading.Thread(target=bus_workers(archive)["loader"], args=(stop,))
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_the_loader_service_loads_a_partial_batch_after_its_batch_seconds_and_commits(archive: Archive) -> None:
    archive.runtime.bus.publish([access(), failure("1.2.3.2")])
    with loader_service(archive):
        wait_for(lambda: archive.runtime.warehouse.count("transcode_failure") > 0)
    assert archive.runtime.warehouse.count("wado_access_log") == 1
    assert archive.runtime.warehouse.count("transcode_failure") == 1
    assert take(archive) == []
