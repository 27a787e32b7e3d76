"""`dicomcloud certs`: the CA and certificates it writes verify with OpenSSL and carry a real mutual TLS handshake."""

from __future__ import annotations

import socket
import ssl
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomcloud.certs import write_pki
from dicomcloud.cli import main
from dicomcloud.errors import InvalidInput


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki")
    write_pki(out, hosts=["localhost", "127.0.0.1"], clients=["MODALITY1"])
    return out


def openssl_verify(pki: Path, cert: str, purpose: str) -> subprocess.CompletedProcess[str]:
    command = ["openssl", "verify", "-CAfile", str(pki / "ca.pem"), "-purpose", purpose, str(pki / cert)]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def test_server_and_client_certificates_verify_against_the_ca_for_their_purpose(pki: Path) -> None:
    assert openssl_verify(pki, "server.pem", "sslserver").returncode == 0
    assert openssl_verify(pki, "client-MODALITY1.pem", "sslclient").returncode == 0
    assert openssl_verify(pki, "client-MODALITY1.pem", "sslserver").returncode != 0


def test_private_keys_are_readable_by_the_owner_only(pki: Path) -> None:
    for key in ("ca.key", "server.key", "client-MODALITY1.key"):
        assert stat.S_IMODE((pki / key).stat().st_mode) == 0o600


@pytest.fixture(scope="module")
def tls_server(pki: Path) -> Iterator[int]:
    """A loopback TLS server that requires a client certificate from the CA and echoes one line."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.pem"))
    context.load_cert_chain(pki / "server.pem", pki / "server.key")
    context.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            connection, _ = listener.accept()
            try:
                with context.wrap_socket(connection, server_side=True) as tls:
                    tls.sendall(tls.recv(64))
            except (ssl.SSLError, OSError):
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    socket.create_connection(listener.getsockname()).close()
    thread.join()
    listener.close()


def handshake(pki: Path, port: int, client_cert: str | None) -> bytes:
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if client_cert:
        context.load_cert_chain(pki / f"{client_cert}.pem", pki / f"{client_cert}.key")
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"ping")
        return tls.recv(64)


def test_a_client_with_a_certificate_completes_mutual_tls(pki: Path, tls_server: int) -> None:
    assert handshake(pki, tls_server, "client-MODALITY1") == b"ping"


def test_a_client_without_a_certificate_is_refused(pki: Path, tls_server: int) -> None:
    try:
        echoed = handshake(pki, tls_server, None)
    except (ssl.SSLError, ConnectionError):
        echoed = b""
    assert echoed == b""


def test_running_again_keeps_the_ca_and_issues_under_it(pki: Path) -> None:
    ca = (pki / "ca.pem").read_bytes()
    with pytest.raises(SystemExit) as exited:
        main(["certs", "--out", str(pki), "--client", "WORKSTATION2"])
    assert exited.value.code == 0
    assert (pki / "ca.pem").read_bytes() == ca
    assert openssl_verify(pki, "client-WORKSTATION2.pem", "sslclient").returncode == 0


def test_a_client_name_that_is_not_a_plain_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        write_pki(tmp_path, hosts=[], clients=["../escape"])
