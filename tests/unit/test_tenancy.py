"""Every route the OpenAPI document lists, with OIDC on, so a new route cannot slip past: tenant isolation,
and every kind of bad token an attacker tried refused and changing nothing. (DIMSE peers are
tests/e2e/test_dimse_access.py's matrix.)"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import support
from fastapi.testclient import TestClient
from oidc import AUDIENCE, Issuer, SigningKey, ec_key, rsa_key, serve_issuer, unsigned_token
from test_web_app import stow_body

from dicomcloud.archive.core import Archive
from dicomcloud.web.app import create_app

ALL_RIGHTS = "dicom.read dicom.write dicom.delete"
# Routes that serve no archive data and so stay open.
# /api/access answers any valid token with what it allows on a tenant (all false there): no data.
PUBLIC = {"/health", "/ready", "/metrics", "/dashboard", "/dashboard/chart.js", "/api/access"}
STUDY, SERIES, SOP = "1.2.826.0.1.3680043.10.1", "1.2.826.0.1.3680043.10.1.1", "1.2.826.0.1.3680043.10.1.1.1"
PARAMS = {"study": STUDY, "series": SERIES, "instance": SOP, "frames": "1", "tag_path": "7FE00010", "name": "summary"}


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    with serve_issuer([rsa_key("rsa-1"), ec_key("ec-1")]) as served:
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


WADO_URI = {"requestType": "WADO", "studyUID": STUDY, "seriesUID": SERIES, "objectUID": SOP}


@pytest.mark.parametrize("content_type", ["application/dicom", "image/jpeg"])
def test_wado_uri_is_behind_the_same_tenancy_as_wado_rs(client: TestClient, issuer: Issuer, content_type: str) -> None:
    params = {**WADO_URI, "contentType": content_type}
    owner = bearer(issuer, scope="dicom.read", tenants=["tenant-b"])
    other = bearer(issuer, scope="dicom.read", tenants=["tenant-a"])
    no_read = bearer(issuer, scope="dicom.write", tenants=["tenant-b"])
    assert client.get("/tenant-b/wado", params=params, headers=owner).status_code == 200
    assert client.get("/tenant-b/wado", params=params).status_code == 401
    assert client.get("/tenant-b/wado", params=params, headers=other).status_code == 403
    assert client.get("/tenant-b/wado", params=params, headers=no_read).status_code == 403
    assert client.get("/wado", params=params, headers=owner).status_code == 403  # /wado is the default tenant
    assert client.get("/tenant-a/wado", params=params, headers=other).status_code == 404  # not in tenant A


def test_the_public_routes_need_no_token(client: TestClient) -> None:
    assert client.get("/health").status_code == 200
    assert client.get("/dashboard").status_code == 200


# ---------------------------------------------------------------------------------------------------
# Bad tokens

UNPUBLISHED = rsa_key("rsa-1")  # the published key's kid, another key
VICTIM = "tenant-b"  # the tenant every bad token tries to reach


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def tampered_payload(token: str, **claims: object) -> str:
    header, payload, signature = token.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return ".".join([header, b64(json.dumps({**decoded, **claims}).encode()), signature])


def tampered_header(token: str, **fields: object) -> str:
    header, payload, signature = token.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    return ".".join([b64(json.dumps({**decoded, **fields}).encode()), payload, signature])


def good(issuer: Issuer, **claims: object) -> str:
    return issuer.token(scope=ALL_RIGHTS + " dicom.admin", tenants=[VICTIM], **claims)


def rsa(issuer: Issuer) -> SigningKey:
    return issuer.published[0]


def ec(issuer: Issuer) -> SigningKey:
    return issuer.published[1]


# name -> the Authorization header value. Each must be refused on every route, whatever its scope needs.
BAD_TOKENS: dict[str, Callable[[Issuer], str]] = {
    "no scheme": lambda i: good(i),
    "basic scheme": lambda i: "Basic " + b64(b"admin:admin"),
    "empty bearer": lambda i: "Bearer ",
    "garbage": lambda i: "Bearer garbage",
    "three empty parts": lambda i: "Bearer ..",
    "two parts": lambda i: "Bearer " + ".".join(good(i).split(".")[:2]),
    "four parts": lambda i: "Bearer " + good(i) + ".AAAA",
    "100 KB": lambda i: "Bearer " + tampered_payload(good(i), padding="x" * 100_000),
    "alg none": lambda i: "Bearer " + unsigned_token({"alg": "none", "kid": rsa(i).kid}, i.claims(tenants=[VICTIM])),
    "alg none without kid": lambda i: "Bearer " + unsigned_token({"alg": "none"}, i.claims(tenants=[VICTIM])),
    "HS256 with the public key": lambda i: "Bearer "
    + unsigned_token({"alg": "HS256", "kid": rsa(i).kid}, i.claims(tenants=[VICTIM]), secret=rsa(i).public_pem()),
    "RS256 under the EC key's kid": lambda i: "Bearer "
    + i.token(headers={"kid": ec(i).kid}, tenants=[VICTIM], scope=ALL_RIGHTS),
    "signed by an unpublished key": lambda i: "Bearer " + i.token(UNPUBLISHED, tenants=[VICTIM], scope=ALL_RIGHTS),
    "signature of another token": lambda i: "Bearer "
    + ".".join([*good(i).split(".")[:2], i.token(sub="mallory").split(".")[2]]),
    "tampered tenants": lambda i: "Bearer " + tampered_payload(i.token(tenants=["tenant-a"]), tenants=[VICTIM]),
    "tampered scope": lambda i: "Bearer " + tampered_payload(i.token(scope="openid", tenants=[VICTIM]),
                                                            scope=ALL_RIGHTS),
    "tampered header alg": lambda i: "Bearer " + tampered_header(good(i), alg="RS512"),
    "no kid": lambda i: "Bearer " + tampered_header(good(i), kid=None),
    "unknown kid": lambda i: "Bearer " + i.token(headers={"kid": "made-up"}, tenants=[VICTIM]),
    "path traversal kid": lambda i: "Bearer " + i.token(headers={"kid": "../../../../etc/passwd"}),
    "NUL in kid": lambda i: "Bearer " + i.token(headers={"kid": "rsa-1\x00"}),
    "10 KB kid": lambda i: "Bearer " + i.token(headers={"kid": "k" * 10_000}),
    "numeric kid": lambda i: "Bearer " + tampered_header(good(i), kid=7),
    "embedded jwk": lambda i: "Bearer " + i.token(UNPUBLISHED, headers={"jwk": UNPUBLISHED.jwk()}),
    "jku elsewhere": lambda i: "Bearer " + i.token(UNPUBLISHED, headers={"jku": "http://evil.example/jwks"}),
    "expired": lambda i: "Bearer " + good(i, exp=int(time.time()) - 3600),
    "not yet valid": lambda i: "Bearer " + good(i, nbf=int(time.time()) + 3600),
    "no exp": lambda i: "Bearer " + good(i, exp=None),
    "exp as text": lambda i: "Bearer " + good(i, exp="tomorrow"),
    "wrong issuer": lambda i: "Bearer " + good(i, iss="https://evil.example/realms/test"),
    "issuer with a trailing slash": lambda i: "Bearer " + good(i, iss=i.url + "/"),
    "wrong audience": lambda i: "Bearer " + good(i, aud="another-api"),
    "no audience": lambda i: "Bearer " + good(i, aud=None),
    "no subject": lambda i: "Bearer " + good(i, sub=None),
    "tenant ../tenant-b": lambda i: "Bearer " + i.token(scope=ALL_RIGHTS, tenants=["../tenant-b"]),
    "tenant wildcard": lambda i: "Bearer " + i.token(scope=ALL_RIGHTS, tenants=["*"]),
    "tenant in capitals": lambda i: "Bearer " + i.token(scope=ALL_RIGHTS, tenants=["TENANT-B"]),
    "tenant as a longer name": lambda i: "Bearer " + i.token(scope=ALL_RIGHTS, tenants="tenant-bc"),
    "no scope": lambda i: "Bearer " + i.token(scope=None, tenants=[VICTIM]),
}


def test_there_are_at_least_35_kinds_of_bad_token() -> None:
    assert len(BAD_TOKENS) >= 35


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
def test_a_bad_token_is_refused_on_every_route(client: TestClient, archive: Archive, issuer: Issuer, kind: str) -> None:
    authorization = BAD_TOKENS[kind](issuer)
    operations = [(method, path) for method, path in routes(client) if path not in PUBLIC]
    let_through = {
        f"{method} {path}": response.status_code
        for method, path in operations
        if (response := send(client, method, path, VICTIM, {"Authorization": authorization})).status_code
        not in (401, 403)
    }
    assert let_through == {}
    assert tenant_b_holdings(archive) == [SOP]


def test_the_good_token_the_bad_ones_derive_from_is_accepted(client: TestClient, issuer: Issuer) -> None:
    """The refusals above come from each defect, not from a token that could never pass."""
    authorization = {"Authorization": "Bearer " + good(issuer)}
    assert client.get(f"/{VICTIM}/dicom-web/studies/{STUDY}/metadata", headers=authorization).status_code == 200
    assert client.get("/api/stats/totals", headers=authorization).status_code == 200
