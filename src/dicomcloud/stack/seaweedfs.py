"""SeaweedFS on loopback, the real S3-compatible object store of the local stack, tests and developers.

The `weed` binary is built from the Go module proxy (the module's go.mod has a `replace` directive, so
`go install` refuses it; a build inside the downloaded module works) into a cache folder shared by every
checkout and CI run, like Kafka's jars. `start_seaweedfs` runs either one `weed server` process (master,
volume server, filer and S3 gateway in one: enough for contract tests) or, with `volumes`, a master, that
many volume servers with replication `001` (a second copy on another server), a filer and the S3 gateway
as separate processes, so one can be killed. The S3 gateway's Prometheus metrics tell how many requests of each kind
a bucket got (`s3_requests`). Everything listens on 127.0.0.1 on free ports with its data in
the given folder, runs in its own session and is stopped by pid. SeaweedFS is slow to stop on SIGTERM (one
`weed server` about 15 s; a cluster's processes stopped together about 20 s, waiting for their master; in
reverse start order each takes under a second), so stops are bounded waits, SIGKILL after them.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from dicomcloud.adapters.s3_storage import S3Storage, create_bucket
from dicomcloud.config import S3Settings
from dicomcloud.errors import StorageFailure
from dicomcloud.stack.kafka import cache_root
from dicomcloud.stack.servers import READY_TIMEOUT, Server, StackError, free_port, stop_pid

log = logging.getLogger(__name__)

SEAWEEDFS_VERSION = "4.53"
SEAWEEDFS_MODULE = "github.com/seaweedfs/seaweedfs"
SEAWEEDFS_MODULE_VERSION = "v0.0.0-20261109003541-7506e5f91cd6"
# About 8 minutes on 2 busy cores, from an empty Go module cache (2.1 GB of modules).
BUILD_TIMEOUT = 3600.0
# A clean stop (the volume servers' preStopSeconds, then their drain) before SIGKILL.
SEAWEEDFS_STOP_TIMEOUT = 40.0
# Writes need a volume holding a copy on each of two servers for replication `001`.
REPLICATION = "001"
# Small volumes so a test cluster's volume growth (several per collection and replication) fits any disk.
VOLUME_SIZE_LIMIT_MB = 256
# Volume slots per server. Each new bucket grows 7 volumes at its first write; at 32, the fifth bucket of a test
# run found no slot ("Not enough data nodes found") and its first PUT failed with 500. Volumes are not
# preallocated, so a slot costs nothing until it is written.
MAX_VOLUMES = 128
S3_REGION = "us-east-1"
# The bucket `start_seaweedfs` writes to until the store takes writes.
PROBE_BUCKET = "dicomcloud-probe"
# What nobody asked for: the master's anonymous usage report, the S3 gateway's Iceberg and Lance listeners.
QUIET_OPTIONS = {"master": ["-telemetry=false"], "s3": ["-port.iceberg=0", "-port.lance=0"]}
# The gateway's request counter in its Prometheus metrics, e.g. SeaweedFS_s3_request_total{bucket="b",code="200",...} 3
S3_REQUEST_METRIC = re.compile(r"^SeaweedFS_s3_request_total\{([^}]*)\} (\S+)$", re.MULTILINE)
METRIC_LABEL = re.compile(r'(\w+)="([^"]*)"')


def weed_binary(version: str = SEAWEEDFS_VERSION) -> Path:
    """The `weed` binary, built with Go from the module proxy on first use and cached."""
    binary = cache_root() / f"seaweedfs-{version}" / "weed"
    if binary.is_file():
        return binary
    go = shutil.which("go") or next(
        (p for p in ("/usr/local/go/bin/go", "/usr/lib/go/bin/go") if Path(p).is_file()), None
    )
    if go is None:
        raise StackError(f"Go not found; building SeaweedFS {version} needs Go 1.26 or newer")
    binary.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=binary.parent) as scratch:
        # Outside any module of ours, so `go` resolves the version from the proxy alone.
        download = _go(go, ["mod", "download", "-json", f"{SEAWEEDFS_MODULE}@{SEAWEEDFS_MODULE_VERSION}"], scratch)
        module_dir = json.loads(download)["Dir"]
        log.info("building SeaweedFS %s (weed) from %s; this takes minutes once", version, module_dir)
        building = Path(scratch) / "weed"
        _go(go, ["build", "-o", str(building), "./weed"], module_dir)
        building.replace(binary)
    return binary


def _go(go: str, arguments: list[str], cwd: str) -> str:
    try:
        result = subprocess.run(
            [go, *arguments], cwd=cwd, capture_output=True, text=True, check=False, timeout=BUILD_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        raise StackError(f"go {' '.join(arguments)} took more than {BUILD_TIMEOUT:.0f}s") from None
    if result.returncode != 0:
        raise StackError(f"go {' '.join(arguments)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result.stdout


@dataclass(frozen=True)
class S3Credentials:
    access_key: str
    secret_key: str

    @classmethod
    def generate(cls) -> S3Credentials:
        return cls(access_key="DC" + secrets.token_hex(9).upper(), secret_key=secrets.token_urlsafe(30))


@dataclass
class SeaweedFS:
    """A running SeaweedFS: its S3 endpoint and credentials, and each of its processes by name."""

    folder: Path
    endpoint: str
    credentials: S3Credentials
    metrics_port: int
    servers: dict[str, Server] = field(default_factory=dict)

    def settings(self, bucket: str, key_prefix: str = "") -> S3Settings:
        """Storage settings that reach `bucket` of this SeaweedFS."""
        return S3Settings(
            endpoint=self.endpoint, bucket=bucket, region=S3_REGION, access_key_id=self.credentials.access_key,
            secret_access_key=self.credentials.secret_key, key_prefix=key_prefix,
        )  # fmt: skip

    def s3_requests(self, bucket: str) -> Counter[tuple[str, str]]:
        """The S3 requests the gateway answered for `bucket` since it started, by (HTTP method, status)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()
        counts: Counter[tuple[str, str]] = Counter()
        for found in S3_REQUEST_METRIC.finditer(text):
            labels = dict(METRIC_LABEL.findall(found.group(1)))
            if labels.get("bucket") == bucket:
                counts[labels.get("type", ""), labels.get("code", "")] += int(float(found.group(2)))
        return counts

    def stop(self, timeout: float = SEAWEEDFS_STOP_TIMEOUT) -> None:
        """Stop the processes in the reverse of their start (gateway, filer, volume servers, master), each once the
        one before is gone: stopped all at once, the others wait about 20 s for the master that went first."""
        for server in reversed(self.servers.values()):
            stop_pid(server.pid, signal.SIGTERM, timeout, server.process)


