"""A service as several processes on its ports: every core serves DICOMweb and DIMSE.

The service's own process binds each listening socket once (uvicorn's `bind_socket` for HTTP, dimse/scp.py's
`dimse_socket` for DIMSE), serves on them like any worker, and starts more processes (spawned: fresh
interpreters, no inherited threads or connections) that accept on the same sockets; the kernel hands each
connection to whichever process accepts it first. Process k (the service's own is 1) serves HTTP when
k <= `http.workers` and DIMSE when k <= `dimse.workers` of what the service serves: `dicomcloud up --workers 2`
runs two processes serving both, `dicomcloud storescp` with `dimse.workers` = 2 two serving DIMSE. The background
work of `up` (workers/background.py: the bus workers and the webworker) runs in the service's own process when it
is the only one, and otherwise in one more process that serves no port (the background worker), so building
series documents, transcoding and loading the warehouse take neither a serving process's interpreter lock nor
its memory. A worker that dies is started again; one left by a parent that died (kill -9) dies with it, so the
ports are free for the next start. SIGINT or SIGTERM reaches
each worker, which drains its requests as uvicorn and the SCP (dimse/scp.py) do.

What the processes share lives outside them (archive/core.py): the index and the bus (SQLite in WAL with a
busy timeout, or PostgreSQL and Kafka), the storage, and the shared cache. A memory cache is each process's
own: it keys QIDO-RS results by the index's change marker (archive/qido_cache.py), which moves with every
commit in any process, so no process answers from results older than another's store (over PostgreSQL, which
has no marker, only Redis keeps them). Series documents are checked against the index's version on every request, so the
per-process LRU never serves one older than the index. The per-client connection limit of web/http_guard.py
and the counts of /metrics are the service's (run_folder.py); the SCP keeps no count per peer (dimse/access.py
decides from the settings alone). Each process receives C-STOREs into its own staging file names in the
storage's staging folder, and the index decides duplicates in its transaction, whichever process asks.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event
from types import FrameType
from typing import TYPE_CHECKING, Any

from dicomcloud.config import Settings
from dicomcloud.errors import ServiceUnavailable
from dicomcloud.logs import LogFormat, setup_logging
from dicomcloud.ops import Check
from dicomcloud.process import (
    BACKGROUND_ENVIRONMENT,
    BACKGROUND_NICENESS,
    cores,
    environment_of_children,
    freeze_startup_heap,
    tune_service_process,
)

if TYPE_CHECKING:
    from dicomcloud.archive.core import Archive
    from dicomcloud.dimse.scp import StoreSCP

log = logging.getLogger(__name__)

STOP_TIMEOUT = 90.0  # longer than the SCP's drain (dimse/scp.py DRAIN_TIMEOUT) and its aborts
# A worker that dies is started again, but not more often than this (a worker that cannot start at all
# must not spin).
RESTART_INTERVAL = 1.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
# Staged files older than this at a service's start are what a crash left behind.
STAGING_SWEEP_AGE = 24 * 3600.0
# The background worker's number: not a serving process's (those are 1 to `processes`).
BACKGROUND = 0


def worker_count(workers: int) -> int:
    """A `workers` setting (`http.workers`, `dimse.workers`) as a count: 0 means one per core this process may
    run on."""
    return workers if workers > 0 else cores()


# The ports each service command serves.
SERVED = {"up": ("http", "dimse"), "server": ("http",), "storescp": ("dimse",)}


def process_counts(settings: Settings, command: str) -> dict[str, int]:
    """How many processes serve each port of `command` (the ServiceWorkers arguments)."""
    return {port: worker_count(getattr(settings, port).workers) for port in SERVED[command]}


def worker_name(number: int, processes: int) -> str:
    """How log lines name process `number` of a service (nothing when it runs alone)."""
    if number == BACKGROUND:
        return "background"
    return f"worker-{number}" if processes > 1 else ""


def http_server(archive: Archive) -> Any:
    """The wado-server: uvicorn over the DICOMweb app, with the HTTP limits of web/http_guard.py."""
    import uvicorn

    from dicomcloud.web.app import create_app, warm_up
    from dicomcloud.web.http_guard import guarded_protocol

    settings = archive.settings
    app = create_app(archive)
    warm_up(app)
    config = uvicorn.Config(
        app,
        host=settings.http.host,
        port=settings.http.port,
        log_config=None,
        log_level=settings.log_level.lower(),
        access_log=settings.log_level.upper() == "DEBUG",
        server_header=False,
        proxy_headers=False,  # web/origin.py decides what to believe of a proxy's headers
        http=guarded_protocol(settings.http),
    )
    return uvicorn.Server(config)


def receive_into_staging(archive: Archive) -> None:
    """Datasets pynetdicom receives for C-STORE land in the storage's staging folder (this process's temp
    folder), so storing one is a rename (files) or an upload from where it was written (S3), not a copy; what a
    crash left there a day ago is swept. Each process names its own staged files (tempfile's random names)."""
    from dicomcloud.adapters.fs_storage import FsStorage
    from dicomcloud.adapters.s3_storage import S3Storage

    storage = archive.runtime.storage
    if isinstance(storage, FsStorage | S3Storage):
        tempfile.tempdir = str(storage.staging)
        storage.sweep_staging(older_than_seconds=STAGING_SWEEP_AGE)


@dataclass(frozen=True)
class Listeners:
    """The listening sockets one process serves: the HTTP one, the DIMSE one, or both."""

    http: socket.socket | None = None
    dimse: socket.socket | None = None

    def of_worker(self, number: int, http: int, dimse: int) -> Listeners:
        """What process `number` of a service with `http` HTTP and `dimse` DIMSE processes serves."""
        return Listeners(self.http if number <= http else None, self.dimse if number <= dimse else None)

    def describe(self) -> str:
        return " and ".join(name for name, sock in (("HTTP", self.http), ("DIMSE", self.dimse)) if sock)


@dataclass
class _Worker:
    number: int
    listeners: Listeners
    process: SpawnProcess
    ready: Event


class ServiceWorkers:
    """The extra processes of one service process, numbered from 2 (the service's own is 1): the first
    `http - 1` serve the HTTP socket, the first `dimse - 1` the DIMSE socket; with `background` and several
    serving processes, the background worker besides."""

    def __init__(
        self, settings: Settings, log_format: LogFormat, http: int = 0, dimse: int = 0, background: bool = False
    ) -> None:
        self.settings = settings
        self.log_format = log_format
        self.http = http
        self.dimse = dimse
        self.processes = max(http, dimse, 1)
        self.background = background and self.processes > 1
        self._context = multiprocessing.get_context("spawn")
        self._sockets = Listeners()
        self._workers: dict[int, _Worker] = {}
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    def start(self, http: socket.socket | None = None, dimse: socket.socket | None = None) -> None:
        """Start the workers on the listening sockets the service's own process serves too."""
        if self.processes < 2:
            return
        self._sockets = Listeners(http, dimse)
        with self._lock:
            for number in range(2, self.processes + 1):
                self._workers[number] = self._spawn(number)
            if self.background:
                self._workers[BACKGROUND] = self._spawn(BACKGROUND)
        self._watcher = threading.Thread(target=self._watch, name="service-workers", daemon=True)
        self._watcher.start()

    def ready(self, serving: str = "") -> bool:
        """Whether every worker serves (a restarted one counts once it serves again); with `serving` ("http",
        "dimse"), every worker serving that."""
        with self._lock:
            workers = [
                worker
                for worker in self._workers.values()
                if not serving or getattr(worker.listeners, serving) is not None
            ]
            return all(worker.ready.is_set() and worker.process.is_alive() for worker in workers)

    def wait_ready(self, stop: threading.Event, timeout: float) -> bool:
        """Block until every worker serves, so the service's own process starts serving only then and the first
        clients are spread over all of them; False when stopped or after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if stop.is_set() or time.monotonic() >= deadline:
                return False
            stop.wait(0.05)
        return True

    def checks(self, http: Any = None, scp: StoreSCP | None = None) -> list[Check]:
        """Ready only once the service's own listeners serve (`http`, its uvicorn server: the socket is bound
        before, and refuses connections until uvicorn listens on it; `scp`, its SCP) and, with several
        workers, while every worker serving the same port serves."""
        checks = []
        if http is not None:

            def probe_http() -> None:
                if not http.started:
                    raise ServiceUnavailable("the HTTP listener does not serve yet")
                if not self.ready("http"):
                    raise ServiceUnavailable(f"not every one of the {self.http} HTTP workers serves")

            checks.append(Check("http", probe_http))
        if scp is not None:

            def probe_dimse() -> None:
                if not scp.serving:
                    raise ServiceUnavailable(f"the DIMSE listener on port {scp.port} does not serve")
                if not self.ready("dimse"):
                    raise ServiceUnavailable(f"not every one of the {self.dimse} DIMSE workers serves")

            checks.append(Check("dimse", probe_dimse))
        return checks

    def terminate(self) -> None:
        """SIGTERM to every worker: each drains its requests. Safe in a signal handler (it takes no lock), so
        `stop` signals again the workers started meanwhile."""
        self._stopping.set()
        for worker in list(self._workers.values()):
            self._signal(worker)

    def stop(self) -> None:
        """Terminate, then wait for every worker; one that hangs is killed."""
        self._stopping.set()
        with self._lock:  # the watcher starts none after this
            workers = list(self._workers.values())
        for worker in workers:
            self._signal(worker)
        deadline = time.monotonic() + STOP_TIMEOUT
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                log.warning("%s did not stop within %.0fs: killed", _label(worker.number), STOP_TIMEOUT)
                worker.process.kill()
                worker.process.join()
        if self._watcher is not None:
            self._watcher.join()

    @staticmethod
    def _signal(worker: _Worker) -> None:
        pid = worker.process.pid
        if pid is not None and worker.process.exitcode is None:
            with contextlib.suppress(ProcessLookupError):  # it ended, and the watcher reaped it meanwhile
                os.kill(pid, signal.SIGTERM)

    def _spawn(self, number: int) -> _Worker:
        ready = self._context.Event()
        listeners = Listeners() if number == BACKGROUND else self._sockets.of_worker(number, self.http, self.dimse)
        process = self._context.Process(
            target=serve_worker,
            args=(self.settings, listeners, number, self.processes, self.log_format, ready, os.getpid()),
            name=worker_name(number, self.processes),
        )
        with environment_of_children(BACKGROUND_ENVIRONMENT if number == BACKGROUND else {}):
            process.start()
        log.info("started %s (pid %s) %s", _label(number), process.pid, _work_of(listeners))
        return _Worker(number, listeners, process, ready)

    def _watch(self) -> None:
        while not self._stopping.wait(RESTART_INTERVAL):
            with self._lock:
                for number, worker in list(self._workers.items()):
                    if worker.process.exitcode is not None and not self._stopping.is_set():
                        log.error(
                            "%s (pid %s) exited with %s: starting it again",
                            _label(number), worker.process.pid, worker.process.exitcode,
                        )
                        self._workers[number] = self._spawn(number)
        # A worker dies with the thread that started it (PR_SET_PDEATHSIG follows the thread): this one
        # lives until the workers it started have drained. It waits on their sentinels rather than joining:
        # `stop` joins them, and two threads reaping one child made one of them see it alive after its exit.
        with self._lock:
            pending = [worker.process.sentinel for worker in self._workers.values()]
        while pending:
            ended = multiprocessing.connection.wait(pending)
            pending = [sentinel for sentinel in pending if sentinel not in ended]


def _label(number: int) -> str:
    return "the background worker" if number == BACKGROUND else f"worker {number}"


def _work_of(listeners: Listeners) -> str:
    served = listeners.describe()
    return f"serving {served}" if served else "running the background work"


def _die_with_parent() -> None:
    """A worker outlives no parent: after a kill -9 of the service it would hold the ports."""
    libc = ctypes.CDLL(None, use_errno=True)
    if hasattr(libc, "prctl"):
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def serve_worker(
    settings: Settings,
    listeners: Listeners,
    number: int,
    processes: int,
    log_format: LogFormat,
    ready: Event,
    parent: int,
) -> None:
    """One extra worker: its own archive (connections, LRU) serving the shared sockets, or running the
    background work, until a signal."""
    from dicomcloud.archive.core import Archive
    from dicomcloud.dimse.scp import StoreSCP

    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the line above
        return
    if number == BACKGROUND:
        os.nice(BACKGROUND_NICENESS)  # before any thread starts: each inherits it
    if listeners.http is None:
        # Taken with sigwait (`_serve_dimse`, `_run_background`), so blocked in every thread from here (threads
        # inherit the mask).
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    setup_logging(settings.log_level, log_format, worker=worker_name(number, processes))
    tune_service_process()
    archive = Archive.from_settings(settings)
    scp = StoreSCP(archive) if listeners.dimse is not None else None
    server = http_server(archive) if listeners.http is not None else None
    freeze_startup_heap()
    try:
        if scp is not None:
            receive_into_staging(archive)
        if server is not None:
            _serve_http(server, listeners, scp, ready)
        elif scp is not None:
            _serve_dimse(scp, listeners, ready)
        else:
            _run_background(archive, ready)
    finally:
        if scp is not None:
            scp.stop()
        archive.close()


def _serve_http(server: Any, listeners: Listeners, scp: StoreSCP | None, ready: Event) -> None:
    """uvicorn in this thread until a signal; the SCP beside it stops accepting at the same moment."""
    uvicorn_handle_exit = server.handle_exit

    def handle_exit(signum: int, frame: FrameType | None) -> None:
        if scp is not None:
            scp.stop_accepting()
        uvicorn_handle_exit(signum, frame)

    server.handle_exit = handle_exit

    def announce() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started:
            ready.set()

    if scp is not None:
        scp.start(sock=listeners.dimse)
    threading.Thread(target=announce, name="ready", daemon=True).start()
    server.run(sockets=[listeners.http])


def _serve_dimse(scp: StoreSCP, listeners: Listeners, ready: Event) -> None:
    """The SCP until SIGINT or SIGTERM; the caller's `scp.stop()` drains it.

    The signal is taken by sigwait, not a handler: the service signals its workers more than once while it
    stops, and a handler run again inside itself (setting an Event) deadlocked on the Event's lock."""
    scp.start(sock=listeners.dimse)
    ready.set()
    signal.sigwait(STOP_SIGNALS)


def _run_background(archive: Archive, ready: Event) -> None:
    """The background work until SIGINT or SIGTERM (taken by sigwait, as `_serve_dimse` does); each worker then
    finishes its current batch before the archive closes."""
    from dicomcloud.workers.background import join, start_background_work

    stop = threading.Event()
    threads = start_background_work(archive, stop)
    ready.set()
    signal.sigwait(STOP_SIGNALS)
    stop.set()
    join(threads)
