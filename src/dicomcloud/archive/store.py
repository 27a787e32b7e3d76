"""Store: where a C-STORE, a STOW-RS part or an imported file becomes a stored, indexed, announced instance.

The rule is the design's first one: an acknowledgement means "there". `Store.store_many` reports an
instance stored only after
  1. its original is durable under its final key (the archive's layout, archive/keys.py) and its metadata
     entry is written (one storage batch for both: an object store puts them all at once),
  2. the index holds it: patient, study, series and instance rows with their counts, in one transaction,
  3. its events are on the bus (`storage_queue`, `log_queue`),
so a WADO-RS, QIDO-RS or C-FIND answered after the acknowledgement, by any server, finds it. The bus
carries the rest: warehouse rows, transcoding and series documents follow at their own pace.

Parse once: each object is read here once (dicom/parse.py `parse_instance`). Its DICOM JSON and frame
index become its metadata entry, stored beside it; its indexed attributes travel with its event.

Duplicates are decided against the index, inside the transaction that places the objects, which holds
the index's lock on those SOP Instance UIDs, so two senders of one UID (in any process) take turns:
- the same object again (same sha256, same place): nothing is rewritten; its events are published
  again, so an earlier store whose publish failed still reaches the consumers;
- other content under `storage.duplicate_policy = "reject"`: DuplicateInstance (0x0111), nothing changes;
- other content under `replace`: the new object wins. At its old key the new bytes replace the old
  ones atomically (and derived copies made from the old bytes are removed); when the UID moved to
  another study or series, the old original, its entry and copies are removed as soon as the index
  names the new place (and the document of a series the move left empty).

Group commit: concurrent stores in one process (parallel C-STORE associations, STOW-RS requests, import
jobs) share their durable step. A store queues its parsed objects; whichever store finds no commit
running takes everything queued and places it as one batch (one index transaction per tenant, one
storage commit whose fsyncs run together, one publish), while the next ones queue behind it. A store
alone commits at once (nothing waits for company), and each still returns only when its own batch is
durable, indexed and announced. What is decided per object stays per object (unreadable, a duplicate,
the wrong study); a failure of the shared step (the disk, the index, the bus) fails every object of that
batch, none of them acknowledged, as one store's batch always did.

Failures: when placing or indexing fails, the transaction rolls back and objects placed under new keys
are removed. When the bus refuses the events after the commit, new instances are withdrawn (index rows
and objects) and refused; a replaced instance stays replaced (its object, entry and index row agree,
only its events are missing) and is refused, so the sender sends it again and that resend announces it.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import BinaryIO

from dicomcloud.archive.keys import derived_prefix, entry_key
from dicomcloud.archive.metadata import SeriesMetadata
from dicomcloud.archive.qido_cache import QidoCache
from dicomcloud.dicom.parse import Identity, ParsedInstance, parse_instance, part10_header, read_identity
from dicomcloud.errors import Conflict, DicomCloudError, DuplicateInstance, StorageFailure
from dicomcloud.events import LOG_QUEUE, STORAGE_QUEUE, StorageEvent
from dicomcloud.group_commit import GroupCommit
from dicomcloud.ports.bus import Message
from dicomcloud.ports.index import IndexedInstance, IndexWrite, InstanceLocation
from dicomcloud.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refused:
    """An object `store_many` did not store: why, and its SOP Class and Instance UIDs as far as they could be read
    (an object refused as unreadable is still named when pydicom finds its UIDs)."""

    error: DicomCloudError
    identity: Identity = field(default_factory=Identity)


@dataclass(frozen=True)
class Prepared:
    """An object `Store.prepare` parsed, its staged file named rather than open, so it can cross to the process
    that stores it (`Store.store_prepared`)."""

    staged_name: str
    parsed: ParsedInstance
    event: StorageEvent


@dataclass(frozen=True)
class _Accepted:
    """A parsed object on its way in."""

    staged: BinaryIO
    parsed: ParsedInstance
    event: StorageEvent

    @property
    def key(self) -> str:
        return self.event.file_path

    def indexed(self) -> IndexedInstance:
        return IndexedInstance(
            tenant_id=self.event.tenant_id,
            attributes=self.parsed.attributes,
            file_path=self.key,
            file_size=self.event.file_size,
            sha256=self.event.sha256,
        )


@dataclass
class _Placed:
    """What one transaction did to one accepted object."""

    position: int
    accepted: _Accepted
    previous: InstanceLocation | None  # the index row before (None: a new instance)
    written: bool  # False for an identical resend

    @property
    def moved_from(self) -> str | None:
        """The old key, when the instance moved to another study or series."""
        if self.previous is None or self.previous.file_path == self.accepted.key:
            return None
        return self.previous.file_path


@dataclass
class _Queued:
    """One store's accepted objects, waiting for the group commit that takes them."""

    tenant_id: str
    accepted: list[tuple[int, _Accepted]]
    reject: bool
    refused: dict[int, Refused] | None = None  # the outcome: which objects were refused (None: not decided yet)
    error: BaseException | None = None


