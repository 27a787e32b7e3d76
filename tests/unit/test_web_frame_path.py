"""web/frame_path.py answers a GET of frames exactly as FastAPI's frames route does: every request here is sent
to the app as built and to the same app without the fast path, and the two answers (status, headers, body) and
what the access log and metrics recorded must be the same."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
import support
from fastapi import FastAPI
from fastapi.testclient import TestClient
from oidc import AUDIENCE, Issuer, rsa_key, serve_issuer
from prometheus_client import REGISTRY
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send
from test_web_app import stow_all

from bench.synthetic import ct_series, multiframe
from dicomcloud.archive.core import Archive
from dicomcloud.events import ACCESS_LOG_QUEUE, AccessLog
from dicomcloud.web.app import create_app
from dicomcloud.web.frame_path import FramePath

AS_STORED = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
RLE = "1.2.840.10008.1.2.5"
VIEWER = "http://viewer.test"
KEY = rsa_key("rsa-frames")
BASE_URL = "http://archive.test"
Stored = dict[str, pydicom.Dataset]


def routed_app(archive: Archive) -> FastAPI:
    """The app with FastAPI's route answering frames, as before the fast path."""
    app = create_app(archive)
    app.user_middleware = [layer for layer in app.user_middleware if layer.cls is not FramePath]
    return app


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    opened = support.make_archive(
        tmp_path / "data", http={"cors_origins": [VIEWER]}, warehouse={"access_log_flush_seconds": 0.05}
    )
    yield opened
    opened.close()


@pytest.fixture
def clients(archive: Archive) -> Iterator[tuple[TestClient, TestClient]]:
    with (
        TestClient(create_app(archive), base_url=BASE_URL) as fast,
        TestClient(routed_app(archive), base_url=BASE_URL) as routed,
    ):
        yield fast, routed


@pytest.fixture
def stored(clients: tuple[TestClient, TestClient], tmp_path: Path) -> Stored:
    """A CT slice and a native multiframe in the default tenant, an RLE multiframe in tenant-a."""
    fast, _ = clients
    ct, native = next(ct_series(1, rows=32, columns=32)), multiframe(6, rows=16, columns=16)
    stow_all(fast, [ct, native], tmp_path)
    rle = multiframe(4, rows=16, columns=16, transfer_syntax=RLE)
    stow_all(fast, [rle], tmp_path, tenant="tenant-a")
    return {"ct": ct, "native": native, "rle": rle}


def frames_url(ds: pydicom.Dataset, frames: str, tenant: str = "", **uids: str) -> str:
    prefix = f"/{tenant}/dicom-web" if tenant else "/dicom-web"
    study = uids.get("study", ds.StudyInstanceUID)
    series = uids.get("series", ds.SeriesInstanceUID)
    instance = uids.get("instance", ds.SOPInstanceUID)
    return f"{prefix}/studies/{study}/series/{series}/instances/{instance}/frames/{frames}"


