"""`dicomcloud stack up/down`: the distributed archive on one machine, on the real servers.

PostgreSQL, Redis and a KRaft Kafka cluster start first (side by side; with `storage="s3"` also SeaweedFS:
a master, two volume servers with replication 001, a filer and the S3 gateway), then `dicomcloud init` creates
the topics, migrates the index (and creates the bucket), then every service runs as its own process:
wado-storescp (with its `dimse.workers` processes), N consumers in one group, the webworker, the transcoder and
N wado-servers (each with its `http.workers` processes) behind Nginx. On
files the services share the stack's data folder; on S3 each one has a private scratch folder and there is no
shared data folder, so no node can read another's disk. Everything listens on 127.0.0.1
on free ports, runs in its own session (it outlives `stack up`; a terminal's Ctrl-C does not reach it) and
keeps its data and logs under the stack's folder. `stack.json` there names every endpoint and process, so
another process (`stack down`, a test) attaches with `LocalStack.load` and stops or restarts any one of
them by name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dicomcloud
from dicomcloud.certs import write_pki
from dicomcloud.process import BACKGROUND_ENVIRONMENT
from dicomcloud.stack.kafka import KafkaCluster, KafkaNode, kafka_libs, registered_brokers, start_kafka
from dicomcloud.stack.seaweedfs import S3_REGION, S3Credentials, start_seaweedfs
from dicomcloud.stack.seaweedfs import healthy as weed_healthy
from dicomcloud.stack.servers import (
    STOP_TIMEOUT,
    NginxSite,
    Server,
    StackError,
    accepts,
    free_port,
    install_missing,
    pid_alive,
    postgres_answers,
    redis_answers,
    start_nginx,
    start_postgres,
    start_redis,
)
from dicomcloud.workers import background

log = logging.getLogger(__name__)

STACK_FILE = "stack.json"
ENV_NAME = "stack"
AE_TITLE = "DICOMCLOUD"
HOST = "127.0.0.1"
ROOT_PATH = "/dicom-web"
# Services import the whole package and connect to three servers before they are ready: slow on a busy machine.
SERVICE_READY_TIMEOUT = 180.0
# What `up` writes under the stack's folder: removed when a stopped stack's folder is reused.
PARTS = ("postgres", "redis", "kafka", "seaweedfs", "nginx", "certs", "config", "data", "scratch", "logs", STACK_FILE)
INFRASTRUCTURE = ("postgres", "redis", "kafka", "seaweedfs", "nginx")
STORAGES = ("fs", "s3")
# The bucket of a stack on S3, and how many volume servers hold its objects (replication 001: two copies).
BUCKET = "dicomcloud"
VOLUME_SERVERS = 2
WEED_STOP_ORDER = ("s3", "filer", "volume", "master")
_S3_NOTE = {"fs": "", "s3": " and SeaweedFS (master, 2 volume servers, filer, S3 gateway)"}
# Seconds a stopped process's parent gets to reap it before `kill` returns anyway.
ZOMBIE_GRACE = 5.0
# How each kind of process is asked to stop: PostgreSQL's "fast" shutdown; SIGTERM for the rest.
STOP_SIGNALS = {"postgres": signal.SIGINT}


@dataclass
class Component:
    """One process of the stack as `stack.json` records it; `pid` is None while it is stopped."""

    kind: str
    ports: dict[str, int]
    command: list[str]
    log: str
    pid: int | None = None
    # The service's own settings (`DICOMCLOUD_*`) and import path, on top of the caller's environment.
    env: dict[str, str] = field(default_factory=dict)
    # Where it runs (a weed process reads its config files from `.`); None: wherever the stack was started.
    cwd: str | None = None


@dataclass
class LocalStack:
    """A running (or partly stopped) local stack, started by `up` or attached to by `load`."""

    folder: Path
    dicomweb: str
    ca_file: Path | None
    server_urls: list[str]
    dimse: tuple[str, int, str]
    postgres_dsn: str
    redis_url: str
    kafka_bootstrap: str
    components: dict[str, Component] = field(default_factory=dict)
    # `fs`: the shared data folder's storage/; `s3`: the bucket `BUCKET` at `s3_endpoint` (SeaweedFS's S3 gateway).
    storage: str = "fs"
    s3_endpoint: str = ""

    # -- starting and attaching ------------------------------------------------------------------------

    @classmethod
    def up(
        cls,
        folder: Path,
        *,
        brokers: int = 3,
        consumers: int = 2,
        servers: int = 2,
        storage: str = "fs",
        workers: int = 1,
        storescp_workers: int = 1,
    ) -> LocalStack:
        """Start the whole stack in `folder` (installing missing Debian packages, fetching Kafka's jars, building
        SeaweedFS for `storage="s3"`); returns once every process is ready.

        A folder holding a stopped stack is reused (its data is removed first); one with a running stack
        is refused. If anything fails to start, everything already started is stopped again."""
        if min(brokers, consumers, servers) < 1:
            raise StackError("a stack needs at least one broker, one consumer and one server")
        if workers < 0:
            raise StackError("a wado-server needs 0 (one per core) or more HTTP workers")
        if storescp_workers < 0:
            raise StackError("the wado-storescp needs 0 (one per core) or more DIMSE workers")
        if storage not in STORAGES:
            raise StackError(f"unknown storage {storage!r} ({' or '.join(STORAGES)})")
        folder = folder.resolve()
        _clear(folder)
        install_missing()
        for part in ("config", "logs", "data" if storage == "fs" else "scratch"):
            (folder / part).mkdir(parents=True, exist_ok=True)
        write_pki(folder / "certs", hosts=["localhost", HOST], clients=[])
        log.info("starting PostgreSQL, Redis, %d Kafka brokers%s in %s", brokers, _S3_NOTE[storage], folder)
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures: list[Future[Any]] = [
                pool.submit(start_postgres, folder / "postgres"),
                pool.submit(start_redis, folder / "redis"),
                pool.submit(start_kafka, folder / "kafka", brokers),
            ]
            if storage == "s3":
                futures.append(pool.submit(start_seaweedfs, folder / "seaweedfs", VOLUME_SERVERS))
            pg, rd, cluster, *weed = _started(*futures)
        https_port, dimse_port = free_port(), free_port()
        http_ports = [free_port() for _ in range(servers)]
        stack = cls(
            folder=folder,
            dicomweb=f"https://{HOST}:{https_port}{ROOT_PATH}",
            ca_file=folder / "certs" / "ca.pem",
            server_urls=[f"http://{HOST}:{port}{ROOT_PATH}" for port in http_ports],
            dimse=(HOST, dimse_port, AE_TITLE),
            postgres_dsn=pg.url,
            redis_url=rd.url,
            kafka_bootstrap=cluster.bootstrap,
            storage=storage,
        )
        stack.components["postgres"] = _recorded("postgres", pg, {"postgres": pg.port})
        stack.components["redis"] = _recorded("redis", rd, {"redis": rd.port})
        for node in cluster.nodes:
            assert node.server is not None
            ports = {"broker": node.broker_port, "controller": node.controller_port}
            stack.components[f"kafka-{node.node_id}"] = _recorded("kafka", node.server, ports)
        s3_credentials = None
        for seaweedfs in weed:
            stack.s3_endpoint, s3_credentials = seaweedfs.endpoint, seaweedfs.credentials
            for name, server in seaweedfs.servers.items():
                stack.components[name] = _recorded("seaweedfs", server, {"http": server.port})
                stack.components[name].cwd = str(server.folder)
        try:
            stack._save()
            stack._write_settings(brokers, s3_credentials)
            log.info("creating the topics and the index schema (dicomcloud init)")
            stack._init()
            stack._start_nginx(https_port, http_ports)
            log.info("starting the services; waiting for each one's /ready")
            stack._start_services(consumers, http_ports, workers, storescp_workers)
        except BaseException:
            stack.down()
            raise
        return stack

    @classmethod
    def load(cls, folder: Path) -> LocalStack:
        """Attach to the stack that `up` started in `folder`, through its `stack.json`."""
        path = folder.resolve() / STACK_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise StackError(f"no stack in {folder}: {path} does not exist") from None
        host, port, ae_title = data["dimse"]["host"], data["dimse"]["port"], data["dimse"]["ae_title"]
        return cls(
            folder=Path(data["dir"]),
            dicomweb=data["dicomweb"],
            ca_file=Path(data["ca_file"]) if data.get("ca_file") else None,
            server_urls=list(data["server_urls"]),
            dimse=(host, int(port), ae_title),
            postgres_dsn=data["postgres"],
            redis_url=data["redis"],
            kafka_bootstrap=data["kafka"],
            components={name: Component(**value) for name, value in data["services"].items()},
            storage=data.get("storage", "fs"),
            s3_endpoint=data.get("s3_endpoint", ""),
        )

    # -- the public handles ----------------------------------------------------------------------------

    def names(self) -> list[str]:
        return list(self.components)

    def pid(self, name: str) -> int | None:
        return self._component(name).pid

    def ready(self, name: str) -> bool:
        component = self._component(name)
        if component.pid is None or not _running(component.pid):
            return False
        return self._ready_check(component)()

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send `sig` (SIGKILL: to the process and everything it started), wait until they are gone
        (SIGKILL after STOP_TIMEOUT), and record it stopped."""
        self._stop([name], lambda _: sig)

    def start(self, name: str) -> None:
        """Start one stopped process again on its ports, folders and settings; returns once it is ready."""
        component = self._component(name)
        if component.pid is not None and _running(component.pid):
            return
        if component.kind == "postgres":
            component.pid = start_postgres(self.folder / "postgres", component.ports["postgres"]).pid
        elif component.kind == "kafka":
            self._start_kafka_node(name, component)
        else:
            component.pid = _spawn(component)
        self._save()
        self._wait_ready([name], SERVICE_READY_TIMEOUT)

    def down(self) -> None:
        """Stop everything by pid: the services first, then Nginx, Kafka, SeaweedFS, Redis and PostgreSQL."""
        order = [[n for n, c in self.components.items() if c.kind not in INFRASTRUCTURE]]
        order += [[n for n, c in self.components.items() if c.kind == kind] for kind in ("nginx", "kafka")]
        # SeaweedFS from the gateway down to the master: stopped together, they wait ~20 s for the master.
        weed = [n for n, c in self.components.items() if c.kind == "seaweedfs"]
        order += [[n for n in weed if n.startswith(f"seaweedfs-{part}")] for part in WEED_STOP_ORDER]
        order += [["redis"], ["postgres"]]
        for names in order:
            self._stop([name for name in names if name in self.components], _stop_signal(self.components))

    def summary(self) -> str:
        """Where things are, for a person: endpoints, then each process with its pid, ports and log."""
        host, port, ae_title = self.dimse
        lines = [
            f"DICOMweb  {self.dicomweb}" + (f"  (CA: {self.ca_file})" if self.ca_file else ""),
            f"DIMSE     {ae_title}@{host}:{port}",
            f"servers   {' '.join(self.server_urls)}",
            f"kafka     {self.kafka_bootstrap}",
            *([f"s3        {self.s3_endpoint} bucket {BUCKET}"] if self.storage == "s3" else []),
            f"redis     {self.redis_url}",
            f"postgres  DSN in {self.folder / STACK_FILE}",
        ]
        for name, component in self.components.items():
            ports = " ".join(f"{kind}={number}" for kind, number in component.ports.items())
            lines.append(f"{name:<18} pid {component.pid}  {ports}  log {component.log}")
        return "\n".join(lines)

    # -- inside --------------------------------------------------------------------------------------

    def _component(self, name: str) -> Component:
        try:
            return self.components[name]
        except KeyError:
            raise StackError(f"no process named {name!r} in the stack (known: {', '.join(self.components)})") from None

    def _ready_check(self, component: Component) -> Callable[[], bool]:
        ports = component.ports
        checks: dict[str, Callable[[], bool]] = {
            "postgres": lambda: postgres_answers(self.postgres_dsn),
            "redis": lambda: redis_answers(self.redis_url),
            "kafka": lambda: registered_brokers(f"{HOST}:{ports['broker']}") > 0,
            "nginx": lambda: accepts(HOST, ports["https"]),
            "seaweedfs": lambda: weed_healthy(ports["http"]),
        }
        return checks.get(component.kind, lambda: service_ready(ports["ops"]))

    def _stop(self, names: Iterable[str], signal_for: Callable[[str], int]) -> None:
        """Signal every named process at once, then wait for each (a Kafka quorum's last nodes wait for
        each other, so they must all be asked together)."""
        signalled = {}
        for name in names:
            pid = self.components[name].pid
            if pid is not None:
                signalled[name] = (pid, _signal(pid, signal_for(name)))
        for name, (pid, pids) in signalled.items():
            _wait_gone(pids, pid)
            self.components[name].pid = None
        self._save()

    def _start_kafka_node(self, name: str, component: Component) -> None:
        nodes: list[KafkaNode] = []
        index = 0
        for other, known in self.components.items():
            if known.kind == "kafka":
                node_id = int(other.rpartition("-")[2])
                folder = self.folder / "kafka" / f"node-{node_id}"
                index = len(nodes) if other == name else index
                nodes.append(KafkaNode(node_id, known.ports["broker"], known.ports["controller"], folder))
        cluster = KafkaCluster(folder=self.folder / "kafka", libs=kafka_libs(), nodes=nodes)
        cluster.start_node(index)
        server = cluster.nodes[index].server
        assert server is not None
        component.pid = server.pid

    def _wait_ready(self, names: list[str], timeout: float) -> None:
        pending = list(names)
        deadline = time.monotonic() + timeout
        while pending:
            for name in list(pending):
                component = self.components[name]
                if component.pid is None or not _running(component.pid):
                    raise StackError(f"{name} exited while starting; see {component.log}:\n{_tail(component.log)}")
                if self._ready_check(component)():
                    pending.remove(name)
            if pending and time.monotonic() > deadline:
                logs = "\n".join(f"--- {self.components[n].log}\n{_tail(self.components[n].log)}" for n in pending)
                raise StackError(f"not ready after {timeout:.0f}s: {', '.join(pending)}\n{logs}")
            if pending:
                time.sleep(0.2)

    def _settings(self, brokers: int, s3_credentials: S3Credentials | None) -> dict[str, Any]:
        _, dimse_port, ae_title = self.dimse
        storage: dict[str, Any] = {"data_dir": str(self.folder / "data")}
        if s3_credentials is not None:
            # No shared data folder: each process gets its own scratch folder (DICOMCLOUD_STORAGE__DATA_DIR).
            storage = {"s3": {
                "endpoint": self.s3_endpoint, "bucket": BUCKET, "region": S3_REGION,
                "access_key_id": s3_credentials.access_key, "secret_access_key": s3_credentials.secret_key,
            }}  # fmt: skip
        return {
            "http": {"host": HOST, "root_path": ROOT_PATH},
            "dimse": {"host": HOST, "port": dimse_port, "ae_title": ae_title},
            "storage": storage,
            "backends": {
                "storage": self.storage,
                "bus": "kafka",
                "index": "postgres",
                "cache": "redis",
                "postgres_dsn": self.postgres_dsn,
                "redis_url": self.redis_url,
                "kafka_bootstrap": self.kafka_bootstrap,
                "kafka_partitions": 3,
                "kafka_replication": min(3, brokers),
                # A broker's death moves its leaders in ~5 s (broker.session.timeout.ms 4000); with every broker
                # gone, a C-STORE fails after this instead of the default 30 s.
                "kafka_delivery_timeout": 15.0,
            },
            "ops": {"host": HOST},
        }

    def _write_settings(self, brokers: int, s3_credentials: S3Credentials | None) -> None:
        path = self.folder / "config" / f"application.{ENV_NAME}.json"
        _write_private(path, json.dumps(self._settings(brokers, s3_credentials), indent=2) + "\n")

    def _service_env(self, extra: dict[str, str], name: str) -> dict[str, str]:
        """A service's environment: the stack's settings, and on S3 a scratch folder of its own."""
        package_root = str(Path(dicomcloud.__file__).resolve().parents[1])
        python_path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH", "")]))
        scratch = {"DICOMCLOUD_STORAGE__DATA_DIR": str(self.folder / "scratch" / name)} if self.storage == "s3" else {}
        return {
            "DICOMCLOUD_ENV": ENV_NAME,
            "DICOMCLOUD_CONFIG_DIR": str(self.folder / "config"),
            "PYTHONPATH": python_path,
            **scratch,
            **extra,
        }

    def _init(self) -> None:
        """`dicomcloud init` on the stack's settings: the topics and the index schema, before any service."""
        output = self.folder / "logs" / "init.log"
        command = [sys.executable, "-m", "dicomcloud", "init", "--log-format", "json"]
        with output.open("ab") as out:
            result = subprocess.run(
                command,
                env=_environment(self._service_env({}, "init")),
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if result.returncode != 0:
            raise StackError(f"dicomcloud init failed ({result.returncode}); see {output}:\n{_tail(str(output))}")

    def _start_nginx(self, https_port: int, http_ports: list[int]) -> None:
        certs = self.folder / "certs"
        site = NginxSite(
            https_listen=f"{HOST}:{https_port}",
            http_listen=f"{HOST}:{free_port()}",
            cert_file=certs / "server.pem",
            key_file=certs / "server.key",
            upstreams=[f"{HOST}:{port}" for port in http_ports],
            run_dir=self.folder / "nginx",
        )
        server = start_nginx(site)
        http_port = int(site.http_listen.rpartition(":")[2])
        self.components["nginx"] = _recorded("nginx", server, {"https": https_port, "http": http_port})
        self._save()

    def _start_services(self, consumers: int, http_ports: list[int], workers: int, storescp_workers: int) -> None:
        plan: list[tuple[str, str, dict[str, int]]] = [("storescp", "storescp", {"dimse": self.dimse[1]})]
        plan += [(f"consumer-{n}", "consumer", {}) for n in range(1, consumers + 1)]
        plan += [("webworker", "webworker", {}), ("transcoder", "transcoder", {})]
        plan += [(f"server-{n}", "server", {"http": port}) for n, port in enumerate(http_ports, 1)]
        for name, kind, ports in plan:
            ports["ops"] = free_port()
            env = {"DICOMCLOUD_OPS__PORT": str(ports["ops"])}
            if kind in background.SERVICES:
                env.update(BACKGROUND_ENVIRONMENT)
            if "http" in ports:
                env["DICOMCLOUD_HTTP__PORT"] = str(ports["http"])
                env["DICOMCLOUD_HTTP__WORKERS"] = str(workers)
            if "dimse" in ports:
                env["DICOMCLOUD_DIMSE__WORKERS"] = str(storescp_workers)
            component = Component(
                kind=kind,
                ports=ports,
                command=[sys.executable, "-m", "dicomcloud", kind, "--log-format", "json"],
                log=str(self.folder / "logs" / f"{name}.log"),
                env=self._service_env(env, name),
            )
            component.pid = _spawn(component)
            self.components[name] = component
            self._save()
        self._wait_ready([name for name, _, _ in plan], SERVICE_READY_TIMEOUT)

    def _save(self) -> None:
        """Write `stack.json` (owner-only: the PostgreSQL DSN holds a password)."""
        _, dimse_port, ae_title = self.dimse
        data = {
            "dir": str(self.folder),
            "dicomweb": self.dicomweb,
            "ca_file": str(self.ca_file) if self.ca_file else None,
            "server_urls": self.server_urls,
            "dimse": {"host": self.dimse[0], "port": dimse_port, "ae_title": ae_title},
            "postgres": self.postgres_dsn,
            "redis": self.redis_url,
            "kafka": self.kafka_bootstrap,
            "storage": self.storage,
            "s3_endpoint": self.s3_endpoint,
            "services": {name: asdict(component) for name, component in self.components.items()},
        }
        _write_private(self.folder / STACK_FILE, json.dumps(data, indent=2) + "\n")


def service_ready(ops_port: int) -> bool:
    """The ops contract: a service is ready when `GET /ready` on its ops port answers 200."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{ops_port}/ready", timeout=2.0) as response:
            return int(response.status) == 200
    except OSError:  # refused, timed out, or an HTTPError status such as 503
        return False


def _started(*futures: Future[Any]) -> list[Any]:
    """Every future's result; if any failed, the servers the others started are stopped and it is raised."""
    errors = [f.exception() for f in futures if f.exception() is not None]
    if not errors:
        return [f.result() for f in futures]
    for future in futures:
        if future.exception() is None:
            future.result().stop()
    raise errors[0] if isinstance(errors[0], StackError) else StackError(str(errors[0]))


def _recorded(kind: str, server: Server, ports: dict[str, int]) -> Component:
    return Component(kind=kind, ports=ports, command=server.command, log=str(server.log), pid=server.pid)


def _clear(folder: Path) -> None:
    """Make `folder` ready for a new stack: refused while a stack runs there, else its parts removed."""
    if (folder / STACK_FILE).is_file():
        running = [
            name for name, component in LocalStack.load(folder).components.items()
            if component.pid is not None and _running(component.pid)
        ]  # fmt: skip
        if running:
            raise StackError(
                f"a stack is running in {folder} ({', '.join(running)}); run `dicomcloud stack down` first"
            )
    for part in PARTS:
        path = folder / part
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _write_private(path: Path, text: str) -> None:
    """Owner-only, replaced atomically; a temp name per writer, so concurrent saves cannot collide."""
    temp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    temp.unlink(missing_ok=True)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    temp.replace(path)


def _environment(extra: dict[str, str]) -> dict[str, str]:
    """The caller's environment without its own `DICOMCLOUD_*` settings, plus the service's."""
    inherited = {key: value for key, value in os.environ.items() if not key.startswith("DICOMCLOUD_")}
    return {**inherited, **extra}


def _spawn(component: Component) -> int:
    with open(component.log, "ab") as out:
        process = subprocess.Popen(
            component.command,
            cwd=component.cwd,
            env=_environment(component.env),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return process.pid


def _stop_signal(components: dict[str, Component]) -> Callable[[str], int]:
    return lambda name: STOP_SIGNALS.get(components[name].kind, signal.SIGTERM)


def _signal(pid: int, sig: int) -> list[int]:
    """SIGKILL takes the process and every process it started (PostgreSQL's backends each lead their own
    session, so a process group would miss them); other signals go to the process, which stops its own.
    Returns the pids to wait for."""
    pids = _tree(pid) if sig == signal.SIGKILL else [pid]
    for target in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, sig)
    return pids


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        pending.extend(children.get(current, []))
    return found


def process_exists(pid: int) -> bool:
    """Whether `pid` is still in the process table (a zombie too, unless it is our child: then it is reaped)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return pid_alive(pid)


def _running(pid: int) -> bool:
    """Exists and is no zombie."""
    if not process_exists(pid):
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pids: list[int], leader: int) -> None:
    """Until none of `pids` runs (SIGKILL to what is left after STOP_TIMEOUT), then a few seconds more for
    their parents to reap them: a PostgreSQL restart refuses while its old postmaster's pid exists. A zombie
    whose parent never reaps it (a test process that restarted it, say) still counts as stopped."""
    deadline = time.monotonic() + STOP_TIMEOUT
    while any(_running(pid) for pid in pids):
        if time.monotonic() > deadline:
            pids = sorted(set(pids) | set(_signal(leader, signal.SIGKILL)))
            deadline = time.monotonic() + STOP_TIMEOUT
        time.sleep(0.05)
    reaped = time.monotonic() + ZOMBIE_GRACE
    while any(process_exists(pid) for pid in pids) and time.monotonic() < reaped:
        time.sleep(0.05)


def _tail(path: str, lines: int = 30) -> str:
    file = Path(path)
    if not file.is_file():
        return ""
    return "\n".join(file.read_text(errors="replace").splitlines()[-lines:])
