"""The workload: synthetic DICOM files on disk, generated once per run and sent to both archives.

- `ingest`: one CT study of two 512x512 16-bit series (the first is the "500-instance series"
  every per-series operation reads), stored by storescu and timed until all is queryable.
- `stow`: studies of CT instances, each sent as one STOW-RS request.
- `writing`: one more CT series as big as an ingest series, in a study of its own, whose metadata is
  requested while it is being sent.
- `stow_parallel`: one more STOW-RS body per client of the parallel STOW, each a study of its own.
- `parallel`: one CT study of one series per association, sent by parallel storescu processes.
- `viewer`: a CT series whose frames a viewer's parallel requests fetch right after its ingest and settled.
- `bulk`: what `dicomcloud import` (and Orthanc's REST upload) loads in one go, timed until queryable:
  - `extra`: more CT instances in the ingest study (pixels reused from a few generated slices, UIDs new),
    so that the study reaches the size the memory check streams, plus one multi-frame instance.
  - `index`: many tiny one-instance studies across patients, dates and modalities for QIDO at scale.
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import UID

from bench.synthetic import ct_series, multiframe, new_uid, write_part10

INDEX_MODALITIES = ("CT", "MR", "US", "CR", "DX")
INDEX_PATIENTS = 1000
INDEX_YEAR = 2023
MULTIPART_BOUNDARY = "dicomcloud-bench-boundary"


@dataclass(frozen=True)
class Sizes:
    """How big each part of the workload is."""

    series_instances: int  # each of the two ingest series
    rows: int
    stow_instances: int
    stow_requests: int
    study_bytes: int  # the study streamed for the memory check, at least
    multiframe_frames: int
    multiframe_rows: int
    index_studies: int
    repeats: int  # samples per HTTP operation
    retrieve_repeats: int  # samples per whole-series retrieve
    cold_restarts: int
    stow_clients: int  # parallel STOW-RS clients, one request of `stow_instances` each
    associations: int  # parallel storescu associations
    parallel_instances: int  # sent over them, in all
    viewer_instances: int  # the viewer's series
    viewer_connections: int
    viewer_seconds: float  # each viewer load lasts this long


FULL = Sizes(
    series_instances=500, rows=512, stow_instances=100, stow_requests=3, study_bytes=2 * 1024**3,
    multiframe_frames=100, multiframe_rows=512, index_studies=10_000, repeats=100, retrieve_repeats=5,
    cold_restarts=3, stow_clients=4, associations=4, parallel_instances=800, viewer_instances=100,
    viewer_connections=8, viewer_seconds=10,
)
QUICK = Sizes(
    series_instances=10, rows=64, stow_instances=10, stow_requests=2, study_bytes=4 * 1024**2,
    multiframe_frames=8, multiframe_rows=64, index_studies=50, repeats=5, retrieve_repeats=2,
    cold_restarts=1, stow_clients=2, associations=2, parallel_instances=8, viewer_instances=4,
    viewer_connections=2, viewer_seconds=1,
)


@dataclass
class Workload:
    root: Path
    study_uid: str = ""
    series_uid: str = ""  # the first ingest series
    instance_uid: str = ""  # its middle instance
    multiframe_series_uid: str = ""
    multiframe_uid: str = ""
    multiframe_frame: int = 1
    ingest_count: int = 0
    study_count: int = 0  # every instance of the ingest study once `extra` is loaded
    study_bytes: int = 0
    stow_bodies: list[Path] = field(default_factory=list)
    stow_study_uids: list[str] = field(default_factory=list)
    index_last_study_uid: str = ""
    writing_study_uid: str = ""
    writing_series_uid: str = ""
    writing_count: int = 0
    stow_parallel_bodies: list[Path] = field(default_factory=list)
    stow_parallel_study_uids: list[str] = field(default_factory=list)
    parallel_study_uid: str = ""
    parallel_count: int = 0
    viewer_study_uid: str = ""
    viewer_series_uid: str = ""
    viewer_instance_uids: list[str] = field(default_factory=list)

    @property
    def ingest_dir(self) -> Path:
        return self.root / "ingest"

    @property
    def bulk_dir(self) -> Path:
        return self.root / "bulk"

    @property
    def extra_dir(self) -> Path:
        return self.bulk_dir / "extra"

    @property
    def index_dir(self) -> Path:
        return self.bulk_dir / "index"

    @property
    def parallel_dirs(self) -> list[Path]:
        """One folder per association."""
        return sorted((self.root / "parallel").iterdir())

    @property
    def viewer_dir(self) -> Path:
        return self.root / "viewer"

    @property
    def writing_dir(self) -> Path:
        return self.root / "writing"


def files_under(folder: Path) -> list[Path]:
    """Every file under `folder`, in a stable order: what a bulk load stores."""
    return sorted(path for path in folder.rglob("*") if path.is_file())


def generate(
    root: Path, sizes: Sizes, *, reads: bool = True, parallel: bool = True, viewer: bool = True
) -> Workload:
    """Every part of the workload; without `reads`, not the study's extra instances nor the index studies,
    which only the read operations need; without `parallel` or `viewer`, not their series."""
    work = Workload(root=root)
    for folder in (work.ingest_dir, work.extra_dir, work.index_dir, work.writing_dir, root / "stow", work.viewer_dir):
        folder.mkdir(parents=True, exist_ok=True)
    work.study_uid = new_uid()
    first, second = new_uid(), new_uid()
    work.series_uid = first
    slices: list[Dataset] = []
    for number, series_uid in enumerate((first, second)):
        for index, ds in enumerate(
            ct_series(sizes.series_instances, rows=sizes.rows, columns=sizes.rows, patient_id="BENCH-CT",
                      patient_name="Bench^CT", study_uid=work.study_uid, series_uid=series_uid, seed=number)
        ):
            if series_uid == first and index == sizes.series_instances // 2:
                work.instance_uid = ds.SOPInstanceUID
            if len(slices) < 20:
                slices.append(ds)
            work.study_bytes += _write(ds, work.ingest_dir / f"{number}-{index:05}.dcm")
    work.ingest_count = 2 * sizes.series_instances

    work.writing_study_uid, work.writing_series_uid = new_uid(), new_uid()
    _series(work.writing_dir, sizes, "WRITING", work.writing_study_uid, work.writing_series_uid, seed=2)
    work.writing_count = sizes.series_instances

    for request in range(sizes.stow_requests + sizes.stow_clients):
        study_uid = new_uid()
        series = ct_series(sizes.stow_instances, rows=sizes.rows, columns=sizes.rows, patient_id="BENCH-STOW",
                           patient_name="Bench^STOW", study_uid=study_uid, seed=10 + request)
        body = root / "stow" / f"{request}.multipart"
        body.write_bytes(_multipart([_part10(ds) for ds in series]))
        bodies, uids = (
            (work.stow_bodies, work.stow_study_uids) if request < sizes.stow_requests
            else (work.stow_parallel_bodies, work.stow_parallel_study_uids)
        )  # fmt: skip
        bodies.append(body)
        uids.append(study_uid)

    if parallel:
        work.parallel_study_uid = new_uid()
        for association in range(sizes.associations):
            folder = root / "parallel" / f"{association}"
            count = sizes.parallel_instances // sizes.associations
            _series(folder, sizes, "PARALLEL", work.parallel_study_uid, new_uid(), seed=20 + association, count=count)
            work.parallel_count += count

    if viewer:
        work.viewer_study_uid, work.viewer_series_uid = new_uid(), new_uid()
        work.viewer_instance_uids = _series(work.viewer_dir, sizes, "VIEWER", work.viewer_study_uid,
                                            work.viewer_series_uid, seed=30, count=sizes.viewer_instances)

    if not reads:
        return work

    mf = multiframe(sizes.multiframe_frames, rows=sizes.multiframe_rows, columns=sizes.multiframe_rows,
                    patient_id="BENCH-CT", patient_name="Bench^CT", study_uid=work.study_uid)
    work.multiframe_series_uid, work.multiframe_uid = mf.SeriesInstanceUID, mf.SOPInstanceUID
    work.multiframe_frame = (sizes.multiframe_frames + 1) // 2
    work.study_bytes += _write(mf, work.extra_dir / "multiframe.dcm")
    extra, filler_series = 1, new_uid()
    while work.study_bytes < sizes.study_bytes:
        ds = copy.deepcopy(slices[extra % len(slices)])
        ds.SeriesInstanceUID = filler_series
        ds.SeriesNumber = 3
        instance_uid = UID(new_uid())
        ds.SOPInstanceUID = instance_uid
        ds.file_meta.MediaStorageSOPInstanceUID = instance_uid
        ds.InstanceNumber = extra
        work.study_bytes += _write(ds, work.extra_dir / f"filler-{extra:05}.dcm")
        extra += 1
    work.study_count = work.ingest_count + extra

    work.index_last_study_uid = write_index_studies(work.index_dir, sizes.index_studies)
    return work


def write_index_studies(folder: Path, count: int) -> str:
    """`count` tiny one-instance studies across patients, dates and modalities (QIDO at scale); the last one's UID."""
    last_uid = ""
    for number in range(count):
        (ds,) = ct_series(1, rows=8, columns=8, patient_id=f"P{number % INDEX_PATIENTS:04}",
                          patient_name=f"Index^{number % INDEX_PATIENTS:04}", seed=number % 7)
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = index_date(number)
        ds.Modality = INDEX_MODALITIES[number % len(INDEX_MODALITIES)]
        _write(ds, folder / f"{number // 1000:03}" / f"{number:06}.dcm")
        last_uid = str(ds.StudyInstanceUID)
    return last_uid