def comparable(response: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and body with the multipart boundary (random per response) replaced by one name."""
    found = re.search(r'boundary="?([^";]+)', response.headers.get("content-type", ""))
    headers = [(name, value) for name, value in response.headers.multi_items()]
    body = response.content
    if found:
        boundary = found.group(1)
        headers = [(name, value.replace(boundary, "BOUNDARY")) for name, value in headers]
        body = body.replace(boundary.encode(), b"BOUNDARY")
    return response.status_code, headers, body


def same_answer(
    clients: tuple[TestClient, TestClient], url: str, method: str = "GET", **headers: str
) -> tuple[int, list[tuple[str, str]], bytes]:
    fast, routed = (comparable(client.request(method, url, headers=headers)) for client in clients)
    assert fast == routed
    return fast


def test_one_frame_and_several_are_the_same_answers(clients: tuple[TestClient, TestClient], stored: Stored) -> None:
    ct, native = stored["ct"], stored["native"]
    assert same_answer(clients, frames_url(ct, "1"), Accept=AS_STORED)[0] == 200
    assert same_answer(clients, frames_url(native, "1,3,5"), Accept=AS_STORED)[0] == 200
    assert same_answer(clients, frames_url(native, "2, 6"))[0] == 200
    status, headers, _ = same_answer(clients, frames_url(ct, "1"), Accept=AS_STORED, Origin=VIEWER)
    assert status == 200 and ("access-control-allow-origin", VIEWER) in headers


def test_frames_decoded_or_uncompressed_take_the_same_form(
    clients: tuple[TestClient, TestClient], stored: Stored
) -> None:
    rle, native = stored["rle"], stored["native"]
    octets = 'multipart/related; type="application/octet-stream"'
    assert same_answer(clients, frames_url(rle, "1,4", tenant="tenant-a"), Accept=octets)[0] == 200
    assert same_answer(clients, frames_url(rle, "2", tenant="tenant-a"), Accept=AS_STORED)[0] == 200
    assert same_answer(clients, frames_url(native, "3"), Accept=octets)[0] == 200


@pytest.mark.parametrize(
    ("frames", "status"), [("7", 404), ("1,1,1,1,1,1,1", 400), ("0", 400), ("x", 400), ("1,,2", 400), ("-1", 400)]
)
def test_a_frame_list_the_instance_cannot_meet_is_the_same_error(
    clients: tuple[TestClient, TestClient], stored: Stored, frames: str, status: int
) -> None:
    assert same_answer(clients, frames_url(stored["native"], frames), Accept=AS_STORED)[0] == status


@pytest.mark.parametrize(
    "uids",
    [
        {"instance": "1.2.3.4"},
        {"series": "1.2.3.4"},
        {"study": "1.2.3.4"},
        {"instance": "1.2.abc"},
        {"instance": "1.2.3%00"},
        {"instance": "1" * 65},
        {"study": "1.2.3%20"},
        {"series": ".."},
        {"instance": "1.2.3%0d%0aSet-Cookie:x=1"},
    ],
)
def test_unknown_and_hostile_uids_are_the_same_error(
    clients: tuple[TestClient, TestClient], stored: Stored, uids: dict[str, str]
) -> None:
    status, _, body = same_answer(clients, frames_url(stored["ct"], "1", **uids), Accept=AS_STORED)
    assert status in (400, 404), body


def test_another_tenants_instance_is_not_found_either_way(
    clients: tuple[TestClient, TestClient], stored: Stored
) -> None:
    assert same_answer(clients, frames_url(stored["rle"], "1"), Accept=AS_STORED)[0] == 404
    assert same_answer(clients, frames_url(stored["ct"], "1", tenant="tenant-a"), Accept=AS_STORED)[0] == 404
    assert same_answer(clients, frames_url(stored["ct"], "1", tenant="bad tenant!"), Accept=AS_STORED)[0] == 400


@pytest.mark.parametrize(
    "accept",
    ["text/html", 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.3.4', "image/png"],
)
def test_an_accept_that_cannot_be_met_is_the_same_406(
    clients: tuple[TestClient, TestClient], stored: Stored, accept: str
) -> None:
    assert same_answer(clients, frames_url(stored["ct"], "1"), Accept=accept)[0] == 406


def test_a_proxys_path_prefix_is_the_same_answer(archive: Archive, stored: Stored) -> None:
    """Behind a trusted proxy serving the archive under /pacs (web/origin.py), the prefix left in the path or not."""
    proxy = ("127.0.0.1", 50000)
    with (
        TestClient(create_app(archive), base_url=BASE_URL, client=proxy) as fast,
        TestClient(routed_app(archive), base_url=BASE_URL, client=proxy) as routed,
    ):
        url = frames_url(stored["ct"], "1")
        prefixed = {"Accept": AS_STORED, "X-Forwarded-Prefix": "/pacs"}
        assert same_answer((fast, routed), url, **prefixed)[0] == 200
        assert same_answer((fast, routed), "/pacs" + url, **prefixed)[0] == 200


def test_other_methods_on_a_frames_url_are_fastapis(clients: tuple[TestClient, TestClient], stored: Stored) -> None:
    url = frames_url(stored["ct"], "1")
    assert same_answer(clients, url, "HEAD")[0] == 405
    assert same_answer(clients, url, "POST")[0] == 405
    assert same_answer(clients, url + "/", Accept=AS_STORED)[:2] == same_answer(clients, url + "/")[:2]


def test_frames_are_answered_before_fastapis_router(archive: Archive, stored: Stored) -> None:
    """What the fast path takes never reaches FastAPI: an app whose router answers 599 still serves frames."""

    class NoRouter:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await self.app(scope, receive, send)
                return
            await send({"type": "http.response.start", "status": 599, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    app = create_app(archive)
    app.user_middleware.append(Middleware(NoRouter))
    with TestClient(app, base_url=BASE_URL, client=("127.0.0.1", 50000)) as client:
        assert client.get(frames_url(stored["ct"], "1"), headers={"Accept": AS_STORED}).status_code == 200
        assert client.get(frames_url(stored["rle"], "1", tenant="tenant-a")).status_code == 200
        behind_proxy = client.get("/pacs" + frames_url(stored["ct"], "1"), headers={"X-Forwarded-Prefix": "/pacs"})
        assert behind_proxy.status_code == 200
        assert client.head(frames_url(stored["ct"], "1")).status_code == 599
        assert client.get(frames_url(stored["ct"], "1") + "/rendered").status_code == 599


def recorded(archive: Archive, app: FastAPI, url: str, client: str) -> tuple[AccessLog, float]:
    """The access log event of one GET of `url` from `client`, and how much the request counter of its route
    template rose. The events are published by a thread of their own, so the queue is read until it is there."""
    labels = {"method": "GET", "route": "/{tenant}/dicom-web/studies/{study}/series/{series}/instances/{instance}"
              "/frames/{frames}", "status": "200"}  # fmt: skip
    before = REGISTRY.get_sample_value("dicomcloud_http_requests_total", labels) or 0.0
    with TestClient(app, base_url=BASE_URL, client=(client, 50000)) as client_of_app:
        assert client_of_app.get(url, headers={"Accept": AS_STORED}).status_code == 200
    after = REGISTRY.get_sample_value("dicomcloud_http_requests_total", labels) or 0.0
    consumer = archive.runtime.bus.subscribe(f"reader-{client}", [ACCESS_LOG_QUEUE])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        events = [AccessLog.from_bytes(record.value) for record in consumer.poll(1000, 0.2)]
        mine = [event for event in events if event.client_address == client]
        if mine:
            (event,) = mine
            return event, after - before
    raise AssertionError(f"no access log event from {client}")


def test_the_access_log_and_metrics_record_the_route_template(archive: Archive, stored: Stored) -> None:
    url = frames_url(stored["rle"], "1,2", tenant="tenant-a")
    fast, fast_count = recorded(archive, create_app(archive), url, "192.0.2.7")
    routed, routed_count = recorded(archive, routed_app(archive), url, "192.0.2.8")
    assert fast_count == routed_count == 1
    assert fast.route == "/{tenant}/dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/{frames}"
    assert fast.sop_instance_uid == stored["rle"].SOPInstanceUID
    ignored = {"accessed_at", "duration_ms", "client_address"}
    assert {k: v for k, v in vars(fast).items() if k not in ignored} == {
        k: v for k, v in vars(routed).items() if k not in ignored
    }


# -- with authorization on


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    with serve_issuer([KEY]) as served:
        yield served


@pytest.fixture
def auth_clients(tmp_path: Path, issuer: Issuer) -> Iterator[tuple[TestClient, TestClient]]:
    archive = support.make_archive(
        tmp_path / "auth", auth={"enabled": True, "issuer": issuer.url, "audience": AUDIENCE}
    )
    try:
        with (
            TestClient(create_app(archive), base_url=BASE_URL) as fast,
            TestClient(routed_app(archive), base_url=BASE_URL) as routed,
        ):
            yield fast, routed
    finally:
        archive.close()


def test_tokens_are_checked_the_same_way(
    auth_clients: tuple[TestClient, TestClient], issuer: Issuer, tmp_path: Path
) -> None:
    fast, _ = auth_clients
    ds = next(ct_series(1, rows=32, columns=32))
    fast.headers["Authorization"] = f"Bearer {issuer.token(KEY)}"
    stow_all(fast, [ds], tmp_path, tenant="tenant-a")
    del fast.headers["Authorization"]
    url = frames_url(ds, "1", tenant="tenant-a")
    cases = {
        "": 401,
        "Basic YWxpY2U6c2VjcmV0": 401,
        "Bearer not-a-jwt": 401,
        f"Bearer {issuer.token(KEY, exp=1)}": 401,
        f"Bearer {issuer.token(KEY, scope='openid')}": 403,
        f"Bearer {issuer.token(KEY, tenants=['tenant-b'])}": 403,
        f"Bearer {issuer.token(KEY)}": 200,
    }
    for authorization, status in cases.items():
        headers = {"Accept": AS_STORED, **({"Authorization": authorization} if authorization else {})}
        assert same_answer(auth_clients, url, **headers)[0] == status, authorization
    default_tenant = frames_url(ds, "1")
    assert same_answer(auth_clients, default_tenant, Authorization=f"Bearer {issuer.token(KEY)}")[0] == 403
