"""Who may associate with the SCP, for which tenant, and do what: DIMSE access control.

Without access control (the embedded default, unless DICOMweb authentication is on), any peer may
associate and do anything, and the called AE title picks the tenant (`dimse.ae_tenants`, else the
default tenant; with `dimse.reject_unknown_called_ae` only mapped titles and ours are accepted).

With access control, only peers listed in `dimse.peers` associate: a peer is known by its calling AE
title (compared as PS3.5 6.2 defines the AE VR: leading and trailing spaces are not part of it, case
counts), must connect from one of its hosts (addresses or CIDR networks) and, when its entry names a
certificate common name, over DICOM TLS with a client certificate of that name. Its tenant comes from its
entry: the called AE title may choose among the peer's tenants and nothing else. Each operation (echo,
store, find, get, move) must be in its entry, and its C-STORE may replace an instance already stored
with other content only when its entry says `replace`.
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

from pynetdicom import evt

from dicomcloud.config import DIMSE_OPERATIONS, DimsePeer, Settings
from dicomcloud.errors import DicomCloudError, OperationRefused, ShuttingDown
from dicomcloud.events import DimseRefusal
from dicomcloud.networks import AddressSet
from dicomcloud.ports.bus import Bus, Message

log = logging.getLogger(__name__)

# PS3.7 C.4: the status of an operation the requestor is not allowed to perform.
STATUS_NOT_AUTHORIZED = 0x0124


@dataclass(frozen=True)
class PeerIdentity:
    """What the SCP knows of the other end of an association."""

    calling_ae: str
    called_ae: str
    address: str
    certificate_common_name: str = ""


@dataclass(frozen=True)
class Admission:
    """An association let in: its tenant, what it may do, and whether its C-STOREs may replace."""

    tenant: str
    operations: frozenset[str]
    may_replace: bool | None  # None: as `storage.duplicate_policy` says

    def allows(self, operation: str) -> bool:
        return operation in self.operations


@dataclass(frozen=True)
class Refusal:
    """An association kept out, and why (`calling` tells which A-ASSOCIATE-RJ reason applies)."""

    reason: str
    calling: bool  # the calling AE title is what was not recognised (else the called one)


def ae_title(value: str) -> str:
    """An AE title as compared: without the spaces PS3.5 says are not significant."""
    return value.strip(" ")


class AccessControl:
    def __init__(self, settings: Settings) -> None:
        dimse = settings.dimse
        self.enabled = settings.dimse_access_control
        self.default_tenant = settings.tenant
        self.own_ae_title = ae_title(dimse.ae_title)
        self.reject_unknown_called_ae = dimse.reject_unknown_called_ae
        self.tenants = {ae_title(title): tenant for title, tenant in dimse.ae_tenants.items()}
        self.peers = {ae_title(title): peer for title, peer in dimse.peers.items()}
        self._hosts = {title: AddressSet(peer.hosts) for title, peer in self.peers.items()}

    def tenant_for(self, called_ae: str) -> str | None:
        """The tenant a called AE title names; None when it names none and unknown ones are refused."""
        called = ae_title(called_ae)
        if called in self.tenants:
            return self.tenants[called]
        if (self.reject_unknown_called_ae or self.enabled) and called != self.own_ae_title:
            return None
        return self.default_tenant

    def admit(self, identity: PeerIdentity) -> Admission | Refusal:
        tenant = self.tenant_for(identity.called_ae)
        if not self.enabled:
            if tenant is None:
                return Refusal(f"called AE title {identity.called_ae!r} is not recognised", calling=False)
            return Admission(tenant, frozenset(DIMSE_OPERATIONS), None)
        calling = ae_title(identity.calling_ae)
        peer = self.peers.get(calling)
        if peer is None:
            return Refusal(f"calling AE title {identity.calling_ae!r} is not a known peer", calling=True)
        if identity.address not in self._hosts[calling]:
            return Refusal(f"peer {calling!r} is not allowed from {identity.address}", calling=True)
        if peer.tls_common_name and identity.certificate_common_name != peer.tls_common_name:
            shown = identity.certificate_common_name or "no client certificate"
            reason = f"peer {calling!r} must present the certificate of {peer.tls_common_name!r}, not {shown}"
            return Refusal(reason, calling=True)
        allowed = _tenants(peer, self.default_tenant)
        if tenant is None or tenant not in allowed:
            return Refusal(f"peer {calling!r} may not reach the tenant of {identity.called_ae!r}", calling=False)
        return Admission(tenant, frozenset(peer.operations), peer.replace)


def _tenants(peer: DimsePeer, default_tenant: str) -> set[str]:
    return set(peer.tenants) if peer.tenants else {default_tenant}


class Gate:
    """Access control on pynetdicom's events: every refusal is a warning and a `DimseRefusal` on the bus
    (the warehouse's `dimse_refusal` table), so an administrator sees who knocked, from where, for what."""

    def __init__(self, settings: Settings, bus: Bus) -> None:
        self.control = AccessControl(settings)
        self.bus = bus
        # Set when the SCP begins to stop: every operation asked for from then on is refused, untouched.
        self.closing = threading.Event()

    def association(self, event: evt.Event) -> Refusal | None:
        """Why an association must be rejected, or None to let it in."""
        identity = peer_identity(event)
        outcome = self.control.admit(identity)
        if isinstance(outcome, Refusal):
            self._refused(identity, "", "associate", 0, outcome.reason)
            return outcome
        return None

    def operation(self, event: evt.Event, operation: str) -> Admission:
        """The association's admission, checked for `operation`; OperationRefused when it may not,
        ShuttingDown once the SCP is stopping."""
        if self.closing.is_set():
            raise ShuttingDown("the archive is shutting down: nothing was done; send it again once it is back")
        identity = peer_identity(event)
        outcome = self.control.admit(identity)
        if isinstance(outcome, Refusal):
            # Admitted at association time; the settings cannot change since, so this is not expected.
            self._refused(identity, "", operation, STATUS_NOT_AUTHORIZED, outcome.reason)
            raise OperationRefused(outcome.reason)
        if not outcome.allows(operation):
            reason = f"peer {identity.calling_ae!r} may not {operation}"
            self._refused(identity, outcome.tenant, operation, STATUS_NOT_AUTHORIZED, reason)
            raise OperationRefused(reason)
        return outcome

    def refused_store(self, event: evt.Event, tenant: str, status: int, reason: str) -> None:
        """A C-STORE the archive refused because the peer may not replace what is stored."""
        self._refused(peer_identity(event), tenant, "store", status, reason)

    def _refused(self, identity: PeerIdentity, tenant: str, operation: str, status: int, reason: str) -> None:
        log.warning(
            "DIMSE %s from %r at %s to %r refused: %s",
            operation,
            identity.calling_ae,
            identity.address,
            identity.called_ae,
            reason,
        )
        refusal = DimseRefusal(
            refused_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
            tenant_id=tenant,
            calling_ae=identity.calling_ae,
            called_ae=identity.called_ae,
            client_address=identity.address,
            operation=operation,
            status=status,
            reason=reason,
        )
        try:
            self.bus.publish([Message(refusal.topic, identity.calling_ae, refusal.to_bytes())])
        except DicomCloudError as exc:
            log.warning("the refusal could not be recorded on the bus: %s", exc.message)


def peer_identity(event: evt.Event) -> PeerIdentity:
    """The calling and called AE titles, the address and the TLS client certificate's name of an association."""
    requestor = event.assoc.requestor
    primitive = requestor.primitive
    calling = str(primitive.calling_ae_title) if primitive is not None else str(requestor.ae_title)
    called = str(primitive.called_ae_title) if primitive is not None else ""
    return PeerIdentity(ae_title(calling), ae_title(called), str(requestor.address), _certificate_name(event))


def _certificate_name(event: evt.Event) -> str:
    """The common name of the peer's verified TLS client certificate; "" without one."""
    sock = getattr(event.assoc.dul.socket, "socket", None)
    certificate = sock.getpeercert() if isinstance(sock, ssl.SSLSocket) else None
    subject: tuple[tuple[tuple[str, str], ...], ...] = (certificate or {}).get("subject", ())  # type: ignore[assignment]
    names = [value for rdn in subject for name, value in rdn if name == "commonName"]
    return names[0] if names else ""
