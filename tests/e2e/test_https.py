"""The shipped Nginx config in front of `dicomcloud up`: HTTPS with a `dicomcloud certs` server certificate,
plain HTTP redirected, and DICOM TLS passed through to the SCP, which checks client certificates itself."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydicom.data import get_testdata_file

from bench.synthetic import ct_series, write_part10
from dicomcloud.stack.servers import NginxSite, start_nginx

from .conftest import Archive, free_port
from .dicom_clients import written_urls


@dataclass
class Proxy:
    https_port: int
    http_port: int
    dimse_port: int
    pki: Path


@pytest.fixture(scope="module")
def proxy(
    archive_factory: Callable[..., Archive], pki: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    tls = {
        "DICOMCLOUD_DIMSE__TLS_CERT_FILE": str(pki / "server.pem"),
        "DICOMCLOUD_DIMSE__TLS_KEY_FILE": str(pki / "server.key"),
        "DICOMCLOUD_DIMSE__TLS_CA_FILE": str(pki / "ca.pem"),
        "DICOMCLOUD_DIMSE__TLS_REQUIRE_CLIENT_CERT": "true",
    }
    archive = archive_factory("behind-nginx", env=tls)
    run = tmp_path_factory.mktemp("nginx")
    ports = Proxy(free_port(), free_port(), free_port(), pki)
    site = NginxSite(
        https_listen=f"127.0.0.1:{ports.https_port}",
        http_listen=f"127.0.0.1:{ports.http_port}",
        cert_file=pki / "server.pem",
        key_file=pki / "server.key",
        upstreams=[f"127.0.0.1:{archive.http_port}"],
        run_dir=run,
        dimse_tls=(f"127.0.0.1:{ports.dimse_port}", f"127.0.0.1:{archive.dimse_port}"),
    )
    nginx = start_nginx(site)
    try:
        yield ports
    finally:
        nginx.stop()


def test_https_with_the_issued_certificate_serves_the_api(proxy: Proxy) -> None:
    with httpx.Client(base_url=f"https://localhost:{proxy.https_port}", verify=str(proxy.pki / "ca.pem")) as client:
        assert client.get("/health").json() == {"status": "ok"}
        studies = client.get("/dicom-web/studies", headers={"Accept": "application/dicom+json"})
        assert studies.status_code == 200
        assert studies.headers["strict-transport-security"].startswith("max-age=")


def test_plain_http_redirects_to_https_on_its_port(proxy: Proxy) -> None:
    response = httpx.get(f"http://localhost:{proxy.http_port}/dicom-web/studies", follow_redirects=False)
    assert response.status_code == 301
    assert response.headers["location"] == f"https://localhost:{proxy.https_port}/dicom-web/studies"


def storescu(proxy: Proxy, *tls: str) -> subprocess.CompletedProcess[str]:
    path = get_testdata_file("CT_small.dcm")
    command = ["storescu", *tls, "-aec", "DICOMCLOUD", "-to", "10", "127.0.0.1", str(proxy.dimse_port), str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_dicom_tls_passes_through_to_the_scp_which_requires_a_client_certificate(proxy: Proxy) -> None:
    ca = str(proxy.pki / "ca.pem")
    client = ("+tls", str(proxy.pki / "client-STORESCU.key"), str(proxy.pki / "client-STORESCU.pem"))
    stored = storescu(proxy, *client, "+cf", ca)
    assert stored.returncode == 0, stored.stderr
    assert storescu(proxy, "+tla", "+cf", ca).returncode != 0


def test_behind_the_shipped_nginx_every_url_names_its_https_origin(proxy: Proxy, tmp_path: Path) -> None:
    """The client's Host header says evil.example; Nginx forwards its own name and port, which the archive trusts."""
    ds = next(ct_series(1, rows=64, columns=64, patient_id="NGINX-URLS"))
    write_part10(ds, tmp_path / "ct.dcm")
    origin = f"https://localhost:{proxy.https_port}"
    with httpx.Client(base_url=origin, verify=str(proxy.pki / "ca.pem"), headers={"Host": "evil.example"}) as client:
        urls = written_urls(client, ds, (tmp_path / "ct.dcm").read_bytes())
    for what, url in urls.items():
        assert url.startswith(f"{origin}/dicom-web/studies"), what
