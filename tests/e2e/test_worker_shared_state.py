"""What the HTTP workers of one service share besides the archive (src/dicomcloud/run_folder.py): `/metrics`
counts every request whichever worker answered it, and `http.max_connections_per_client` bounds a client's
connections to the service, whichever worker accepts each, also after a worker was killed with -9.

Which worker holds a connection is read from the kernel (/proc: the process whose descriptor is the server's
end of it); which answered a request, from the access lines of the log, which name their worker.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dicomcloud.web.access_log import UNMATCHED_ROUTE

from .conftest import Archive, free_port, wait_until
from .test_http_workers import ATTEMPTS, WORKERS, gone, started_pid

pytestmark = [pytest.mark.e2e]

ROUTES = {"/dicom-web/studies": "/dicom-web/studies", "/dicom-web/no-such-resource": UNMATCHED_ROUTE}
# Requests made at the least, each route; more until every worker answered some.
REQUESTS = 20
LIMIT = 4
TCP_ESTABLISHED = "01"


def get_on_new_connection(archive: Archive, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", archive.http_port, timeout=60)
    with closing(connection):
        connection.request("GET", path, headers={"Connection": "close", "Accept": "application/dicom+json"})
        response = connection.getresponse()
        response.read()
        return response.status


def answering_workers(archive: Archive) -> set[str]:
    """The workers whose access lines show a request to one of ROUTES (none with one worker: no label)."""
    assert archive.log_path is not None
    paths = "|".join(re.escape(path) for path in ROUTES)
    line = re.compile(rf'\[(worker-\d+)\] uvicorn\.access: [^"]*"GET (?:{paths}) ')
    return set(line.findall(archive.log_path.read_text(errors="replace")))


def requests_counted(ops_port: int) -> tuple[Counter[tuple[str, str]], Counter[str]]:
    """`dicomcloud_http_requests_total` of GET on ROUTES by (route, status), and the duration histogram's count by
    route, from the ops listener."""
    text = httpx.get(f"http://127.0.0.1:{ops_port}/metrics", timeout=30).text
    requests: Counter[tuple[str, str]] = Counter()
    durations: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("method") != "GET" or labels.get("route") not in ROUTES.values():
                continue
            if sample.name == "dicomcloud_http_requests_total":
                requests[labels["route"], labels["status"]] += int(sample.value)
            elif sample.name == "dicomcloud_http_request_duration_seconds_count":
                durations[labels["route"]] += int(sample.value)
    return requests, durations


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_count_the_requests_every_worker_answered(
    archive_factory: Callable[..., Archive], workers: int
) -> None:
    ops = free_port()
    env = {**WORKERS, "DICOMCLOUD_HTTP__WORKERS": str(workers), "DICOMCLOUD_OPS__PORT": str(ops)}
    archive = archive_factory(f"metrics-{workers}-workers", env)
    made: Counter[tuple[str, str]] = Counter()
    for attempt in range(ATTEMPTS):
        for path, route in ROUTES.items():
            made[route, str(get_on_new_connection(archive, path))] += 1
        if attempt + 1 >= REQUESTS and len(answering_workers(archive)) == (workers if workers > 1 else 0):
            break
    assert len(answering_workers(archive)) == (workers if workers > 1 else 0), "not every worker answered"
    by_route: Counter[str] = Counter()
    for (route, _), count in made.items():
        by_route[route] += count
    # A request is counted as its response ends; the last ones may be counted just after the client read them.
    wait_until(lambda: requests_counted(ops) == (made, by_route), 30, f"/metrics to count {dict(made)}")


def server_end_inode(archive: Archive, client: socket.socket) -> str | None:
    """The inode of the archive's end of `client`'s connection, once established."""
    client_port = client.getsockname()[1]
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port, remote_port = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
        if (local_port, remote_port, fields[3]) == (archive.http_port, client_port, TCP_ESTABLISHED):
            return fields[9]
    return None


def holder(archive: Archive, client: socket.socket, pids: dict[int, str]) -> str:
    """Which worker (of `pids`, pid → name) holds `client`'s connection."""
    found: list[str] = []

    def accepted() -> bool:
        inode = server_end_inode(archive, client)
        for pid, name in pids.items():
            with os.scandir(f"/proc/{pid}/fd") as descriptors:
                if any(_readlink(entry.path) == f"socket:[{inode}]" for entry in descriptors):
                    found.append(name)
                    return True
        return False

    wait_until(accepted, 30, f"a worker to accept the connection from port {client.getsockname()[1]}")
    return found[0]


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except FileNotFoundError:  # a descriptor closed while listed
        return ""


