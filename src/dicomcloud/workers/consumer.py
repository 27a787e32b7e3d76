"""wado-consumer: storage events -> warehouse rows and transcode requests (the bus carries the fan-out).

The store (archive/store.py) indexed each instance before acknowledging it; this worker derives what
follows from the event alone, since what ingest read travels with it: a `DicomImageMeta` and a
`DicomStateMeta` (with the series' count) for the warehouse loader, and a `TranscodeRequest` for an
instance stored in a syntax outside `transcode.viewer_syntaxes` (and for each of `transcode.derived_syntaxes`).
It never reads a stored object.

An event whose instance the index no longer holds as the event describes it (deleted or replaced
since) is skipped: the later event speaks for it, so a replayed or reordered older event never brings
old rows back. Rows carry the time ingest received the object as their `updated_at`, the warehouse's
sequence column, so a late row never overwrites a newer one either.

Poison (not a StorageEvent, a FilePath that does not match its UIDs) is returned to the loop, which
dead-letters it; the index being down raises, and the loop retries the batch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from dicomcloud.archive.core import Archive
from dicomcloud.archive.keys import KeyLayout
from dicomcloud.dicom.query import parse_qido
from dicomcloud.errors import InvalidInput
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
from dicomcloud.ports.index import SeriesKey
from dicomcloud.workers.loop import Handler, Outcome, Poisoned

log = logging.getLogger(__name__)


class StorageEventConsumer(Handler):
    group = "wado-consumer"
    topics = (STORAGE_QUEUE,)
    service = "consumer"

    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    def handle(self, records: Sequence[Record], stop: threading.Event) -> Outcome:
        outcome = Outcome()
        latest: dict[SeriesKey, StorageEvent] = {}
        index = self.archive.runtime.index
        for record in records:
            try:
                event = _storage_event(record.value, self.archive.runtime.layout)
            except InvalidInput as exc:
                outcome.poisoned.append(Poisoned(record, exc))
                continue
            current = index.get_instance(event.tenant_id, event.sop_instance_uid)
            if current is None or (current.file_path, current.sha256) != (event.file_path, event.sha256):
                log.debug("skipped %s: deleted or replaced since this event", event.file_path)
                continue
            image = DicomImageMeta(
                tenant_id=event.tenant_id,
                sop_instance_uid=event.sop_instance_uid,
                study_instance_uid=event.study_instance_uid,
                series_instance_uid=event.series_instance_uid,
                values=DicomImageMeta.catalogue_values(event.attributes),
                file_path=event.file_path,
                file_size=event.file_size,
                sha256=event.sha256,
                updated_at=event.received_at,
            )
            outcome.messages.append(Message(DICOM_IMAGE_QUEUE, image.key, image.to_bytes()))
            for request in self._transcode_requests(event):
                outcome.messages.append(Message(TRANSCODE_QUEUE, request.key, request.to_bytes()))
            latest[current.series_key] = event
        for key, event in latest.items():
            # Counted by the index, not listed: a listing per batch made a series' ingest quadratic in its size.
            series = parse_qido(
                "instance", {}, study_instance_uid=key.study_instance_uid, series_instance_uid=key.series_instance_uid
            )
            count = index.count(key.tenant_id, series)
            state = DicomStateMeta(
                tenant_id=key.tenant_id,
                study_instance_uid=key.study_instance_uid,
                series_instance_uid=key.series_instance_uid,
                values=DicomStateMeta.catalogue_values(event.attributes),
                series_related_instances=count,
                updated_at=event.received_at,
            )
            outcome.messages.append(Message(DICOM_STATE_QUEUE, state.key, state.to_bytes()))
        return outcome

    def _transcode_requests(self, event: StorageEvent) -> list[TranscodeRequest]:
        """Requests for the viewer's copy when the stored syntax is one the viewer cannot decode, and for a copy in
        each of `transcode.derived_syntaxes` the image is not stored in."""
        policy = self.archive.settings.transcode
        if event.attributes.get("Rows") is None:
            return []
        targets = [] if event.transfer_syntax in policy.viewer_syntaxes else [policy.target_syntax]
        targets += [syntax for syntax in policy.derived_syntaxes if syntax != event.transfer_syntax]
        return [self._transcode_request(event, target) for target in dict.fromkeys(targets)]

    @staticmethod
    def _transcode_request(event: StorageEvent, target_syntax: str) -> TranscodeRequest:
        return TranscodeRequest(
            tenant_id=event.tenant_id,
            study_instance_uid=event.study_instance_uid,
            series_instance_uid=event.series_instance_uid,
            sop_instance_uid=event.sop_instance_uid,
            file_path=event.file_path,
            sha256=event.sha256,
            transfer_syntax=event.transfer_syntax,
            target_syntax=target_syntax,
        )


def _storage_event(raw: bytes, layout: KeyLayout) -> StorageEvent:
    """The event in a record, checked: InvalidInput (poison) when it is not one or its path lies."""
    try:
        event = StorageEvent.from_bytes(raw)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise InvalidInput(f"not a StorageEvent: {exc}") from exc
    for name in ("tenant_id", "study_instance_uid", "series_instance_uid", "sop_instance_uid", "file_path", "sha256"):
        if not isinstance(getattr(event, name), str):
            raise InvalidInput(f"not a StorageEvent: {name} is not a string")
    if not isinstance(event.attributes, dict):
        raise InvalidInput("not a StorageEvent: Attributes is not an object")
    expected = layout.original_key(
        event.tenant_id,
        event.study_instance_uid,
        event.series_instance_uid,
        event.sop_instance_uid,
        event.attributes.get("StudyDate") or "",
    )
    if event.file_path != expected:
        raise InvalidInput(f"FilePath {event.file_path[:200]!r} does not match the event's UIDs")
    return event
