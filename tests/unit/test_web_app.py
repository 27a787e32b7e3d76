"""The DICOMweb app as a whole: routes per tenant, errors, CORS, gzip, and a stalled or cut upload.

The fixtures here (a real Archive on a temp folder, STOW helpers) are shared by the other test_web_*
modules.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pydicom
import pytest
import support
from fastapi.testclient import TestClient

from bench.synthetic import ct_series, write_part10
from dicomcloud.archive.core import Archive
from dicomcloud.web.app import WARM_UP_PATH, create_app, warm_up

DICOM_MULTIPART = 'multipart/related; type="application/dicom"'


def make_archive(data: Path, **http: object) -> Archive:
    return support.make_archive(data, http=dict(http))


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    opened = make_archive(tmp_path / "data")
    yield opened
    opened.close()


@pytest.fixture
def client(archive: Archive) -> Iterator[TestClient]:
    with TestClient(create_app(archive), base_url="http://archive.test") as test_client:
        yield test_client


def part10(ds: pydicom.Dataset, tmp_path: Path) -> bytes:
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    write_part10(ds, path)
    return path.read_bytes()


def stow_body(parts: Sequence[bytes], boundary: str = "test-boundary-1") -> tuple[bytes, str]:
    chunks = []
    for part in parts:
        chunks += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), part, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'{DICOM_MULTIPART}; boundary="{boundary}"'


def stow(client: TestClient, parts: Sequence[bytes], path: str = "/dicom-web/studies") -> httpx.Response:
    body, content_type = stow_body(parts)
    return client.post(path, content=body, headers={"Content-Type": content_type})


def stow_all(client: TestClient, datasets: Sequence[pydicom.Dataset], tmp_path: Path, tenant: str = "") -> None:
    """STOW-RS the datasets and insist on a 200: they are then stored and indexed, nothing left to wait for."""
    prefix = f"/{tenant}/dicom-web" if tenant else "/dicom-web"
    response = stow(client, [part10(ds, tmp_path) for ds in datasets], f"{prefix}/studies")
    assert response.status_code == 200, response.text


def staged_files(archive: Archive) -> list[Path]:
    """Scratch files left in the storage's staging folder (`<data>/tmp`, runtime.py)."""
    return sorted((archive.settings.data_path / "tmp").iterdir())


