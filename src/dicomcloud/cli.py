"""The `dicomcloud` command and the seed's console scripts: thin shells that wire services and signals.

Every service process builds one Archive (archive/core.py: one set of adapters, one cache) and hands
it to what it runs. `dicomcloud up` runs every service on one Archive: the SCP's threads, uvicorn
in the main thread, and the bus workers' and webworker's threads (workers/background.py); with `--workers N`,
N-1 more processes serve the HTTP and DIMSE ports beside it and the background work has a process of its
own (service_workers.py). SIGINT or SIGTERM stops both listeners at once; uvicorn answers the requests it
has, the SCP the requests it has (and refuses new ones on open associations, dimse/scp.py), then the workers
finish their current batch, and only then are the bus and the index closed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, BinaryIO

from dicomcloud.config import TOKEN_VARIABLE, Settings, load_settings
from dicomcloud.errors import DicomCloudError, InvalidInput
from dicomcloud.logs import LogFormat, setup_logging
from dicomcloud.ops import ops_listener, runtime_checks
from dicomcloud.process import cores, freeze_startup_heap, tune_service_process
from dicomcloud.run_folder import share_between_processes
from dicomcloud.service_workers import SERVED, ServiceWorkers, process_counts, receive_into_staging, worker_name

if TYPE_CHECKING:
    from dicomcloud.archive.core import Archive
    from dicomcloud.archive.migrate import Tally
    from dicomcloud.ports.storage import Storage

log = logging.getLogger("dicomcloud")

SERVICES = ("up", "server", "storescp", "consumer", "webworker", "loader", "transcoder")
READY_TIMEOUT = 60.0
# `--workers` sets the `workers` of each port its command serves (service_workers.SERVED).
WORKERS_HELP = {
    "up": "processes sharing the ports, each serving HTTP and DIMSE; 0 (the default): one per core (settings:"
    " http.workers and dimse.workers, which may differ)",
    "server": "HTTP processes sharing the port; 0 (the default): one per core (settings: http.workers)",
    "storescp": "DIMSE processes sharing the port; 0 (the default): one per core (settings: dimse.workers)",
}
# Objects `storage migrate` uploads at once (one commit).
MIGRATE_BATCH = 32


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicomcloud", description="A DICOMweb and DIMSE archive.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    helps = {
        "up": "run every service in one process",
        "server": "the DICOMweb HTTP API (wado-server)",
        "storescp": "the DIMSE SCP: C-ECHO, C-STORE, C-FIND, C-GET, C-MOVE (wado-storescp)",
        "consumer": "turn storage events into warehouse rows and transcode requests (wado-consumer)",
        "webworker": "write series metadata documents (wado-webworker)",
        "loader": "load metadata and logs from the bus into the warehouse",
        "transcoder": "derive copies of instances the viewer cannot decode",
        "import": "store DICOM files or folders, or a whole other archive (DICOMweb or DIMSE), as C-STORE would",
        "init": "create the data folders, the index schema and, on Kafka, the bus topics",
        "stats": "print the warehouse's statistics as tables",
        "certs": "create a CA (or reuse the folder's) and server and client certificates for DICOM TLS and HTTPS",
        "stack": "start or stop the local distributed stack: PostgreSQL, Redis, Kafka, Nginx and every service",
        "storage": "copy the data folder's objects into the S3 bucket of the settings, resumable and verified",
    }
    for name, text in helps.items():
        sub = commands.add_parser(name, help=text, description=text)
        _add_common(sub)
        if name in ("up", "server", "storescp"):
            sub.add_argument("--host", help="address to listen on (HTTP and DIMSE)")
        if name in ("up", "server"):
            sub.add_argument("--http-port", type=int, help="DICOMweb port")
        if name in SERVED:
            sub.add_argument("--workers", type=int, metavar="N", help=WORKERS_HELP[name])
        if name in ("up", "storescp"):
            sub.add_argument("--dimse-port", type=int, help="DIMSE port")
            sub.add_argument("--ae-title", help="the SCP's AE title")
        if name == "import":
            sub.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="files or folders")
            sub.add_argument("--tenant", help="tenant to store into (default: the settings' tenant)")
            source = sub.add_mutually_exclusive_group()
            source.add_argument(
                "--from-dicomweb", metavar="URL", help="pull every study of this DICOMweb server (QIDO-RS, WADO-RS)"
            )
            source.add_argument(
                "--from-dimse", metavar="AE@HOST:PORT", help="pull every study of this PACS (C-FIND, C-GET)"
            )
            sub.add_argument(
                "--token-file", type=Path, metavar="PATH",
                help="with --from-dicomweb: the bearer token the peer wants, read from PATH (or from the"
                f" {TOKEN_VARIABLE} variable); never logged",
            )
            sub.add_argument(
                "--basic-auth-file", type=Path, metavar="PATH",
                help="with --from-dicomweb: USER:PASSWORD for the peer's HTTP basic authentication, read from PATH",
            )
            sub.add_argument(
                "--move-port", type=int, metavar="PORT",
                help="with --from-dimse: retrieve by C-MOVE to a storage SCP this command runs on PORT (at the"
                " settings' DIMSE host, as their AE title, which the PACS must know) instead of C-GET",
            )
            sub.add_argument(
                "--concurrency", type=int, default=4, help="instances fetched at once from a peer (default: 4)"
            )
            sub.add_argument(
                "--jobs", type=int, metavar="N",
                help="processes reading and parsing PATHs while this one stores them (default: one per core)",
            )
        if name == "stats":
            from dicomcloud.archive.stats import RANGES
            from dicomcloud.ports.warehouse import STATISTICS

            sub.add_argument("name", nargs="?", choices=STATISTICS, help="one statistic (default: the summary)")
            sub.add_argument("--limit", type=int, default=20, help="rows per statistic (default: 20)")
            sub.add_argument(
                "--range", dest="range_name", choices=tuple(RANGES), default="all",
                help="the period the logs' statistics count (default: all)",
            )
            sub.add_argument("--url", help="ask a running archive at this base URL instead of opening the warehouse")
        if name == "storage":
            sub.add_argument("action", choices=("migrate",), help="migrate: copy every object, then verify each")
            sub.add_argument("--to", choices=("s3",), required=True, help="where to: the bucket of storage.s3")
        if name == "stack":
            sub.add_argument("action", choices=("up", "down"), help="start (returns once all is ready) or stop")
            sub.add_argument("--dir", type=Path, default=Path(".stack"), help="the stack's folder (default: .stack)")
            sub.add_argument("--brokers", type=int, default=3, help="Kafka brokers (default: 3)")
            sub.add_argument("--consumers", type=int, default=2, help="wado-consumers in one group (default: 2)")
            sub.add_argument("--servers", type=int, default=2, help="wado-servers behind Nginx (default: 2)")
            sub.add_argument(
                "--workers", dest="server_workers", type=int, default=1,
                help="HTTP processes of each wado-server; 0: one per core (default: 1)",
            )
            sub.add_argument(
                "--storescp-workers", type=int, default=1,
                help="DIMSE processes of the wado-storescp; 0: one per core (default: 1)",
            )
            sub.add_argument(
                "--storage",
                choices=("fs", "s3"),
                default="fs",
                help="fs: one shared data folder (default); s3: SeaweedFS, each service with a private scratch folder",
            )
        if name == "certs":
            from dicomcloud.certs import LEAF_DAYS

            sub.add_argument("--out", type=Path, default=Path("certs"), help="folder to write to (default: ./certs)")
            sub.add_argument(
                "--host", dest="hosts", action="append", default=[], help="server DNS name or IP (repeat; first is CN)"
            )
            sub.add_argument("--client", dest="clients", action="append", default=[], help="client certificate name")
            sub.add_argument("--days", type=int, default=LEAF_DAYS, help=f"validity in days (default: {LEAF_DAYS})")
    return parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="data folder (settings: storage.data_dir)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR")
    parser.add_argument(
        "--log-format",
        choices=("plain", "json"),
        default=os.environ.get("DICOMCLOUD_LOG_FORMAT", "plain"),
        help="plain lines, or one JSON object per line (env: DICOMCLOUD_LOG_FORMAT)",
    )


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """Command-line options as a settings overlay: they win over files and the environment."""
    overrides: dict[str, dict[str, Any]] = {"http": {}, "dimse": {}, "storage": {}}
    options: dict[str, tuple[str, ...]] = {
        "data": ("storage", "data_dir"),
        "http_port": ("http", "port"),
        "dimse_port": ("dimse", "port"),
        "ae_title": ("dimse", "ae_title"),
    }
    for option, (section, name) in options.items():
        value = getattr(args, option, None)
        if value is not None:
            overrides[section][name] = value
    workers = getattr(args, "workers", None)
    if workers is not None:
        for section in SERVED[args.command]:
            overrides[section]["workers"] = workers
    host = getattr(args, "host", None)
    if host is not None:
        overrides["http"]["host"] = host
        overrides["dimse"]["host"] = host
    flat: dict[str, Any] = {section: values for section, values in overrides.items() if values}
    if args.log_level:
        flat["log_level"] = args.log_level
    return flat


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    settings = load_settings(overrides=overrides_from(args))
    setup_logging(settings.log_level, args.log_format)
    commands: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
        "up": lambda s, a: run_up(s, a.log_format),
        "server": lambda s, a: run_server(s, a.log_format),
        "storescp": lambda s, a: run_storescp(s, a.log_format),
        "consumer": lambda s, a: run_background_worker(s, "consumer"),
        "webworker": lambda s, a: run_background_worker(s, "webworker"),
        "loader": lambda s, a: run_background_worker(s, "loader"),
        "transcoder": lambda s, a: run_background_worker(s, "transcoder"),
        "import": run_import,
        "init": lambda s, a: run_init(s),
        "stats": run_stats,
        "certs": run_certs,
        "stack": run_stack,
        "storage": run_storage_migrate,
    }
    if args.command in SERVICES:
        log.info("settings: %s", json.dumps(settings.redacted(), sort_keys=True))
        tune_service_process()
    if args.command in SERVED:
        # Before the command makes its first metric value.
        share_between_processes(max(process_counts(settings, args.command).values()))
    try:
        code = commands[args.command](settings, args)
    except DicomCloudError as exc:
        log.error("%s: %s", args.command, exc.message)
        code = 1
    except OSError as exc:
        log.error("%s: %s", args.command, exc)
        code = 1
    sys.exit(code)


def run_certs(settings: Settings, args: argparse.Namespace) -> int:
    from dicomcloud.certs import write_pki

    for path in write_pki(args.out, hosts=args.hosts, clients=args.clients, days=args.days):
        print(path)
    return 0


def _script(command: str) -> Callable[[], None]:
    def run() -> None:
        main([command, *sys.argv[1:]])

    run.__name__ = f"wado_{command}"
    run.__doc__ = f"The `wado-{command}` console script: `dicomcloud {command}`."
    return run


wado_server = _script("server")
wado_storescp = _script("storescp")
wado_consumer = _script("consumer")
wado_webworker = _script("webworker")


def stop_on_signals(stop: threading.Event, also: Callable[[], None] | None = None) -> None:
    """SIGINT/SIGTERM set `stop` (and call `also`); a second one is handled the same way, idempotently."""

    def handle(signum: int, frame: FrameType | None) -> None:
        if not stop.is_set():
            log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()
        if also is not None:
            also()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handle)


def accepts_connections(host: str, port: int) -> bool:
    """True when something accepts a TCP connection at host:port (a wildcard host means loopback)."""
    target = "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host
    try:
        with socket.create_connection((target, port), timeout=1.0):
            return True
    except OSError:
        return False


def wait_listening(endpoints: Sequence[tuple[str, int]], stop: threading.Event, started: Callable[[], bool]) -> bool:
    """Block until `started()` and every endpoint accepts connections; False if stopped or timed out."""
    deadline = time.monotonic() + READY_TIMEOUT
    while not stop.is_set() and time.monotonic() < deadline:
        if started() and all(accepts_connections(host, port) for host, port in endpoints):
            return True
        stop.wait(0.05)
    return False


def _service(settings: Settings, log_format: LogFormat, command: str) -> tuple[ServiceWorkers, Archive]:
    """The worker processes of a service command and the archive of its own process, which receives C-STOREs
    into the storage's staging folder when the command serves DIMSE; log lines name the process when there
    are several."""
    from dicomcloud.archive.core import Archive

    workers = ServiceWorkers(settings, log_format, **process_counts(settings, command), background=command == "up")
    if workers.processes > 1:
        setup_logging(settings.log_level, log_format, worker=worker_name(1, workers.processes))
    archive = Archive.from_settings(settings)
    if "dimse" in SERVED[command]:
        receive_into_staging(archive)
    return workers, archive


def run_up(settings: Settings, log_format: LogFormat) -> int:
    from dicomcloud.dimse.scp import StoreSCP, dimse_socket
    from dicomcloud.service_workers import http_server
    from dicomcloud.workers.background import join, start_background_work, start_thread

    workers, archive = _service(settings, log_format, "up")
    stop = threading.Event()
    scp = StoreSCP(archive)
    server = http_server(archive)
    freeze_startup_heap()

    def stop_accepting() -> None:
        server.should_exit = True
        scp.stop_accepting()
        workers.terminate()

    uvicorn_handle_exit = server.handle_exit

    def handle_exit(signum: int, frame: FrameType | None) -> None:
        """uvicorn's signal handler while it serves (it drains its requests, then passes the signal on to
        ours): the SCP and the other workers stop accepting at the same moment."""
        scp.stop_accepting()
        workers.terminate()
        uvicorn_handle_exit(signum, frame)

    server.handle_exit = handle_exit
    stop_on_signals(stop, stop_accepting)
    threads: list[threading.Thread] = []
    try:
        sock = server.config.bind_socket()
        dimse_listener = dimse_socket(settings.dimse)
        workers.start(http=sock, dimse=dimse_listener)
        checks = [*runtime_checks(archive.runtime), *workers.checks(http=server, scp=scp)]
        with ops_listener(settings.ops, checks):
            scp.start(dimse_listener)
            if not workers.background:
                threads += start_background_work(archive, stop)
            http, dimse = settings.http, settings.dimse

            def announce(_: threading.Event) -> None:
                endpoints = [(http.host, http.port), (dimse.host, scp.port)]
                if wait_listening(endpoints, stop, lambda: bool(server.started) and workers.ready()):
                    line = (
                        f"DICOMweb at http://{http.host}:{http.port}{http.root_path}, "
                        f"DIMSE {dimse.ae_title}@{dimse.host}:{scp.port}, "
                        f"home page and viewer at http://{http.host}:{http.port}/"
                        + (
                            f" ({workers.http} HTTP and {workers.dimse} DIMSE worker processes)"
                            if workers.processes > 1
                            else ""
                        )
                    )
                    log.info("%s", line)
                    print(line, flush=True)
                elif not stop.is_set():
                    log.error("the listeners did not come up within %.0fs", READY_TIMEOUT)

            start_thread("ready", announce, stop)
            if not workers.wait_ready(stop, READY_TIMEOUT) and not stop.is_set():
                log.error("not every worker process came up within %.0fs", READY_TIMEOUT)
            server.run(sockets=[sock])
            return 0 if stop.is_set() or server.started else 1
    finally:
        stop.set()
        scp.stop()
        workers.stop()
        join(threads)
        archive.close()
        log.info("stopped")


def run_server(settings: Settings, log_format: LogFormat) -> int:
    from dicomcloud.service_workers import http_server

    workers, archive = _service(settings, log_format, "server")
    server = http_server(archive)
    freeze_startup_heap()
    uvicorn_handle_exit = server.handle_exit

    def handle_exit(signum: int, frame: FrameType | None) -> None:
        workers.terminate()
        uvicorn_handle_exit(signum, frame)

    server.handle_exit = handle_exit
    try:
        sock = server.config.bind_socket()
        workers.start(http=sock)
        with ops_listener(settings.ops, [*runtime_checks(archive.runtime), *workers.checks(http=server)]):
            if not workers.wait_ready(threading.Event(), READY_TIMEOUT):
                log.error("not every HTTP worker came up within %.0fs", READY_TIMEOUT)
            server.run(sockets=[sock])
    finally:
        workers.stop()
        archive.close()
    return 0 if server.started else 1


def run_storescp(settings: Settings, log_format: LogFormat) -> int:
    from dicomcloud.dimse.scp import StoreSCP, dimse_socket

    workers, archive = _service(settings, log_format, "storescp")
    scp = StoreSCP(archive)
    freeze_startup_heap()
    stop = threading.Event()
    stop_on_signals(stop)
    try:
        sock = dimse_socket(settings.dimse)
        workers.start(dimse=sock)
        with ops_listener(settings.ops, [*runtime_checks(archive.runtime), *workers.checks(scp=scp)]):
            if not workers.wait_ready(stop, READY_TIMEOUT) and not stop.is_set():
                log.error("not every DIMSE worker came up within %.0fs", READY_TIMEOUT)
            if not stop.is_set():
                scp.start(sock)
            stop.wait()
            scp.stop_accepting()
            workers.terminate()
    finally:
        scp.stop()
        workers.stop()
        archive.close()
    return 0


def run_background_worker(settings: Settings, name: str) -> int:
    """One of `up`'s background workers (workers/background.py) as a service of its own, as the stack runs it."""
    from dicomcloud.archive.core import Archive
    from dicomcloud.workers.background import background_work

    archive = Archive.from_settings(settings)
    run = background_work(archive)[name]
    freeze_startup_heap()
    stop = threading.Event()
    stop_on_signals(stop)
    try:
        with ops_listener(settings.ops, runtime_checks(archive.runtime)):
            run(stop)
    finally:
        archive.close()
    return 0


