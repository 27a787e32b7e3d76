"""The warehouse loader: events reach their tables, commits follow the warehouse, replays load nothing twice."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import support

from dicomcloud.errors import StorageFailure
from dicomcloud.events import DICOM_IMAGE_QUEUE, DICOM_STATE_QUEUE, LOG_QUEUE, AccessLog, TranscodeFailure
from dicomcloud.ports.bus import Message, Record
from dicomcloud.ports.warehouse import Batch
from dicomcloud.runtime import Runtime
from dicomcloud.workers.loader import DEAD_LETTER_TOPIC, GROUP, ROUTES, Loader

STUDY, SERIES = "1.2.826.0.3.1", "1.2.826.0.3.1.1"


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    rt = support.make_runtime(
        tmp_path / "data",
        workers={"consumer_poll_timeout": 0.05},
        warehouse={"batch_rows": 1000, "batch_seconds": 0.1},
    )
    yield rt
    rt.close()


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


def take(runtime: Runtime) -> list[Record]:
    """What the loader group has not committed, as a restarted loader would receive it."""
    consumer = runtime.bus.subscribe(GROUP, list(ROUTES))
    try:
        return consumer.poll(10_000, 0.2)
    finally:
        consumer.close()


def load_pending(runtime: Runtime, *, commit: bool = True) -> list[Record]:
    consumer = runtime.bus.subscribe(GROUP, list(ROUTES))
    try:
        records = consumer.poll(10_000, 0.2)
        Loader(runtime).load(records)
        if commit:
            consumer.commit(records)
        return records
    finally:
        consumer.close()


def test_stored_instances_reach_the_image_state_and_receive_log_tables(runtime: Runtime, tmp_path: Path) -> None:
    for n in range(3):
        support.ingest(runtime, support.write_ct(tmp_path / f"{n}.dcm", STUDY, SERIES, f"{SERIES}.{n}"))
    support.index_pending(runtime)
    load_pending(runtime)
    warehouse = runtime.warehouse
    assert warehouse.count("dicom_image_meta") == 3
    assert warehouse.count("dicom_state_meta") == 1
    assert warehouse.count("dicom_object_meta") == 3
    assert warehouse.statistics("totals")[0]["instances"] == 3


def test_access_logs_and_transcode_failures_reach_their_tables(runtime: Runtime) -> None:
    runtime.bus.publish([access(), access(), failure("1.2.3.1")])
    load_pending(runtime)
    assert runtime.warehouse.count("wado_access_log") == 2
    assert runtime.warehouse.count("transcode_failure") == 1


def test_a_batch_replayed_after_a_crash_is_not_loaded_twice(runtime: Runtime) -> None:
    runtime.bus.publish([access(), access()])
    load_pending(runtime, commit=False)  # loaded, then the loader died before committing
    runtime.bus.publish([access()])  # the replay is cut differently: it also holds a new record
    replayed = load_pending(runtime)
    assert len(replayed) == 3
    assert runtime.warehouse.count("wado_access_log") == 3
    assert take(runtime) == []


def test_a_refused_row_is_dead_lettered_and_the_others_loaded(runtime: Runtime) -> None:
    runtime.bus.publish([access(), access(status="not a number"), access()])
    load_pending(runtime)
    assert runtime.warehouse.count("wado_access_log") == 2
    dead = runtime.bus.subscribe("test", [DEAD_LETTER_TOPIC]).poll(10, 0.2)
    assert len(dead) == 1
    assert json.loads(json.loads(dead[0].value)["Value"])["Status"] == "not a number"
    assert take(runtime) == []


def test_a_message_that_is_not_its_event_is_dead_lettered(runtime: Runtime) -> None:
    runtime.bus.publish([Message(LOG_QUEUE, "k", b"{not json"), Message(DICOM_STATE_QUEUE, "k", b'{"TenantID": 1}')])
    load_pending(runtime)
    dead = runtime.bus.subscribe("test", [DEAD_LETTER_TOPIC]).poll(10, 0.2)
    assert {json.loads(d.value)["Topic"] for d in dead} == {LOG_QUEUE, DICOM_STATE_QUEUE}


class DownWarehouse:
    def load(self, batch: Batch, rows: object) -> bool:
        raise StorageFailure("warehouse unavailable")

    def loaded_until(self, topic: str, partition: int) -> int:
        return -1


def test_nothing_is_committed_while_the_warehouse_is_down(runtime: Runtime) -> None:
    runtime.bus.publish([access(), Message(DICOM_IMAGE_QUEUE, "k", b"{}")])
    runtime._warehouse = DownWarehouse()  # type: ignore[assignment]
    with pytest.raises(StorageFailure):
        load_pending(runtime)
    runtime._warehouse = None
    assert len(take(runtime)) == 2


@contextmanager
def running_loader(runtime: Runtime) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=Loader(runtime).run, args=(stop,))
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


def test_the_running_loader_batches_by_time_and_commits(runtime: Runtime) -> None:
    runtime.bus.publish([access(), failure("1.2.3.2")])
    with running_loader(runtime):
        wait_for(lambda: runtime.warehouse.count("transcode_failure") > 0)
    assert runtime.warehouse.count("wado_access_log") == 1
    assert runtime.warehouse.count("transcode_failure") == 1
    assert take(runtime) == []


def test_a_warehouse_outage_is_logged_once_and_the_running_loader_catches_up(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    runtime.bus.publish([access(), failure("1.2.3.3")])
    real = runtime.warehouse
    runtime._warehouse = DownWarehouse()  # type: ignore[assignment]
    with running_loader(runtime):
        wait_for(lambda: "loading the warehouse failed" in caplog.text)
        time.sleep(1.0)  # several retries with backoff
        runtime._warehouse = real
        wait_for(lambda: real.count("transcode_failure") > 0)
    assert real.count("wado_access_log") == 1
    assert caplog.text.count("loading the warehouse failed") == 1
    assert caplog.text.count("loading the warehouse works again") == 1
