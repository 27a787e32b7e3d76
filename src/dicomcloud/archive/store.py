"""One path to durable storage for C-STORE, STOW-RS and bulk import alike.

The rule is the design's first one: acknowledge only what is durable. `Ingest.store` returns only
after the file is fsynced under its final name and the bus has accepted its events; if either fails
it raises and leaves no new file behind.

Duplicates (same SOP Instance UID, different bytes) follow `storage.duplicate_policy`:
- `reject`: DuplicateInstance, nothing changes.
- `replace`: the new object wins. At the same location the commit's atomic rename replaces the old
  file. At a different location (the UID moved to another study or series) the old file is removed
  here, only after the new file is durable *and* its event is on the bus, so a failure at any step
  leaves the old object intact. The index moves the instance when the consumer handles the new
  event (REPLACED); until then a WADO read of that one instance may miss, never return wrong bytes.
  The consumer never deletes files: it skips events whose file is gone or no longer matches their
  sha256, so an older event replayed or reordered cannot move the instance back.
An identical resend is a success that rewrites nothing; its events are published again (the index
upsert is UNCHANGED), so an earlier store whose publish failed still reaches the index.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from dicomcloud.dicom.parse import InstanceHeader, read_header
from dicomcloud.errors import Conflict, DicomCloudError, DuplicateInstance, StorageFailure
from dicomcloud.events import LOG_QUEUE, STORAGE_QUEUE, StorageEvent
from dicomcloud.ports.bus import Message
from dicomcloud.runtime import Runtime

log = logging.getLogger(__name__)

HASH_CHUNK = 1024 * 1024
# Stores of one SOP Instance UID are serialised inside a process (across every Ingest: the SCP's and
# the web app's), so two concurrent senders of the same UID cannot both pass the duplicate check.
# Striped: a lock per UID would grow unbounded. Across processes the last rename wins.
LOCK_STRIPES = 64
_STORE_LOCKS = [threading.Lock() for _ in range(LOCK_STRIPES)]


def file_digest(path: Path) -> tuple[str, int]:
    """sha256 hex digest and size of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


@dataclass(frozen=True)
class Refused:
    """A file `store_many` did not store: why, and its identity when its header could be read."""

    error: DicomCloudError
    header: InstanceHeader | None = None


@dataclass
class _Placed:
    """A file moved to its final name, not yet announced."""

    event: StorageEvent
    new: bool  # nothing was at its final name before
    moved_from: str | None


