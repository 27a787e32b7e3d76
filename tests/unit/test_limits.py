"""What one request may make the archive do: the bounds on viewports, frame lists, QIDO paging, decoded
frames and request bodies, and the HTTP server's own (header size and time, connections per client).
The figures under load, against a running `dicomcloud up`, are tests/e2e/test_resource_bounds.py's."""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
import support
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file

from dicomcloud.archive.core import Archive
from dicomcloud.web.app import create_app

STUDY, SERIES, SOP = "1.2.826.0.19.7", "1.2.826.0.19.7.1", "1.2.826.0.19.7.1.1"
INSTANCE = f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{SOP}"
MULTIPART = 'multipart/related; type="application/dicom"; boundary=limits'


def stow_bytes(part: bytes) -> tuple[bytes, dict[str, str]]:
    body = b"--limits\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n--limits--\r\n"
    return body, {"Content-Type": MULTIPART}


def jpeg_instance() -> bytes:
    """pydicom's JPEG Baseline RGB image (100 x 100 x 3, 30,000 bytes decoded) with our UIDs."""
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = STUDY, SERIES, SOP
    ds.file_meta.MediaStorageSOPInstanceUID = SOP
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def limited_client(data: Path, **limits: int) -> Iterator[TestClient]:
    archive = support.make_archive(data, limits=limits)
    try:
        with TestClient(create_app(archive), base_url="http://archive.test") as client:
            body, headers = stow_bytes(jpeg_instance())
            assert client.post("/dicom-web/studies", content=body, headers=headers).status_code == 200
            yield client
    finally:
        archive.close()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    yield from limited_client(tmp_path_factory.mktemp("limits") / "data")


@pytest.mark.parametrize(
    "route", [f"{INSTANCE}/rendered", f"{INSTANCE}/thumbnail", f"/dicom-web/studies/{STUDY}/thumbnail"]
)
@pytest.mark.parametrize("viewport", ["99999,99999", "4097,10", "10,4097"])
def test_a_viewport_beyond_the_bound_is_400(client: TestClient, route: str, viewport: str) -> None:
    response = client.get(route, params={"viewport": viewport})
    assert response.status_code == 400
    assert "at most 4096" in response.json()["error"]


def test_a_viewport_at_the_bound_is_rendered(client: TestClient) -> None:
    response = client.get(f"{INSTANCE}/rendered", params={"viewport": "4096,4096"}, headers={"Accept": "image/png"})
    assert response.status_code == 200


@pytest.mark.parametrize("route", ["frames/{}", "frames/{}/rendered"])
@pytest.mark.parametrize("copies", [2, 20_000])
def test_a_frame_list_longer_than_the_instance_is_400(client: TestClient, route: str, copies: int) -> None:
    frames = ",".join(["1"] * copies)
    response = client.get(f"{INSTANCE}/{route.format(frames)}", headers={"Accept": "*/*"})
    assert response.status_code == 400
    assert "the instance has 1" in response.json()["error"]


@pytest.mark.parametrize("route", ["/dicom-web/studies", "/dicom-web/series", "/dicom-web/instances",
                                   f"/dicom-web/studies/{STUDY}/series", f"/dicom-web/studies/{STUDY}/instances"])
@pytest.mark.parametrize("value", [str(2**63), "9" * 5000, "-1", "1e3"])
def test_qido_paging_beyond_the_index_range_is_400(client: TestClient, route: str, value: str) -> None:
    for name in ("offset", "limit"):
        response = client.get(route, params={name: value})
        assert response.status_code == 400, (name, response.text)


def test_qido_paging_at_the_index_range_answers(client: TestClient) -> None:
    response = client.get("/dicom-web/instances", params={"offset": str(2**63 - 1), "limit": str(2**63 - 1)})
    assert response.status_code == 200 and response.json() == []


def test_a_frame_larger_decoded_than_the_bound_is_refused_not_decoded(tmp_path: Path) -> None:
    for small in limited_client(tmp_path / "data", max_decoded_frame_bytes=29_999):
        octets = 'multipart/related; type="application/octet-stream"'
        decoded = small.get(f"{INSTANCE}/frames/1", headers={"Accept": octets})
        assert decoded.status_code == 406
        assert "max_decoded_frame_bytes" in decoded.json()["error"]
        assert small.get(f"{INSTANCE}/rendered").status_code == 406
        as_stored = small.get(f"{INSTANCE}/frames/1", headers={"Accept": 'multipart/related; type="image/jpeg"'})
        assert as_stored.status_code == 200


