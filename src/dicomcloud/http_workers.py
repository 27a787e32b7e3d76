"""The wado-server as several processes on one port: every core serves DICOMweb.

The service's own process binds the listening socket once (uvicorn's `bind_socket`), serves on it like any
worker, and starts `http.workers - 1` more processes (spawned: fresh interpreters, no inherited threads or
connections) that accept on the same socket; the kernel hands each connection to whichever process accepts it first. A
worker that dies is started again; one left by a parent that died (kill -9) dies with it, so the port is
free for the next start. SIGINT or SIGTERM reaches each worker, which drains its requests as uvicorn does.

What the processes share lives outside them (archive/core.py): the index and the bus (SQLite in WAL with a
busy timeout, or PostgreSQL and Kafka), the storage, and the shared cache. An in-process (memory) cache is
not shared, so with several workers QIDO-RS results are not cached at all: another worker's store could
not invalidate them. Series documents are checked against the index's version on every request, so the
per-process LRU never serves one older than the index. The per-client connection limit of
web/http_guard.py and the counts of /metrics are the service's, kept in its run folder (run_folder.py).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event
from typing import TYPE_CHECKING, Any

from dicomcloud.config import Settings
from dicomcloud.errors import ServiceUnavailable
from dicomcloud.logs import LogFormat, setup_logging
from dicomcloud.ops import Check
from dicomcloud.process import cores, tune_service_process

if TYPE_CHECKING:
    from dicomcloud.archive.core import Archive

log = logging.getLogger(__name__)

STOP_TIMEOUT = 30.0
# A worker that dies is started again, but not more often than this (a worker that cannot start at all
# must not spin).
RESTART_INTERVAL = 1.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def worker_count(settings: Settings) -> int:
    """`http.workers`, where 0 means one per core this process may run on."""
    wanted = settings.http.workers
    if wanted > 0:
        return wanted
    return cores()


def share_safely(settings: Settings) -> None:
    """What several workers must run with: QIDO-RS caching only in a cache they all see (a store answered
    by one worker must drop the results the others keep). Call before the archive is built."""
    if worker_count(settings) > 1 and settings.backends.cache == "memory":
        settings.backends.qido_cache_ttl = 0


def http_server(archive: Archive) -> Any:
    """The wado-server: uvicorn over the DICOMweb app, with the HTTP limits of web/http_guard.py."""
    import uvicorn

    from dicomcloud.web.app import create_app
    from dicomcloud.web.http_guard import guarded_protocol

    settings = archive.settings
    config = uvicorn.Config(
        create_app(archive),
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


@dataclass
class _Worker:
    number: int
    process: SpawnProcess
    ready: Event


class HttpWorkers:
    """The extra HTTP worker processes of one service process, numbered from 2 (the service's own is 1)."""

    def __init__(self, settings: Settings, log_format: LogFormat, count: int) -> None:
        self.settings = settings
        self.log_format = log_format
        self.count = count
        self._context = multiprocessing.get_context("spawn")
        self._sock: socket.socket | None = None
        self._workers: dict[int, _Worker] = {}
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    def start(self, sock: socket.socket) -> None:
        """Start the workers on `sock`, the listening socket the service's own uvicorn serves too."""
        if self.count < 2:
            return
        self._sock = sock
        with self._lock:
            for number in range(2, self.count + 1):
                self._workers[number] = self._spawn(number)
        self._watcher = threading.Thread(target=self._watch, name="http-workers", daemon=True)
        self._watcher.start()

    def ready(self) -> bool:
        """Whether every worker serves (a restarted one counts once it serves again)."""
        with self._lock:
            return all(worker.ready.is_set() and worker.process.is_alive() for worker in self._workers.values())

    def wait_ready(self, stop: threading.Event, timeout: float) -> bool:
        """Block until every worker serves, so the service's own worker starts serving only then and the first
        clients are spread over all of them; False when stopped or after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if stop.is_set() or time.monotonic() >= deadline:
                return False
            stop.wait(0.05)
        return True

    def checks(self, server: Any) -> list[Check]:
        """Ready only once the service's own uvicorn (`server`) listens and, with several workers, while every
        one serves: the socket is bound before, and refuses connections until uvicorn listens on it."""

        def probe() -> None:
            if not server.started:
                raise ServiceUnavailable("the HTTP listener does not serve yet")
            if not self.ready():
                raise ServiceUnavailable(f"not every one of the {self.count} HTTP workers serves")

        return [Check("http", probe)]

    def terminate(self) -> None:
        """SIGTERM to every worker: each drains its requests as uvicorn does. Safe in a signal handler (it takes
        no lock), so `stop` signals again the workers started meanwhile."""
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
                log.warning("HTTP worker %d did not stop within %.0fs: killed", worker.number, STOP_TIMEOUT)
                worker.process.kill()
                worker.process.join()
        if self._watcher is not None:
            self._watcher.join()

    @staticmethod
    def _signal(worker: _Worker) -> None:
        pid = worker.process.pid
        if pid is not None and worker.process.exitcode is None:
            os.kill(pid, signal.SIGTERM)

    def _spawn(self, number: int) -> _Worker:
        ready = self._context.Event()
        process = self._context.Process(
            target=serve_worker,
            args=(self.settings, self._sock, number, self.log_format, ready, os.getpid()),
            name=f"http-{number}",
        )
        process.start()
        log.info("started HTTP worker %d (pid %s)", number, process.pid)
        return _Worker(number, process, ready)

    def _watch(self) -> None:
        while not self._stopping.wait(RESTART_INTERVAL):
            with self._lock:
                for number, worker in list(self._workers.items()):
                    if worker.process.exitcode is not None and not self._stopping.is_set():
                        log.error(
                            "HTTP worker %d (pid %s) exited with %s: starting it again",
                            number, worker.process.pid, worker.process.exitcode,
                        )
                        self._workers[number] = self._spawn(number)
        # A worker dies with the thread that started it (PR_SET_PDEATHSIG follows the thread): this one
        # lives until the workers it started have drained.
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.process.join()


def _die_with_parent() -> None:
    """A worker outlives no parent: after a kill -9 of the service it would hold the port."""
    libc = ctypes.CDLL(None, use_errno=True)
    if hasattr(libc, "prctl"):
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def serve_worker(
    settings: Settings, sock: socket.socket, number: int, log_format: LogFormat, ready: Event, parent: int
) -> None:
    """One extra worker: its own archive (connections, LRU) serving the shared socket until a signal."""
    from dicomcloud.archive.core import Archive

    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the line above
        return
    setup_logging(settings.log_level, log_format, worker=f"http-{number}")
    tune_service_process()
    archive = Archive.from_settings(settings)
    server = http_server(archive)

    def announce() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started:
            ready.set()

    threading.Thread(target=announce, name="ready", daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        archive.close()