class Ingest:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def store(
        self,
        temp: Path,
        *,
        tenant_id: str,
        source: str,
        calling_ae: str = "",
        called_ae: str = "",
        expected_study_uid: str | None = None,
    ) -> StorageEvent:
        """Make the Part 10 file at `temp` (a storage temp file) durable and announce it.

        `temp` is always consumed: moved into place or removed, whatever happens.
        """
        (outcome,) = self.store_many(
            [temp],
            tenant_id=tenant_id,
            source=source,
            calling_ae=calling_ae,
            called_ae=called_ae,
            expected_study_uid=expected_study_uid,
        )
        if isinstance(outcome, Refused):
            raise outcome.error
        return outcome

    def store_many(
        self,
        temps: Sequence[Path],
        *,
        tenant_id: str,
        source: str,
        calling_ae: str = "",
        called_ae: str = "",
        expected_study_uid: str | None = None,
    ) -> list[StorageEvent | Refused]:
        """`store` for several files at once, one outcome per file in order.

        Each file is stored as `store` would, but their folders are fsynced once each and all their
        events go to the bus in one publish, so a batch costs about what one file costs; every
        outcome is final (durable and announced, or refused) when this returns. Every temp is consumed.
        """
        try:
            outcomes = [
                self._prepare(temp, tenant_id, source, calling_ae, called_ae, expected_study_uid) for temp in temps
            ]
            accepted = {i: o for i, o in enumerate(outcomes) if isinstance(o, StorageEvent)}
            try:
                self.runtime.storage.sync_temps([temps[i] for i in accepted])
            except DicomCloudError as exc:
                return [Refused(exc, _header_of(o)) if isinstance(o, StorageEvent) else o for o in outcomes]
            stripes = sorted({hash(event.sop_instance_uid) % LOCK_STRIPES for event in accepted.values()})
            with ExitStack() as locks:
                for stripe in stripes:
                    locks.enter_context(_STORE_LOCKS[stripe])
                refused = self._store_locked({i: (temps[i], event) for i, event in accepted.items()})
            for i, refusal in refused.items():
                outcomes[i] = refusal
            return outcomes
        finally:
            for temp in temps:
                temp.unlink(missing_ok=True)

    def _prepare(
        self,
        temp: Path,
        tenant_id: str,
        source: str,
        calling_ae: str,
        called_ae: str,
        expected_study_uid: str | None,
    ) -> StorageEvent | Refused:
        """The event announcing `temp`, or why it cannot be stored."""
        header: InstanceHeader | None = None
        try:
            header = read_header(temp)
            if expected_study_uid is not None and header.study_instance_uid != expected_study_uid:
                raise Conflict(
                    f"StudyInstanceUID {header.study_instance_uid} does not match the request's {expected_study_uid}"
                )
            relpath = self.runtime.storage.instance_relpath(
                tenant_id, header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
            )
            sha256, size = file_digest(temp)
        except DicomCloudError as exc:
            return Refused(exc, header)
        return StorageEvent(
            tenant_id=tenant_id,
            transfer_syntax=header.transfer_syntax,
            sop_instance_uid=header.sop_instance_uid,
            sop_class_uid=header.sop_class_uid,
            study_instance_uid=header.study_instance_uid,
            series_instance_uid=header.series_instance_uid,
            patient_id=header.patient_id,
            file_name=relpath.rsplit("/", 1)[-1],
            file_size=size,
            file_path=relpath,
            sha256=sha256,
            source=source,
            calling_ae=calling_ae,
            called_ae=called_ae,
            received_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
        )

    def _store_locked(self, batch: dict[int, tuple[Path, StorageEvent]]) -> dict[int, Refused]:
        """Place, sync and announce the batch (in order, so a UID sent twice meets its first copy)."""
        storage = self.runtime.storage
        refused: dict[int, Refused] = {}
        placed: list[_Placed] = []
        announce: dict[int, StorageEvent] = {}
        try:
            for i, (temp, event) in batch.items():
                try:
                    outcome = self._place(temp, event)
                except DicomCloudError as exc:
                    refused[i] = Refused(exc, _header_of(event))
                    continue
                if outcome is not None:
                    placed.append(outcome)
                announce[i] = event
            if not announce:
                return refused
            storage.sync_folders([p.event.file_path for p in placed])
            self._publish(list(announce.values()))
        except DicomCloudError as exc:
            self._withdraw(placed)
            refused.update({i: Refused(exc, _header_of(event)) for i, event in announce.items()})
            return refused
        except BaseException:
            self._withdraw(placed)
            raise
        for p in placed:
            if p.moved_from is not None:
                event = p.event
                log.info("SOP Instance %s moved from %s to %s", event.sop_instance_uid, p.moved_from, event.file_path)
                storage.remove_instance(p.moved_from)
        return refused

    def _place(self, temp: Path, event: StorageEvent) -> _Placed | None:
        """Move `temp` to its final name, or None for an identical resend (nothing to write)."""
        storage = self.runtime.storage
        final = storage.path(event.file_path)
        on_disk_sha = file_digest(final)[0] if final.is_file() else None
        indexed = self.runtime.index.get_instance(event.tenant_id, event.sop_instance_uid)
        moved_from = indexed.file_path if indexed and indexed.file_path != event.file_path else None
        if on_disk_sha == event.sha256:
            log.debug("identical resend of %s: not rewritten", event.sop_instance_uid)
            return None
        differs = on_disk_sha is not None or (indexed is not None and indexed.sha256 != event.sha256)
        if differs and self.runtime.settings.storage.duplicate_policy == "reject":
            raise DuplicateInstance(f"SOP Instance {event.sop_instance_uid} is already stored with other content")
        storage.place_instance(temp, event.file_path)
        return _Placed(event, on_disk_sha is None, moved_from)

    def _withdraw(self, placed: list[_Placed]) -> None:
        """After a failed announce: remove the files that were new (a replaced file stays replaced)."""
        for p in placed:
            if p.new:
                try:
                    self.runtime.storage.remove_instance(p.event.file_path)
                except DicomCloudError as exc:
                    log.warning("could not withdraw %s: %s", p.event.file_path, exc.message)

    def _publish(self, events: list[StorageEvent]) -> None:
        messages: list[Message] = []
        for event in events:
            body = event.to_bytes()
            messages += [Message(STORAGE_QUEUE, event.key, body), Message(LOG_QUEUE, event.key, body)]
        try:
            self.runtime.bus.publish(messages)
        except StorageFailure:
            raise
        except Exception as exc:
            # Whatever the adapter raised, the event is not durable: the sender must see a failure.
            raise StorageFailure(f"the bus did not accept the event: {exc}") from exc


def _header_of(event: StorageEvent) -> InstanceHeader:
    return InstanceHeader(
        sop_class_uid=event.sop_class_uid,
        sop_instance_uid=event.sop_instance_uid,
        study_instance_uid=event.study_instance_uid,
        series_instance_uid=event.series_instance_uid,
        transfer_syntax=event.transfer_syntax,
        patient_id=event.patient_id,
    )
