"""What the fault tests on the local stack share: generated studies, a C-STORE sender that tracks
each instance's status, and the checks that every acknowledged instance is indexed exactly once,
read back with SQL from PostgreSQL and with QIDO-RS through Nginx and through each wado-server."""

from __future__ import annotations

import shutil
import ssl
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pydicom
from pynetdicom import AE

from bench.synthetic import ct_series, new_uid, write_part10
from dicomcloud.stack import LocalStack

from .conftest import wait_until

TENANT = "default"
# Generous: one C-STORE may wait for a broker's failover, PostgreSQL's restart or the bus's delivery timeout.
DIMSE_TIMEOUT = 300.0
INDEX_TIMEOUT = 600.0
# PS3.7 C.4.2.1.4: Success, and the Warning statuses under which the SCP stored the instance.
STORED = {0x0000, 0xB000, 0xB006, 0xB007}


@contextmanager
def full_stack(name: str, storage: str = "fs", brokers: int = 3, workers: int = 1) -> Iterator[LocalStack]:
    """The whole distributed stack (three Kafka brokers, two consumers, two wado-servers of `workers` HTTP
    processes each, the wado-storescp of `workers` DIMSE processes; with storage "s3", SeaweedFS and no shared
    data folder), stopped and removed afterwards.
    Under a system temp folder, not pytest's private tree: PostgreSQL may run as another user."""
    folder = Path(tempfile.mkdtemp(prefix=f"dicomcloud-{name}-"))
    folder.chmod(0o755)
    local = LocalStack.up(
        folder, brokers=brokers, consumers=2, servers=2, storage=storage, workers=workers, storescp_workers=workers
    )
    try:
        yield local
    finally:
        local.down()
        shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class Batch:
    """Generated instances on disk: study -> series -> SOP Instance UIDs."""

    files: list[Path]
    studies: dict[str, dict[str, set[str]]]
    sop_of: dict[Path, str]

    @property
    def sop_uids(self) -> set[str]:
        return {sop for series in self.studies.values() for sops in series.values() for sop in sops}


def generate(folder: Path, studies: int, series: int, instances: int) -> Batch:
    """studies × series × instances small (64×64) CT images, each study its own patient."""
    folder.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    tree: dict[str, dict[str, set[str]]] = {}
    sop_of: dict[Path, str] = {}
    for s in range(studies):
        study_uid = new_uid()
        tree[study_uid] = {}
        for e in range(series):
            series_uid = new_uid()
            tree[study_uid][series_uid] = set()
            generated = ct_series(
                instances, rows=64, columns=64, patient_id=f"FAULTS-{study_uid[-8:]}", study_uid=study_uid,
                series_uid=series_uid, seed=s * series + e,
            )  # fmt: skip
            for ds in generated:
                path = folder / f"{len(files):05d}.dcm"
                write_part10(ds, path)
                files.append(path)
                sop_of[path] = str(ds.SOPInstanceUID)
                tree[study_uid][series_uid].add(str(ds.SOPInstanceUID))
    return Batch(files, tree, sop_of)


@dataclass
class Sender:
    """pynetdicom C-STOREs of `files` over one association, from a thread; each status by SOP Instance UID
    (-1: no response). Start with `start()`, watch `acknowledged`, end with `join()`."""

    dimse: tuple[str, int, str]
    files: Sequence[Path]
    statuses: dict[str, int] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Sender:
        self._thread = threading.Thread(target=self._send, name="c-store-sender", daemon=True)
        self._thread.start()
        return self

    def _send(self) -> None:
        host, port, called_ae = self.dimse
        ae = AE(ae_title="FAULTSCU")
        ae.dimse_timeout = DIMSE_TIMEOUT
        ae.acse_timeout = DIMSE_TIMEOUT
        first = pydicom.dcmread(self.files[0], stop_before_pixels=True)
        ae.add_requested_context(first.SOPClassUID, first.file_meta.TransferSyntaxUID)
        assoc = ae.associate(host, port, ae_title=called_ae)
        try:
            for path in self.files:
                ds = pydicom.dcmread(path)
                sop = str(ds.SOPInstanceUID)
                status = assoc.send_c_store(ds) if assoc.is_established else None
                with self._lock:
                    self.order.append(sop)
                    self.statuses[sop] = int(status.Status) if status and "Status" in status else -1
        finally:
            if assoc.is_established:
                assoc.release()

    @property
    def acknowledged(self) -> set[str]:
        with self._lock:
            return {sop for sop, status in self.statuses.items() if status in STORED}

    def wait_acknowledged(self, count: int, timeout: float = DIMSE_TIMEOUT) -> None:
        wait_until(lambda: len(self.acknowledged) >= count, timeout, f"{count} C-STOREs acknowledged")

    def join(self, timeout: float = INDEX_TIMEOUT) -> dict[str, int]:
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the C-STORE sender did not finish"
        return dict(self.statuses)


def store_statuses(dimse: tuple[str, int, str], files: Sequence[Path]) -> list[int]:
    """Send and wait: the C-STORE statuses in file order."""
    sender = Sender(dimse, files).start()
    statuses = sender.join()
    return [statuses.get(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID), -1) for p in files]


# -- reading back --------------------------------------------------------------------------------


