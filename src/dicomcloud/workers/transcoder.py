"""Transcoder: derived copies in the viewer's syntax, made at ingest (`transcode_queue`) or on demand.

The consumer asks for a copy of every instance stored in a syntax outside
`transcode.viewer_syntaxes`; this worker writes it beside the original (the original is never
touched) through the storage port's atomic commit. WADO-RS calls `derive` directly for a syntax a
client asks for, so the first request makes the copy and the next ones are served from it.

Failures: a conversion that is refused (no encoder, lossy pixels asked to be lossless, undecodable
pixels) fails the same way every time, so it is recorded at once; a storage failure may pass, so it
is retried up to `transcode.max_attempts` times. Either way the end is a `TranscodeFailure` on the
bus, a warning in the log and a count in `failed`. An outdated request (original gone or replaced
since) is skipped: the replacement's own request covers it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from dicomcloud.archive.store import file_digest
from dicomcloud.dicom.codecs import transcode
from dicomcloud.errors import DicomCloudError, InvalidInput, NotAcceptable
from dicomcloud.events import TRANSCODE_QUEUE, TranscodeFailure, TranscodeRequest
from dicomcloud.metrics import EVENTS_FAILED, EVENTS_PROCESSED, TRANSCODE_FAILURES, LagReporter, count_records
from dicomcloud.ports.bus import BusConsumer, Message, Record
from dicomcloud.runtime import Runtime
from dicomcloud.workers.retry import Outage

log = logging.getLogger(__name__)

GROUP = "wado-transcoder"
SERVICE = "transcoder"
RETRY_DELAY = 2.0
# Failures that repeat identically on every attempt.
DETERMINISTIC = (NotAcceptable, InvalidInput)


def derive(runtime: Runtime, relpath: str, target_syntax: str, sha256: str | None = None) -> Path:
    """The path of the `target_syntax` copy of instance `relpath`, made now if it does not exist.

    With `sha256`, a copy made from a file that was replaced meanwhile is dropped again and
    InvalidInput raised, so no copy of an older original outlives its replacement.
    """
    storage = runtime.storage
    derived = storage.derived_relpath(relpath, target_syntax)
    path = storage.path(derived)
    if path.is_file():
        return path
    data = transcode(storage.path(relpath), target_syntax)
    handle, temp = storage.new_temp()
    with handle:
        handle.write(data)
    storage.commit_instance(temp, derived)
    if sha256 is not None and not _is_current(runtime, relpath, sha256):
        storage.remove_instance(derived)
        raise InvalidInput(f"{relpath} was replaced while it was being transcoded")
    return path


def _is_current(runtime: Runtime, relpath: str, sha256: str) -> bool:
    path = runtime.storage.path(relpath)
    return path.is_file() and file_digest(path)[0] == sha256


class Transcoder:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.converted = 0
        self.failed = 0
        self.lag = LagReporter(GROUP, [TRANSCODE_QUEUE])

    def run(self, stop: threading.Event) -> None:
        """Consume `transcode_queue` until `stop` is set; a batch is committed after its effects."""
        workers = self.runtime.settings.workers
        outage = Outage("consuming transcode_queue", log)
        while not stop.is_set():
            consumer: BusConsumer | None = None
            try:
                consumer = self.runtime.bus.subscribe(GROUP, [TRANSCODE_QUEUE])
                while not stop.is_set():
                    records = consumer.poll(workers.consumer_batch, workers.consumer_poll_timeout)
                    self.lag.update(consumer)
                    if records:
                        self.process(records, stop)
                        consumer.commit(records)
                        count_records(EVENTS_PROCESSED, SERVICE, records)
                    outage.recovered()
            except Exception as exc:
                # A service loop outlives any one failure; the batch was not committed.
                outage.failed(exc, stop)
            finally:
                if consumer is not None:
                    try:
                        consumer.close()
                    except DicomCloudError as exc:
                        log.warning("closing the subscription failed: %s", exc.message)

    def process(self, records: Sequence[Record], stop: threading.Event | None = None) -> None:
        """Make each requested copy; failures are published before the caller commits."""
        failures: list[Message] = []
        for record in records:
            try:
                request = TranscodeRequest.from_bytes(record.value)
            except (ValueError, TypeError, KeyError) as exc:
                log.warning("skipped %s@%d: not a TranscodeRequest: %s", record.topic, record.offset, exc)
                EVENTS_FAILED.labels(SERVICE, record.topic).inc()
                continue
            failure = self._convert(request, stop or threading.Event())
            if failure is not None:
                EVENTS_FAILED.labels(SERVICE, record.topic).inc()
                TRANSCODE_FAILURES.inc()
                failures.append(Message(failure.topic, failure.key, failure.to_bytes()))
        if failures:
            self.runtime.bus.publish(failures)

    def _convert(self, request: TranscodeRequest, stop: threading.Event) -> TranscodeFailure | None:
        max_attempts = max(1, self.runtime.settings.transcode.max_attempts)
        attempts = 0
        while True:
            attempts += 1
            try:
                if not _is_current(self.runtime, request.file_path, request.sha256):
                    log.debug("skipped %s: gone or replaced since the request", request.file_path)
                    return None
                derive(self.runtime, request.file_path, request.target_syntax, request.sha256)
                self.converted += 1
                return None
            except DETERMINISTIC as exc:
                reason = exc.message
                break
            except (DicomCloudError, OSError) as exc:
                reason = str(exc)
                if attempts >= max_attempts or stop.is_set():
                    break
                log.info("transcoding %s failed (attempt %d): %s", request.sop_instance_uid, attempts, reason)
                stop.wait(RETRY_DELAY)
        self.failed += 1
        log.warning(
            "cannot transcode %s from %s to %s after %d attempt(s): %s",
            request.sop_instance_uid,
            request.transfer_syntax,
            request.target_syntax,
            attempts,
            reason,
        )
        return TranscodeFailure(
            tenant_id=request.tenant_id,
            study_instance_uid=request.study_instance_uid,
            series_instance_uid=request.series_instance_uid,
            sop_instance_uid=request.sop_instance_uid,
            transfer_syntax=request.transfer_syntax,
            target_syntax=request.target_syntax,
            reason=reason,
            attempts=attempts,
            failed_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
        )
