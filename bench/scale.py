"""`python -m bench --scale`: the archive's index at a million instances, on SQLite and on PostgreSQL.

The rows are loaded through the index port (`Index.writing` and `IndexWrite.upsert`, one transaction per batch,
as the store writes them), with each series then marked built (`Index.mark_built`, as the webworker does once
its document is written). No DICOM file is made: an index row holds the catalogue's attributes and where its
object is, so the records are built directly and streamed in batches (memory stays flat at any size).

Then:
- ingest rate at scale: the time per batch over the last `window` instances against the first `window`
  (into the empty index); target at least 0.8x;
- QIDO-RS latency over HTTP (`dicomcloud up` on that index, its QIDO cache off so each request reaches the
  index) for patient ID, study date range + modality and patient name wildcard with limit 100 and 1,000,
  against Orthanc's for the same requests at the full bench's 10,000 studies (loaded in the same run);
  target p95 at most 1/4 of Orthanc's.

The data has the full bench's index studies' shape, ten times as many patients: ten studies per patient, two
series of five instances per study, one modality per study cycling through `INDEX_MODALITIES`, dates over one
year, patient names `Index^NNNN`, so the same requests select the same number of patients at both sizes. A date
range selects ten times the studies, so the archive's range is cut to about Orthanc's answer size (`query_paths`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.measure import wait_queryable
from bench.report import Goal, Measured, Operation, Target, Unit
from bench.run import DICOM_JSON, INDEX_QUERIES, sample
from bench.servers import BenchError, Dicomcloud, Orthanc
from bench.workload import INDEX_MODALITIES, index_date, write_index_studies
from dicomcloud.adapters.postgres_index import PostgresIndex
from dicomcloud.adapters.sqlite_index import SqliteIndex
from dicomcloud.ports.index import Index, IndexedInstance, SeriesKey
from dicomcloud.stack import StackError
from dicomcloud.stack.servers import start_postgres

log = logging.getLogger("bench")

TENANT = "default"
SERIES_PER_STUDY = 2
INSTANCES_PER_SERIES = 5
STUDIES_PER_PATIENT = 10
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
UID_ROOT = "1.2.826.0.1.3680043.10.1407"  # under the bench's own made-up arc: numbers, not random UIDs


@dataclass(frozen=True)
class ScaleSizes:
    instances: int
    batch: int  # instances per index transaction
    window: int  # instances whose batches give the empty-index and the at-scale rate
    repeats: int  # samples per QIDO request

    @property
    def studies(self) -> int:
        return max(1, self.instances // (SERIES_PER_STUDY * INSTANCES_PER_SERIES))

    @property
    def patients(self) -> int:
        return max(1, self.studies // STUDIES_PER_PATIENT)


SCALE = ScaleSizes(instances=1_000_000, batch=1000, window=20_000, repeats=100)
# Enough patients that the full bench's PatientID=P0042 is among them.
QUICK_SCALE = ScaleSizes(instances=5000, batch=100, window=1000, repeats=5)


def study_instances(number: int, patients: int) -> list[IndexedInstance]:
    """The index records of study `number`: what the store would hand the index for its instances."""
    patient = number % patients
    study_uid = f"{UID_ROOT}.1.{number}"
    study = {
        "PatientID": f"P{patient:04}",
        "PatientName": f"Index^{patient:04}",
        "PatientBirthDate": "19700101",
        "PatientSex": "O",
        "StudyInstanceUID": study_uid,
        "StudyDate": index_date(number),
        "StudyTime": f"{number % 24:02}{number % 60:02}00",
        "AccessionNumber": f"A{number:08}",
        "StudyID": str(number % 100000),
        "StudyDescription": "Scale",
        "ReferringPhysicianName": "",
    }
    records = []
    for series in range(SERIES_PER_STUDY):
        series_uid = f"{study_uid}.{series + 1}"
        for instance in range(INSTANCES_PER_SERIES):
            sop_uid = f"{series_uid}.{instance + 1}"
            attributes = {
                **study,
                "SeriesInstanceUID": series_uid,
                "Modality": INDEX_MODALITIES[number % len(INDEX_MODALITIES)],
                "SeriesNumber": series + 1,
                "SeriesDescription": f"Series {series + 1}",
                "SeriesDate": study["StudyDate"],
                "SOPInstanceUID": sop_uid,
                "SOPClassUID": CT_IMAGE_STORAGE,
                "InstanceNumber": instance + 1,
                "TransferSyntaxUID": EXPLICIT_VR_LITTLE_ENDIAN,
                "Rows": 8,
                "Columns": 8,
                "BitsAllocated": 16,
            }
            path = f"{TENANT}/{study_uid}/{series_uid}/{sop_uid}.dcm"
            records.append(IndexedInstance(TENANT, attributes, path, 1024, f"{number:032x}{instance:032x}"))
    return records


def batches(sizes: ScaleSizes) -> Iterator[list[IndexedInstance]]:
    """Every record, `sizes.batch` at a time (whole studies: a batch never splits one)."""
    batch: list[IndexedInstance] = []
    for number in range(sizes.studies):
        batch += study_instances(number, sizes.patients)
        if len(batch) >= sizes.batch:
            yield batch
            batch = []
    if batch:
        yield batch


def load(index: Index, sizes: ScaleSizes, budget: float | None = None) -> list[tuple[int, float]]:
    """Write every record through the port, or those of the batches begun within `budget` seconds;
    (instances, seconds) of each batch, in order."""
    timings = []
    loaded, started = 0, time.perf_counter()
    for batch in batches(sizes):
        if budget is not None and time.perf_counter() - started > budget:
            log.warning("stopped loading at %d instances: the %.0f s budget is spent", loaded, budget)
            break
        began = time.perf_counter()
        with index.writing(TENANT, [(r.sop_instance_uid, r.study_instance_uid) for r in batch]) as write:
            for record in batch:
                write.upsert(record)
        for key in dict.fromkeys(SeriesKey(TENANT, r.study_instance_uid, r.series_instance_uid) for r in batch):
            version = index.series_version(key)
            if version is not None:
                index.mark_built(key, version)
        timings.append((len(batch), time.perf_counter() - began))
        loaded += len(batch)
        if len(timings) % 50 == 0:
            elapsed = time.perf_counter() - started
            log.info("%d of %d instances in %.0fs (%.0f/s overall, last batch %.0f/s)", loaded, sizes.instances,
                     elapsed, loaded / elapsed, len(batch) / timings[-1][1])
    return timings


BACKENDS = ("sqlite", "postgres")
# The full bench's QIDO rows over its index studies, and a patient name wildcard (100 patients' studies) cut short.
# The `^` stays literal: Orthanc does not decode %5E in a query value.
QUERIES = {
    **INDEX_QUERIES,
    "qido_studies_name_limit100": "/studies?PatientName=Index^00*&limit=100",
    "qido_studies_name_limit1000": "/studies?PatientName=Index^00*&limit=1000",
}
DATE_MODALITY = "qido_studies_date_modality"
MONTH_DAYS = 31  # the full bench's date range: January
EMPTY = "empty index"


def query_paths(studies: int, orthanc_studies: int) -> dict[str, dict[str, str]]:
    """Each row's request to each server. Dates spread the same way at both sizes, so a month at `studies` holds
    `studies / orthanc_studies` times Orthanc's answer, and its p95 would time the JSON of ten times the studies
    rather than the index; the archive's range is cut to as many days as hold about as many studies as Orthanc's
    month (both answers' sizes are in the results)."""
    days = max(1, min(MONTH_DAYS, round(MONTH_DAYS * orthanc_studies / studies)))
    scaled = INDEX_QUERIES[DATE_MODALITY].replace("20230131", index_date(days - 1))
    return {
        name: {"dicomcloud": scaled if name == DATE_MODALITY else path, "orthanc": path}
        for name, path in QUERIES.items()
    }


def scale_operations(backend: str, sizes: ScaleSizes, orthanc_studies: int) -> list[Operation]:
    window = f"{sizes.window:,} instances"
    ingest = Operation(
        f"scale_{backend}_ingest",
        f"{backend} index port, {sizes.batch}-instance transactions: the last {window} of {sizes.instances:,} "
        f"against the first {window} (into the empty index)",
        Unit.INSTANCES, Target(Goal.THROUGHPUT_AT_LEAST, 0.8), ("dicomcloud", EMPTY),
    )  # fmt: skip
    queries = [
        Operation(f"scale_{backend}_{name}", f"QIDO-RS {paths['dicomcloud']} with {sizes.instances:,} instances in "
                  f"{backend}, against Orthanc's {paths['orthanc']} with {orthanc_studies:,} studies", Unit.REQUESTS,
                  Target(Goal.P95_TIME_AT_MOST, 1 / 4))
        for name, paths in query_paths(sizes.studies, orthanc_studies).items()
    ]
    return [ingest, *queries]


class IndexedArchive(Dicomcloud):
    """`dicomcloud up` on an index loaded beforehand, with its QIDO cache off: every request reaches the index."""

    def __init__(self, folder: Path, settings: dict[str, str]) -> None:
        super().__init__(folder)
        self.settings = {"DICOMCLOUD_BACKENDS__QIDO_CACHE_TTL": "0", **settings}

    def environment(self) -> dict[str, str]:
        return {**super().environment(), **self.settings}


def batch_rates(timings: list[tuple[int, float]], batch: int, window: int) -> tuple[list[float], list[float]]:
    """Seconds of the whole batches among the first and among the last `window` instances."""
    whole = [seconds for count, seconds in timings if count == batch]
    take = max(1, window // batch)
    return whole[:take], whole[-take:]


class ScaleBench:
    def __init__(
        self, sizes: ScaleSizes, orthanc_studies: int, work: Path, backends: Sequence[str], budget: float | None = None
    ) -> None:
        self.sizes = sizes
        self.budget = budget  # seconds each index may spend loading; then it is measured at the size reached
        self.orthanc_studies = orthanc_studies
        self.work = work
        self.backends = list(backends)
        self.ops = {op.name: op for b in self.backends for op in scale_operations(b, sizes, orthanc_studies)}
        self.result_counts: dict[str, dict[str, int]] = {}
        self.load_seconds: dict[str, float] = {}
        self.loaded: dict[str, int] = {}

    def run(self) -> dict[str, Any]:
        conditions = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpus": os.cpu_count(),
                      "load_average_start": os.getloadavg()}
        orthanc = Orthanc(self.work / "orthanc")
        files = self.work / "orthanc-index"
        log.info("writing %d index studies for Orthanc", self.orthanc_studies)
        last_study = write_index_studies(files, self.orthanc_studies)
        try:
            orthanc.start()
            log.info("loading them into Orthanc")
            orthanc.load(files)
            wait_queryable(orthanc, last_study, 1)
            orthanc.wait_idle()
            for backend in self.backends:
                self.measure(backend, orthanc)
        finally:
            orthanc.stop()
        conditions["load_average_end"] = os.getloadavg()
        return {
            "conditions": conditions,
            "sizes": {**vars(self.sizes), "studies": self.sizes.studies, "patients": self.sizes.patients,
                      "orthanc_studies": self.orthanc_studies},
            "load_seconds": self.load_seconds,
            "loaded_instances": self.loaded,
            "result_counts": self.result_counts,
            "operations": [op.to_json() for op in self.ops.values()],
        }

    def measure(self, backend: str, orthanc: Orthanc) -> None:
        with self.index(backend) as (index, archive):
            log.info("%s: loading %d instances in %d studies through the index port", backend,
                     self.sizes.instances, self.sizes.studies)
            started = time.perf_counter()
            timings = load(index, self.sizes, self.budget)
            self.load_seconds[backend] = time.perf_counter() - started
            index.close()
            self.loaded[backend] = sum(count for count, _ in timings)
            log.info("%s: %d instances loaded in %.0fs", backend, self.loaded[backend], self.load_seconds[backend])
            reached = dataclasses.replace(self.sizes, instances=self.loaded[backend])
            self.ops |= {op.name: op for op in scale_operations(backend, reached, self.orthanc_studies)}
            empty, at_scale = batch_rates(timings, self.sizes.batch, self.sizes.window)
            ingest = self.ops[f"scale_{backend}_ingest"]
            ingest.results = {"dicomcloud": Measured(seconds=at_scale, items=self.sizes.batch),
                              EMPTY: Measured(seconds=empty, items=self.sizes.batch)}
            archive.start()
            try:
                archive.wait_idle()
                servers = {"dicomcloud": archive, "orthanc": orthanc}
                for name, paths in query_paths(reached.studies, self.orthanc_studies).items():
                    self.result_counts[f"scale_{backend}_{name}"] = {
                        server: _results(target.dicomweb + paths[server]) for server, target in servers.items()
                    }
                    log.info("%s %s: %d samples per server", backend, name, self.sizes.repeats)
                    targets = {
                        server: (target.dicomweb + paths[server], target.ca_file) for server, target in servers.items()
                    }
                    sample(self.ops[f"scale_{backend}_{name}"], targets, DICOM_JSON, self.sizes.repeats)
            finally:
                archive.stop()

    @contextmanager
    def index(self, backend: str) -> Iterator[tuple[Index, IndexedArchive]]:
        """The empty index of `backend` and the archive that will serve it once loaded."""
        folder = self.work / backend
        if backend == "sqlite":
            archive = IndexedArchive(folder, {})
            yield SqliteIndex(archive.data / "index.sqlite"), archive
            return
        try:
            postgres = start_postgres(self.work / "postgres")
        except StackError as exc:
            raise BenchError(f"PostgreSQL did not start: {exc}") from exc
        try:
            settings = {"DICOMCLOUD_BACKENDS__INDEX": "postgres", "DICOMCLOUD_BACKENDS__POSTGRES_DSN": postgres.url}
            yield PostgresIndex(postgres.url), IndexedArchive(folder, settings)
        finally:
            postgres.stop()


def _results(url: str) -> int:
    response = httpx.get(url, headers=DICOM_JSON, timeout=120)
    return len(response.json()) if response.status_code == 200 and response.content else 0