def instance_rows(dsn: str, study_uids: Iterable[str]) -> dict[str, int]:
    """SOP Instance UID -> how many instance rows PostgreSQL holds for it, over these studies."""
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        rows = conn.execute(
            """SELECT sop_instance_uid, COUNT(*) FROM instance
               WHERE tenant_id = %s AND study_instance_uid = ANY(%s) GROUP BY sop_instance_uid""",
            (TENANT, list(study_uids)),
        ).fetchall()
    return {str(sop): int(n) for sop, n in rows}


def wait_indexed(dsn: str, batch: Batch, sop_uids: set[str], timeout: float = INDEX_TIMEOUT) -> None:
    """Until PostgreSQL holds a row for each of `sop_uids` (the consumers catch up)."""

    def done() -> bool:
        try:
            return sop_uids <= instance_rows(dsn, batch.studies).keys()
        except psycopg.OperationalError:
            return False

    wait_until(done, timeout, f"{len(sop_uids)} instances indexed in PostgreSQL")


def indexed_tree(dsn: str, batch: Batch) -> dict[str, dict[str, set[str]]]:
    """What PostgreSQL indexed of the batch, as study -> series -> SOP Instance UIDs."""
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        rows = conn.execute(
            """SELECT study_instance_uid, series_instance_uid, sop_instance_uid FROM instance
               WHERE tenant_id = %s AND study_instance_uid = ANY(%s)""",
            (TENANT, list(batch.studies)),
        ).fetchall()
    tree: dict[str, dict[str, set[str]]] = {}
    for study, series, sop in rows:
        tree.setdefault(str(study), {}).setdefault(str(series), set()).add(str(sop))
    return tree


def assert_counts_in_postgres(dsn: str, tree: dict[str, dict[str, set[str]]]) -> None:
    """The study and series rows' counts are the instance rows' counts."""
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        studies = {
            study: (num_series, num_instances)
            for study, num_series, num_instances in conn.execute(
                "SELECT study_instance_uid, num_series, num_instances FROM study WHERE tenant_id = %s"
                " AND study_instance_uid = ANY(%s)",
                (TENANT, list(tree)),
            ).fetchall()
        }
        series = dict(
            conn.execute(
                "SELECT series_instance_uid, num_instances FROM series WHERE tenant_id = %s"
                " AND study_instance_uid = ANY(%s)",
                (TENANT, list(tree)),
            ).fetchall()
        )
    assert studies == {s: (len(t), sum(map(len, t.values()))) for s, t in tree.items()}
    assert series == {se: len(sops) for t in tree.values() for se, sops in t.items()}


def http_client(ca_file: Path | None) -> httpx.Client:
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
    return httpx.Client(verify=verify, timeout=120)


def _value(item: dict[str, object], tag: str) -> object:
    entry = item.get(tag)
    assert isinstance(entry, dict), f"{tag} missing in {item}"
    values = entry.get("Value")
    assert isinstance(values, list) and values, f"{tag} has no value in {item}"
    return values[0]


def qido(client: httpx.Client, url: str, params: dict[str, str] | None = None) -> list[dict[str, object]]:
    response = client.get(url, params=params, headers={"Accept": "application/dicom+json"})
    assert response.status_code in (200, 204), f"{url}: {response.status_code} {response.text[:300]}"
    return list(response.json()) if response.status_code == 200 and response.content else []


def assert_qido_matches(client: httpx.Client, root: str, tree: dict[str, dict[str, set[str]]]) -> None:
    """QIDO-RS at `root` shows exactly `tree`: each study with its series and instance counts, each
    series with its count, each instance once."""
    for study, series in tree.items():
        (found,) = qido(client, f"{root}/studies", {"StudyInstanceUID": study})
        assert _value(found, "00201206") == len(series), f"NumberOfStudyRelatedSeries of {study} at {root}"
        assert _value(found, "00201208") == sum(map(len, series.values())), (
            f"NumberOfStudyRelatedInstances of {study} at {root}"
        )
        listed = qido(client, f"{root}/studies/{study}/series")
        assert {str(_value(s, "0020000E")): _value(s, "00201209") for s in listed} == {
            se: len(sops) for se, sops in series.items()
        }, f"series of {study} at {root}"
        instances = qido(client, f"{root}/studies/{study}/instances", {"limit": "10000"})
        sops = [str(_value(i, "00080018")) for i in instances]
        assert sorted(sops) == sorted(s for group in series.values() for s in group), f"instances of {study} at {root}"


def assert_indexed_exactly_once(
    stack_dsn: str, roots: Sequence[str], client: httpx.Client, batch: Batch, acknowledged: set[str]
) -> None:
    """Every acknowledged instance has one instance row (none twice), the counts agree with the rows,
    and every QIDO root shows the same."""
    wait_indexed(stack_dsn, batch, acknowledged)
    rows = instance_rows(stack_dsn, batch.studies)
    assert acknowledged <= rows.keys()
    assert set(rows) <= batch.sop_uids
    assert [sop for sop, n in rows.items() if n != 1] == []
    tree = indexed_tree(stack_dsn, batch)
    assert_counts_in_postgres(stack_dsn, tree)
    for root in roots:
        assert_qido_matches(client, root, tree)
