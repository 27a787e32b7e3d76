"""DIMSE access control: which peers associate, for which tenant, doing what; the TLS certificate check
with dcmtk's storescu as the peer."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import support

from dicomcloud.archive.core import Archive
from dicomcloud.certs import write_pki
from dicomcloud.config import DIMSE_OPERATIONS, DimsePeer, load_settings
from dicomcloud.dimse.access import AccessControl, Admission, PeerIdentity, Refusal
from dicomcloud.dimse.scp import StoreSCP
from dicomcloud.events import DimseRefusal

AE_TITLE = "DICOMCLOUD"
PEERS: dict[str, Any] = {
    "MODALITY": {"hosts": ["10.1.2.3", "192.168.0.0/16"], "tenants": ["a", "b"], "operations": ["echo", "store"]},
    "READER": {"hosts": ["0.0.0.0/0", "::/0"], "tenants": ["a"], "operations": ["find"]},
    "LOCAL": {"hosts": ["127.0.0.1"], "replace": True},
}


def control(access_control: bool | None = True, auth: bool = False, **dimse: Any) -> AccessControl:
    settings = load_settings(
        overrides={
            "auth": {"enabled": auth, "issuer": "https://idp.example", "audience": "dicomcloud"} if auth else {},
            "dimse": {
                "ae_title": AE_TITLE,
                "ae_tenants": {"AE_A": "a", "AE_B": "b"},
                "access_control": access_control,
                "peers": PEERS,
                **dimse,
            },
        },
        environ={},
    )
    return AccessControl(settings)


def admit(access: AccessControl, calling: str, called: str, address: str) -> Admission | Refusal:
    return access.admit(PeerIdentity(calling, called, address))


def test_a_known_peer_from_its_hosts_gets_its_tenant_operations_and_replace_right() -> None:
    access = control()
    assert admit(access, "MODALITY", "AE_B", "192.168.7.7") == Admission("b", frozenset({"echo", "store"}), False)
    assert admit(access, "READER", "AE_A", "2001:db8::1") == Admission("a", frozenset({"find"}), False)
    local = admit(access, "LOCAL", AE_TITLE, "::ffff:127.0.0.1")
    assert isinstance(local, Admission) and local.tenant == "default" and local.may_replace is True


@pytest.mark.parametrize(
    ("calling", "called", "address", "calling_refused"),
    [
        ("STRANGER", "AE_A", "10.1.2.3", True),  # not a known peer
        ("modality", "AE_A", "10.1.2.3", True),  # AE titles are case-sensitive
        ("MODALITY", "AE_A", "10.1.2.4", True),  # a known title from another host
        ("MODALITY", "AE_A", "not-an-address", True),
        ("READER", "AE_B", "10.1.2.3", False),  # a tenant the peer may not reach
        ("READER", "SOMEWHERE", "10.1.2.3", False),  # a called AE title naming no tenant
        ("LOCAL", "AE_A", "127.0.0.1", False),  # no tenants listed: the default tenant only
    ],
)
def test_refusals(calling: str, called: str, address: str, calling_refused: bool) -> None:
    outcome = admit(control(), calling, called, address)
    assert isinstance(outcome, Refusal) and outcome.calling is calling_refused


def test_spaces_around_an_ae_title_are_not_part_of_it() -> None:
    """PS3.5 6.2: leading and trailing spaces of an AE value are not significant."""
    assert isinstance(admit(control(), "  MODALITY  ", " AE_A ", "10.1.2.3"), Admission)


def test_without_access_control_any_peer_reaches_the_tenant_its_called_ae_title_names() -> None:
    access = control(access_control=False)
    assert admit(access, "ANYONE", "AE_B", "203.0.113.9") == Admission("b", frozenset(DIMSE_OPERATIONS), None)
    assert admit(access, "ANYONE", "UNMAPPED", "203.0.113.9") == Admission("default", frozenset(DIMSE_OPERATIONS), None)
    strict = control(access_control=False, reject_unknown_called_ae=True)
    assert isinstance(admit(strict, "ANYONE", "UNMAPPED", "203.0.113.9"), Refusal)


def test_access_control_follows_dicomweb_authentication_unless_set() -> None:
    assert control(access_control=None, auth=True).enabled is True
    assert control(access_control=None, auth=False).enabled is False
    assert control(access_control=False, auth=True).enabled is False


def test_a_peer_entry_needs_hosts_and_known_operations() -> None:
    with pytest.raises(ValueError, match="hosts"):
        DimsePeer()
    with pytest.raises(ValueError, match="delete"):
        DimsePeer(hosts=["127.0.0.1"], operations=["find", "delete"])


@pytest.fixture(scope="module")
def pki_two_clients(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki-peers")
    write_pki(out, hosts=["127.0.0.1"], clients=["MODALITY", "IMPOSTOR"])
    return out


@pytest.fixture(scope="module")
def tls_scp(tmp_path_factory: pytest.TempPathFactory, pki_two_clients: Path) -> Iterator[StoreSCP]:
    """A DICOM TLS SCP that lets any certificate of its CA connect, with access control requiring the
    peer MODALITY to present the certificate named MODALITY."""
    pki = pki_two_clients
    with support.running_scp(
        tmp_path_factory.mktemp("tls-access") / "data",
        AE_TITLE,
        tls_cert_file=str(pki / "server.pem"),
        tls_key_file=str(pki / "server.key"),
        tls_ca_file=str(pki / "ca.pem"),
        access_control=True,
        peers={"MODALITY": {"hosts": ["127.0.0.1"], "tls_common_name": "MODALITY"}},
    ) as server:
        yield server


def storescu_tls(scp: StoreSCP, path: Path, pki: Path, client: str | None) -> subprocess.CompletedProcess[str]:
    tls = ["+tls", str(pki / f"client-{client}.key"), str(pki / f"client-{client}.pem")] if client else ["+tla"]
    command = [
        "storescu", *tls, "+cf", str(pki / "ca.pem"), "-aet", "MODALITY", "-aec", AE_TITLE, "-to", "10",
        "127.0.0.1", str(scp.port), str(path),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def refusals(archive: Archive) -> list[DimseRefusal]:
    consumer = archive.runtime.bus.subscribe("access-test", [DimseRefusal.topic])
    try:
        return [DimseRefusal.from_bytes(record.value) for record in consumer.poll(1000, 0.2)]
    finally:
        consumer.close()


@pytest.mark.parametrize("client", [None, "IMPOSTOR"])
def test_a_peer_without_its_certificate_cannot_associate(
    tls_scp: StoreSCP, pki_two_clients: Path, tmp_path: Path, client: str | None
) -> None:
    sop = f"1.2.826.0.4.9.1.{1 if client else 2}"
    path = support.write_ct(tmp_path / "ct.dcm", "1.2.826.0.4.9", "1.2.826.0.4.9.1", sop)
    result = storescu_tls(tls_scp, path, pki_two_clients, client)
    assert result.returncode != 0
    assert "Association Rejected" in result.stdout + result.stderr
    assert tls_scp.archive.runtime.index.get_instance("default", sop) is None
    shown = client or "no client certificate"
    assert any(r.operation == "associate" and shown in r.reason for r in refusals(tls_scp.archive))


def test_a_peer_with_its_certificate_stores(tls_scp: StoreSCP, pki_two_clients: Path, tmp_path: Path) -> None:
    sop = "1.2.826.0.4.9.1.3"
    path = support.write_ct(tmp_path / "ct.dcm", "1.2.826.0.4.9", "1.2.826.0.4.9.1", sop)
    result = storescu_tls(tls_scp, path, pki_two_clients, "MODALITY")
    assert result.returncode == 0, result.stdout + result.stderr
    assert tls_scp.archive.runtime.index.get_instance("default", sop) is not None


def test_a_peer_needing_a_certificate_without_dicom_tls_refuses_to_start(tmp_path: Path) -> None:
    settings = load_settings(
        overrides={
            "storage": {"data_dir": str(tmp_path / "data")},
            "dimse": {"port": 0, "peers": {"MODALITY": {"hosts": ["127.0.0.1"], "tls_common_name": "MODALITY"}}},
        },
        environ={},
    )
    archive = Archive.from_settings(settings)
    try:
        with pytest.raises(ValueError, match="MODALITY"):
            StoreSCP(archive).start()
    finally:
        archive.close()