@dataclass(frozen=True)
class WeedProcess:
    """One `weed` process to run: its name, arguments, HTTP port (health) and folder."""

    name: str
    arguments: list[str]
    port: int
    folder: Path


def s3_config(credentials: S3Credentials) -> str:
    """The S3 gateway's identities: one with every right, no anonymous access."""
    identity = {
        "name": "dicomcloud",
        "credentials": [{"accessKey": credentials.access_key, "secretKey": credentials.secret_key}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }
    return json.dumps({"identities": [identity]}, indent=2) + "\n"


def single_server(folder: Path, config: Path, metrics_port: int) -> list[WeedProcess]:
    """`weed server -filer -s3`: master, volume server, filer and S3 gateway in one process."""
    master, volume, filer, s3 = (_ports() for _ in range(4))
    data = folder / "server"
    arguments = [
        "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}",
        f"-master.port={master[0]}", f"-master.port.grpc={master[1]}", "-master.telemetry=false",
        f"-master.volumeSizeLimitMB={VOLUME_SIZE_LIMIT_MB}", f"-volume.max={MAX_VOLUMES}",
        f"-volume.port={volume[0]}", f"-volume.port.grpc={volume[1]}", "-volume.preStopSeconds=0",
        "-filer", f"-filer.port={filer[0]}", f"-filer.port.grpc={filer[1]}",
        f"-filer.localSocket={folder / 'filer.sock'}",
        "-s3", f"-s3.port={s3[0]}", f"-s3.port.grpc={s3[1]}", f"-s3.config={config}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.localSocket={folder / 's3.sock'}",
        "-metricsIp=127.0.0.1", f"-metricsPort={metrics_port}",
    ]  # fmt: skip
    return [WeedProcess("seaweedfs", arguments, s3[0], data)]


def cluster(folder: Path, config: Path, volumes: int, metrics_port: int) -> list[WeedProcess]:
    """A master, `volumes` volume servers (replication 001), a filer and the S3 gateway as separate processes;
    the S3 gateway last, so its port is the endpoint's."""
    master, filer, s3 = _ports(), _ports(), _ports()
    master_address = f"127.0.0.1:{master[0]}.{master[1]}"
    plan = [
        WeedProcess("seaweedfs-master", [
            "master", *_listen(master), f"-mdir={folder / 'master'}", f"-defaultReplication={REPLICATION}",
            f"-volumeSizeLimitMB={VOLUME_SIZE_LIMIT_MB}", *QUIET_OPTIONS["master"],
        ], master[0], folder / "master"),
    ]  # fmt: skip
    for number in range(1, volumes + 1):
        ports = _ports()
        plan.append(WeedProcess(f"seaweedfs-volume-{number}", [
            "volume", *_listen(ports), f"-dir={folder / f'volume-{number}'}", f"-max={MAX_VOLUMES}",
            f"-master={master_address}", "-preStopSeconds=0",
        ], ports[0], folder / f"volume-{number}"))  # fmt: skip
    plan.append(WeedProcess("seaweedfs-filer", [
        "filer", *_listen(filer), f"-master={master_address}", f"-defaultReplicaPlacement={REPLICATION}",
        f"-defaultStoreDir={folder / 'filer'}", f"-localSocket={folder / 'filer.sock'}",
    ], filer[0], folder / "filer"))  # fmt: skip
    plan.append(WeedProcess("seaweedfs-s3", [
        "s3", "-ip.bind=127.0.0.1", f"-port={s3[0]}", f"-port.grpc={s3[1]}",
        f"-filer=127.0.0.1:{filer[0]}.{filer[1]}", f"-config={config}", f"-localSocket={folder / 's3.sock'}",
        "-metricsIp=127.0.0.1", f"-metricsPort={metrics_port}", *QUIET_OPTIONS["s3"],
    ], s3[0], folder / "s3"))  # fmt: skip
    return plan


def _ports() -> tuple[int, int]:
    """An HTTP port and a gRPC port (weed's default gRPC port is HTTP + 10000, which may be taken)."""
    return free_port(), free_port()


def _listen(ports: tuple[int, int]) -> list[str]:
    return ["-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-port={ports[0]}", f"-port.grpc={ports[1]}"]


def start_seaweedfs(folder: Path, volumes: int = 0, credentials: S3Credentials | None = None) -> SeaweedFS:
    """Start SeaweedFS in `folder`: one `weed server` (volumes=0) or a cluster of separate processes with
    `volumes` (at least 2, for replication 001) volume servers; returns once S3 PutObject works."""
    if volumes == 1:
        raise StackError("replication 001 needs at least two volume servers")
    binary = weed_binary()
    folder.mkdir(parents=True, exist_ok=True)
    credentials = credentials or S3Credentials.generate()
    config = folder / "s3.json"
    config.touch(mode=0o600)
    config.write_text(s3_config(credentials))
    metrics_port = free_port()
    plan = cluster(folder, config, volumes, metrics_port) if volumes else single_server(folder, config, metrics_port)
    weed = SeaweedFS(folder, f"http://127.0.0.1:{plan[-1].port}", credentials, metrics_port)
    try:
        for process in plan:
            weed.servers[process.name] = spawn_weed(binary, process, folder)
            wait_healthy(weed.servers[process.name], process.port)
        wait_writable(weed)
    except BaseException:
        weed.stop()
        raise
    return weed


def spawn_weed(binary: Path, process: WeedProcess, logs: Path) -> Server:
    """Run one weed process in its own session, in its folder (weed reads `filer.toml` and the like from `.`),
    its output in `logs/<name>.log`."""
    process.folder.mkdir(parents=True, exist_ok=True)
    log_file = logs / f"{process.name}.log"
    command = [str(binary), *process.arguments]
    with log_file.open("ab") as out:
        popen = subprocess.Popen(
            command, cwd=process.folder, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    return Server(process.name, popen.pid, process.port, f"http://127.0.0.1:{process.port}",
                  process.folder, popen, command, log_file)  # fmt: skip


def healthy(port: int) -> bool:
    """Whether the weed process with this HTTP port answers its `/healthz` with 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2.0) as response:
            return int(response.status) == 200
    except OSError:
        return False


def wait_healthy(server: Server, port: int, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not healthy(port):
        if not server.alive():
            raise StackError(f"{server.name} exited while starting; see {server.log}:\n{_tail(server.log)}")
        if time.monotonic() > deadline:
            raise StackError(
                f"{server.name} was not healthy after {timeout:.0f}s; see {server.log}:\n{_tail(server.log)}"
            )
        time.sleep(0.2)


def wait_writable(weed: SeaweedFS, timeout: float = READY_TIMEOUT) -> None:
    """Until an object can be put, read back and deleted (the master has grown volumes on enough servers)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            probe(weed.settings(PROBE_BUCKET), weed.folder / "probe-scratch")
            return
        except StorageFailure as exc:  # refusals while the cluster forms are retried until the deadline
            dead = [server.name for server in weed.servers.values() if not server.alive()]
            if dead or time.monotonic() > deadline:
                logs = "\n".join(f"--- {s.log}\n{_tail(s.log)}" for s in weed.servers.values())
                raise StackError(f"SeaweedFS took no write ({exc.message}); exited: {dead or 'none'}\n{logs}") from None
            time.sleep(0.5)


def probe(settings: S3Settings, scratch: Path, key: str = "probe/object") -> None:
    """Create the bucket when needed, then put, read back and delete one object."""
    create_bucket(settings)
    storage = S3Storage(settings, scratch)
    storage.write(key, b"probe")
    if storage.read(key) != b"probe":
        raise StorageFailure(f"bucket {settings.bucket} returned other bytes than were written")
    storage.delete([key])


def _tail(path: Path | None, lines: int = 20) -> str:
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
