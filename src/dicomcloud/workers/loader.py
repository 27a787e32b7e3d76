"""The warehouse loader: metadata, receive-log, access-log and transcode-failure events -> warehouse tables.

Records are gathered across polls until `warehouse.batch_rows` are pending or the oldest has waited
`warehouse.batch_seconds`; then each topic partition's run of records is loaded as one batch whose
label is its bus position (topic, partition, first and last offset), and the records are committed
only after every batch was accepted. A replay after a crash is harmless twice over: records at or
below the warehouse's `loaded_until` watermark are skipped (so batches cut differently on replay
still load nothing twice), and a batch whose label is already in is not loaded again.

A record that is not its topic's event, or a row the warehouse refuses, goes to `warehouse.dlq`
with the error: a refused batch is retried one record at a time, so one bad row does not hold
back the rest. Any other failure (warehouse or bus down) is transient: nothing is committed, the
subscription is reopened after a pause and delivery resumes at the last commit.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from dicomcloud.errors import DicomCloudError, InvalidInput
from dicomcloud.events import (
    ACCESS_LOG_QUEUE,
    DICOM_IMAGE_QUEUE,
    DICOM_STATE_QUEUE,
    LOG_QUEUE,
    AccessLog,
    DicomImageMeta,
    DicomStateMeta,
    Event,
    StorageEvent,
    TranscodeFailure,
)
from dicomcloud.metrics import EVENTS_FAILED, EVENTS_PROCESSED, LagReporter, count_records
from dicomcloud.ports.bus import BusConsumer, Message, Record
from dicomcloud.ports.warehouse import TABLES, Batch
from dicomcloud.runtime import Runtime
from dicomcloud.workers.retry import Outage

log = logging.getLogger(__name__)

GROUP = "warehouse-loader"
SERVICE = "loader"
DEAD_LETTER_TOPIC = "warehouse.dlq"
# Topic -> the event it carries and the table its rows go to.
ROUTES: dict[str, tuple[type[Event], str]] = {
    DICOM_STATE_QUEUE: (DicomStateMeta, "dicom_state_meta"),
    DICOM_IMAGE_QUEUE: (DicomImageMeta, "dicom_image_meta"),
    LOG_QUEUE: (StorageEvent, "dicom_object_meta"),
    ACCESS_LOG_QUEUE: (AccessLog, "wado_access_log"),
    TranscodeFailure.topic: (TranscodeFailure, "transcode_failure"),
}


class Loader:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        # (topic, partition) -> highest offset known to be in the warehouse; read once per subscription.
        self._loaded: dict[tuple[str, int], int] = {}
        self.lag = LagReporter(GROUP, list(ROUTES))

    def run(self, stop: threading.Event) -> None:
        """Load until `stop` is set (what is pending then is loaded first); failures resume from the last commit."""
        outage = Outage("loading the warehouse", log)
        while not stop.is_set():
            consumer: BusConsumer | None = None
            try:
                consumer = self.runtime.bus.subscribe(GROUP, list(ROUTES))
                self._loaded.clear()
                self._consume(consumer, stop, outage)
            except Exception as exc:
                # A service loop outlives any one failure; the batch was not committed.
                outage.failed(exc, stop)
            finally:
                if consumer is not None:
                    _close(consumer)

    def _consume(self, consumer: BusConsumer, stop: threading.Event, outage: Outage) -> None:
        settings = self.runtime.settings
        limit, wait = settings.warehouse.batch_rows, settings.warehouse.batch_seconds
        pending: list[Record] = []
        oldest = 0.0
        while not stop.is_set():
            records = consumer.poll(max(1, limit - len(pending)), settings.workers.consumer_poll_timeout)
            self.lag.update(consumer)
            if not records and not pending:
                outage.recovered()
            if records and not pending:
                oldest = time.monotonic()
            pending.extend(records)
            if pending and (len(pending) >= limit or time.monotonic() - oldest >= wait):
                self.load(pending)
                consumer.commit(pending)
                count_records(EVENTS_PROCESSED, SERVICE, pending)
                pending = []
                outage.recovered()
        # What was published just before the stop (the web app's last access-log flush) goes in too.
        pending.extend(consumer.poll(max(1, limit - len(pending)), 0))
        if pending:
            self.load(pending)
            consumer.commit(pending)
            count_records(EVENTS_PROCESSED, SERVICE, pending)

    def load(self, records: Sequence[Record]) -> None:
        """Load every topic partition's run of records; raises on a transient failure, so nothing is committed."""
        runs: dict[tuple[str, int], list[Record]] = {}
        for record in records:
            runs.setdefault((record.topic, record.partition), []).append(record)
        dead: list[Message] = []
        for (topic, partition), run in runs.items():
            watermark = self._watermark(topic, partition)
            fresh = [r for r in run if r.offset > watermark]
            if fresh:
                dead.extend(self._load_run(fresh))
        if dead:
            self.runtime.bus.publish(dead)

    def _watermark(self, topic: str, partition: int) -> int:
        key = (topic, partition)
        if key not in self._loaded:
            self._loaded[key] = self.runtime.warehouse.loaded_until(topic, partition)
        return self._loaded[key]

    def _load_run(self, run: Sequence[Record]) -> list[Message]:
        """Load one partition's records (ascending offsets); the dead letters of what was refused."""
        event_type, table = ROUTES[run[0].topic]
        rows: list[dict[str, Any]] = []
        dead: list[Message] = []
        for record in run:
            try:
                rows.append(_row(record, event_type, table))
            except InvalidInput as exc:
                dead.append(_dead_letter(record, exc))
        try:
            self._load_batch(run[0], run[-1], table, rows)
        except InvalidInput:
            log.warning("%s refused a batch of %s; loading it one record at a time", table, run[0].topic)
            dead = []
            for record in run:
                try:
                    self._load_batch(record, record, table, [_row(record, event_type, table)])
                except InvalidInput as exc:
                    dead.append(_dead_letter(record, exc))
        for message in dead:
            log.warning("dead-lettered a %s record: %s", table, json.loads(message.value)["Error"])
        EVENTS_FAILED.labels(SERVICE, run[0].topic).inc(len(dead))
        return dead

    def _load_batch(self, first: Record, last: Record, table: str, rows: list[dict[str, Any]]) -> None:
        batch = Batch(table, first.topic, first.partition, first.offset, last.offset)
        if rows and not self.runtime.warehouse.load(batch, rows):
            log.info("batch %s was already loaded", batch.label)
        self._loaded[(first.topic, first.partition)] = last.offset


def _row(record: Record, event_type: type[Event], table: str) -> dict[str, Any]:
    try:
        event = event_type.from_bytes(record.value)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise InvalidInput(f"not a {event_type.__name__}: {exc}") from exc
    return TABLES[table].row(dataclasses.asdict(event))


def _dead_letter(record: Record, error: DicomCloudError) -> Message:
    """The original message and why the warehouse did not take it, readable without this package."""
    body = {
        "Error": error.message,
        "Topic": record.topic,
        "Partition": record.partition,
        "Offset": record.offset,
        "Key": record.key,
        "Value": record.value.decode("utf-8", "backslashreplace"),
        "FailedAt": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }
    return Message(DEAD_LETTER_TOPIC, record.key, json.dumps(body, ensure_ascii=False).encode())


def _close(consumer: BusConsumer) -> None:
    try:
        consumer.close()
    except DicomCloudError as exc:
        log.warning("closing the subscription failed: %s", exc.message)
