"""The shipped Nginx template as the stack renders it: every wado-server an upstream, DICOM TLS optional."""

from __future__ import annotations

import re
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest

from dicomcloud.stack.servers import NGINX_TEMPLATES, NginxSite, StackError, free_port, render_nginx, start_nginx

UPSTREAMS = ["127.0.0.1:18081", "127.0.0.1:18082"]


def site(pki: Path, run_dir: Path, dimse_tls: tuple[str, str] | None = None) -> NginxSite:
    return NginxSite(
        https_listen="127.0.0.1:18443",
        http_listen="127.0.0.1:18080",
        cert_file=pki / "server.pem",
        key_file=pki / "server.key",
        upstreams=UPSTREAMS,
        run_dir=run_dir,
        dimse_tls=dimse_tls,
    )


def nginx_test(config: str, run_dir: Path) -> subprocess.CompletedProcess[str]:
    path = run_dir / "nginx.conf"
    path.write_text(config)
    command = ["nginx", "-t", "-p", str(run_dir), "-e", "stderr", "-c", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def upstream_block(config: str) -> str:
    match = re.search(r"upstream dicomcloud \{(.*?)\}", config, re.S)
    assert match is not None
    return match.group(1)


def test_two_wado_servers_become_two_keepalive_upstream_servers_that_nginx_accepts(pki: Path, tmp_path: Path) -> None:
    config = render_nginx(site(pki, tmp_path))
    block = upstream_block(config)
    assert re.findall(r"^\s*server (\S+)", block, re.M) == UPSTREAMS
    assert re.search(r"^\s*keepalive \d+;", block, re.M)
    result = nginx_test(config, tmp_path)
    assert result.returncode == 0, result.stderr


def test_stow_bodies_stream_and_big_responses_are_not_buffered(pki: Path, tmp_path: Path) -> None:
    config = render_nginx(site(pki, tmp_path))
    for directive in ("client_max_body_size 0;", "proxy_request_buffering off;", "proxy_buffering off;"):
        assert directive in config


def test_without_dicom_tls_there_is_no_stream_part(pki: Path, tmp_path: Path) -> None:
    config = render_nginx(site(pki, tmp_path))
    assert "stream {" not in config
    assert "ngx_stream_module" not in config


def test_dicom_tls_passthrough_is_added_in_front_when_asked_for(pki: Path, tmp_path: Path) -> None:
    config = render_nginx(site(pki, tmp_path, dimse_tls=("127.0.0.1:12762", "127.0.0.1:11112")))
    assert config.index("load_module") < config.index("events {")
    assert "proxy_pass 127.0.0.1:11112;" in config
    result = nginx_test(config, tmp_path)
    assert result.returncode == 0, result.stderr


def test_a_template_variable_left_unset_is_an_error(pki: Path, tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    text = (NGINX_TEMPLATES / "nginx.conf.template").read_text()
    (templates / "nginx.conf.template").write_text(text + "# ${SOMETHING_NEW}\n")
    with pytest.raises(StackError, match="SOMETHING_NEW"):
        render_nginx(site(pki, tmp_path), templates)


def test_plain_http_redirects_to_the_https_port_and_the_redirect_arrives(pki: Path, tmp_path: Path) -> None:
    https_port, http_port = free_port(), free_port()
    running = NginxSite(
        https_listen=f"127.0.0.1:{https_port}",
        http_listen=f"127.0.0.1:{http_port}",
        cert_file=pki / "server.pem",
        key_file=pki / "server.key",
        upstreams=UPSTREAMS,
        run_dir=tmp_path,
    )
    nginx = start_nginx(running)
    try:
        redirect = httpx.get(f"http://127.0.0.1:{http_port}/dicom-web/studies?limit=1", follow_redirects=False)
        location = f"https://localhost:{https_port}/dicom-web/studies?limit=1"
        assert redirect.status_code == 301 and redirect.headers["location"] == location
        arrived = httpx.get(location, verify=ssl.create_default_context(cafile=pki / "ca.pem"))
        assert "strict-transport-security" in arrived.headers  # answered by this Nginx over TLS
    finally:
        nginx.stop()


def test_the_viewers_files_are_served_by_nginx_never_passed_to_a_wado_server(pki: Path, tmp_path: Path) -> None:
    config = render_nginx(site(pki, tmp_path))
    viewer = config[config.index("location /viewer/ {") : config.index("location / {")]
    assert "alias " in viewer and "proxy_pass" not in viewer
