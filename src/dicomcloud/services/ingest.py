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
from datetime import UTC, datetime
from pathlib import Path

from dicomcloud.dicom.parse import read_header
from dicomcloud.errors import Conflict, DuplicateInstance, StorageFailure
from dicomcloud.events import LOG_QUEUE, STORAGE_QUEUE, StorageEvent
from dicomcloud.ports.bus import Message
from dicomcloud.services.runtime import Runtime

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
        try:
            header = read_header(temp)
            if expected_study_uid is not None and header.study_instance_uid != expected_study_uid:
                raise Conflict(
                    f"StudyInstanceUID {header.study_instance_uid} does not match the request's {expected_study_uid}"
                )
            storage = self.runtime.storage
            relpath = storage.instance_relpath(
                tenant_id, header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
            )
            sha256, size = file_digest(temp)
            event = StorageEvent(
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
            with _STORE_LOCKS[hash(header.sop_instance_uid) % LOCK_STRIPES]:
                self._store_locked(temp, event)
            return event
        finally:
            temp.unlink(missing_ok=True)

    def _store_locked(self, temp: Path, event: StorageEvent) -> None:
        storage = self.runtime.storage
        final = storage.path(event.file_path)
        on_disk_sha = file_digest(final)[0] if final.is_file() else None
        indexed = self.runtime.index.get_instance(event.tenant_id, event.sop_instance_uid)
        moved_from = indexed.file_path if indexed and indexed.file_path != event.file_path else None
        if on_disk_sha == event.sha256:
            log.info("identical resend of %s: not rewritten", event.sop_instance_uid)
            self._publish(event)
            return
        differs = on_disk_sha is not None or (indexed is not None and indexed.sha256 != event.sha256)
        if differs and self.runtime.settings.storage.duplicate_policy == "reject":
            raise DuplicateInstance(f"SOP Instance {event.sop_instance_uid} is already stored with other content")
        storage.commit_instance(temp, event.file_path)
        try:
            self._publish(event)
        except BaseException:
            if on_disk_sha is None:
                storage.remove_instance(event.file_path)
            raise
        if moved_from is not None:
            log.info("SOP Instance %s moved from %s to %s", event.sop_instance_uid, moved_from, event.file_path)
            storage.remove_instance(moved_from)

    def _publish(self, event: StorageEvent) -> None:
        body = event.to_bytes()
        try:
            self.runtime.bus.publish([Message(STORAGE_QUEUE, event.key, body), Message(LOG_QUEUE, event.key, body)])
        except StorageFailure:
            raise
        except Exception as exc:
            # Whatever the adapter raised, the event is not durable: the sender must see a failure.
            raise StorageFailure(f"the bus did not accept the event: {exc}") from exc