# ---------------------------------------------------------------------------------------------------
# On a real socket: what the HTTP server refuses before the application sees a request


@pytest.fixture
def serving(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[support.Serving]:
    """The wado-server with the HTTP settings a test names (`@pytest.mark.parametrize("serving", [{…}],
    indirect=True)`), so its limits are reached in a fraction of a second."""
    archive: Archive = support.make_archive(tmp_path / "data", http=getattr(request, "param", {}))
    try:
        with support.Serving(archive) as server:
            yield server
    finally:
        archive.close()


def read_all(sock: socket.socket) -> bytes:
    reply = b""
    try:
        while chunk := sock.recv(65536):
            reply += chunk
    except ConnectionResetError:
        pass
    return reply


def test_headers_larger_than_the_bound_get_431_after_the_bound(serving: support.Serving) -> None:
    with socket.create_connection(("127.0.0.1", serving.port), timeout=30) as sock:
        sock.sendall(b"GET /dicom-web/studies HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ")
        try:
            for _ in range(200):  # 20 MB, of which the server reads 64 KB
                sock.sendall(b"A" * 100_000)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = read_all(sock)
    assert reply == b"" or reply.startswith(b"HTTP/1.1 431"), reply[:100]
    assert httpx.get(f"{serving.url}/health", timeout=10).status_code == 200


def test_headers_just_under_the_bound_are_served(serving: support.Serving) -> None:
    response = httpx.get(f"{serving.url}/health", headers={"X-Padding": "a" * 60_000}, timeout=10)
    assert response.status_code == 200


@pytest.mark.parametrize("serving", [{"header_timeout": 0.5}], indirect=True)
def test_headers_dripping_past_the_header_timeout_get_408(serving: support.Serving) -> None:
    with socket.create_connection(("127.0.0.1", serving.port), timeout=30) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /dicom-web/studies HTTP/1.1\r\n")
        try:
            for _ in range(20):
                time.sleep(0.1)
                sock.sendall(b"X-Slow: 1\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = read_all(sock)
        closed_after = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408"), reply[:100]
    assert closed_after < 5


@pytest.mark.parametrize("serving", [{"header_timeout": 0.5}], indirect=True)
def test_an_idle_connection_is_closed_after_the_header_timeout(serving: support.Serving) -> None:
    with socket.create_connection(("127.0.0.1", serving.port), timeout=30) as sock:
        assert read_all(sock) == b""


@pytest.mark.parametrize("serving", [{"max_connections_per_client": 3, "trusted_proxies": []}], indirect=True)
def test_connections_beyond_the_per_client_bound_get_429(serving: support.Serving) -> None:
    held = [socket.create_connection(("127.0.0.1", serving.port), timeout=30) for _ in range(3)]
    try:
        with socket.create_connection(("127.0.0.1", serving.port), timeout=30) as extra:
            assert read_all(extra).startswith(b"HTTP/1.1 429")
        # Another client address is not affected by this one's connections.
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2")) as other:
            assert other.get(f"{serving.url}/health", timeout=10).status_code == 200
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while httpx.get(f"{serving.url}/health", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "a closed connection was never given back"


@pytest.mark.parametrize("serving", [{"max_connections_per_client": 3}], indirect=True)
def test_a_trusted_proxy_is_not_bound_per_client(serving: support.Serving) -> None:
    held = [socket.create_connection(("127.0.0.1", serving.port), timeout=30) for _ in range(5)]
    try:
        assert httpx.get(f"{serving.url}/health", timeout=10).status_code == 200
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize("serving", [{"body_min_rate": 1000, "body_rate_grace": 0.5}], indirect=True)
def test_a_body_slower_than_the_minimum_rate_gets_408_and_stores_nothing(serving: support.Serving) -> None:
    head = (
        b"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
        b"Content-Type: " + MULTIPART.encode() + b"\r\n\r\n--limits\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", serving.port), timeout=30) as sock:
        sock.sendall(head)
        started = time.monotonic()
        try:
            for _ in range(50):
                sock.sendall(b"A")
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = read_all(sock)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"bytes/s" in reply
    assert time.monotonic() - started < 10
