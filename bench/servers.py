"""The two archives under test, each a child process on loopback with its own data folder.

Both expose the same surface to the bench: a DICOMweb root, a DIMSE AE title and port, the server's
PID (for memory samples), a restart (to empty process caches) and a bulk load. Beside them, nginx serves
copies of the archives' answers as static files: what the same bytes cost by sendfile.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.workload import files_under
from dicomcloud.adapters.fs_storage import FsStorage
from dicomcloud.adapters.s3_storage import S3Storage, create_bucket
from dicomcloud.errors import StorageFailure
from dicomcloud.ports.storage import Storage
from dicomcloud.stack import LocalStack, StackError
from dicomcloud.stack.seaweedfs import SeaweedFS, start_seaweedfs

ORTHANC_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
NGINX_CONFIG = """daemon off;
master_process off;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    client_body_temp_path {folder}/temp;
    proxy_temp_path {folder}/temp;
    fastcgi_temp_path {folder}/temp;
    uwsgi_temp_path {folder}/temp;
    scgi_temp_path {folder}/temp;
    server {{
        listen 127.0.0.1:{port};
        root {folder}/www;
    }}
}}
"""
START_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0


def process_tree(pid: int) -> list[int]:
    """`pid` and every process under it (`up`'s worker processes and its background worker)."""
    found, pending = [], [pid]
    while pending:
        parent = pending.pop()
        found.append(parent)
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                pending += [int(child) for child in task.read_text().split()]
    return found


class BenchError(RuntimeError):
    """The bench cannot go on: a server did not start, a client failed, the servers disagree."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


class Server:
    """One archive process; subclasses say how to launch it and how to load files into it."""

    name: str
    ae_title: str

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.http_port = free_port()
        self.dimse_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        # The CA that signed the server's HTTPS certificate; None for plain HTTP.
        self.ca_file: Path | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def verify(self) -> str | bool:
        """What httpx verifies the server's certificate with."""
        return str(self.ca_file) if self.ca_file is not None else True

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.base_url}/dicom-web"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise BenchError(f"{self.name} is not running")
        return self.process.pid

    def memory_pids(self) -> list[int]:
        """The processes whose memory the bench samples: each that serves or does the archive's work."""
        return [self.pid]

    def busy_pids(self) -> list[int]:
        """The processes doing the archive's work, whose CPU time tells when background work is done."""
        return [self.pid]

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready_url(self) -> str:
        raise NotImplementedError

    def load(self, folder: Path) -> None:
        """Store every file under `folder` the way a site would load an existing collection."""
        raise NotImplementedError

    def start(self) -> None:
        with (self.folder / "server.log").open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.environment()
            )

        def up() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.process.returncode}; see {self.folder}/server.log")
            return _answers(self.ready_url())

        wait_until(up, START_TIMEOUT, f"{self.name} to start")

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the server's processes so far (to tell when it is idle)."""
        ticks = 0
        for pid in self.busy_pids():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # ended since it was listed
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def wait_idle(self, quiet: float = 1.0, timeout: float = 1800.0) -> None:
        """Block until the server has used almost no CPU for `quiet` seconds: background work is done."""
        deadline = time.monotonic() + timeout
        last = self.cpu_seconds()
        while time.monotonic() < deadline:
            time.sleep(quiet)
            now = self.cpu_seconds()
            if now - last < 0.02 * quiet:
                return
            last = now
        raise BenchError(f"{self.name} stayed busy for {timeout:.0f}s")


