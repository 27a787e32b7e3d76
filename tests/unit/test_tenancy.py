"""Tenant isolation with OIDC on: every route the OpenAPI document lists, so a new route cannot slip past."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import support
from fastapi.testclient import TestClient
from oidc import AUDIENCE, Issuer, rsa_key, serve_issuer
from test_web_app import stow_body

from dicomcloud.archive.core import Archive
from dicomcloud.web.app import create_app

ALL_RIGHTS = "dicom.read dicom.write dicom.delete"
# Routes that serve no archive data and so stay open.
PUBLIC = {"/health", "/ready", "/metrics", "/dashboard", "/dashboard/chart.js"}
STUDY, SERIES, SOP = "1.2.826.0.1.3680043.10.1", "1.2.826.0.1.3680043.10.1.1", "1.2.826.0.1.3680043.10.1.1.1"
PARAMS = {"study": STUDY, "series": SERIES, "instance": SOP, "frames": "1", "tag_path": "7FE00010", "name": "summary"}


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    with serve_issuer([rsa_key("rsa-1")]) as served:
        yield served


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, issuer: Issuer) -> Iterator[Archive]:
    data = tmp_path_factory.mktemp("tenancy") / "data"
    opened = support.make_archive(data, auth={"enabled": True, "issuer": issuer.url, "audience": AUDIENCE})
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def client(archive: Archive, issuer: Issuer) -> Iterator[TestClient]:
    """The app, with one instance stored in tenant B and one in the default tenant."""
    with TestClient(create_app(archive), base_url="http://archive.test") as test_client:
        owner = bearer(issuer, scope=ALL_RIGHTS, tenants=["tenant-b", "default"])
        for prefix in ("/tenant-b/dicom-web", "/dicom-web"):
            body, content_type = stow_body([part10(SOP)])
            stored = test_client.post(
                f"{prefix}/studies", content=body, headers={"Content-Type": content_type, **owner}
            )
            assert stored.status_code == 200, stored.text
        yield test_client


def bearer(issuer: Issuer, **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.token(**claims)}"}


def part10(sop: str) -> bytes:
    buffer = io.BytesIO()
    support.ct_dataset(STUDY, SERIES, sop).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def routes(client: TestClient) -> list[tuple[str, str]]:
    """(method, path template) of every operation in the app's OpenAPI document."""
    paths: dict[str, dict[str, Any]] = client.get("/openapi.json").json()["paths"]
    return [(method.upper(), path) for path, operations in paths.items() for method in operations]


def send(client: TestClient, method: str, template: str, tenant: str, headers: dict[str, str]) -> httpx.Response:
    """The operation with every path parameter filled in (an unknown one fails the test: decide what it means)."""
    values = {**PARAMS, "tenant": tenant}
    unknown = {part[1:-1].split(":")[0] for part in template.split("/") if part.startswith("{")} - set(values)
    assert not unknown, f"{method} {template}: no test value for path parameter(s) {unknown}"
    path = template.format(**values)
    if method == "POST":
        body, content_type = stow_body([part10(SOP + ".9")])
        return client.post(path, content=body, headers={"Content-Type": content_type, **headers})
    return client.request(method, path, headers=headers)


def tenant_b_holdings(archive: Archive) -> list[str]:
    return sorted(loc.sop_instance_uid for loc in archive.runtime.index.list_instances("tenant-b", STUDY, None))


def test_tenant_a_reaches_no_data_of_another_tenant_through_any_route(
    client: TestClient, archive: Archive, issuer: Issuer
) -> None:
    tenant_a = bearer(issuer, scope=ALL_RIGHTS, tenants=["tenant-a"])
    operations = [(method, path) for method, path in routes(client) if path not in PUBLIC]
    assert any(path.startswith("/{tenant}/") for _, path in operations)
    allowed = {
        f"{method} {path}": response.status_code
        for method, path in operations
        if (response := send(client, method, path, "tenant-b", tenant_a)).status_code != 403
    }
    assert allowed == {}
    assert tenant_b_holdings(archive) == [SOP]


def test_each_route_answers_its_own_tenant_with_the_right_token(client: TestClient, issuer: Issuer) -> None:
    """The 403s above come from tenancy, not from routes that refuse everybody."""
    own = bearer(issuer, scope=ALL_RIGHTS + " dicom.admin", tenants=["tenant-a", "default"])
    refused = {
        f"{method} {path}": response.status_code
        for method, path in routes(client)
        if (response := send(client, method, path, "tenant-a", own)).status_code in (401, 403)
    }
    assert refused == {}


def test_the_public_routes_need_no_token(client: TestClient) -> None:
    assert client.get("/health").status_code == 200
    assert client.get("/dashboard").status_code == 200
