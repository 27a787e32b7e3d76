"""The bench run: generate, start both archives, load the same data, time each operation on both.

Two comparisons: dicomcloud against Orthanc (OPERATIONS; a few rows against nginx serving the same bytes as a
static file instead), or, with `s3`, `dicomcloud up` on S3 (a SeaweedFS started for the run) against the same
archive on the local filesystem (S3_OPERATIONS and the object-storage targets).

Repeated HTTP samples are taken in rounds that alternate between the servers, so a burst of load from
elsewhere on the machine does not fall on one server only.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench.floor import Floor, import_floor
from bench.measure import (
    curl,
    metadata_while_writing,
    parallel_posts,
    process_rss,
    server_rss,
    storescu,
    stream_with_rss,
    timed_ingest,
    wait_queryable,
    wrk_load,
)
from bench.receiver_floor import ReceiverFloor
from bench.report import FLOOR_SERVERS, NGINX_SERVERS, S3_SERVERS, Goal, Measured, Operation, Target, Unit
from bench.servers import BenchError, Dicomcloud, DicomcloudOnS3, DicomcloudStack, Orthanc, Server, StaticFiles
from bench.workload import STOW_CONTENT_TYPE, Sizes, Workload, files_under, generate
from dicomcloud.process import cores
from dicomcloud.service_workers import worker_count

log = logging.getLogger("bench")

DICOM_JSON = {"Accept": "application/dicom+json"}
DICOM_PARTS = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
FRAME_PARTS = {"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}
ROUND = 10
# QIDO requests over the index studies (workload.py): one patient's studies; one month's MR studies.
INDEX_QUERIES = {
    "qido_studies_patientid": "/studies?PatientID=P0042",
    "qido_studies_date_modality": "/studies?StudyDate=20230101-20230131&ModalitiesInStudy=MR",
}

VIEWER = "a viewer's load: parallel connections fetching frame 1 of every instance of a CT series in turn"
OPERATIONS = [
    Operation("cstore_ingest", "storescu sends both CT series of one study (one association), until QIDO counts all",
              Unit.INSTANCES, Target(Goal.THROUGHPUT_AT_LEAST, 15)),
    Operation("cstore_parallel", "storescu over parallel associations (one series each, one study), until QIDO "
              "counts all", Unit.INSTANCES, Target(Goal.THROUGHPUT_AT_LEAST, 10)),
    Operation("stow_rs", "STOW-RS of one study's CT instances in one multipart request",
              Unit.INSTANCES, Target(Goal.THROUGHPUT_AT_LEAST, 10)),
    Operation("stow_rs_parallel", "STOW-RS by parallel clients, one study's CT instances each, until the last answer",
              Unit.INSTANCES, Target(Goal.THROUGHPUT_AT_LEAST, 10)),
    # The floors under the C-STORE targets (bench/receiver_floor.py): pynetdicom receiving the same instances over
    # the same associations and storing nothing, against Orthanc's figure for storing them.
    Operation("cstore_floor", "pynetdicom alone, in as many processes as the archive's DIMSE workers: storescu sends "
              "both CT series (one association), answered at once", Unit.INSTANCES,
              Target(Goal.THROUGHPUT_AT_LEAST, 15), FLOOR_SERVERS),
    Operation("cstore_parallel_floor", "pynetdicom alone: storescu over the parallel associations, answered at once",
              Unit.INSTANCES, Target(Goal.THROUGHPUT_AT_LEAST, 10), FLOOR_SERVERS),
    # The floors under the STOW-RS targets: the storage alone writing and syncing the same instances, against
    # Orthanc's figure for the whole request. A floor below a target means no archive that makes an instance durable
    # before answering meets it on this machine.
    Operation("stow_rs_floor", "the storage alone: write and fsync one STOW-RS request's instances and metadata "
              "entries in one batch", Unit.INSTANCES, Target(Goal.THROUGHPUT_AT_LEAST, 10), FLOOR_SERVERS),
    Operation("stow_rs_parallel_floor", "the storage alone: the parallel clients' instances and entries in one "
              "batch (a group commit)", Unit.INSTANCES, Target(Goal.THROUGHPUT_AT_LEAST, 10), FLOOR_SERVERS),
    Operation("stow_rs_queryable", "the same STOW-RS, from the request until QIDO-RS counts every instance of it",
              Unit.INSTANCES, Target(Goal.TIME_AT_MOST, 1 / 3)),
    Operation("metadata_while_writing", "series metadata of a new series, requested back to back while storescu "
              "sends its instances", Unit.REQUESTS, Target(Goal.NONE)),
    Operation("metadata_complete_after_write", "from storescu's end until that series' metadata lists every instance",
              Unit.REQUESTS, Target(Goal.NONE)),
    Operation("bulk_import", "`dicomcloud import` of a folder (the study's CT filler, the index studies) against "
              "Orthanc's REST upload of it (POST /instances, 4 clients), until QIDO finds all",
              Unit.INSTANCES, Target(Goal.THROUGHPUT_AT_LEAST, 3)),
    # The floor under the import target (bench/floor.py `import_floor`): the work no import can skip, against
    # Orthanc's whole upload.
    Operation("bulk_import_floor", "pydicom and the storage alone, in as many processes as cores: read each file "
              "of the same folder, parse it once and commit it with its metadata entry in the archive's layout, in "
              "the import's chunks (no index, no bus)", Unit.INSTANCES, Target(Goal.THROUGHPUT_AT_LEAST, 3),
              FLOOR_SERVERS),
    Operation("qido_studies_patientid", "QIDO /studies?PatientID=<one of 1,000 patients> at the index scale",
              Unit.REQUESTS, Target(Goal.TIME_AT_MOST, 1 / 2)),
    Operation("qido_studies_date_modality", "QIDO /studies?StudyDate=<a month>&ModalitiesInStudy=MR, index scale",
              Unit.REQUESTS, Target(Goal.TIME_AT_MOST, 1 / 2)),
    Operation("qido_instances_series", "QIDO instances of the big series",
              Unit.REQUESTS, Target(Goal.TIME_AT_MOST, 1 / 20)),
    Operation("metadata_series_cold", "series metadata of the big series, first request after a server restart",
              Unit.REQUESTS, Target(Goal.TIME_AT_MOST, 1 / 10)),
    Operation("metadata_series_warm", "series metadata of the big series, repeated",
              Unit.REQUESTS, Target(Goal.TIME_AT_MOST, 1 / 50)),
    Operation("frame_single", "frame 1 of a 512x512 16-bit CT instance (octet-stream, transfer-syntax=*)",
              Unit.REQUESTS, Target(Goal.TIME_AT_MOST, 1 / 2)),
    Operation("frame_multiframe", "middle frame of a multi-frame instance (octet-stream, transfer-syntax=*)",
              Unit.REQUESTS, Target(Goal.TIME_AT_MOST, 1 / 2)),
    Operation("instance_retrieve", "one CT instance as multipart application/dicom",
              Unit.MEGABYTES, Target(Goal.TIME_AT_MOST, 1 / 2)),
    Operation("series_retrieve", "the big series as multipart application/dicom",
              Unit.MEGABYTES, Target(Goal.THROUGHPUT_AT_LEAST, 0.8)),
    Operation("series_retrieve_nginx", "the same, against nginx sending the same bytes from a file (sendfile)",
              Unit.MEGABYTES, Target(Goal.THROUGHPUT_AT_LEAST, 0.9), NGINX_SERVERS),
    Operation("viewer_frames_after_ingest", f"{VIEWER}, from the moment storescu's series is queryable",
              Unit.FRAMES, Target(Goal.THROUGHPUT_AT_LEAST_P99_HALF, 3)),
    Operation("viewer_frames_settled", f"{VIEWER}, once the server is idle again",
              Unit.FRAMES, Target(Goal.THROUGHPUT_AT_LEAST_P99_HALF, 3)),
    Operation("viewer_frames_nginx", "the settled viewer load against nginx serving a file of one frame answer's "
              "size: the client's ceiling", Unit.FRAMES, Target(Goal.NONE), NGINX_SERVERS),
    Operation("study_stream_rss", "the whole study streamed while sampling the server's VmRSS, then idle after",
              Unit.MEGABYTES, Target(Goal.RSS_PEAK_BELOW_MB, 200)),
]

# The same archive on S3 against on the local filesystem: what an object store may cost.
S3_OPERATIONS = [
    Operation("cstore_ingest", "storescu sends both CT series of one study (one association), until QIDO counts all",
              Unit.INSTANCES, Target(Goal.THROUGHPUT_AT_LEAST, 0.7), S3_SERVERS),
    Operation("stow_rs", "STOW-RS of one study's CT instances in one multipart request",
              Unit.INSTANCES, Target(Goal.THROUGHPUT_AT_LEAST, 0.7), S3_SERVERS),
    Operation("frame_single", "frame 1 of a 512x512 16-bit CT instance (octet-stream, transfer-syntax=*)",
              Unit.REQUESTS, Target(Goal.MEDIAN_WITHIN_MS, 2), S3_SERVERS),
    Operation("frame_multiframe", "middle frame of a multi-frame instance (octet-stream, transfer-syntax=*)",
              Unit.REQUESTS, Target(Goal.MEDIAN_WITHIN_MS, 2), S3_SERVERS),
    Operation("instance_retrieve", "one CT instance as multipart application/dicom",
              Unit.MEGABYTES, Target(Goal.NONE), S3_SERVERS),
    Operation("series_retrieve", "the big series as multipart application/dicom",
              Unit.MEGABYTES, Target(Goal.THROUGHPUT_AT_LEAST, 0.7), S3_SERVERS),
    Operation("study_stream_rss", "the whole study streamed while sampling the server's VmRSS",
              Unit.MEGABYTES, Target(Goal.RSS_GROWTH_BELOW_MB, 100), S3_SERVERS),
    # The store's floor (bench/floor.py): the Storage port alone doing the storage part of the operations above.
    Operation("storage_commit_one", "the storage alone: commit one CT instance and its metadata entry (a C-STORE's "
              "part)", Unit.INSTANCES, Target(Goal.THROUGHPUT_AT_LEAST, 0.7), S3_SERVERS),
    Operation("storage_commit_batch", "the storage alone: commit a STOW-RS request's instances and entries in one "
              "batch", Unit.INSTANCES, Target(Goal.THROUGHPUT_AT_LEAST, 0.7), S3_SERVERS),
    Operation("storage_frame_read", "the storage alone: read one frame's byte range of a CT instance",
              Unit.REQUESTS, Target(Goal.MEDIAN_WITHIN_MS, 2), S3_SERVERS),
    Operation("storage_series_read", "the storage alone: read the batches' objects whole, in order (S3: "
              "READ_AHEAD at once)", Unit.MEGABYTES, Target(Goal.THROUGHPUT_AT_LEAST, 0.7), S3_SERVERS),
]
FLOOR_OPERATIONS = ("storage_commit_one", "storage_commit_batch", "storage_frame_read", "storage_series_read")


def new_operations(s3: bool = False) -> dict[str, Operation]:
    return {
        op.name: Operation(op.name, op.description, op.unit, op.target, op.servers)
        for op in (S3_OPERATIONS if s3 else OPERATIONS)
    }


def sample(op: Operation, targets: dict[str, tuple[str, Path | None]], headers: dict[str, str], repeats: int) -> None:
    """`repeats` samples of each server's URL (server name -> URL and CA), in rounds that alternate between them."""
    for url, ca_file in targets.values():
        curl([url], headers, ca_file=ca_file)  # warm-up, not counted
    done = 0
    while done < repeats:
        batch = min(ROUND, repeats - done)
        for name, (url, ca_file) in targets.items():
            samples = curl([url] * batch, headers, ca_file=ca_file)
            op.results[name].seconds += [s.seconds for s in samples]
            op.results[name].size = samples[0].size
        done += batch


