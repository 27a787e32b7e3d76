"""DICOM TLS on wado-storescp, with certificates from `dicomcloud certs` and DCMTK's storescu as the peer."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import support

from dicomcloud.archive.core import Archive
from dicomcloud.config import load_settings
from dicomcloud.dimse.scp import StoreSCP
from dicomcloud.events import STORAGE_QUEUE, StorageEvent

AE_TITLE = "DICOMCLOUD"
STUDY, SERIES = "1.2.826.0.4.7", "1.2.826.0.4.7.1"


@pytest.fixture(scope="module")
def scp(tmp_path_factory: pytest.TempPathFactory, pki: Path) -> Iterator[StoreSCP]:
    """An SCP that speaks only DICOM TLS and requires a client certificate from the CA."""
    tls = {
        "tls_cert_file": str(pki / "server.pem"),
        "tls_key_file": str(pki / "server.key"),
        "tls_ca_file": str(pki / "ca.pem"),
        "tls_require_client_cert": True,
    }
    with support.running_scp(tmp_path_factory.mktemp("tls") / "data", AE_TITLE, **tls) as server:
        yield server


def storescu(scp: StoreSCP, path: Path, *tls: str) -> subprocess.CompletedProcess[str]:
    command = ["storescu", *tls, "-aec", AE_TITLE, "-to", "10", "127.0.0.1", str(scp.port), str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def stored_sops(archive: Archive) -> set[str]:
    consumer = archive.runtime.bus.subscribe("tls-test", [STORAGE_QUEUE])
    try:
        records = consumer.poll(1000, 0.2)
    finally:
        consumer.close()
    return {StorageEvent.from_bytes(record.value).sop_instance_uid for record in records}


def test_storescu_with_a_client_certificate_stores_over_tls(scp: StoreSCP, pki: Path, tmp_path: Path) -> None:
    sop = STUDY + ".1.1"
    path = support.write_ct(tmp_path / "ct.dcm", STUDY, SERIES, sop)
    tls = ("+tls", str(pki / "client-STORESCU.key"), str(pki / "client-STORESCU.pem"), "+cf", str(pki / "ca.pem"))
    result = storescu(scp, path, *tls)
    assert result.returncode == 0, result.stderr
    assert sop in stored_sops(scp.archive)


def test_storescu_without_a_client_certificate_is_refused(scp: StoreSCP, pki: Path, tmp_path: Path) -> None:
    sop = STUDY + ".1.2"
    path = support.write_ct(tmp_path / "ct.dcm", STUDY, SERIES, sop)
    assert storescu(scp, path, "+tla", "+cf", str(pki / "ca.pem")).returncode != 0
    assert storescu(scp, path).returncode != 0
    assert sop not in stored_sops(scp.archive)


def test_requiring_client_certificates_without_a_ca_refuses_to_start(tmp_path: Path, pki: Path) -> None:
    settings = load_settings(
        overrides={
            "storage": {"data_dir": str(tmp_path / "data")},
            "dimse": {
                "port": 0,
                "tls_cert_file": str(pki / "server.pem"),
                "tls_key_file": str(pki / "server.key"),
                "tls_require_client_cert": True,
            },
        },
        environ={},
    )
    archive = Archive.from_settings(settings)
    try:
        with pytest.raises(ValueError, match="tls_ca_file"):
            StoreSCP(archive).start()
    finally:
        archive.close()