def iter_files(paths: Sequence[Path]) -> Iterator[Path]:
    """Files named, and files under folders named, in a stable order, each once; hidden entries skipped.
    A DICOMDIR stands for the files it references (dicom/media.py), not for itself."""
    from dicomcloud.dicom.media import DICOMDIR, referenced_files

    seen: set[Path] = set()
    for found in _walk(paths):
        files = [found]
        if found.name == DICOMDIR:
            try:
                files = referenced_files(found)
            except InvalidInput as exc:
                log.warning("%s; tried as an instance", exc.message)
        for path in files:
            if path.resolve() not in seen:
                seen.add(path.resolve())
                yield path


def _walk(paths: Sequence[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            for folder, subfolders, files in os.walk(path):
                subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith("."):
                        yield Path(folder) / name
        else:
            yield path


def run_import(settings: Settings, args: argparse.Namespace) -> int:
    """Store every file as C-STORE would (source "import", archive/bulk_import.py); a file that is not DICOM is
    counted, not fatal."""
    from dicomcloud.archive.bulk_import import FileImport
    from dicomcloud.archive.core import Archive

    if (args.token_file or args.basic_auth_file) and not args.from_dicomweb:
        raise InvalidInput("--token-file and --basic-auth-file are for a --from-dicomweb peer; there is none")
    if args.move_port and not args.from_dimse:
        raise InvalidInput("--move-port is how instances come from a --from-dimse PACS; there is none")
    if args.from_dicomweb or args.from_dimse:
        if args.paths:
            raise InvalidInput("import either PATHs or from a peer (--from-dicomweb, --from-dimse), not both")
        return run_migration(settings, args)
    if not args.paths:
        raise InvalidInput("import what? PATHs, --from-dicomweb URL or --from-dimse AE@HOST:PORT")
    files = list(iter_files(args.paths))
    stop = threading.Event()
    stop_on_signals(stop)
    archive = Archive.from_settings(settings)
    tenant = args.tenant or settings.tenant
    progress = Progress(len(files))
    try:
        outcome = FileImport(
            archive, tenant, args.jobs or cores(), lambda t: progress.show(t.done, t.stored, t.failed), stop
        ).run(files)
    finally:
        progress.done()
        archive.close()
    tally = outcome.tally
    log.info(
        "%simported %d of %d files into tenant %s (%d failed)",
        "interrupted: " if outcome.interrupted else "", tally.stored, tally.files, tenant, tally.failed,
    )
    return 0 if outcome.complete else 2


def run_migration(settings: Settings, args: argparse.Namespace) -> int:
    """Pull every study of a peer archive (archive/migrate.py) with a progress bar; a summary at the end.
    Ctrl-C lets the fetches under way finish; running the command again fetches only what is missing."""
    from dicomcloud.adapters.dicomweb_peer import DicomwebPeer
    from dicomcloud.adapters.dimse_peer import DimsePeer
    from dicomcloud.archive.core import Archive
    from dicomcloud.archive.migrate import Migration
    from dicomcloud.ports.peer import Peer

    peer: Peer = (
        DicomwebPeer(args.from_dicomweb, *dicomweb_credentials(args))
        if args.from_dicomweb
        else DimsePeer(
            args.from_dimse,
            calling_ae=settings.dimse.ae_title,
            timeout=settings.dimse.network_timeout,
            move_to=(settings.dimse.host, args.move_port) if args.move_port else None,
        )
    )
    stop = threading.Event()
    stop_on_signals(stop)
    archive = Archive.from_settings(settings)
    bar = ProgressBar()
    try:
        outcome = Migration(archive, peer, args.tenant or settings.tenant, args.concurrency, bar.show, stop).run()
    finally:
        peer.close()
        archive.close()
    bar.done(outcome.tally.line())
    print(outcome.summary(peer.name), flush=True)
    return 0 if outcome.complete else 2


def dicomweb_credentials(args: argparse.Namespace) -> tuple[str, tuple[str, str] | None]:
    """The DICOMweb peer's bearer token and basic authentication, from files or the environment, so neither
    is on a command line where `ps` shows it."""
    token = args.token_file.read_text().strip() if args.token_file else os.environ.get(TOKEN_VARIABLE, "").strip()
    basic = None
    if args.basic_auth_file:
        user, colon, password = args.basic_auth_file.read_text().strip().partition(":")
        if not colon:
            raise InvalidInput(f"{args.basic_auth_file} should hold USER:PASSWORD")
        basic = (user, password)
    if token and basic:
        raise InvalidInput("a DICOMweb peer gets a bearer token or basic authentication, not both")
    return token, basic


class ProgressBar:
    """One line redrawn on a terminal (at most ten times a second); otherwise (logs, CI) a line a second."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self._shown = 0.0

    def show(self, tally: Tally) -> None:
        now = time.monotonic()
        if now - self._shown < (0.1 if self.tty else 1.0):
            return
        self._shown = now
        sys.stderr.write(("\r" if self.tty else "") + tally.line() + ("" if self.tty else "\n"))
        sys.stderr.flush()

    def done(self, line: str) -> None:
        sys.stderr.write(("\r" if self.tty else "") + line + "\n")
        sys.stderr.flush()


class Progress:
    """A one-line counter on a terminal; a line each time 100 more files are done otherwise (logs, CI)."""

    def __init__(self, total: int, unit: str = "files", done: str = "stored", other: str = "failed") -> None:
        self.total = total
        self.tty = sys.stderr.isatty()
        self.unit, self.done_word, self.other_word = unit, done, other
        self._logged = 0

    def show(self, number: int, stored: int, failed: int) -> None:
        text = f"{number}/{self.total} {self.unit}, {stored} {self.done_word}, {failed} {self.other_word}"
        if self.tty:
            sys.stderr.write("\r" + text)
            sys.stderr.flush()
        elif number // 100 > self._logged // 100 or number == self.total:
            self._logged = number
            log.info("%s", text)

    def done(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def run_stats(settings: Settings, args: argparse.Namespace) -> int:
    """Print statistics: from a running archive's API with --url (DuckDB lets one process open its
    file), else straight from the warehouse."""
    import urllib.parse
    import urllib.request

    from dicomcloud.archive.stats import SUMMARY_PARTS, format_table, statistic
    from dicomcloud.runtime import open_warehouse

    names = [args.name] if args.name else list(SUMMARY_PARTS)
    if args.url:
        base = args.url.rstrip("/")
        for name in names:
            query = urllib.parse.urlencode({"limit": args.limit, "range": args.range_name})
            with urllib.request.urlopen(f"{base}/api/stats/{name}?{query}", timeout=60) as response:
                print(format_table(name, json.load(response)))
        return 0
    warehouse = open_warehouse(settings)
    try:
        for name in names:
            print(format_table(name, statistic(warehouse, name, args.limit, args.range_name)))
    finally:
        warehouse.close()
    return 0


def run_init(settings: Settings) -> int:
    """Opening the runtime creates the folders and every schema (the PostgreSQL index migrates as it opens);
    on Kafka, every topic is created up front with the configured partitions and replication, so no
    service's first publish or subscribe creates one with whatever it happened to assume. On S3, the bucket
    is created first (the runtime refuses a missing one)."""
    from dicomcloud.adapters.kafka_bus import KafkaBus
    from dicomcloud.runtime import Runtime

    if settings.backends.storage == "s3":
        from dicomcloud.adapters.s3_storage import create_bucket

        s3 = settings.storage.s3
        created = create_bucket(s3)
        print(f"bucket {s3.bucket} at {s3.endpoint or 'AWS S3'}: {'created' if created else 'already there'}")
    runtime = Runtime.from_settings(settings)
    try:
        if isinstance(runtime.bus, KafkaBus):
            topics = bus_topics()
            runtime.bus.ensure_topics(topics)
            print(f"topics on {settings.backends.kafka_bootstrap}: {', '.join(topics)}")
    finally:
        runtime.close()
    print(f"initialised {settings.data_path}")
    return 0


def bus_topics() -> list[str]:
    """Every topic the services publish to or read: each event's, the log queue, and each worker's dead letters."""
    from dicomcloud.events import LOG_QUEUE, BusEvent
    from dicomcloud.workers.consumer import StorageEventConsumer
    from dicomcloud.workers.loader import Loader
    from dicomcloud.workers.loop import dead_letter_topic
    from dicomcloud.workers.transcoder import Transcoder

    names = [event.topic for event in BusEvent.__subclasses__()]
    dead_letters = [dead_letter_topic(handler.group) for handler in (StorageEventConsumer, Loader, Transcoder)]
    return list(dict.fromkeys([*names, LOG_QUEUE, *dead_letters]))


def run_storage_migrate(settings: Settings, args: argparse.Namespace) -> int:
    """Copy every object of the data folder's storage/ into the bucket under the same key, then read both back
    and compare digests. Resumable: an object already in the bucket with the same size is not sent again (the
    verification pass still compares its digest). Switch `backends.storage` to s3 once it reports no mismatch."""
    from dicomcloud.adapters.fs_storage import FsStorage
    from dicomcloud.adapters.s3_storage import S3Storage, create_bucket

    source = FsStorage(root=settings.data_path / "storage", staging=settings.data_path / "tmp")
    create_bucket(settings.storage.s3)
    target = S3Storage(settings.storage.s3, staging=settings.data_path / "tmp")
    target.verify()
    keys = source.list("")
    progress = Progress(len(keys), "objects", "copied", "already there")
    copied = present = 0
    batch: list[str] = []
    for number, key in enumerate(keys, 1):
        if target.size(key) == source.size(key):
            present += 1
        else:
            batch.append(key)
        if len(batch) >= MIGRATE_BATCH or number == len(keys):
            target.commit([(_staged_copy(source, target, key), key) for key in batch])
            copied += len(batch)
            batch = []
        progress.show(number, copied, present)
    progress.done()
    mismatched = [key for key in keys if _digest(source, key) != _digest(target, key)]
    for key in mismatched[:20]:
        log.error("differs in the bucket: %s", key)
    print(f"{len(keys)} objects: {copied} copied, {present} already there; verified, {len(mismatched)} differ")
    return 0 if not mismatched else 1


def _staged_copy(source: Storage, target: Storage, key: str) -> BinaryIO:
    staged = target.stage()
    with source.open(key) as stream:
        shutil.copyfileobj(stream, staged, 1024 * 1024)
    return staged


def _digest(storage: Storage, key: str) -> str:
    digest = hashlib.sha256()
    with storage.open(key) as stream:
        while chunk := stream.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def run_stack(settings: Settings, args: argparse.Namespace) -> int:
    """`stack up` returns once every process is ready, printing where things are; `stack down` stops them."""
    from dicomcloud.stack import LocalStack, StackError

    try:
        if args.action == "down":
            LocalStack.load(args.dir).down()
            print(f"stopped the stack in {args.dir}")
            return 0
        stack = LocalStack.up(
            args.dir,
            brokers=args.brokers,
            consumers=args.consumers,
            servers=args.servers,
            storage=args.storage,
            workers=args.server_workers,
            storescp_workers=args.storescp_workers,
        )
    except StackError as exc:
        log.error("stack %s: %s", args.action, exc)
        return 1
    print(stack.summary())
    return 0
