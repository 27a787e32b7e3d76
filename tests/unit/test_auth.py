"""OAuth2/OIDC on the DICOMweb routes, against a real issuer on loopback: each kind of token gets its answer."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import support
from fastapi.testclient import TestClient
from oidc import AUDIENCE, JWKS_MAX_AGE, Issuer, ec_key, rsa_key, serve_issuer, unsigned_token

from dicomcloud.archive.core import Archive
from dicomcloud.events import ACCESS_LOG_QUEUE, AccessLog
from dicomcloud.web.app import create_app
from dicomcloud.web.auth import max_age

PROBE = "/tenant-a/dicom-web/studies"
RSA, EC, ROTATED = rsa_key("rsa-1"), ec_key("ec-1"), rsa_key("rsa-2")


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    with serve_issuer([RSA, EC]) as served:
        yield served


def auth_archive(data: Path, served: Issuer, **auth: object) -> Archive:
    return support.make_archive(data, auth={"enabled": True, "issuer": served.url, "audience": AUDIENCE, **auth})


@pytest.fixture
def archive(tmp_path: Path, issuer: Issuer) -> Iterator[Archive]:
    opened = auth_archive(tmp_path / "data", issuer)
    yield opened
    opened.close()


@pytest.fixture
def client(archive: Archive) -> Iterator[TestClient]:
    with TestClient(create_app(archive), base_url="http://archive.test") as test_client:
        yield test_client


def get(client: TestClient, token: str, path: str = PROBE) -> httpx.Response:
    return client.get(path, headers={"Authorization": f"Bearer {token}"})


def assert_invalid_token(response: httpx.Response, description: str) -> None:
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="dicomcloud", error="invalid_token", error_description="')
    assert description.lower() in challenge.lower()


def test_valid_rsa_and_ec_tokens_are_accepted(client: TestClient, issuer: Issuer) -> None:
    assert get(client, issuer.token(RSA)).json() == []
    assert get(client, issuer.token(EC)).json() == []


def test_a_request_without_a_token_gets_401_with_the_realm(client: TestClient) -> None:
    response = client.get(PROBE)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="dicomcloud"'


def test_a_refused_upload_closes_the_connection_so_its_unread_body_is_not_taken_as_a_request(
    client: TestClient,
) -> None:
    response = client.post(PROBE, content=b"x" * 100_000, headers={"Content-Type": "multipart/related"})
    assert (response.status_code, response.headers["connection"]) == (401, "close")


def test_an_expired_token_is_rejected(client: TestClient, issuer: Issuer) -> None:
    assert_invalid_token(get(client, issuer.token(exp=int(time.time()) - 120)), "expired")


def test_a_token_expired_within_the_leeway_is_accepted(client: TestClient, issuer: Issuer) -> None:
    assert get(client, issuer.token(exp=int(time.time()) - 5)).status_code == 200


def test_a_token_not_yet_valid_is_rejected(client: TestClient, issuer: Issuer) -> None:
    assert_invalid_token(get(client, issuer.token(nbf=int(time.time()) + 300)), "not yet valid")


def test_a_token_of_another_issuer_is_rejected(client: TestClient, issuer: Issuer) -> None:
    assert_invalid_token(get(client, issuer.token(iss="http://127.0.0.1:1/realms/evil")), "issuer")


def test_a_token_for_another_audience_is_rejected(client: TestClient, issuer: Issuer) -> None:
    assert_invalid_token(get(client, issuer.token(aud="another-api")), "audience")


def test_a_token_without_exp_is_rejected(client: TestClient, issuer: Issuer) -> None:
    assert_invalid_token(get(client, issuer.token(exp=None)), "exp")


def test_alg_none_is_rejected(client: TestClient, issuer: Issuer) -> None:
    token = unsigned_token({"alg": "none", "typ": "JWT", "kid": RSA.kid}, issuer.claims())
    assert_invalid_token(get(client, token), "algorithm")


def test_hs256_signed_with_the_public_key_is_rejected(client: TestClient, issuer: Issuer) -> None:
    token = unsigned_token({"alg": "HS256", "typ": "JWT", "kid": RSA.kid}, issuer.claims(), secret=RSA.public_pem())
    assert_invalid_token(get(client, token), "algorithm")


def test_an_algorithm_that_does_not_fit_the_key_is_rejected(client: TestClient, issuer: Issuer) -> None:
    """RS256 under the EC key's kid: the key decides the algorithm, not the token."""
    token = issuer.token(RSA, headers={"kid": EC.kid})
    assert_invalid_token(get(client, token), "does not fit")


def test_a_forged_signature_is_rejected(client: TestClient, issuer: Issuer) -> None:
    impostor = rsa_key(RSA.kid)
    assert_invalid_token(get(client, issuer.token(impostor)), "Signature")