def index_date(number: int) -> str:
    """Study dates spread over one year, day by day."""
    day = number % 365
    month_lengths = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
    month = 0
    while day >= month_lengths[month]:
        day -= month_lengths[month]
        month += 1
    return f"{INDEX_YEAR}{month + 1:02}{day + 1:02}"


def _series(
    folder: Path, sizes: Sizes, patient: str, study_uid: str, series_uid: str, *, seed: int, count: int = 0
) -> list[str]:
    """A CT series of `count` instances (an ingest series' size by default) written into `folder`; its UIDs."""
    uids = []
    for index, ds in enumerate(
        ct_series(count or sizes.series_instances, rows=sizes.rows, columns=sizes.rows, patient_id=f"BENCH-{patient}",
                  patient_name=f"Bench^{patient.title()}", study_uid=study_uid, series_uid=series_uid, seed=seed)
    ):
        _write(ds, folder / f"{index:05}.dcm")
        uids.append(str(ds.SOPInstanceUID))
    return uids


def _write(ds: Dataset, path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_part10(ds, path)
    return path.stat().st_size


def _part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _multipart(parts: list[bytes]) -> bytes:
    chunks = []
    for part in parts:
        chunks.append(f"--{MULTIPART_BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        chunks.append(part)
        chunks.append(b"\r\n")
    chunks.append(f"--{MULTIPART_BOUNDARY}--\r\n".encode())
    return b"".join(chunks)


STOW_CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={MULTIPART_BOUNDARY}'
