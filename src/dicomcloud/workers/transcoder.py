"""Transcoder: the viewer's copy of every instance stored in a syntax the viewer cannot decode.

The consumer asks (`transcode_queue`) for a copy of each instance stored outside
`transcode.viewer_syntaxes`; this worker makes it beside the original (the original is never touched)
with the same code WADO-RS uses for a syntax a client asks for (archive/retrieve.py `derived`).

Failures: a conversion that is refused (no encoder, lossy pixels asked to be lossless, undecodable
pixels) fails the same way every time, so it is recorded at once; a storage failure may pass, so it
is retried up to `transcode.max_attempts` times. Either way the end is a `TranscodeFailure` on the
bus (the warehouse's `transcode_failure` table), a warning in the log and a count in `failed`. A
request whose instance the index no longer holds as requested (deleted or replaced since) is skipped:
the replacement's own request covers it. A record that is no TranscodeRequest is poison, dead-lettered.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime

from dicomcloud.archive.core import Archive
from dicomcloud.errors import CannotConvert, DicomCloudError, InvalidInput
from dicomcloud.events import TRANSCODE_QUEUE, TranscodeFailure, TranscodeRequest
from dicomcloud.metrics import TRANSCODE_FAILURES
from dicomcloud.ports.bus import Message, Record
from dicomcloud.ports.index import InstanceLocation
from dicomcloud.workers.loop import Handler, Outcome, Poisoned

log = logging.getLogger(__name__)

RETRY_DELAY = 2.0
# Failures that repeat identically on every attempt.
DETERMINISTIC = (CannotConvert, InvalidInput)


class Transcoder(Handler):
    group = "wado-transcoder"
    topics = (TRANSCODE_QUEUE,)
    service = "transcoder"

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.converted = 0
        self.failed = 0

    def handle(self, records: Sequence[Record], stop: threading.Event) -> Outcome:
        """Make each requested copy; failures become TranscodeFailure messages published before the commit."""
        outcome = Outcome()
        for record in records:
            try:
                request = TranscodeRequest.from_bytes(record.value)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                outcome.poisoned.append(Poisoned(record, InvalidInput(f"not a TranscodeRequest: {exc}")))
                continue
            failure = self._convert(request, stop)
            if failure is not None:
                TRANSCODE_FAILURES.inc()
                outcome.messages.append(Message(failure.topic, failure.key, failure.to_bytes()))
        return outcome

    def _current(self, request: TranscodeRequest) -> InstanceLocation | None:
        """The instance the request is about, as the index holds it now; None when deleted or replaced since."""
        location = self.archive.runtime.index.get_instance(request.tenant_id, request.sop_instance_uid)
        if location is None or (location.file_path, location.sha256) != (request.file_path, request.sha256):
            log.debug("skipped %s: deleted or replaced since the request", request.file_path)
            return None
        return location

    def _convert(self, request: TranscodeRequest, stop: threading.Event) -> TranscodeFailure | None:
        max_attempts = max(1, self.archive.settings.transcode.max_attempts)
        attempts = 0
        while True:
            attempts += 1
            location = self._current(request)
            if location is None:
                return None
            try:
                self.archive.retrieve.derived(location, request.target_syntax)
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