class Store:
    def __init__(self, runtime: Runtime, qido_cache: QidoCache, metadata: SeriesMetadata) -> None:
        self.runtime = runtime
        self.qido_cache = qido_cache
        self.metadata = metadata
        self._group = GroupCommit(self._commit_group)

    def store(
        self,
        staged: BinaryIO,
        *,
        tenant_id: str,
        source: str,
        calling_ae: str = "",
        called_ae: str = "",
        expected_study_uid: str | None = None,
        may_replace: bool | None = None,
    ) -> StorageEvent:
        """Store one staged object (see `store_many`); raises why when it is refused."""
        (outcome,) = self.store_many(
            [staged],
            tenant_id=tenant_id,
            source=source,
            calling_ae=calling_ae,
            called_ae=called_ae,
            expected_study_uid=expected_study_uid,
            may_replace=may_replace,
        )
        if isinstance(outcome, Refused):
            raise outcome.error
        return outcome

    def store_many(
        self,
        staged: Sequence[BinaryIO],
        *,
        tenant_id: str,
        source: str,
        calling_ae: str = "",
        called_ae: str = "",
        expected_study_uid: str | None = None,
        may_replace: bool | None = None,
    ) -> list[StorageEvent | Refused]:
        """Store staged objects (`Storage.stage`, or any open file of a received object) together, one
        outcome per object in order; every outcome is final when this returns (stored, indexed and
        announced, or refused). A batch costs about what one object costs: one storage commit, one
        index transaction, one publish. Every staged object is consumed. `may_replace` False refuses other
        content under a stored SOP Instance UID whatever `storage.duplicate_policy` says (a DIMSE peer
        not allowed to replace)."""
        prepared = [
            self._prepare(
                stream,
                tenant_id=tenant_id,
                source=source,
                calling_ae=calling_ae,
                called_ae=called_ae,
                expected_study_uid=expected_study_uid,
            )
            for stream in staged
        ]
        reject = may_replace is False or self.runtime.settings.storage.duplicate_policy == "reject"
        return self._store_prepared(tenant_id, prepared, reject)

    def prepare(self, staged: BinaryIO, *, tenant_id: str, source: str) -> Prepared | Refused:
        """Parse one staged object for `store_prepared`, which may run in another process (an import parses in
        several). Its staged file is closed, kept whole for `store_prepared` or, refused, discarded."""
        outcome = self._prepare(staged, tenant_id=tenant_id, source=source)
        if isinstance(outcome, Refused):
            return outcome
        outcome.staged.close()
        return Prepared(outcome.staged.name, outcome.parsed, outcome.event)

    def store_prepared(self, tenant_id: str, prepared: Sequence[Prepared | Refused]) -> list[StorageEvent | Refused]:
        """Store what `prepare` parsed as one batch, as `store_many` would; one outcome per object in order, each
        final when this returns. Every staged file is consumed."""
        accepted = [item if isinstance(item, Refused) else self._reopened(item) for item in prepared]
        reject = self.runtime.settings.storage.duplicate_policy == "reject"
        return self._store_prepared(tenant_id, accepted, reject)

    @staticmethod
    def _reopened(prepared: Prepared) -> _Accepted | Refused:
        try:
            staged = open(prepared.staged_name, "rb")  # noqa: SIM115 (the store consumes it)
        except OSError as exc:
            return Refused(StorageFailure(f"the staged object is gone: {exc}"), prepared.parsed.header.identity)
        return _Accepted(staged, prepared.parsed, prepared.event)

    def _prepare(
        self,
        staged: BinaryIO,
        *,
        tenant_id: str,
        source: str,
        calling_ae: str = "",
        called_ae: str = "",
        expected_study_uid: str | None = None,
    ) -> _Accepted | Refused:
        """Parse one staged object: what storing it needs, or why it cannot be stored (its staged file then
        discarded)."""
        parsed: ParsedInstance | None = None
        try:
            staged = self._as_part10(staged)
            parsed = parse_instance(staged, bulkdata_threshold=self.runtime.settings.storage.bulkdata_threshold)
            header = parsed.header
            if expected_study_uid is not None and header.study_instance_uid != expected_study_uid:
                raise Conflict(
                    f"StudyInstanceUID {header.study_instance_uid} does not match the request's {expected_study_uid}"
                )
            key = self.runtime.layout.original_key(
                tenant_id,
                header.study_instance_uid,
                header.series_instance_uid,
                header.sop_instance_uid,
                parsed.attributes.get("StudyDate") or "",
            )
        except DicomCloudError as exc:
            identity = parsed.header.identity if parsed is not None else read_identity(staged)
            self.runtime.storage.discard(staged)
            return Refused(exc, identity)
        except BaseException:
            self.runtime.storage.discard(staged)
            raise
        event = StorageEvent(
            tenant_id=tenant_id,
            transfer_syntax=str(header.transfer_syntax),
            sop_instance_uid=header.sop_instance_uid,
            sop_class_uid=header.sop_class_uid,
            study_instance_uid=header.study_instance_uid,
            series_instance_uid=header.series_instance_uid,
            patient_id=header.patient_id,
            file_name=key.rsplit("/", 1)[-1],
            file_size=parsed.entry.file_size,
            file_path=key,
            sha256=parsed.entry.sha256,
            source=source,
            calling_ae=calling_ae,
            called_ae=called_ae,
            received_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
            attributes=parsed.attributes,
        )
        return _Accepted(staged, parsed, event)

    def _as_part10(self, staged: BinaryIO) -> BinaryIO:
        """`staged`, or for a bare dataset a new staged file: the preamble and meta it lacks, then its bytes as sent
        (dicom/parse.py `part10_header`). The original staged file is consumed either way."""
        header = part10_header(staged)
        if header is None:
            return staged
        wrapped = self.runtime.storage.stage()
        try:
            wrapped.write(header)
            staged.seek(0)
            shutil.copyfileobj(staged, wrapped)
            wrapped.flush()
        except BaseException:
            self.runtime.storage.discard(wrapped)
            raise
        finally:
            self.runtime.storage.discard(staged)
        return wrapped

    def _store_prepared(
        self, tenant_id: str, prepared: Sequence[_Accepted | Refused], reject: bool
    ) -> list[StorageEvent | Refused]:
        """Store what `_prepare` accepted, as one batch; the outcomes in order (refusals passed through).
        Every accepted object's staged file is consumed."""
        outcomes: list[StorageEvent | Refused] = [p.event if isinstance(p, _Accepted) else p for p in prepared]
        try:
            accepted = [(i, p) for i, p in enumerate(prepared) if isinstance(p, _Accepted)]
            for position, refusal in self._store_grouped(tenant_id, accepted, reject).items():
                outcomes[position] = refusal
            return outcomes
        finally:
            for item in prepared:
                if isinstance(item, _Accepted):
                    self.runtime.storage.discard(item.staged)

    def _store_grouped(self, tenant_id: str, accepted: list[tuple[int, _Accepted]], reject: bool) -> dict[int, Refused]:
        """`_store`, in the next group commit."""
        if not accepted:
            return {}
        queued = _Queued(tenant_id, accepted, reject)
        self._group.submit(queued)
        if queued.error is not None:
            raise queued.error
        assert queued.refused is not None
        return queued.refused

    def _commit_group(self, taken: list[_Queued]) -> None:
        """One `_store` per tenant and duplicate rule, in queue order; every store's outcome recorded."""
        groups: dict[tuple[str, bool], list[_Queued]] = {}
        for queued in taken:
            groups.setdefault((queued.tenant_id, queued.reject), []).append(queued)
        try:
            for (tenant_id, reject), members in groups.items():
                merged: list[tuple[int, _Accepted]] = []
                owners: list[tuple[int, int]] = []  # each merged position's store (in members) and own position
                for number, queued in enumerate(members):
                    for position, item in queued.accepted:
                        merged.append((len(owners), item))
                        owners.append((number, position))
                try:
                    refused = self._store(tenant_id, merged, reject)
                except Exception as exc:
                    for queued in members:
                        queued.error = exc
                    continue
                outcomes: list[dict[int, Refused]] = [{} for _ in members]
                for at, refusal in refused.items():
                    number, position = owners[at]
                    outcomes[number][position] = refusal
                for queued, outcome in zip(members, outcomes, strict=True):
                    queued.refused = outcome
        finally:
            for queued in taken:
                if queued.refused is None and queued.error is None:
                    queued.error = StorageFailure("the store was interrupted before this object")

    def _store(self, tenant_id: str, accepted: list[tuple[int, _Accepted]], reject: bool) -> dict[int, Refused]:
        """Place, index and announce the accepted objects; the refusals by position."""
        if not accepted:
            return {}
        refused: dict[int, Refused] = {}
        try:
            placed = self._place(tenant_id, accepted, refused, reject)
        except DicomCloudError as exc:
            return refused | {position: Refused(exc, a.parsed.header.identity) for position, a in accepted}
        if not placed:
            return refused
        changed = [p for p in placed if p.written]
        studies = {p.accepted.event.study_instance_uid for p in changed}
        studies |= {p.previous.study_instance_uid for p in changed if p.previous is not None}
        self.qido_cache.changed(tenant_id, studies)
        self._leave_old_places([p for p in changed if p.moved_from is not None])
        try:
            self._publish([p.accepted.event for p in placed])
        except DicomCloudError as exc:
            self._withdraw(tenant_id, [p for p in changed if p.previous is None])
            return refused | {p.position: Refused(exc, p.accepted.parsed.header.identity) for p in placed}
        return refused

    def _leave_old_places(self, moved: list[_Placed]) -> None:
        """Once the index names the new place: remove the old objects, and the document of a series left empty."""
        for p in moved:
            previous = p.previous
            assert previous is not None and p.moved_from is not None
            log.info("SOP Instance %s moved from %s to %s", previous.sop_instance_uid, p.moved_from, p.accepted.key)
            self._remove_objects(p.moved_from)
            if self.runtime.index.series_version(previous.series_key) is None:
                self.metadata.forget(previous.series_key)

    def _place(
        self, tenant_id: str, accepted: list[tuple[int, _Accepted]], refused: dict[int, Refused], reject: bool
    ) -> list[_Placed]:
        """Decide each object against the index and place the new ones, in one index transaction.

        A UID sent twice in one batch meets its first copy: the second is decided after the first.
        """
        storage = self.runtime.storage
        pairs = [(a.event.sop_instance_uid, a.event.study_instance_uid) for _, a in accepted]
        placed: list[_Placed] = []
        written: list[_Placed] = []
        new_keys: list[str] = []
        try:
            with self.runtime.index.writing(tenant_id, pairs) as write:
                current = write.current()
                last: dict[str, _Placed] = {}
                for position, item in accepted:
                    sop = item.event.sop_instance_uid
                    outcome = self._decide(write, position, item, current.get(sop), reject, last.get(sop))
                    if isinstance(outcome, Refused):
                        refused[position] = outcome
                        continue
                    if sop in last and outcome.written:
                        # Replaced within the batch: the earlier bytes are never placed (its event still goes out,
                        # and the consumer skips it as outdated).
                        written = [p for p in written if p is not last[sop]]
                    last[sop] = outcome
                    placed.append(outcome)
                    if outcome.written:
                        written.append(outcome)
                new_keys = [p.accepted.key for p in written if p.previous is None or p.moved_from is not None]
                storage.commit(
                    [(p.accepted.staged, p.accepted.key) for p in written],
                    [(entry_key(p.accepted.key), p.accepted.parsed.entry.to_bytes()) for p in written],
                )
                for p in written:
                    if p.previous is not None and p.moved_from is None:
                        # Copies made from the bytes just replaced must not outlive them.
                        storage.delete(storage.list(derived_prefix(p.accepted.key)))
        except BaseException:
            if new_keys:
                self._remove_quietly([k for key in new_keys for k in (key, entry_key(key))])
            raise
        return placed

    @staticmethod
    def _decide(
        write: IndexWrite,
        position: int,
        item: _Accepted,
        previous: InstanceLocation | None,
        reject: bool,
        earlier: _Placed | None,
    ) -> _Placed | Refused:
        """Upsert one object's index rows, or refuse it as a duplicate. `previous` is the index row from
        before the batch, `earlier` what this batch already did with the same UID."""
        event = item.event
        if earlier is not None:
            if earlier.accepted.event.sha256 == event.sha256:
                return _Placed(position, item, earlier.previous, written=False)  # the same object twice
            previous = earlier.previous
            if reject:
                return Refused(
                    DuplicateInstance(f"SOP Instance {event.sop_instance_uid} was sent twice with other content"),
                    item.parsed.header.identity,
                )
        elif previous is not None and previous.sha256 == event.sha256 and previous.file_path == item.key:
            return _Placed(position, item, previous, written=False)
        if previous is not None and reject:
            return Refused(
                DuplicateInstance(f"SOP Instance {event.sop_instance_uid} is already stored with other content"),
                item.parsed.header.identity,
            )
        write.upsert(item.indexed())
        return _Placed(position, item, previous, written=True)

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

    def _withdraw(self, tenant_id: str, new: list[_Placed]) -> None:
        """After a refused publish: take new instances out of the index, then remove their objects."""
        for p in new:
            event = p.accepted.event
            try:
                self.runtime.index.delete(
                    tenant_id, event.study_instance_uid, event.series_instance_uid, event.sop_instance_uid
                )
            except DicomCloudError as exc:
                log.error("could not withdraw %s from the index: %s", event.sop_instance_uid, exc.message)
                continue
            self._remove_objects(p.accepted.key)
        self.qido_cache.changed(tenant_id, {p.accepted.event.study_instance_uid for p in new})

    def _remove_objects(self, original: str) -> None:
        """An original, its entry and its derived copies."""
        try:
            copies = self.runtime.storage.list(derived_prefix(original))
        except DicomCloudError as exc:
            log.warning("could not list the copies of %s: %s", original, exc.message)
            copies = []
        self._remove_quietly([original, entry_key(original), *copies])

    def _remove_quietly(self, keys: list[str]) -> None:
        try:
            self.runtime.storage.delete(keys)
        except DicomCloudError as exc:
            log.warning("could not remove %s: %s", ", ".join(keys), exc.message)