class Orthanc(Server):
    """Debian's Orthanc with its DICOMweb plugin, on default settings apart from ports and folders."""

    name = "orthanc"
    ae_title = "ORTHANC"

    def command(self) -> list[str]:
        if not ORTHANC_DICOMWEB_PLUGIN.exists():
            raise BenchError(f"{ORTHANC_DICOMWEB_PLUGIN} is missing: install orthanc-dicomweb (./dev does)")
        config = {
            "Name": "bench",
            "StorageDirectory": str(self.folder / "db"),
            "IndexDirectory": str(self.folder / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dimse_port,
            "DicomAet": self.ae_title,
            "DicomServerEnabled": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SaveJobs": False,
            "Plugins": [str(ORTHANC_DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        return ["Orthanc", str(path)]

    def ready_url(self) -> str:
        return f"{self.base_url}/system"

    def load(self, folder: Path) -> None:
        paths = files_under(folder)
        with httpx.Client(base_url=self.base_url, timeout=300) as client:

            def post(path: Path) -> None:
                response = client.post("/instances", content=path.read_bytes())
                if response.status_code != 200:
                    raise BenchError(f"Orthanc refused {path}: {response.status_code} {response.text[:200]}")

            with ThreadPoolExecutor(4) as pool:
                list(pool.map(post, paths))


class StaticFiles(Server):
    """Debian's nginx, one process, serving a folder by sendfile on a kept-alive connection: the ceiling for
    sending bytes on this machine, and a check that a client is not the bottleneck."""

    name = "nginx"

    @property
    def www(self) -> Path:
        return self.folder / "www"

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def put(self, name: str, source: Path) -> str:
        """Serve a copy of `source` as `name`; its URL."""
        shutil.copyfile(source, self.www / name)
        return self.url(name)

    def command(self) -> list[str]:
        (self.folder / "temp").mkdir(exist_ok=True)
        self.www.mkdir(exist_ok=True)
        (self.www / "ready").write_text("ready\n")
        config = self.folder / "nginx.conf"
        config.write_text(NGINX_CONFIG.format(folder=self.folder, port=self.http_port))
        return ["nginx", "-p", str(self.folder), "-e", str(self.folder / "error.log"), "-c", str(config)]

    def ready_url(self) -> str:
        return self.url("ready")


class Dicomcloud(Server):
    """`python -m dicomcloud up`, embedded defaults: the one-command archive a newcomer runs."""

    name = "dicomcloud"
    ae_title = "DICOMCLOUD"

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def environment(self) -> dict[str, str]:
        source = str(Path(__file__).resolve().parents[1] / "src")
        path = os.environ.get("PYTHONPATH")
        return {**os.environ, "PYTHONPATH": f"{source}{os.pathsep}{path}" if path else source}

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "dicomcloud", "up",
            "--data", str(self.data),
            "--host", "127.0.0.1",
            "--http-port", str(self.http_port),
            "--dimse-port", str(self.dimse_port),
            "--ae-title", self.ae_title,
        ]

    def ready_url(self) -> str:
        return f"{self.base_url}/health"

    def memory_pids(self) -> list[int]:
        return process_tree(self.pid)

    def busy_pids(self) -> list[int]:
        return process_tree(self.pid)

    def storage(self, folder: Path) -> Storage:
        """A storage of the archive's kind in `folder` (its objects and scratch files), for the storage's floor."""
        return FsStorage(folder / "objects", folder / "staging")

    def load(self, folder: Path) -> None:
        """`dicomcloud import` beside the running server; its consumer indexes what the import publishes."""
        command = [sys.executable, "-m", "dicomcloud", "import", "--data", str(self.data), "--log-level", "WARNING"]
        with (self.folder / "import.log").open("ab") as log:
            done = subprocess.run([*command, str(folder)], stdout=log, stderr=subprocess.STDOUT, env=self.environment())
        if done.returncode != 0:
            raise BenchError(f"dicomcloud import failed ({done.returncode}); see {self.folder}/import.log")


class DicomcloudOnS3(Dicomcloud):
    """`dicomcloud up` with its objects in a bucket of SeaweedFS (one `weed server -s3` on loopback, started with
    the archive and stopped after it): everything else as `Dicomcloud`, so the two differ by storage only."""

    BUCKET = "bench"

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.weed: SeaweedFS | None = None

    def environment(self) -> dict[str, str]:
        if self.weed is None:
            raise BenchError("SeaweedFS is not running")
        settings = self.weed.settings(self.BUCKET)
        return {
            **super().environment(),
            "DICOMCLOUD_BACKENDS__STORAGE": "s3",
            "DICOMCLOUD_STORAGE__S3__ENDPOINT": settings.endpoint,
            "DICOMCLOUD_STORAGE__S3__BUCKET": settings.bucket,
            "DICOMCLOUD_STORAGE__S3__REGION": settings.region,
            "DICOMCLOUD_STORAGE__S3__ACCESS_KEY_ID": settings.access_key_id,
            "DICOMCLOUD_STORAGE__S3__SECRET_ACCESS_KEY": settings.secret_access_key,
        }

    def storage(self, folder: Path) -> Storage:
        """The archive's bucket (its objects under their own key prefix) through the S3 adapter."""
        if self.weed is None:
            raise BenchError("SeaweedFS is not running")
        return S3Storage(self.weed.settings(self.BUCKET, key_prefix="bench-floor"), folder / "staging")

    def start(self) -> None:
        if self.weed is None:
            try:
                self.weed = start_seaweedfs(self.folder / "seaweedfs")
                create_bucket(self.weed.settings(self.BUCKET))
            except (StackError, StorageFailure) as exc:
                raise BenchError(f"SeaweedFS did not start: {exc}") from exc
        super().start()

    def stop(self) -> None:
        super().stop()
        if self.weed is not None:
            self.weed.stop()
            self.weed = None

    def restart(self) -> None:
        """The archive only: the bucket keeps its objects."""
        super().stop()
        super().start()


class DicomcloudStack(Dicomcloud):
    """`dicomcloud stack up`: Kafka, PostgreSQL, Redis, consumers and two wado-servers behind Nginx.

    HTTP goes through Nginx (HTTPS, the stack's own CA) and C-STORE to its wado-storescp. A restart
    restarts the wado-servers only: their process caches empty, Redis keeps what it holds, as in production.
    """

    SERVER_KINDS = ("server",)
    WORKER_KINDS = ("server", "storescp", "consumer", "webworker", "transcoder")

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.stack: LocalStack | None = None

    def running(self) -> LocalStack:
        if self.stack is None:
            raise BenchError("the dicomcloud stack is not running")
        return self.stack

    @property
    def dicomweb(self) -> str:
        return self.running().dicomweb

    def pids_of(self, kinds: tuple[str, ...]) -> list[int]:
        stack = self.running()
        return [c.pid for c in stack.components.values() if c.kind in kinds and c.pid is not None]

    def memory_pids(self) -> list[int]:
        return self.pids_of(self.SERVER_KINDS)

    def busy_pids(self) -> list[int]:
        return self.pids_of(self.WORKER_KINDS)

    def environment(self) -> dict[str, str]:
        return {**super().environment(), **self.running().components["storescp"].env}

    def start(self) -> None:
        if self.stack is None:
            try:
                self.stack = LocalStack.up(self.folder / "stack")
            except StackError as exc:
                raise BenchError(f"the dicomcloud stack did not start: {exc}") from exc
            _, self.dimse_port, self.ae_title = self.stack.dimse
            self.ca_file = self.stack.ca_file
            return
        for name, component in self.stack.components.items():
            if component.kind in self.SERVER_KINDS:
                self.stack.start(name)

    def stop(self) -> None:
        if self.stack is not None:
            self.stack.down()
            self.stack = None

    def restart(self) -> None:
        stack = self.running()
        for name, component in stack.components.items():
            if component.kind in self.SERVER_KINDS:
                stack.kill(name, signal.SIGTERM)
        self.start()

    def load(self, folder: Path) -> None:
        """`dicomcloud import` on the stack's settings: it publishes to Kafka, the consumers index."""
        command = [sys.executable, "-m", "dicomcloud", "import", "--log-level", "WARNING", str(folder)]
        with (self.folder / "import.log").open("ab") as log:
            done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=self.environment())
        if done.returncode != 0:
            raise BenchError(f"dicomcloud import failed ({done.returncode}); see {self.folder}/import.log")
