"""wado-consumer: storage events -> index, state and image metadata on the bus.

At-least-once: a batch is committed only after its index upserts and its published messages are
durable. Every effect is idempotent (upserts keyed by UIDs; metadata messages keyed for UNIQUE KEY
tables), so a replayed batch changes nothing; its metadata is published again on purpose, so a
batch whose publish failed still reaches the warehouse on redelivery.

An event is skipped (and committed) when its file is gone (deleted since) or its bytes no longer
match the event's sha256 (replaced since: the later event indexes it). This is also what keeps a
replayed or reordered older event from moving an instance back; see services/ingest.py for who
removes superseded files (ingest does; this consumer never deletes).

After indexing, the QIDO results cached for the touched studies (and their tenants) are dropped.

An instance with pixels in a syntax outside `transcode.viewer_syntaxes` is also announced on
`transcode_queue` (services/transcoder.py makes the viewer's copy).

A poison message (not a StorageEvent, a path that does not match its UIDs, a file that cannot be
parsed) goes to `storage_queue.dlq` with the error and is committed, so it never blocks the topic.
Any other failure is transient (index or bus down): a batch whose effects failed is retried in place
with exponential backoff until they are durable, and only then committed; a failed poll, commit or
subscribe reopens the subscription (with the same backoff), so delivery resumes at the last commit.
Each outage is logged when it starts and when it ends (services/retry.py), not once per attempt.

Bus compaction is left out: SqliteBus offers `compact()` but the Bus port does not, and Kafka
handles retention itself; the embedded log grows until a maintenance step compacts it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

from dicomcloud.archive.qido_cache import QidoCache
from dicomcloud.archive.store import file_digest
from dicomcloud.dicom.parse import extract_meta
from dicomcloud.errors import DicomCloudError, InvalidInput
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
from dicomcloud.metrics import EVENTS_FAILED, EVENTS_PROCESSED, LagReporter, count_records
from dicomcloud.ports.bus import BusConsumer, Message, Record
from dicomcloud.ports.index import SeriesKey
from dicomcloud.runtime import Runtime
from dicomcloud.workers.retry import Outage

log = logging.getLogger(__name__)

GROUP = "wado-consumer"
SERVICE = "consumer"
DEAD_LETTER_TOPIC = STORAGE_QUEUE + ".dlq"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class IndexConsumer:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.qido_cache = QidoCache(runtime.cache, runtime.settings.backends.qido_cache_ttl)
        self.lag = LagReporter(GROUP, [STORAGE_QUEUE])

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set; a bus failure reopens the subscription at the last commit."""
        bus = Outage("consuming storage_queue", log)
        effects = Outage("indexing storage events", log)
        while not stop.is_set():
            try:
                self._consume(stop, bus, effects)
            except Exception as exc:
                # A service loop outlives any one failure; nothing uncommitted is lost, it is redelivered.
                bus.failed(exc, stop)

    def _consume(self, stop: threading.Event, bus: Outage, effects: Outage) -> None:
        """One subscription's life: closed before any pause, so the group hands its partitions on at once."""
        consumer = self.runtime.bus.subscribe(GROUP, [STORAGE_QUEUE])
        try:
            self._consume_from(consumer, stop, bus, effects)
        finally:
            self._close(consumer)

    def _consume_from(self, consumer: BusConsumer, stop: threading.Event, bus: Outage, effects: Outage) -> None:
        workers = self.runtime.settings.workers
        while not stop.is_set():
            records = consumer.poll(workers.consumer_batch, workers.consumer_poll_timeout)
            self.lag.update(consumer)
            if not records:
                bus.recovered()
                continue
            if not self._process_until_durable(records, stop, effects):
                return
            consumer.commit(records)
            count_records(EVENTS_PROCESSED, SERVICE, records)
            bus.recovered()

    def _process_until_durable(self, records: Sequence[Record], stop: threading.Event, effects: Outage) -> bool:
        """Retry the batch's (idempotent) effects until they succeed; False when stopped first."""
        while not stop.is_set():
            try:
                self.process(records)
            except Exception as exc:
                # Poison never gets here (process dead-letters it): this is the index or bus being down.
                count_records(EVENTS_FAILED, SERVICE, records)
                effects.failed(exc, stop)
                continue
            effects.recovered()
            return True
        return False

    def process(self, records: Sequence[Record]) -> None:
        """Apply a batch's effects; raises on a transient failure, so the caller does not commit."""
        messages: list[Message] = []
        states: dict[SeriesKey, DicomStateMeta] = {}
        try:
            for record in records:
                try:
                    indexed = self._index(record)
                except InvalidInput as exc:
                    log.warning("dead-lettered %s@%d: %s", record.topic, record.offset, exc.message)
                    EVENTS_FAILED.labels(SERVICE, record.topic).inc()
                    messages.append(_dead_letter(record, exc))
                    continue
                if indexed is None:
                    continue
                state, image = indexed
                states[SeriesKey(state.tenant_id, state.study_instance_uid, state.series_instance_uid)] = state
                messages.append(Message(DICOM_IMAGE_QUEUE, image.key, image.to_bytes()))
                request = self._transcode_request(image)
                if request is not None:
                    messages.append(Message(TRANSCODE_QUEUE, request.key, request.to_bytes()))
        finally:
            # Even a batch cut short by a failure may have changed what QIDO answers.
            for tenant in {key.tenant_id for key in states}:
                self.qido_cache.changed(tenant, {key.study_instance_uid for key in states if key.tenant_id == tenant})
        for key, state in states.items():
            count = len(
                self.runtime.index.list_instances(key.tenant_id, key.study_instance_uid, key.series_instance_uid)
            )
            state = replace(state, series_related_instances=count)
            messages.append(Message(DICOM_STATE_QUEUE, state.key, state.to_bytes()))
        if messages:
            self.runtime.bus.publish(messages)

    def _index(self, record: Record) -> tuple[DicomStateMeta, DicomImageMeta] | None:
        """Upsert one event's instance; None when the event is outdated. InvalidInput means poison."""
        event = _parse_event(record.value)
        storage = self.runtime.storage
        expected = storage.instance_relpath(
            event.tenant_id, event.study_instance_uid, event.series_instance_uid, event.sop_instance_uid
        )
        if event.file_path != expected:
            raise InvalidInput(f"FilePath {event.file_path[:200]!r} does not match the event's UIDs")
        path = storage.path(event.file_path)
        if not path.is_file():
            log.debug("skipped %s: file gone", event.file_path)
            return None
        sha256, size = file_digest(path)
        if sha256 != event.sha256:
            log.debug("skipped %s: replaced since this event", event.file_path)
            return None
        try:
            state, image = extract_meta(path, event.tenant_id, event.file_path, size, sha256)
        except (InvalidInput, OSError):
            raise
        except Exception as exc:
            # Parsing is deterministic: a file that broke the parser once always will.
            raise InvalidInput(f"cannot parse {event.file_path}: {exc!r}") from exc
        now = _now()
        state = replace(state, updated_at=now)
        image = replace(image, updated_at=now)
        outcome = self.runtime.index.upsert(state, image)
        log.debug("indexed %s: %s", event.sop_instance_uid, outcome.value)
        return state, image

    def _transcode_request(self, image: DicomImageMeta) -> TranscodeRequest | None:
        """A request for the viewer's copy when the stored syntax is one the viewer cannot decode."""
        policy = self.runtime.settings.transcode
        if image.rows is None or image.transfer_syntax in policy.viewer_syntaxes:
            return None
        return TranscodeRequest(
            tenant_id=image.tenant_id,
            study_instance_uid=image.study_instance_uid,
            series_instance_uid=image.series_instance_uid,
            sop_instance_uid=image.sop_instance_uid,
            file_path=image.file_path,
            sha256=image.sha256,
            transfer_syntax=image.transfer_syntax,
            target_syntax=policy.target_syntax,
        )

    @staticmethod
    def _close(consumer: BusConsumer) -> None:
        try:
            consumer.close()
        except DicomCloudError as exc:
            log.warning("closing the subscription failed: %s", exc.message)


def _parse_event(raw: bytes) -> StorageEvent:
    try:
        event = StorageEvent.from_bytes(raw)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise InvalidInput(f"not a StorageEvent: {exc}") from exc
    for name in ("tenant_id", "study_instance_uid", "series_instance_uid", "sop_instance_uid", "file_path", "sha256"):
        if not isinstance(getattr(event, name), str):
            raise InvalidInput(f"not a StorageEvent: {name} is not a string")
    return event


def _dead_letter(record: Record, error: DicomCloudError) -> Message:
    """The original message and why it failed, readable without this package."""
    body = {
        "Error": error.message,
        "ErrorType": type(error).__name__,
        "Topic": record.topic,
        "Partition": record.partition,
        "Offset": record.offset,
        "Key": record.key,
        "Value": record.value.decode("utf-8", "backslashreplace"),
        "FailedAt": _now(),
    }
    return Message(DEAD_LETTER_TOPIC, record.key, json.dumps(body, ensure_ascii=False).encode())
