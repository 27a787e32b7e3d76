"""The URLs the archive writes behind the project's Nginx (and a prefix-mounting one), and a forged
forwarding header from an untrusted address, with real HTTP connections."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from bench.synthetic import ct_series, write_part10
from dicomcloud.stack.servers import NginxSite, nginx_directives, start_nginx

from .conftest import Archive, free_port, wait_until
from .dicom_clients import stow_body

pytestmark = pytest.mark.e2e

RETRIEVE_URL = "00081190"


@pytest.fixture(scope="module")
def instance(archive: Archive, tmp_path_factory: pytest.TempPathFactory) -> tuple[pydicom.Dataset, bytes]:
    """One instance with Pixel Data large enough to be a BulkDataURI; not stored yet."""
    ds = next(ct_series(1, rows=64, columns=64, patient_id="PROXY-16"))
    path = tmp_path_factory.mktemp("proxy") / "ct.dcm"
    write_part10(ds, path)
    return ds, path.read_bytes()


def written_urls(client: httpx.Client, ds: pydicom.Dataset, raw: bytes) -> dict[str, str]:
    """Each kind of URL the archive writes, as `client` (pointed at some way in) receives it."""
    body, content_type = stow_body([raw])
    stored = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert stored.status_code == 200, stored.text
    found = client.get("/dicom-web/instances", params={"SOPInstanceUID": ds.SOPInstanceUID}).json()
    metadata = client.get(f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/metadata").json()
    redirect = client.get("/dicom-web/studies/", follow_redirects=False)
    return {
        "STOW RetrieveURL": stored.json()[RETRIEVE_URL]["Value"][0],
        "QIDO RetrieveURL": found[0][RETRIEVE_URL]["Value"][0],
        "BulkDataURI": metadata[0]["7FE00010"]["BulkDataURI"],
        "Location": redirect.headers["location"],
    }


def test_behind_the_shipped_nginx_every_url_names_its_https_origin(
    archive: Archive, pki: Path, tmp_path: Path, instance: tuple[pydicom.Dataset, bytes]
) -> None:
    https_port = free_port()
    site = NginxSite(
        https_listen=f"127.0.0.1:{https_port}",
        http_listen=f"127.0.0.1:{free_port()}",
        cert_file=pki / "server.pem",
        key_file=pki / "server.key",
        upstreams=[f"127.0.0.1:{archive.http_port}"],
        run_dir=tmp_path / "nginx",
    )
    nginx = start_nginx(site)
    try:
        origin = f"https://localhost:{https_port}"
        with httpx.Client(base_url=origin, verify=str(pki / "ca.pem"), headers={"Host": "evil.example"}) as client:
            urls = written_urls(client, *instance)
    finally:
        nginx.stop()
    for what, url in urls.items():
        assert url.startswith(f"{origin}/dicom-web/studies"), what


PREFIX_CONFIG = """
pid {run}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {run}/body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location /pacs/ {{
            proxy_pass http://127.0.0.1:{upstream}/;
            proxy_set_header X-Forwarded-Prefix /pacs;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Forwarded-Port $server_port;
        }}
    }}
}}
"""


@pytest.fixture
def prefix_proxy(archive: Archive, tmp_path: Path) -> Iterator[str]:
    """Nginx mounting the archive under /pacs/ (the prefix stripped, and forwarded as X-Forwarded-Prefix)."""
    port = free_port()
    config = tmp_path / "nginx.conf"
    config.write_text(PREFIX_CONFIG.format(run=tmp_path, port=port, upstream=archive.http_port))
    command = ["nginx", "-p", str(tmp_path), "-e", "stderr", "-c", str(config), "-g", nginx_directives()]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def up() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/pacs/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, 30, "Nginx with a /pacs/ prefix")
        yield f"http://127.0.0.1:{port}/pacs"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_behind_a_prefix_every_url_keeps_the_prefix(
    prefix_proxy: str, instance: tuple[pydicom.Dataset, bytes]
) -> None:
    with httpx.Client(base_url=prefix_proxy) as client:
        urls = written_urls(client, *instance)
        assert client.get("/openapi.json").json()["servers"] == [{"url": "/pacs"}]
        for what, url in urls.items():
            assert url.startswith(f"{prefix_proxy}/dicom-web/studies"), what
        # The URLs lead back through the proxy.
        assert client.get(urls["QIDO RetrieveURL"], headers={"Accept": "application/dicom"}).content == instance[1]
        octets = 'multipart/related; type="application/octet-stream"'
        assert client.get(urls["BulkDataURI"], headers={"Accept": octets}).status_code == 200


def test_forwarding_headers_from_an_untrusted_address_are_ignored(
    archive: Archive, instance: tuple[pydicom.Dataset, bytes]
) -> None:
    """127.0.0.2 is loopback but not a trusted proxy (the default trusts 127.0.0.1 and ::1)."""
    forged = {
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Prefix": "/evil",
        "Forwarded": "host=evil.example;proto=https",
        "Host": "evil.example",
    }
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(base_url=archive.base_url, transport=transport, headers=forged) as client:
        urls = written_urls(client, *instance)
    for what, url in urls.items():
        assert url.startswith(f"{archive.base_url}/dicom-web/studies"), what
