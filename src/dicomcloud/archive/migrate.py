"""Import a whole archive from another one (`dicomcloud import --from-dicomweb / --from-dimse`).

The peer (ports/peer.py) is listed first, study by study, and each study's instances are compared with
what our index already holds, so a run after an interruption fetches only what is missing. The missing
instances are fetched by `concurrency` threads, each one stored as any C-STORE is (archive/store.py,
source "import": durable, indexed, announced), and counted as it lands. A stop (SIGINT) lets the fetches
under way finish and starts no new one. At the end each study is verified: as many instances here as there.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from dicomcloud.archive.core import Archive
from dicomcloud.errors import DicomCloudError
from dicomcloud.ports.peer import Peer, RemoteInstance

log = logging.getLogger(__name__)

UNITS = ("B", "KB", "MB", "GB", "TB", "PB")


def human_size(size: float) -> str:
    """Bytes in decimal units, three significant digits: 12.3 MB."""
    unit = 0
    while size >= 1000 and unit < len(UNITS) - 1:
        size /= 1000
        unit += 1
    return f"{size:.0f} {UNITS[unit]}" if unit == 0 or size >= 100 else f"{size:.3g} {UNITS[unit]}"


def counted(number: int, one: str, many: str) -> str:
    """A number with its noun agreeing: 1 study, 3 studies."""
    return f"{number} {one if number == 1 else many}"


@dataclass
class Tally:
    """Where an import stands; `line` is the progress bar's text."""

    studies: int = 0
    studies_done: int = 0
    instances: int = 0
    fetched: int = 0
    present: int = 0
    failed: int = 0
    bytes: int = 0
    started: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate, throughput = self.fetched / elapsed, self.bytes / elapsed
        remaining = self.instances - self.present - self.fetched - self.failed
        eta = time.strftime("%H:%M:%S", time.gmtime(remaining / rate)) if rate > 0 else "--:--:--"
        return (
            f"studies {self.studies_done}/{self.studies}, instances {self.present + self.fetched}/{self.instances}"
            f" ({self.fetched} fetched, {self.present} already here, {self.failed} failed),"
            f" {human_size(self.bytes)}, {rate:.1f} instances/s, {human_size(throughput)}/s, ETA {eta}"
        )


@dataclass(frozen=True)
class StudyCheck:
    study_instance_uid: str
    there: int
    here: int

    @property
    def complete(self) -> bool:
        return self.here >= self.there


@dataclass
class Outcome:
    tally: Tally
    checks: list[StudyCheck]
    failures: list[tuple[RemoteInstance, str]]
    interrupted: bool

    @property
    def complete(self) -> bool:
        return not self.interrupted and not self.failures and all(check.complete for check in self.checks)

    def summary(self, peer: str) -> str:
        t = self.tally
        elapsed = time.monotonic() - t.started
        studies, instances = counted(t.studies, "study", "studies"), counted(t.instances, "instance", "instances")
        verified = len(self.checks)
        lines = [
            f"{'interrupted: ' if self.interrupted else ''}import from {peer}: {studies}, {instances}:"
            f" {t.fetched} fetched ({human_size(t.bytes)} in {elapsed:.1f} s), {t.present} already here,"
            f" {t.failed} failed",
            f"verified: {sum(c.complete for c in self.checks)} of {counted(verified, 'study', 'studies')}"
            f" {'holds' if verified == 1 else 'hold'} here every instance the peer has",
        ]
        short = [c for c in self.checks if not c.complete]
        lines += [f"  study {c.study_instance_uid}: {c.there} there, {c.here} here" for c in short]
        lines += [f"  not imported: {i.sop_instance_uid}: {reason}" for i, reason in self.failures[:20]]
        return "\n".join(lines)


class Migration:
    def __init__(
        self,
        archive: Archive,
        peer: Peer,
        tenant: str,
        concurrency: int,
        report: Callable[[Tally], None],
        stop: threading.Event,
    ) -> None:
        self.archive = archive
        self.peer = peer
        self.tenant = tenant
        self.concurrency = max(1, concurrency)
        self.report = report
        self.stop = stop
        self._lock = threading.Lock()

    def run(self) -> Outcome:
        tally = Tally()
        plan: dict[str, list[RemoteInstance]] = {}
        missing: dict[str, list[RemoteInstance]] = {}
        # Once each: a peer may list a study twice (Orthanc, for one Study Instance UID under two patients).
        for study in dict.fromkeys(self.peer.studies()):
            if self.stop.is_set():
                break
            plan[study] = self.peer.instances(study)
            missing[study] = [i for i in plan[study] if i.sop_instance_uid not in self._here(study)]
            tally.studies += 1
            tally.instances += len(plan[study])
            tally.present += len(plan[study]) - len(missing[study])
            tally.studies_done += not missing[study]
            self.report(tally)
        failures: list[tuple[RemoteInstance, str]] = []
        left = {study: len(instances) for study, instances in missing.items()}

        def fetch(instance: RemoteInstance) -> None:
            if self.stop.is_set():
                return
            size, reason = self._fetch(instance)
            with self._lock:
                if reason is None:
                    tally.fetched += 1
                    tally.bytes += size
                else:
                    tally.failed += 1
                    failures.append((instance, reason))
                left[instance.study_instance_uid] -= 1
                tally.studies_done += left[instance.study_instance_uid] == 0
                self.report(tally)

        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="import") as pool:
            futures = [pool.submit(fetch, instance) for instances in missing.values() for instance in instances]
        for future in futures:
            future.result()  # a fault of this code surfaces; a failed instance is in `failures`
        checks = [StudyCheck(study, len(instances), len(self._here(study))) for study, instances in plan.items()]
        return Outcome(tally, checks, failures, self.stop.is_set())

    def _here(self, study: str) -> set[str]:
        return {location.sop_instance_uid for location in self.archive.runtime.index.list_instances(self.tenant, study)}

    def _fetch(self, instance: RemoteInstance) -> tuple[int, str | None]:
        """Fetch one instance and store it; its size, or why it is not here."""
        storage = self.archive.runtime.storage
        staged = storage.stage()
        try:
            self.peer.fetch(instance, staged)
            size = staged.tell()
            self.archive.store.store(staged, tenant_id=self.tenant, source="import")
        except Exception as exc:  # one instance the peer or the store refused must not end a migration
            storage.discard(staged)
            reason = exc.message if isinstance(exc, DicomCloudError) else f"{type(exc).__name__}: {exc}"
            log.warning("not imported: %s from %s: %s", instance.sop_instance_uid, self.peer.name, reason)
            return 0, reason
        return size, None
