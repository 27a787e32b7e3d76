"""Import files and folders (`dicomcloud import PATH…`): many at a time, each acknowledged as a C-STORE is.

The files are read and parsed by `jobs` worker processes (`Store.prepare`: copied into the data folder's
scratch, parsed once), a chunk at a time, and this process stores the chunks in the order the files were
named (`Store.store_prepared`: one storage commit, one index transaction and one publish for a whole chunk),
so any number of jobs builds the same archive, duplicates included. A file counts as imported only once its
chunk is durable, indexed and announced; a file the store refuses (not DICOM, truncated, a duplicate that
`storage.duplicate_policy` rejects) fails alone and is named with its reason. A stop (SIGINT, SIGTERM) lets
the chunk being stored finish: what was stored stays, what was parsed but not stored is discarded and not
counted.
"""

from __future__ import annotations

import logging
import multiprocessing
import shutil
import signal
import threading
from collections import deque
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import closing, suppress
from dataclasses import dataclass, field
from pathlib import Path

from dicomcloud.archive.core import Archive
from dicomcloud.archive.store import Prepared, Refused
from dicomcloud.config import Settings
from dicomcloud.errors import InvalidInput

log = logging.getLogger(__name__)

# A chunk is stored in one commit: large enough that the fsyncs and the index transaction are shared by many
# files, small enough that a chunk of large files does not fill the scratch folder.
CHUNK_FILES = 64
CHUNK_BYTES = 64 * 1024 * 1024
# Chunks each job parses ahead of the one being stored, so the jobs never wait for a commit.
AHEAD = 2
COPY_BUFFER = 1024 * 1024

Parsed = list[Prepared | Refused]


@dataclass
class ImportTally:
    """Where a file import stands."""

    files: int
    stored: int = 0
    failed: int = 0

    @property
    def done(self) -> int:
        return self.stored + self.failed


@dataclass
class ImportOutcome:
    tally: ImportTally
    failures: list[tuple[Path, str]] = field(default_factory=list)
    interrupted: bool = False

    @property
    def complete(self) -> bool:
        return not self.interrupted and not self.failures


class FileImport:
    def __init__(
        self,
        archive: Archive,
        tenant: str,
        jobs: int,
        report: Callable[[ImportTally], None],
        stop: threading.Event,
    ) -> None:
        self.archive = archive
        self.tenant = tenant
        self.jobs = max(1, jobs)
        self.report = report
        self.stop = stop

    def run(self, files: Sequence[Path]) -> ImportOutcome:
        outcome = ImportOutcome(ImportTally(len(files)))
        with closing(self._parsed(chunked(files))) as parsed:
            for paths, prepared in parsed:
                if self.stop.is_set():
                    self._discard(prepared)
                    outcome.interrupted = True
                    break
                stored = self.archive.store.store_prepared(self.tenant, prepared)
                for path, result in zip(paths, stored, strict=True):
                    if isinstance(result, Refused):
                        outcome.tally.failed += 1
                        outcome.failures.append((path, result.error.message))
                        log.warning("not imported: %s: %s", path, result.error.message)
                    else:
                        outcome.tally.stored += 1
                self.report(outcome.tally)
        return outcome

    def _parsed(self, chunks: list[list[Path]]) -> Generator[tuple[list[Path], Parsed], None, None]:
        """Each chunk with its files parsed, in order: here with one job (or one chunk), else in worker processes."""
        jobs = min(self.jobs, len(chunks))
        if jobs <= 1:
            for paths in chunks:
                yield paths, prepare_files(self.archive, self.tenant, paths)
            return
        # Spawned, not forked: a child of this process would share its open index, bus and threads.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, context, _start_worker, (self.archive.settings,)) as pool:
            pending: deque[tuple[list[Path], Future[Parsed]]] = deque()
            try:
                for paths in chunks:
                    pending.append((paths, pool.submit(_prepare_in_worker, self.tenant, paths)))
                    if len(pending) > jobs * AHEAD:
                        ahead, future = pending.popleft()
                        yield ahead, future.result()
                while pending:
                    ahead, future = pending.popleft()
                    yield ahead, future.result()
            finally:
                # Stopped early: chunks not started are dropped, the ones under way finish and are discarded.
                for _, future in pending:
                    future.cancel()
                for _, future in pending:
                    if not future.cancelled() and future.exception() is None:
                        self._discard(future.result())

    def _discard(self, prepared: Parsed) -> None:
        storage = self.archive.runtime.storage
        for item in prepared:
            if isinstance(item, Prepared):
                with suppress(OSError):
                    storage.discard(open(item.staged_name, "rb"))  # noqa: SIM115 (discard closes it)


def chunked(files: Sequence[Path]) -> list[list[Path]]:
    """The files in order, in chunks of at most CHUNK_FILES files and, unless one file is larger, CHUNK_BYTES."""
    chunks: list[list[Path]] = []
    chunk: list[Path] = []
    size = 0
    for path in files:
        try:
            file_size = path.stat().st_size
        except OSError:  # it fails alone when it is read
            file_size = 0
        if chunk and (len(chunk) == CHUNK_FILES or size + file_size > CHUNK_BYTES):
            chunks.append(chunk)
            chunk, size = [], 0
        chunk.append(path)
        size += file_size
    if chunk:
        chunks.append(chunk)
    return chunks


def prepare_files(archive: Archive, tenant: str, paths: Sequence[Path]) -> Parsed:
    """Each file staged and parsed (`Store.prepare`), or why it cannot be."""
    storage = archive.runtime.storage
    prepared: Parsed = []
    for path in paths:
        staged = storage.stage()
        try:
            with path.open("rb") as source:
                shutil.copyfileobj(source, staged, COPY_BUFFER)
        except OSError as exc:
            storage.discard(staged)
            prepared.append(Refused(InvalidInput(f"cannot read it: {exc.strerror or exc}")))
            continue
        prepared.append(archive.store.prepare(staged, tenant_id=tenant, source="import"))
    return prepared


# A worker process's own archive: it only stages and parses; the importing process stores.
_worker_archive: Archive | None = None


def _start_worker(settings: Settings) -> None:
    global _worker_archive
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the importing process decides
    _worker_archive = Archive.from_settings(settings)


def _prepare_in_worker(tenant: str, paths: list[Path]) -> Parsed:
    assert _worker_archive is not None, "the worker was started without its archive"
    return prepare_files(_worker_archive, tenant, paths)