def test_a_rotated_key_is_accepted_after_one_refetch_and_unknown_kids_do_not_hammer_the_issuer(
    client: TestClient, issuer: Issuer
) -> None:
    assert get(client, issuer.token(RSA)).status_code == 200
    fetched = issuer.jwks_requests
    issuer.published.append(ROTATED)
    try:
        assert get(client, issuer.token(ROTATED)).status_code == 200
        assert issuer.jwks_requests == fetched + 1
        for kid in ("made-up-1", "made-up-2", "made-up-3"):
            assert_invalid_token(get(client, issuer.token(ROTATED, headers={"kid": kid})), "signing key unknown")
        assert issuer.jwks_requests == fetched + 1
    finally:
        issuer.published.remove(ROTATED)


def test_the_key_set_is_cached_in_the_cache_port_for_the_issuers_max_age(
    client: TestClient, archive: Archive, issuer: Issuer
) -> None:
    assert get(client, issuer.token()).status_code == 200
    fetched = issuer.jwks_requests
    assert archive.runtime.cache.get(f"auth:jwks:{issuer.url}") is not None
    assert get(client, issuer.token(EC)).status_code == 200
    assert issuer.jwks_requests == fetched
    assert max_age("public, max-age=600", 300) == JWKS_MAX_AGE
    assert max_age(None, 300) == 300


def test_a_damaged_cached_key_set_is_fetched_again(client: TestClient, archive: Archive, issuer: Issuer) -> None:
    archive.runtime.cache.set(f"auth:jwks:{issuer.url}", b"{not json", None)
    assert get(client, issuer.token()).status_code == 200


def test_a_token_without_kid_is_rejected(client: TestClient, issuer: Issuer) -> None:
    token = unsigned_token({"alg": "RS256", "typ": "JWT"}, issuer.claims())
    assert_invalid_token(get(client, token), "no kid")


@pytest.mark.parametrize("garbage", ["garbage", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.e30.", "é" * 10, "x" * 20_000])
def test_garbage_is_rejected(client: TestClient, garbage: str) -> None:
    response = client.get(PROBE, headers={"Authorization": f"Bearer {garbage}".encode()})
    assert response.status_code == 401


def test_no_token_crashes_the_server(client: TestClient, issuer: Issuer) -> None:
    """After every kind of bad token above, on the same app, a good one still works."""
    for token in (
        "",
        "garbage",
        unsigned_token({"alg": "none"}, {}),
        issuer.token(aud="another-api"),
        unsigned_token({"alg": "RS256", "kid": 7}, issuer.claims()),
    ):
        assert client.get(PROBE, headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert get(client, issuer.token()).status_code == 200
    assert client.get("/health").status_code == 200


def test_a_missing_scope_gets_403(client: TestClient, issuer: Issuer) -> None:
    response = get(client, issuer.token(scope="openid dicom.write"))
    assert response.status_code == 403
    assert 'error="insufficient_scope", scope="dicom.read"' in response.headers["www-authenticate"]


def test_keycloak_realm_roles_grant_access(client: TestClient, issuer: Issuer) -> None:
    token = issuer.token(scope="openid", realm_access={"roles": ["dicom.read", "offline_access"]})
    assert get(client, token).status_code == 200


def test_a_tenant_the_token_does_not_grant_gets_403(client: TestClient, issuer: Issuer) -> None:
    assert get(client, issuer.token(), "/tenant-b/dicom-web/studies").status_code == 403
    assert get(client, issuer.token(), "/dicom-web/studies").status_code == 403
    assert get(client, issuer.token(tenants="tenant-b tenant-a"), "/tenant-b/dicom-web/studies").status_code == 200


def test_health_stays_open(client: TestClient) -> None:
    assert client.get("/health").status_code == 200


def test_the_token_is_never_logged(client: TestClient, issuer: Issuer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = [issuer.token(aud="another-api"), issuer.token(), issuer.token(tenants=["tenant-b"])]
    for token in tokens:
        get(client, token)
    assert not any(token in record.getMessage() for token in tokens for record in caplog.records)


def test_the_access_log_records_the_tokens_subject(archive: Archive, issuer: Issuer) -> None:
    with TestClient(create_app(archive)) as client:  # leaving it flushes the access log
        assert get(client, issuer.token(sub="dr-who")).status_code == 200
    records = archive.runtime.bus.subscribe("test", [ACCESS_LOG_QUEUE]).poll(1000, 0.2)
    assert [AccessLog.from_bytes(record.value).user_id for record in records] == ["dr-who"]


@pytest.mark.parametrize("missing", ["issuer", "audience"])
def test_enabled_without_issuer_or_audience_refuses_to_start(tmp_path: Path, issuer: Issuer, missing: str) -> None:
    archive = auth_archive(tmp_path / "data", issuer, **{missing: ""})
    try:
        with pytest.raises(ValueError, match=f"auth.{missing}"):
            create_app(archive)
    finally:
        archive.close()


def test_an_unreachable_issuer_gets_503_not_a_crash(tmp_path: Path, issuer: Issuer) -> None:
    archive = auth_archive(tmp_path / "data", issuer, jwks_url="http://127.0.0.1:1/certs", http_timeout=2.0)
    try:
        with TestClient(create_app(archive)) as client:
            assert get(client, issuer.token()).status_code == 503
    finally:
        archive.close()
