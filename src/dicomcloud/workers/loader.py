"""The warehouse loader: metadata, receive-log, access-log and transcode-failure events -> warehouse tables.

Records are gathered across polls until `warehouse.batch_rows` are pending or the oldest has waited
`warehouse.batch_seconds`; then each topic partition's run of records is loaded as one batch whose
label is its bus position (topic, partition, first and last offset), and the records are committed
only after every batch was accepted. A replay after a crash is harmless twice over: records at or
below the warehouse's `loaded_until` watermark are skipped (so batches cut differently on replay
still load nothing twice), and a batch whose label is already in is not loaded again.

A record that is not its topic's event, or a row the warehouse refuses, is poison, dead-lettered by
the bus loop (workers/loop.py) with the error: a refused batch is retried one record at a time, so
one bad row does not hold back the rest. Any other failure (warehouse or bus down) is transient: the
loop retries the batch, and nothing is committed until it is loaded.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from dicomcloud.archive.core import Archive
from dicomcloud.config import Settings
from dicomcloud.errors import InvalidInput
from dicomcloud.events import (
    ACCESS_LOG_QUEUE,
    DICOM_IMAGE_QUEUE,
    DICOM_STATE_QUEUE,
    LOG_QUEUE,
    AccessLog,
    BusEvent,
    DicomImageMeta,
    DicomStateMeta,
    DimseRefusal,
    StorageEvent,
    TranscodeFailure,
)
from dicomcloud.ports.bus import Record
from dicomcloud.ports.warehouse import TABLES, Batch
from dicomcloud.workers.loop import Batching, Handler, Outcome, Poisoned

log = logging.getLogger(__name__)

# Topic -> the event it carries and the table its rows go to.
ROUTES: dict[str, tuple[type[BusEvent], str]] = {
    DICOM_STATE_QUEUE: (DicomStateMeta, "dicom_state_meta"),
    DICOM_IMAGE_QUEUE: (DicomImageMeta, "dicom_image_meta"),
    LOG_QUEUE: (StorageEvent, "dicom_object_meta"),
    ACCESS_LOG_QUEUE: (AccessLog, "wado_access_log"),
    TranscodeFailure.topic: (TranscodeFailure, "transcode_failure"),
    DimseRefusal.topic: (DimseRefusal, "dimse_refusal"),
}


def batching(settings: Settings) -> Batching:
    """Rows gathered across polls: up to `warehouse.batch_rows`, for at most `warehouse.batch_seconds`."""
    return Batching(settings.warehouse.batch_rows, settings.warehouse.batch_seconds)


class Loader(Handler):
    group = "warehouse-loader"
    topics = tuple(ROUTES)
    service = "loader"

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        # (topic, partition) -> highest offset known to be in the warehouse; read once per subscription.
        self._loaded: dict[tuple[str, int], int] = {}

    def subscribed(self) -> None:
        self._loaded.clear()

    def handle(self, records: Sequence[Record], stop: threading.Event) -> Outcome:
        """Load every topic partition's run of records; raises on a transient failure, so nothing is committed."""
        runs: dict[tuple[str, int], list[Record]] = {}
        for record in records:
            runs.setdefault((record.topic, record.partition), []).append(record)
        outcome = Outcome()
        for (topic, partition), run in runs.items():
            watermark = self._watermark(topic, partition)
            fresh = [r for r in run if r.offset > watermark]
            if fresh:
                outcome.poisoned.extend(self._load_run(fresh))
        return outcome

    def _watermark(self, topic: str, partition: int) -> int:
        key = (topic, partition)
        if key not in self._loaded:
            self._loaded[key] = self.archive.runtime.warehouse.loaded_until(topic, partition)
        return self._loaded[key]

    def _load_run(self, run: Sequence[Record]) -> list[Poisoned]:
        """Load one partition's records (ascending offsets); what the warehouse refused."""
        event_type, table = ROUTES[run[0].topic]
        rows: list[dict[str, Any]] = []
        poisoned: list[Poisoned] = []
        for record in run:
            try:
                rows.append(_row(record, event_type, table))
            except InvalidInput as exc:
                poisoned.append(Poisoned(record, exc))
        try:
            self._load_batch(run[0], run[-1], table, rows)
        except InvalidInput:
            log.warning("%s refused a batch of %s; loading it one record at a time", table, run[0].topic)
            poisoned = []
            for record in run:
                try:
                    self._load_batch(record, record, table, [_row(record, event_type, table)])
                except InvalidInput as exc:
                    poisoned.append(Poisoned(record, exc))
        return poisoned

    def _load_batch(self, first: Record, last: Record, table: str, rows: list[dict[str, Any]]) -> None:
        batch = Batch(table, first.topic, first.partition, first.offset, last.offset)
        if rows and not self.archive.runtime.warehouse.load(batch, rows):
            log.info("batch %s was already loaded", batch.label)
        self._loaded[(first.topic, first.partition)] = last.offset


def _row(record: Record, event_type: type[BusEvent], table: str) -> dict[str, Any]:
    try:
        event = event_type.from_bytes(record.value)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise InvalidInput(f"not a {event_type.__name__}: {exc}") from exc
    return TABLES[table].row(event.row())
