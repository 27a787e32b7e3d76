"""`dicomcloud certs`: a private CA and the server and client certificates it signs, for DICOM TLS and HTTPS.

Keys are ECDSA P-256 (what TLS 1.2 and 1.3 peers, DCMTK and Nginx all speak), written owner-only.
A folder that already holds a CA keeps it: running again issues more certificates under the same CA,
so the peers that trust it need nothing new.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dicomcloud.errors import InvalidInput

CA_DAYS = 3650
# Browsers refuse server certificates valid for longer than 398 days.
LEAF_DAYS = 397
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Issued:
    """A private key and its certificate."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def create_ca(common_name: str = "dicomcloud CA", days: int = CA_DAYS) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    usage = _key_usage(ca=True)
    certificate = (
        _builder(name, name, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(key, certificate)


def issue(
    ca: Issued, common_name: str, *, hosts: Sequence[str] = (), client: bool = False, days: int = LEAF_DAYS
) -> Issued:
    """A leaf certificate: for a server (`hosts` become its DNS and IP subject alternative names) or a client."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    usage = _key_usage(ca=False)
    purpose = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        _builder(subject, ca.certificate.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName([_general_name(h) for h in hosts]), critical=False)
    return Issued(key, builder.sign(ca.key, hashes.SHA256()))


def _builder(
    subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey, days: int
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """Signatures only; a CA also signs certificates and revocation lists."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def write_pki(out: Path, hosts: Sequence[str], clients: Sequence[str], days: int = LEAF_DAYS) -> list[Path]:
    """Write the CA (kept if `out` has one), `server.pem`/`.key` for `hosts`, `client-<name>.pem`/`.key`.

    Returns the files written."""
    for name in clients:
        if not _NAME.fullmatch(name):
            raise InvalidInput(f"invalid client name {name[:80]!r}: letters, digits, '.', '_' and '-'")
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    ca = load_ca(out)
    if ca is None:
        ca = create_ca()
        written += _write(out, "ca", ca)
    if hosts:
        written += _write(out, "server", issue(ca, hosts[0], hosts=hosts, days=days))
    for name in clients:
        written += _write(out, f"client-{name}", issue(ca, name, client=True, days=days))
    return written


def load_ca(folder: Path) -> Issued | None:
    cert_path, key_path = folder / "ca.pem", folder / "ca.key"
    if not cert_path.is_file() or not key_path.is_file():
        return None
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidInput(f"{key_path} is not an EC private key")
    return Issued(key, x509.load_pem_x509_certificate(cert_path.read_bytes()))


def _write(folder: Path, stem: str, issued: Issued) -> list[Path]:
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
    key_path.unlink(missing_ok=True)
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(issued.key_pem())
    cert_path.write_bytes(issued.cert_pem())
    return [cert_path, key_path]