def refused(archive: Archive) -> bool:
    """Whether a new connection is answered 429. Nothing is sent on it: a refusal comes before any request is read,
    and a request sent to a connection being closed would draw a reset that discards the 429 before it is read."""
    reply = b""
    with socket.create_connection(("127.0.0.1", archive.http_port), timeout=30) as sock:
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except TimeoutError:  # admitted: it waits for a request
            return False
    return reply.startswith(b"HTTP/1.1 429")


def served(archive: Archive) -> bool:
    """Whether a new connection's request is answered 200."""
    reply = b""
    with socket.create_connection(("127.0.0.1", archive.http_port), timeout=30) as sock:
        try:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: archive\r\nConnection: close\r\n\r\n")
            while chunk := sock.recv(65536):
                reply += chunk
        except ConnectionResetError:  # a refused connection, closed with the request unread, may end so
            return False
    return reply.startswith(b"HTTP/1.1 200")


def refusing_workers(archive: Archive) -> set[str]:
    assert archive.log_path is not None
    line = re.compile(r"\[(worker-\d+)\] dicomcloud\.web\.http_guard: HTTP 429 to 127\.0\.0\.1")
    return set(line.findall(archive.log_path.read_text(errors="replace")))


@pytest.fixture
def held() -> Iterator[list[tuple[socket.socket, str]]]:
    """Connections the test holds open, with the worker holding each; closed at the end."""
    connections: list[tuple[socket.socket, str]] = []
    yield connections
    for sock, _ in connections:
        sock.close()


def hold_on_both_workers(archive: Archive, pids: dict[int, str], held: list[tuple[socket.socket, str]]) -> None:
    """LIMIT open connections in `held`, at least one on each worker."""
    for _ in range(ATTEMPTS):
        while len(held) < LIMIT:
            sock = socket.create_connection(("127.0.0.1", archive.http_port), timeout=30)
            held.append((sock, holder(archive, sock, pids)))
        workers = Counter(worker for _, worker in held)
        if len(workers) == 2:
            return
        # Every one on the same worker: give one back (seen once a new connection is served) and try again.
        held.pop()[0].close()
        wait_until(lambda: served(archive), 30, "a closed connection to be given back")
    raise AssertionError(f"{ATTEMPTS} new connections all reached one worker")


def test_the_per_client_connection_limit_holds_across_workers_and_a_killed_one(
    archive_factory: Callable[..., Archive], held: list[tuple[socket.socket, str]]
) -> None:
    env = {
        **WORKERS,
        "DICOMCLOUD_HTTP__MAX_CONNECTIONS_PER_CLIENT": str(LIMIT),
        "DICOMCLOUD_HTTP__TRUSTED_PROXIES": "[]",
        # The held connections send nothing; the header timeout must not close them meanwhile.
        "DICOMCLOUD_HTTP__HEADER_TIMEOUT": "600",
    }
    archive = archive_factory("connection-limit-workers", env)
    assert archive.process is not None
    second = started_pid(archive, "worker 2")
    pids = {archive.process.pid: "worker-1", second: "worker-2"}
    hold_on_both_workers(archive, pids, held)

    # One more is refused, whichever worker accepts it.
    for _ in range(ATTEMPTS):
        assert refused(archive), "a connection past the limit was served"
        if refusing_workers(archive) == {"worker-1", "worker-2"}:
            break
    assert refusing_workers(archive) == {"worker-1", "worker-2"}

    # Closing one lets one more in, and only one.
    held.pop()[0].close()
    wait_until(lambda: served(archive), 30, "the client to be served after closing a connection")
    reopened = socket.create_connection(("127.0.0.1", archive.http_port), timeout=30)
    held.append((reopened, holder(archive, reopened, pids)))
    assert refused(archive)

    # A worker killed with -9 holding some of the client's connections: they close with it, and once its
    # replacement serves, the client holds only those on the first worker.
    on_first = sum(worker == "worker-1" for _, worker in held)
    os.kill(second, signal.SIGKILL)
    wait_until(lambda: gone(second), 10, f"worker pid {second} to die")
    replacement = started_pid(archive, "worker 2", after=1)
    wait_until(lambda: served(archive), 60, "the client to be served after the worker holding some was killed")
    for sock, worker in [pair for pair in held if pair[1] == "worker-2"]:
        sock.close()
        held.remove((sock, worker))
    pids = {archive.process.pid: "worker-1", replacement: "worker-2"}
    for _ in range(LIMIT - on_first):
        sock = socket.create_connection(("127.0.0.1", archive.http_port), timeout=30)
        held.append((sock, holder(archive, sock, pids)))
    assert refused(archive), "the connections counted after the restart are the client's open ones"