def multipart_bodies(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """Parts of a multipart response, split independently of the server's parser."""
    boundary = next(
        p.split("=", 1)[1].strip('"') for p in response.headers["content-type"].split(";") if "boundary=" in p
    )
    delimiter = b"\r\n--" + boundary.encode()
    body = b"\r\n" + response.content
    assert body.rstrip().endswith(delimiter + b"--"), "missing close delimiter"
    parts = []
    for raw in body.split(delimiter)[1:-1]:
        head, _, content = raw[2:].partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        parts.append(({k.lower(): v for k, v in headers.items()}, content))
    return parts


# ---------------------------------------------------------------------------------------------------


def test_health_is_live(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}


def test_openapi_lists_every_route_for_default_and_named_tenants(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    default = {p.removeprefix("/dicom-web") for p in paths if p.startswith("/dicom-web/")}
    named = {p.removeprefix("/{tenant}/dicom-web") for p in paths if p.startswith("/{tenant}/dicom-web/")}
    assert default == named
    assert {
        "/studies",
        "/series",
        "/instances",
        "/studies/{study}",
        "/studies/{study}/metadata",
        "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
        "/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag_path}",
    } <= default
    tenant_params = paths["/{tenant}/dicom-web/studies"]["get"]["parameters"]
    assert any(p["name"] == "tenant" and p["in"] == "path" for p in tenant_params)


def test_tenants_do_not_see_each_other(client: TestClient, tmp_path: Path) -> None:
    ds = next(ct_series(1, rows=8, columns=8))
    stow_all(client, [ds], tmp_path, tenant="radiology")
    assert len(client.get("/radiology/dicom-web/studies").json()) == 1
    assert client.get("/dicom-web/studies").json() == []
    assert client.get("/cardiology/dicom-web/studies").json() == []
    assert client.get(f"/dicom-web/studies/{ds.StudyInstanceUID}").status_code == 404


def test_an_invalid_tenant_is_a_bad_request(client: TestClient) -> None:
    response = client.get("/Bad.Tenant/dicom-web/studies")
    assert response.status_code == 400
    assert "tenant" in response.json()["error"]


@pytest.mark.parametrize("uid", ["%2e%2e", "1.2.x", "1.2.3%00", "1" * 65, "1..2"])
def test_a_hostile_uid_in_the_path_is_a_bad_request_with_an_error_body(client: TestClient, uid: str) -> None:
    response = client.get(f"/dicom-web/studies/{uid}/metadata")
    assert response.status_code == 400
    assert "StudyInstanceUID" in response.json()["error"]


def test_an_unknown_study_is_not_found_with_an_error_body(client: TestClient) -> None:
    response = client.get("/dicom-web/studies/1.2.3", headers={"Accept": DICOM_MULTIPART})
    assert response.status_code == 404
    assert response.json()["error"]


def test_errors_are_logged_once(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dicomcloud.web.app"):
        client.get("/dicom-web/studies/1.2.3/metadata")
    assert [r.getMessage() for r in caplog.records if "-> 404" in r.getMessage()] != []


def test_an_unknown_route_uses_the_same_error_shape(client: TestClient) -> None:
    response = client.get("/dicom-web/nothing-here")
    assert response.status_code == 404
    assert "error" in response.json()


def test_cors_is_off_unless_origins_are_configured(client: TestClient) -> None:
    response = client.get("/dicom-web/studies", headers={"Origin": "http://viewer.test"})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def test_cors_preflight_allows_configured_viewers_and_exposes_headers(tmp_path: Path) -> None:
    archive = make_archive(tmp_path / "data", cors_origins=["http://viewer.test"])
    try:
        with TestClient(create_app(archive), base_url="http://archive.test") as client:
            response = client.options(
                "/dicom-web/studies",
                headers={"Origin": "http://viewer.test", "Access-Control-Request-Method": "GET"},
            )
            assert response.status_code == 200
            assert response.headers["access-control-allow-origin"] == "http://viewer.test"
            simple = client.get("/dicom-web/studies", headers={"Origin": "http://viewer.test"})
            assert "warning" in simple.headers["access-control-expose-headers"].lower()
            other = client.get("/dicom-web/studies", headers={"Origin": "http://evil.example"})
            assert "access-control-allow-origin" not in other.headers
    finally:
        archive.close()


def test_json_is_gzipped_for_clients_that_accept_it(client: TestClient, tmp_path: Path) -> None:
    datasets = list(ct_series(20, rows=8, columns=8))
    stow_all(client, datasets, tmp_path)
    url = f"/dicom-web/studies/{datasets[0].StudyInstanceUID}/metadata"
    with client.stream("GET", url, headers={"Accept-Encoding": "gzip"}) as response:
        raw = b"".join(response.iter_raw())
    assert response.headers["content-encoding"] == "gzip"
    assert len(json.loads(gzip.decompress(raw))) == 20


def test_multipart_dicom_is_never_gzipped(client: TestClient, tmp_path: Path) -> None:
    ds = next(ct_series(1, rows=64, columns=64))
    stow_all(client, [ds], tmp_path)
    response = client.get(
        f"/dicom-web/studies/{ds.StudyInstanceUID}", headers={"Accept": DICOM_MULTIPART, "Accept-Encoding": "gzip"}
    )
    assert response.status_code == 200
    assert "content-encoding" not in response.headers


# ---------------------------------------------------------------------------------------------------
# A real server on a socket, for what only a real connection shows


HUGE_HEAD = (
    b"POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b'Content-Type: multipart/related; type="application/dicom"; boundary=b1\r\n'
    b"Content-Length: 2147483648\r\n\r\n--b1\r\n\r\nAB"
)


def test_a_client_closing_mid_body_stores_nothing_and_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    archive = make_archive(tmp_path / "data")
    try:
        with caplog.at_level(logging.WARNING), support.Serving(archive) as server:
            with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
                sock.sendall(HUGE_HEAD)
                sock.shutdown(socket.SHUT_WR)
                sock.recv(65536)
            deadline = time.monotonic() + 30
            while not any("disconnected" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline, "the disconnect was never logged"
                time.sleep(0.05)
            assert httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=10).status_code == 200
        assert staged_files(archive) == []
        assert support.stored_keys(archive) == []
    finally:
        archive.close()


def test_a_stalled_body_times_out_with_408_and_closes(tmp_path: Path) -> None:
    archive = make_archive(tmp_path / "data", body_timeout=0.5)
    try:
        with (
            support.Serving(archive) as server,
            socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock,
        ):
            sock.sendall(HUGE_HEAD)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert b"stalled" in reply
        assert staged_files(archive) == []
        assert support.stored_keys(archive) == []
    finally:
        archive.close()


WARM_UP = """
import sys
from pathlib import Path
from dicomcloud.metrics import HTTP_REQUESTS
from dicomcloud.web.app import create_app, warm_up
import support

app = create_app(support.make_archive(Path(sys.argv[1])))
before = sum(sample.value for metric in HTTP_REQUESTS.collect() for sample in metric.samples)
warm_up(app)
after = sum(sample.value for metric in HTTP_REQUESTS.collect() for sample in metric.samples)
print(int(after - before), "anyio._backends._asyncio" in sys.modules, app.middleware_stack is not None)
"""


def test_a_process_builds_what_a_first_request_would_before_serving_and_counts_nothing(tmp_path: Path) -> None:
    """In a fresh interpreter, as a worker process is: what the warm-up builds there is what a first client waited
    for (FastAPI's routes, the middleware stack, anyio's thread pool); no request is logged or counted."""
    tests = Path(support.__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), *sys.path])}
    run = subprocess.run(
        [sys.executable, "-c", WARM_UP, str(tmp_path / "data")], env=env, capture_output=True, text=True, check=True
    )
    assert run.stdout.split() == ["0", "True", "True"]
    assert "/.dicomcloud-warm-up" not in run.stderr


def test_the_warmed_up_app_serves_as_before(archive: Archive) -> None:
    app = create_app(archive)
    warm_up(app)
    with TestClient(app, base_url="http://archive.test") as warmed:
        assert warmed.get("/health").status_code == 200
        assert warmed.get("/dicom-web/studies").status_code in (200, 204)
        assert warmed.get(WARM_UP_PATH).status_code == 404
