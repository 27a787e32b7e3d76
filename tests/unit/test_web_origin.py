"""Which origin the URLs the archive writes name: the public URL, a trusted proxy's forwarded headers or
the address the connection reached, never the client's Host header; and the headers every response carries."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import support
from fastapi.testclient import TestClient
from test_web_app import part10, stow

from bench.synthetic import ct_series
from dicomcloud.archive.core import Archive
from dicomcloud.config import HttpSettings
from dicomcloud.web.app import create_app
from dicomcloud.web.origin import TrustedOrigin

RETRIEVE_URL = "00081190"


def seen(
    client: tuple[str, int],
    server: tuple[str, int],
    headers: dict[str, str],
    path: str = "/dicom-web/studies",
    **settings: Any,
) -> dict[str, Any]:
    """The scope the application sees once the middleware decided the origin."""
    received: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        received.update(scope)

    scope = {
        "type": "http",
        "scheme": "http",
        "server": server,
        "client": client,
        "path": path,
        "root_path": "",
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers.items()],
    }
    asyncio.run(TrustedOrigin(app, HttpSettings(**settings))(scope, None, None))  # type: ignore[arg-type]
    return received


def host_of(scope: dict[str, Any]) -> str:
    return dict(scope["headers"])[b"host"].decode()


def test_a_direct_client_gets_the_address_it_reached_whatever_its_host_header_says() -> None:
    scope = seen(("198.51.100.7", 50000), ("10.0.0.5", 8042), {"Host": "evil.example"})
    assert (scope["scheme"], host_of(scope)) == ("http", "10.0.0.5:8042")
    assert host_of(seen(("198.51.100.7", 1), ("10.0.0.5", 80), {"Host": "evil.example"})) == "10.0.0.5"
    assert host_of(seen(("::1", 1), ("::1", 8080), {})) == "[::1]:8080"


def test_a_direct_client_cannot_forward_headers() -> None:
    headers = {"Host": "evil.example", "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https",
               "Forwarded": "host=evil.example;proto=https", "X-Forwarded-For": "192.0.2.1"}
    scope = seen(("198.51.100.7", 50000), ("10.0.0.5", 8042), headers)
    assert (scope["scheme"], host_of(scope), scope["client"]) == ("http", "10.0.0.5:8042", ("198.51.100.7", 50000))


def test_a_trusted_proxy_forwards_scheme_host_port_prefix_and_client() -> None:
    headers = {
        "Host": "internal:8080",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "pacs.example.org",
        "X-Forwarded-Port": "8443",
        "X-Forwarded-Prefix": "/pacs",
        # The client wrote the first address itself; the proxy appended the one it saw.
        "X-Forwarded-For": "203.0.113.1, 198.51.100.9",
    }
    scope = seen(("127.0.0.1", 40000), ("127.0.0.1", 8080), headers)
    assert (scope["scheme"], host_of(scope), scope["root_path"]) == ("https", "pacs.example.org:8443", "/pacs")
    assert scope["client"] == ("198.51.100.9", 0)


def test_a_prefix_or_scheme_forwarded_without_a_host_keeps_the_address_reached() -> None:
    scope = seen(("127.0.0.1", 1), ("127.0.0.1", 8080), {"X-Forwarded-Prefix": "/pacs/"})
    assert (scope["scheme"], host_of(scope), scope["root_path"]) == ("http", "127.0.0.1:8080", "/pacs")
    assert scope["path"] == "/pacs/dicom-web/studies"
    scope = seen(("127.0.0.1", 1), ("127.0.0.1", 80), {"X-Forwarded-Proto": "https"})
    assert (scope["scheme"], host_of(scope)) == ("https", "127.0.0.1:80")
    scope = seen(("127.0.0.1", 1), ("127.0.0.1", 8080), {"X-Forwarded-Proto": "https", "X-Forwarded-Port": "443"})
    assert (scope["scheme"], host_of(scope)) == ("https", "127.0.0.1")


def test_a_prefix_the_proxy_left_in_the_path_is_not_added_twice() -> None:
    scope = seen(("127.0.0.1", 1), ("127.0.0.1", 8080), {"X-Forwarded-Prefix": "/pacs"}, "/pacs/dicom-web/studies")
    assert (scope["path"], scope["root_path"]) == ("/pacs/dicom-web/studies", "/pacs")


@pytest.mark.parametrize("prefix", ["/pacs/../admin", "pacs", "/pa cs", "/pacs?x=1"])
def test_a_malformed_prefix_is_ignored(prefix: str) -> None:
    scope = seen(("127.0.0.1", 1), ("127.0.0.1", 8080), {"X-Forwarded-Prefix": prefix})
    assert (scope["root_path"], scope["path"]) == ("", "/dicom-web/studies")


def test_rfc_7239_forwarded_is_understood_and_the_nearest_proxy_wins() -> None:
    headers = {"Forwarded": 'for=192.0.2.60;host=evil.example, for="[2001:db8::1]";proto=https;host=pacs.example.org'}
    scope = seen(("::1", 40000), ("::1", 8080), headers)
    assert (scope["scheme"], host_of(scope), scope["client"]) == ("https", "pacs.example.org", ("2001:db8::1", 0))


@pytest.mark.parametrize("forged", ["evil.example/path", "user@evil.example", "evil example", "évil.example", ""])
def test_a_malformed_forwarded_host_is_ignored(forged: str) -> None:
    scope = seen(("127.0.0.1", 1), ("127.0.0.1", 8080), {"X-Forwarded-Host": forged})
    assert host_of(scope) == "127.0.0.1:8080"


def test_trusted_proxies_are_configurable() -> None:
    headers = {"X-Forwarded-Host": "pacs.example.org"}
    assert host_of(seen(("10.1.2.3", 1), ("10.0.0.5", 80), headers, trusted_proxies=["10.1.0.0/16"])) == (
        "pacs.example.org"
    )
    assert host_of(seen(("127.0.0.1", 1), ("127.0.0.1", 80), headers, trusted_proxies=[])) == "127.0.0.1"


def test_the_public_url_overrides_everything() -> None:
    headers = {"Host": "evil.example", "X-Forwarded-Host": "other.example"}
    scope = seen(("127.0.0.1", 1), ("127.0.0.1", 8080), headers, public_url="https://pacs.example.org/archive/")
    assert (scope["scheme"], host_of(scope), scope["root_path"]) == ("https", "pacs.example.org", "/archive")


def test_an_invalid_trusted_proxy_entry_fails_at_start() -> None:
    with pytest.raises(ValueError):
        HttpSettings(trusted_proxies=["not-a-network"])


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    opened = support.make_archive(tmp_path / "data")
    yield opened
    opened.close()


def test_no_url_the_archive_writes_names_a_hostile_host(archive: Archive, tmp_path: Path) -> None:
    ds = next(ct_series(1, rows=8, columns=8))
    evil = {"Host": "evil.example"}
    with TestClient(create_app(archive), base_url="http://archive.test") as client:
        client.headers.update(evil)
        stored = stow(client, [part10(ds, tmp_path)])
        assert stored.status_code == 200
        study = f"/dicom-web/studies/{ds.StudyInstanceUID}"
        responses = [
            stored,
            client.get("/dicom-web/studies"),
            client.get(f"{study}/metadata"),
            client.get(f"{study}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/metadata"),
            client.get("/dicom-web/studies/", follow_redirects=False),
        ]
        for response in responses:
            assert "evil.example" not in response.text + str(response.headers), response.request.url
        assert client.get("/dicom-web/studies").json()[0][RETRIEVE_URL]["Value"][0].startswith("http://archive.test/")
        redirect = client.get("/dicom-web/studies/", follow_redirects=False)
        assert redirect.status_code in (307, 404) and "evil" not in redirect.headers.get("location", "")


PATIENT_DATA_ROUTES = (
    "/dicom-web/studies",
    "/dicom-web/studies/{study}",
    "/dicom-web/studies/{study}/metadata",
    "/dicom-web/studies/{study}/series",
    "/dicom-web/studies/{study}/series/{series}/instances",
    "/dicom-web/studies/{study}/series/{series}/instances/{sop}",
    "/dicom-web/studies/{study}/series/{series}/instances/{sop}/frames/1",
    "/dicom-web/studies/{study}/series/{series}/instances/{sop}/rendered",
    "/dicom-web/studies/{study}/series/{series}/instances/{sop}/thumbnail",
    "/dicom-web/studies/{study}/series/{series}/instances/{sop}/bulkdata/7FE00010",
    "/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}",
    "/dicom-web/studies/1.2.3.4/metadata",  # an error names what was asked for: patient data too
    "/api/stats/most_read_studies",
)


def test_every_response_with_patient_data_is_not_cached_and_not_sniffed(archive: Archive, tmp_path: Path) -> None:
    ds = next(ct_series(1, rows=8, columns=8))
    with TestClient(create_app(archive), base_url="http://archive.test") as client:
        assert stow(client, [part10(ds, tmp_path)]).status_code == 200
        uids = {"study": ds.StudyInstanceUID, "series": ds.SeriesInstanceUID, "sop": ds.SOPInstanceUID}
        for template in PATIENT_DATA_ROUTES:
            response: httpx.Response = client.get(template.format(**uids), headers={"Accept": "*/*"})
            assert response.status_code < 500, template
            assert response.headers["cache-control"] == "no-store", template
            assert response.headers["x-content-type-options"] == "nosniff", template
        assert client.get("/health").headers["x-content-type-options"] == "nosniff"