class Bench:
    def __init__(
        self, sizes: Sizes, work: Path, *, stack: bool = False, s3: bool = False, only: set[str] | None = None
    ) -> None:
        if stack and s3:
            raise BenchError("--s3 compares `dicomcloud up` on S3 and on the filesystem; it takes no --stack")
        self.sizes = sizes
        self.work_root = work
        self.stack = stack
        self.s3 = s3
        self.ops = new_operations(s3)
        unknown = (only or set()) - set(self.ops)
        if unknown:
            raise BenchError(f"unknown operation(s): {', '.join(sorted(unknown))}")
        self.only = only
        self.servers: dict[str, Server]
        if s3:
            self.servers = {"s3": DicomcloudOnS3(work / "dicomcloud-s3"), "fs": Dicomcloud(work / "dicomcloud-fs")}
        else:
            ours = DicomcloudStack if stack else Dicomcloud
            self.servers = {"dicomcloud": ours(work / "dicomcloud"), "orthanc": Orthanc(work / "orthanc")}
        self.nginx = StaticFiles(work / "nginx")
        self.results_count: dict[str, dict[str, int]] = {}

    def run(self) -> dict[str, Any]:
        conditions = self.conditions()
        log.info("generating the workload in %s", self.work_root)
        started = time.perf_counter()
        reads = self.wanted(*self.paths(Workload(self.work_root)), "series_retrieve_nginx", "study_stream_rss",
                            "metadata_series_cold", "bulk_import", "bulk_import_floor")
        viewer = self.wanted("viewer_frames_after_ingest", "viewer_frames_settled", "viewer_frames_nginx")
        workload = generate(self.work_root / "files", self.sizes, reads=reads,
                            parallel=self.wanted("cstore_parallel"), viewer=viewer)
        log.info("generated in %.0fs: study of %d instances, %.0f MB", time.perf_counter() - started,
                 workload.study_count, workload.study_bytes / 1024**2)
        try:
            for server in self.servers.values():
                server.start()
            if self.wanted("series_retrieve_nginx", "viewer_frames_nginx"):
                self.nginx.start()
            if "orthanc" in self.servers:
                conditions["orthanc_dicomweb_plugin"] = self.orthanc_plugin_version()
            if self.wanted(*FLOOR_OPERATIONS):
                self.floor(workload)
            self.ingest(workload)
            if self.wanted("cstore_parallel"):
                self.parallel_ingest(workload)
            if self.wanted("cstore_floor", "cstore_parallel_floor"):
                self.cstore_floor(workload)
            if self.wanted("metadata_while_writing", "metadata_complete_after_write"):
                self.writing(workload)
            if viewer:  # on the small archive, before the bulk load: at 10,000 studies Orthanc's index slows it
                self.viewer(workload)
            if reads:
                self.load(workload)
            if self.wanted("bulk_import_floor"):
                self.import_floor(workload)
            if self.wanted("stow_rs", "stow_rs_queryable"):
                self.stow(workload)
            if self.wanted("stow_rs_parallel"):
                self.stow_parallel(workload)
            if self.wanted("stow_rs_floor", "stow_rs_parallel_floor"):
                self.stow_floor(workload)
            self.http_operations(workload)
            if self.wanted("study_stream_rss"):
                self.stream(workload)
            if self.wanted("metadata_series_cold"):
                self.cold_metadata(workload)
        finally:
            for server in (*self.servers.values(), self.nginx):
                server.stop()
        conditions["load_average_end"] = os.getloadavg()
        return {
            "conditions": conditions,
            "sizes": vars(self.sizes),
            "result_counts": self.results_count,
            "operations": [op.to_json() for op in self.ops.values()],
        }

    def wanted(self, *names: str) -> bool:
        """Whether any of these operations is to be measured (all of the run's are without --only)."""
        return bool(set(names) & set(self.ops) & (self.only if self.only is not None else set(self.ops)))

    def floor(self, work: Workload) -> None:
        """The storage port alone on each archive's storage (the first ingest instance's bytes), before any load;
        samples taken in rounds that alternate between the storages, as HTTP samples are."""
        instance = min(work.ingest_dir.iterdir())
        floors: dict[str, Floor] = {}
        for name, server in self.servers.items():
            if not isinstance(server, Dicomcloud):
                raise BenchError("the storage floor is measured on dicomcloud's own storages (--s3)")
            floors[name] = Floor(server.storage(self.work_root / f"floor-{name}"), instance)
        sizes = self.sizes
        steps: list[tuple[str, int, int, Callable[[Floor, int], Measured]]] = [
            ("storage_commit_one", sizes.repeats, ROUND, Floor.commit_one),
            ("storage_commit_batch", sizes.stow_requests, 1,
             lambda floor, repeats: floor.commit_batch(sizes.stow_instances, repeats)),
            ("storage_frame_read", sizes.repeats, ROUND, Floor.frame_read),
            ("storage_series_read", sizes.retrieve_repeats, 1, Floor.series_read),
        ]  # fmt: skip
        for op_name, repeats, per_round, measure in steps:
            log.info("%s: %d samples per storage", op_name, repeats)
            for done in range(0, repeats, per_round):
                for name, floor in floors.items():
                    measured = measure(floor, min(per_round, repeats - done))
                    result = self.ops[op_name].results[name]
                    result.seconds += measured.seconds
                    result.size, result.items = measured.size, measured.items

    def ingest(self, work: Workload) -> None:
        op = self.ops["cstore_ingest"]
        for name, server in self.servers.items():
            log.info("C-STORE of %d instances into %s", work.ingest_count, name)
            seconds = timed_ingest(server, [work.ingest_dir], work.study_uid, work.ingest_count)
            op.results[name] = Measured(seconds=[seconds], items=work.ingest_count)

    def parallel_ingest(self, work: Workload) -> None:
        op = self.ops["cstore_parallel"]
        for name, server in self.servers.items():
            server.wait_idle()
            log.info("C-STORE of %d instances into %s over %d associations", work.parallel_count, name,
                     len(work.parallel_dirs))
            seconds = timed_ingest(server, work.parallel_dirs, work.parallel_study_uid, work.parallel_count)
            op.results[name] = Measured(seconds=[seconds], items=work.parallel_count)

    def cstore_floor(self, work: Workload) -> None:
        """storescu into pynetdicom receiving and storing nothing, as into the archives; beside Orthanc's figures."""
        parallel = work.parallel_dirs if work.parallel_count else []
        with ReceiverFloor(worker_count(0)) as floor:
            for op_name, stored, folders, count in (
                ("cstore_floor", "cstore_ingest", [work.ingest_dir], work.ingest_count),
                ("cstore_parallel_floor", "cstore_parallel", parallel, work.parallel_count),
            ):
                if not folders:
                    continue
                log.info("%s: %d instances over %d association(s)", op_name, count, len(folders))
                started = time.perf_counter()
                storescu(floor, *folders)
                op = self.ops[op_name]
                op.results["floor"] = Measured(seconds=[time.perf_counter() - started], items=count)
                op.results["orthanc"] = self.ops[stored].results["orthanc"]

    def writing(self, work: Workload) -> None:
        """A new series sent by storescu while its metadata is requested back to back, then until it is complete."""
        while_writing, complete = self.ops["metadata_while_writing"], self.ops["metadata_complete_after_write"]
        path = f"/studies/{work.writing_study_uid}/series/{work.writing_series_uid}/metadata"
        for name, server in self.servers.items():
            log.info("C-STORE of %d instances into %s while requesting their metadata", work.writing_count, name)
            measured = metadata_while_writing(server, work.writing_dir, path, work.writing_count, DICOM_JSON)
            while_writing.results[name] = Measured(seconds=measured.request_seconds, size=measured.last_size)
            complete.results[name] = Measured(seconds=[measured.complete_after], size=measured.last_size)
            log.info("%s: %d metadata requests while writing (the last listed %d of %d); complete %.2fs after the "
                     "last C-STORE", name, len(measured.request_seconds), measured.last_listed, work.writing_count,
                     measured.complete_after)
            server.wait_idle()

    def load(self, work: Workload) -> None:
        """The rest of the study and the index studies, in one bulk load timed until QIDO finds the last of them."""
        files = len(files_under(work.bulk_dir))
        for name, server in self.servers.items():
            log.info("loading %d files (the rest of the study, %d index studies) into %s", files,
                     self.sizes.index_studies, name)
            started = time.perf_counter()
            server.load(work.bulk_dir)
            wait_queryable(server, work.study_uid, work.study_count)
            if self.sizes.index_studies:
                wait_queryable(server, work.index_last_study_uid, 1)
            seconds = time.perf_counter() - started
            if "bulk_import" in self.ops:
                self.ops["bulk_import"].results[name] = Measured(seconds=[seconds], items=files)
            log.info("%s: %d files queryable after %.1fs", name, files, seconds)
            server.wait_idle()

    def import_floor(self, work: Workload) -> None:
        """pydicom and the storage alone doing the bulk load's share of an import, beside Orthanc's whole upload."""
        files = files_under(work.bulk_dir)
        processes = cores()
        log.info("bulk_import_floor: %d files parsed and committed by %d processes", len(files), processes)
        op = self.ops["bulk_import_floor"]
        op.results["floor"] = import_floor(self.work_root / "floor-import", files, processes)
        op.results["orthanc"] = self.ops["bulk_import"].results["orthanc"]

    def stow(self, work: Workload) -> None:
        answered, queryable = self.ops["stow_rs"], self.ops.get("stow_rs_queryable")
        headers = {"Content-Type": STOW_CONTENT_TYPE, **DICOM_JSON}
        log.info("STOW-RS: %d requests of %d instances per server", len(work.stow_bodies), self.sizes.stow_instances)
        for body, study_uid in zip(work.stow_bodies, work.stow_study_uids, strict=True):
            for name, server in self.servers.items():
                started = time.perf_counter()
                (sample,) = curl([f"{server.dicomweb}/studies"], headers, data=body, ca_file=server.ca_file)
                wait_queryable(server, study_uid, self.sizes.stow_instances)
                until_queryable = time.perf_counter() - started
                for op, seconds in ((answered, sample.seconds), (queryable, until_queryable)):
                    if op is None:
                        continue
                    measured = op.results[name]
                    measured.seconds.append(seconds)
                    measured.size, measured.items = body.stat().st_size, self.sizes.stow_instances
                server.wait_idle()

    def stow_parallel(self, work: Workload) -> None:
        op = self.ops["stow_rs_parallel"]
        headers = {"Content-Type": STOW_CONTENT_TYPE, **DICOM_JSON}
        for name, server in self.servers.items():
            log.info("STOW-RS into %s: %d clients at once, %d instances each", name, len(work.stow_parallel_bodies),
                     self.sizes.stow_instances)
            seconds = parallel_posts(f"{server.dicomweb}/studies", work.stow_parallel_bodies, headers, server.ca_file)
            bodies = work.stow_parallel_bodies
            op.results[name] = Measured(seconds=[seconds], items=self.sizes.stow_instances * len(bodies),
                                        size=sum(body.stat().st_size for body in bodies))
            for study_uid in work.stow_parallel_study_uids:
                wait_queryable(server, study_uid, self.sizes.stow_instances)
            server.wait_idle()

    def stow_floor(self, work: Workload) -> None:
        """The storage of our archive's kind alone committing what the STOW-RS rows sent, in as many batches; beside
        Orthanc's figures for the whole requests."""
        ours = self.servers["dicomcloud"]
        assert isinstance(ours, Dicomcloud)
        floor = Floor(ours.storage(self.work_root / "floor-stow"), min(work.ingest_dir.iterdir()))
        instances = self.sizes.stow_instances
        for op_name, stow, per_batch, batches in (
            ("stow_rs_floor", "stow_rs", instances, len(work.stow_bodies)),
            ("stow_rs_parallel_floor", "stow_rs_parallel", instances * len(work.stow_parallel_bodies), 1),
        ):
            op = self.ops[op_name]
            log.info("%s: %d batches of %d instances", op_name, batches, per_batch)
            op.results["floor"] = floor.commit_batch(per_batch, batches)
            op.results["orthanc"] = self.ops[stow].results["orthanc"]

    def paths(self, work: Workload) -> dict[str, tuple[str, dict[str, str]]]:
        series = f"/studies/{work.study_uid}/series/{work.series_uid}"
        multiframe = f"/studies/{work.study_uid}/series/{work.multiframe_series_uid}/instances/{work.multiframe_uid}"
        return {
            **{name: (query, DICOM_JSON) for name, query in INDEX_QUERIES.items()},
            "qido_instances_series": (f"{series}/instances", DICOM_JSON),
            "metadata_series_warm": (f"{series}/metadata", DICOM_JSON),
            "frame_single": (f"{series}/instances/{work.instance_uid}/frames/1", FRAME_PARTS),
            "frame_multiframe": (f"{multiframe}/frames/{work.multiframe_frame}", FRAME_PARTS),
            "instance_retrieve": (f"{series}/instances/{work.instance_uid}", DICOM_PARTS),
            "series_retrieve": (series, DICOM_PARTS),
        }

    def http_operations(self, work: Workload) -> None:
        for name, (path, headers) in self.paths(work).items():
            if not self.wanted(name):
                continue
            repeats = self.sizes.retrieve_repeats if name == "series_retrieve" else self.sizes.repeats
            log.info("%s: %d samples per server", name, repeats)
            if name.startswith("qido"):
                self.results_count[name] = {s: self.count_results(server, path) for s, server in self.servers.items()}
            sample(self.ops[name], self.targets(path), headers, repeats)
        if self.wanted("series_retrieve_nginx"):
            self.series_against_nginx(work)

    def targets(self, path: str) -> dict[str, tuple[str, Path | None]]:
        """Each archive's URL for `path` and the CA its HTTPS needs, if any."""
        return {name: (f"{server.dicomweb}{path}", server.ca_file) for name, server in self.servers.items()}

    def series_against_nginx(self, work: Workload) -> None:
        """The series' multipart answer, saved once, served by nginx beside the archive's own answers."""
        path, headers = self.paths(work)["series_retrieve"]
        url, ca_file = self.targets(path)["dicomcloud"]
        answer = self.work_root / "series.multipart"
        curl([url], headers, ca_file=ca_file, output=answer)
        targets = {"dicomcloud": (url, ca_file), "nginx": (self.nginx.put("series", answer), None)}
        log.info("series_retrieve_nginx: %d samples per server", self.sizes.retrieve_repeats)
        sample(self.ops["series_retrieve_nginx"], targets, headers, self.sizes.retrieve_repeats)

    def viewer(self, work: Workload) -> None:
        """Each archive gets the viewer's series by storescu, then the viewer's load at once and after it is idle;
        nginx gets the same load on a file of one frame answer's size."""
        after, settled = self.ops["viewer_frames_after_ingest"], self.ops["viewer_frames_settled"]
        frames = [f"/studies/{work.viewer_study_uid}/series/{work.viewer_series_uid}/instances/{uid}/frames/1"
                  for uid in work.viewer_instance_uids]
        for name, server in self.servers.items():
            server.wait_idle()
            log.info("viewer load on %s: storescu of %d instances, then %d connections for %gs, twice", name,
                     len(frames), self.sizes.viewer_connections, self.sizes.viewer_seconds)
            timed_ingest(server, [work.viewer_dir], work.viewer_study_uid, len(frames))
            after.results[name] = self.wrk(server.dicomweb, frames)
            server.wait_idle()
            settled.results[name] = self.wrk(server.dicomweb, frames)
        if self.wanted("viewer_frames_nginx"):
            dicomcloud = self.servers["dicomcloud"]
            answer = self.work_root / "frame.multipart"
            curl([f"{dicomcloud.dicomweb}{frames[0]}"], FRAME_PARTS, ca_file=dicomcloud.ca_file, output=answer)
            self.nginx.put("frame", answer)
            ceiling = self.ops["viewer_frames_nginx"]
            ceiling.results = {"dicomcloud": settled.results["dicomcloud"],
                               "nginx": self.wrk(self.nginx.base_url, ["/frame"])}

    def wrk(self, root: str, paths: list[str]) -> Measured:
        prefix = urlsplit(root)
        with tempfile.TemporaryDirectory() as scratch:
            load = wrk_load(f"{prefix.scheme}://{prefix.netloc}", [prefix.path + path for path in paths], FRAME_PARTS,
                            self.sizes.viewer_connections, self.sizes.viewer_seconds, Path(scratch))
        return Measured(seconds=load.latencies, rate=load.rate, items=len(paths))

    def count_results(self, server: Server, path: str) -> int:
        response = httpx.get(f"{server.dicomweb}{path}", headers=DICOM_JSON, timeout=120, verify=server.verify)
        return len(response.json()) if response.status_code == 200 and response.content else 0

    def stream(self, work: Workload) -> None:
        op = self.ops["study_stream_rss"]
        for name, server in self.servers.items():
            log.info("streaming the %.0f MB study from %s", work.study_bytes / 1024**2, name)
            log.info("%s RSS by process before: %s", name, _megabytes(process_rss(server)))
            streamed = stream_with_rss(server, f"{server.dicomweb}/studies/{work.study_uid}", DICOM_PARTS)
            server.wait_idle()
            log.info("%s RSS by process idle after: %s", name, _megabytes(process_rss(server)))
            op.results[name] = Measured(seconds=[streamed.sample.seconds], size=streamed.sample.size,
                                        rss_before=streamed.rss_before, rss_peak=streamed.rss_peak,
                                        rss_idle_after=server_rss(server))

    def cold_metadata(self, work: Workload) -> None:
        op = self.ops["metadata_series_cold"]
        path, headers = self.paths(work)["metadata_series_warm"]
        for restart in range(self.sizes.cold_restarts):
            log.info("restarting both servers for a cold metadata request (%d/%d)", restart + 1,
                     self.sizes.cold_restarts)
            for name, server in self.servers.items():
                server.restart()
                server.wait_idle()
                (sample,) = curl([f"{server.dicomweb}{path}"], headers, ca_file=server.ca_file)
                op.results[name].seconds.append(sample.seconds)
                op.results[name].size = sample.size

    def orthanc_plugin_version(self) -> str:
        response = httpx.get(f"{self.servers['orthanc'].base_url}/plugins/dicom-web", timeout=10)
        return str(response.json().get("Version", "unknown")) if response.status_code == 200 else "unknown"

    def conditions(self) -> dict[str, Any]:
        repo = Path(__file__).resolve().parents[1]

        def output(*command: str) -> str:
            try:
                done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=repo)
            except OSError as exc:
                raise BenchError(f"{command[0]} is missing: {exc}") from exc
            return done.stdout.strip().splitlines()[0] if done.stdout.strip() else "unknown"

        return {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "load_average_start": os.getloadavg(),
            "python": platform.python_version(),
            "dicomcloud_commit": output("git", "rev-parse", "--short", "HEAD"),
            "orthanc": output("Orthanc", "--version"),
            "curl": output("curl", "--version"),
            "storescu": output("storescu", "--version"),
            "servers": list(self.servers),
            "dicomcloud_mode": "stack (Kafka, PostgreSQL, Redis, Nginx)" if self.stack else "embedded (dicomcloud up)",
            "dicomcloud_processes": 1 if self.stack else worker_count(0),  # the stack's services: one process each
            "storage": "S3 (SeaweedFS weed server -s3, loopback) against the local filesystem" if self.s3 else "fs",
        }


def _megabytes(sizes: dict[int, int]) -> str:
    return ", ".join(f"pid {pid} {size / 1024**2:.0f} MB" for pid, size in sizes.items())
