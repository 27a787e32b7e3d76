"""The URLs the archive writes behind an Nginx that mounts it under a path prefix, and with forged forwarding
headers from an untrusted address, over real HTTP connections (behind the shipped Nginx: test_https.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from bench.synthetic import ct_series, write_part10
from dicomcloud.stack.servers import nginx_directives

from .conftest import Archive, answers, free_port, wait_until
from .dicom_clients import written_urls

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> tuple[pydicom.Dataset, bytes]:
    """One instance with Pixel Data large enough to be a BulkDataURI; not stored yet."""
    ds = next(ct_series(1, rows=64, columns=64, patient_id="PROXY-16"))
    path = tmp_path_factory.mktemp("proxy") / "ct.dcm"
    write_part10(ds, path)
    return ds, path.read_bytes()


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
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/pacs/health"), 30, "Nginx with a /pacs/ prefix")
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
        assert "servers" not in client.get("/openapi.json").json()
    for what, url in urls.items():
        assert url.startswith(f"{archive.base_url}/dicom-web/studies"), what
