"""The storage's own floor: the Storage port alone, with no archive around it. In the full bench, under the STOW-RS
targets (the instances of the requests committed by the storage alone, against Orthanc's whole requests); in the
`--s3` comparison, under each object-storage target.

The same calls the archive's operations make, on the run's SeaweedFS bucket and on a folder of the same disk:
commit one instance with its metadata entry (a C-STORE), commit a STOW-RS request's instances and entries in one
batch, read one frame's byte range, read a series' objects whole (from the bucket `READ_AHEAD` at once, as a series
retrieve does; from files one after the other). When the store alone misses an object-storage target, the archive on
it cannot meet it either: what is left is the store's time, not the archive's.

`import_floor`: under the import target, pydicom's parse and the storage alone doing an import's share of the work.
"""

from __future__ import annotations

import itertools
import multiprocessing
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from bench.report import Measured
from dicomcloud.adapters.fs_storage import FsStorage
from dicomcloud.archive.bulk_import import COPY_BUFFER, chunked
from dicomcloud.archive.keys import KeyLayout, entry_key
from dicomcloud.dicom.parse import parse_instance
from dicomcloud.ports.storage import Storage
from dicomcloud.web.wado import READ_AHEAD

PREFIX = "floor"
TENANT = "default"


class Floor:
    """One instance file's bytes committed, ranged and read on one storage; each method returns its samples."""

    def __init__(self, storage: Storage, instance: Path) -> None:
        self.storage = storage
        self.data = instance.read_bytes()
        with instance.open("rb") as stream:
            parsed = parse_instance(stream, bulkdata_threshold=1024)
        self.entry = parsed.entry.to_bytes()
        frame = parsed.entry.frame_index
        assert frame is not None and len(frame.frames) == 1, "a single-frame instance"
        self.frame = frame.frames[0]
        self.keys: list[str] = []
        self._numbers = itertools.count()

    def _commit(self, keys: list[str]) -> None:
        staged = []
        for _ in keys:
            stream = self.storage.stage()
            stream.write(self.data)
            staged.append(stream)
        self.storage.commit(list(zip(staged, keys, strict=True)), [(entry_key(key), self.entry) for key in keys])

    def commit_one(self, repeats: int) -> Measured:
        return Measured(seconds=[_timed(lambda: self._commit([self._key()])) for _ in range(repeats)])

    def commit_batch(self, instances: int, repeats: int) -> Measured:
        seconds = []
        for _ in range(repeats):
            keys = [self._key() for _ in range(instances)]
            seconds.append(_timed(lambda keys=keys: self._commit(keys)))  # type: ignore[misc]
            self.keys += keys
        return Measured(seconds=seconds, items=instances, size=instances * len(self.data))

    def frame_read(self, repeats: int) -> Measured:
        key = self.keys[0]
        return Measured(
            seconds=[_timed(lambda: self.storage.read_ranges(key, self.frame)) for _ in range(repeats)],
            size=sum(length for _, length in self.frame),
        )

    def series_read(self, repeats: int) -> Measured:
        def read_all() -> None:
            if not self.storage.remote:
                for key in self.keys:
                    self.storage.read(key)
                return
            with ThreadPoolExecutor(READ_AHEAD) as pool:
                for _ in pool.map(self.storage.read, self.keys):
                    pass

        return Measured(seconds=[_timed(read_all) for _ in range(repeats)], size=len(self.keys) * len(self.data))

    def _key(self) -> str:
        return f"{PREFIX}/{next(self._numbers):06}.dcm"


def _timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def import_floor(folder: Path, files: list[Path], processes: int) -> Measured:
    """What every import of `files` must do, and nothing else: read each file, parse it once with pydicom
    (`parse_instance`: its identity to index and its metadata entry) and commit it with its entry, durable, under
    its key in the archive's default layout, in the import's chunks, split over `processes` processes (the cores
    `dicomcloud import` uses). No index, no bus, no duplicate decisions: the floor under the import target, timed
    against Orthanc's whole upload."""
    chunks = chunked(files)
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_import_part, args=(folder, chunks[number::processes]), name=f"import-floor-{number}")
        for number in range(processes)
    ]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    seconds = time.perf_counter() - started
    if any(worker.exitcode != 0 for worker in workers):
        raise RuntimeError(f"an import floor process failed: exit codes {[w.exitcode for w in workers]}")
    return Measured(seconds=[seconds], items=len(files))


def _import_part(folder: Path, chunks: list[list[Path]]) -> None:
    storage = FsStorage(folder / "objects", folder / "staging")
    for chunk in chunks:
        placements: list[tuple[BinaryIO, str]] = []
        entries: list[tuple[str, bytes]] = []
        for path in chunk:
            staged = storage.stage()
            with path.open("rb") as source:
                shutil.copyfileobj(source, staged, COPY_BUFFER)
            staged.flush()
            staged.seek(0)
            parsed = parse_instance(staged, bulkdata_threshold=1024)
            header = parsed.header
            key = KeyLayout.UIDS.original_key(
                TENANT, header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid,
                parsed.attributes.get("StudyDate") or "",
            )
            placements.append((staged, key))
            entries.append((entry_key(key), parsed.entry.to_bytes()))
        storage.commit(placements, entries)
