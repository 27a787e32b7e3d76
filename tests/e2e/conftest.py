"""Fixtures that start the real archive (`python -m dicomcloud up`) and talk to it as users do."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient

from dicomcloud.stack import LocalStack

AE_TITLE = "DICOMCLOUD"


LOG_TAIL_LINES = 60


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test on the local stack reports the tail of every service's log: by the time anyone reads a
    CI failure, the stack's folder (and the log that says why a C-STORE went unanswered) is gone."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if not report.failed or not hasattr(item, "funcargs"):
        return
    for value in item.funcargs.values():
        stack = running_stack(value)
        if stack is None:
            continue
        for name, component in stack.components.items():
            log = Path(component.log)
            if log.is_file():
                tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
                report.sections.append((f"stack log {name} (last {LOG_TAIL_LINES} lines)", "\n".join(tail)))


def running_stack(value: object) -> LocalStack | None:
    """The local stack a fixture value is (a LocalStack) or lives in (the folder holding its stack.json)."""
    if isinstance(value, LocalStack):
        return value
    if isinstance(value, Path) and (value / "stack.json").is_file():
        return LocalStack.load(value)
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `check` until it holds; fail the test with `what` when `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def answers(url: str, auth: tuple[str, str] | None = None) -> bool:
    """Whether `url` answers 200 now (a server that is still starting answers nothing)."""
    try:
        return httpx.get(url, timeout=1, auth=auth).status_code == 200
    except httpx.HTTPError:
        return False


# An archive serves from one process unless its test asks for more (the worker tests do): the default, one per
# core, would double every test's start on a machine whose cores the suite already keeps busy.
ONE_PROCESS = {"DICOMCLOUD_HTTP__WORKERS": "1", "DICOMCLOUD_DIMSE__WORKERS": "1"}


@dataclass
class Archive:
    """One `dicomcloud up` process on loopback with its own data folder."""

    data: Path
    http_port: int
    dimse_port: int
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def dicomweb_url(self, tenant: str | None = None) -> str:
        return f"{self.base_url}/{tenant}/dicom-web" if tenant else f"{self.base_url}/dicom-web"

    def client(self, tenant: str | None = None) -> DICOMwebClient:
        return DICOMwebClient(url=self.dicomweb_url(tenant))

    def start(self) -> None:
        self.log_path = self.data.parent / f"{self.data.name}.log"
        log = self.log_path.open("ab")
        command = [
            sys.executable, "-m", "dicomcloud", "up",
            "--data", str(self.data),
            "--http-port", str(self.http_port),
            "--dimse-port", str(self.dimse_port),
            "--ae-title", AE_TITLE,
        ]
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **ONE_PROCESS, **self.env}
        )
        log.close()
        wait_until(self._ready, 60, f"the archive to listen (log: {self.log_path})")

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"archive exited with {self.process.returncode}: {self.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", self.dimse_port), timeout=0.5):
                pass
            return httpx.get(f"{self.base_url}/health", timeout=1).status_code == 200
        except (OSError, httpx.HTTPError):
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def count_instances(self, tenant: str | None = None, **filters: str) -> int:
        response = httpx.get(
            f"{self.dicomweb_url(tenant)}/instances", params={"limit": "100000", **filters}, timeout=30
        )
        assert response.status_code in (200, 204), response.text
        return len(response.json()) if response.status_code == 200 and response.content else 0

    def wait_indexed(self, expected: int, tenant: str | None = None, timeout: float = 120, **filters: str) -> None:
        wait_until(
            lambda: self.count_instances(tenant, **filters) >= expected,
            timeout,
            f"{expected} instances indexed in tenant {tenant or 'default'} {filters}",
        )


def start_archive(root: Path, name: str, env: dict[str, str] | None = None) -> Archive:
    archive = Archive(data=root / name, http_port=free_port(), dimse_port=free_port(), env=env or {})
    archive.start()
    return archive


@pytest.fixture(scope="session")
def archive_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Archive]]:
    """Start archives on demand; all are stopped at the end of the session."""
    root = tmp_path_factory.mktemp("archives")
    started: list[Archive] = []

    def make(name: str, env: dict[str, str] | None = None) -> Archive:
        archive = start_archive(root, name, env)
        started.append(archive)
        return archive

    yield make
    for archive in started:
        archive.stop()


@pytest.fixture(scope="session")
def archive(archive_factory: Callable[..., Archive]) -> Archive:
    """The shared archive for tests that only add their own studies."""
    return archive_factory("shared")
