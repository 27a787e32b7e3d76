"""wado-storescp: the DIMSE SCP (C-ECHO, C-STORE, and C-FIND/C-GET/C-MOVE from `query_retrieve`), a
thin shell over pynetdicom and the archive.

Datasets are never decoded: pynetdicom writes each received dataset, behind a preamble and File
Meta Information naming the accepted transfer syntax, to a temporary file
(`_config.STORE_RECV_CHUNKED_DATASET`, which keeps memory flat for large objects); the handler hands
that file to the archive's store (archive/store.py), which parses it once and places it; when the
process's temp folder is the storage's staging folder (the services set it so), placing it is a
rename, not a copy. Success (0x0000) is sent only after the store returned: the instance is durable,
indexed and announced, so a C-FIND, QIDO-RS or WADO-RS sent after the response finds it.

Who may associate, for which tenant, and do what is dimse/access.py's: without access control the
called AE title picks the tenant; with it, only known peers from their hosts associate (A-ASSOCIATE-RJ
otherwise, "calling AE title not recognised"), their tenant comes from their entry, and an operation
they may not perform is refused with 0x0124 (a C-STORE that would replace an instance, with 0x0111).

A refused C-STORE says why in its response's Error Comment (0000,0902), the reason the archive wrote
(errors.py), as dimse/refusal.py puts it.

Stopping is graceful (`stop`, on SIGINT or SIGTERM): the listener closes, every request asked for from
then on is refused untouched (0xA700 with "the archive is shutting down" as Error Comment; sending it again
later is safe), the requests being answered finish and get their responses, and only then are the
associations still open aborted and the archive closed behind them. An instance acknowledged before the
stop is there after it; none is refused half-way with an internal error.

Storage contexts accept SCP/SCU role selection, so a C-GET requestor that proposes to be the
storage SCP gets its C-STORE sub-operations on the same association.

In each proposed context the requestor's first transfer syntax that the archive supports is accepted:
a sender offering a compressed file's own syntax with native fallbacks (dcmsend, storescu) sends it
as it is, and the archive stores what was sent rather than a copy the sender had to decompress.
"""

from __future__ import annotations

import inspect
import logging
import socket
import ssl
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from pydicom import uid as ts
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.presentation import AllStoragePresentationContexts, StoragePresentationContexts
from pynetdicom.transport import ThreadedAssociationServer

from dicomcloud.archive.core import Archive
from dicomcloud.config import DimseSettings
from dicomcloud.dicom.uids import ACCEPTED_SYNTAXES
from dicomcloud.dimse.access import Gate, peer_identity
from dicomcloud.dimse.query_retrieve import VERIFICATION_SOP_CLASS, QueryRetrieveSCP
from dicomcloud.dimse.refusal import refusal
from dicomcloud.errors import DicomCloudError, DuplicateInstance
from dicomcloud.metrics import DIMSE_OPERATIONS

log = logging.getLogger(__name__)

# Everything we can store as received (dicom/uids.py); the requestor's order of preference decides per context
# (requestor_preferred), this order only between proposals that disagree.
TRANSFER_SYNTAXES = [str(syntax) for syntax in ACCEPTED_SYNTAXES]

MAX_ASSOCIATIONS = 64
# How long a stop waits for the requests being answered, and then for the aborted associations to end.
DRAIN_TIMEOUT = 60.0
ABORT_TIMEOUT = 5.0
# A-ASSOCIATE-RJ: rejected-permanent, by the DUL service user, calling / called AE title not recognised.
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
REJECT_CALLED_AE = (0x01, 0x01, 0x07)
STATUS_SUCCESS = 0x0000
# Connections the kernel queues on the DIMSE port before a process accepts them (pynetdicom's TCPServer: 5).
DIMSE_BACKLOG = 128
STATUS_PROCESSING_FAILURE = 0xC000
# Responses that announce more to come; the operation is counted at its final response.
PENDING_STATUSES = frozenset({0xFF00, 0xFF01})


def server_tls_context(dimse: DimseSettings) -> ssl.SSLContext | None:
    """DICOM TLS for the SCP (TLS 1.2 or later), or None without a certificate; fails at start when misconfigured.

    With a CA, a client certificate is asked for and verified when offered (required with
    `tls_require_client_cert`), so access control can check the name a peer's entry demands."""
    named = sorted(title for title, peer in dimse.peers.items() if peer.tls_common_name)
    if named and not dimse.tls_ca_file:
        raise ValueError(f"DIMSE peers {named} need a client certificate: set dimse.tls_cert_file and tls_ca_file")
    if not dimse.tls_cert_file:
        if dimse.tls_require_client_cert:
            raise ValueError("dimse.tls_require_client_cert needs dimse.tls_cert_file (DICOM TLS is off)")
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=dimse.tls_ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(dimse.tls_cert_file, dimse.tls_key_file or None)
    if dimse.tls_require_client_cert and not dimse.tls_ca_file:
        raise ValueError("dimse.tls_require_client_cert needs dimse.tls_ca_file, the CA client certificates chain to")
    if dimse.tls_ca_file:
        context.verify_mode = ssl.CERT_REQUIRED if dimse.tls_require_client_cert else ssl.CERT_OPTIONAL
    return context


def storage_sop_classes() -> list[str]:
    """Every storage SOP class pynetdicom knows, once each."""
    classes = [cx.abstract_syntax for cx in (*AllStoragePresentationContexts, *StoragePresentationContexts)]
    return [str(uid) for uid in dict.fromkeys(classes) if uid]


def requestor_preferred(supported: Sequence[str], proposals: Iterable[Sequence[str]]) -> list[str]:
    """`supported` reordered so that, in each proposal, the first syntax we support comes before the proposal's
    other ones.

    pynetdicom accepts, in a context, the first of the acceptor's syntaxes that the requestor proposes; with
    this order that is the requestor's first choice. Proposals of one abstract syntax that disagree (one
    prefers A to B, another B to A) are settled by `supported`'s own order.
    """
    after: dict[str, set[str]] = {syntax: set() for syntax in supported}
    for proposal in proposals:
        ours = list(dict.fromkeys(syntax for syntax in proposal if syntax in after))
        if ours:
            after[ours[0]].update(ours[1:])
    waiting_on = {syntax: sum(syntax in later for later in after.values()) for syntax in supported}
    remaining, order = list(supported), []
    while remaining:
        ready = next((syntax for syntax in remaining if waiting_on[syntax] == 0), remaining[0])
        remaining.remove(ready)
        order.append(ready)
        for later in after[ready]:
            waiting_on[later] -= 1
    return order


def prefer_requestor_syntaxes(assoc: Association) -> None:
    """Reorder this association's copy of the supported contexts by what the requestor proposed (before
    negotiation: at EVT_REQUESTED)."""
    proposals: dict[str, list[list[str]]] = defaultdict(list)
    for context in assoc.requestor.requested_contexts:
        proposals[str(context.abstract_syntax)].append([str(syntax) for syntax in context.transfer_syntax])
    for context in assoc.acceptor.supported_contexts:
        if str(context.abstract_syntax) in proposals:
            order: list[str | bytes | ts.UID] = [
                *requestor_preferred(context.transfer_syntax, proposals[str(context.abstract_syntax)])
            ]
            context.transfer_syntax = order


class StoreSCP:
    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        dimse = archive.settings.dimse
        self.ae = AE(ae_title=dimse.ae_title)
        self.ae.maximum_pdu_size = dimse.max_pdu
        self.ae.network_timeout = dimse.network_timeout
        self.ae.acse_timeout = dimse.network_timeout
        self.ae.dimse_timeout = dimse.network_timeout
        self.ae.maximum_associations = MAX_ASSOCIATIONS
        for sop_class in storage_sop_classes():
            self.ae.add_supported_context(sop_class, TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
        self.ae.add_supported_context(VERIFICATION_SOP_CLASS, TRANSFER_SYNTAXES[:3])
        self.gate = Gate(archive.settings, archive.runtime.bus)
        self.query_retrieve = QueryRetrieveSCP(archive, self.gate)
        self.query_retrieve.add_contexts(self.ae)
        self._server: Any = None
        self._listening = False
        self._closing = False
        self._in_flight = InFlight()

    def start(self, sock: socket.socket | None = None) -> None:
        """Serve, in threads of its own until `stop()`, `sock`: a listening socket other processes may serve too
        (service_workers.py), or one bound to `dimse.host:dimse.port` here."""
        # Process-wide pynetdicom switch: received datasets go to a file, undecoded.
        _config.STORE_RECV_CHUNKED_DATASET = True
        dimse = self.archive.settings.dimse
        requests = [(evt.EVT_C_ECHO, self._on_echo), (evt.EVT_C_STORE, self._on_store), *self.query_retrieve.handlers]
        handlers: list[evt.EventHandlerType] = [
            (evt.EVT_REQUESTED, self._on_requested),
            *[(event, self._in_flight.counted(handler)) for event, handler in requests],
            (evt.EVT_DIMSE_SENT, _count_response),
        ]
        listening = sock if sock is not None else dimse_socket(dimse)
        # AE.start_server(block=False) with a server class serving `listening`.
        server = self.ae.make_server(
            listening.getsockname(),
            evt_handlers=handlers,
            ssl_context=server_tls_context(dimse),
            server_class=SharedSocketServer,
            listening=listening,
        )
        self.ae._servers.append(server)
        threading.Thread(target=server.serve_forever, name="AcceptorServer", daemon=True).start()
        self._server = server
        self._listening = True
        log.info(
            "DIMSE SCP %s listening on %s:%d%s, %s",
            dimse.ae_title,
            dimse.host,
            self.port,
            " (TLS)" if dimse.tls_cert_file else "",
            f"access control on: {len(self.gate.control.peers)} known peer(s)"
            if self.gate.control.enabled
            else "access control off: any peer may associate (dimse.access_control)",
        )

    @property
    def serving(self) -> bool:
        """Whether this process accepts associations on the port."""
        return self._listening

    @property
    def port(self) -> int:
        """The port actually bound (useful when the settings ask for port 0)."""
        return int(self._server.server_address[1]) if self._server else self.archive.settings.dimse.port

    def stop_accepting(self) -> None:
        """No new association (the listener closes) and no new request (the gate refuses it); returns at once.

        Called from signal handlers, which a second signal may interrupt: each step is marked done before it
        takes a lock, so the call run inside another never waits on a lock the interrupted one holds."""
        if not self._closing:
            self._closing = True
            self.gate.closing.set()
        if self._server is not None and self._listening:
            self._listening = False
            self._server.shutdown()

    def stop(self) -> None:
        """Stop gracefully: accept nothing new, let the requests being answered finish, then abort the
        associations still open. The archive may be closed once this returns."""
        self.stop_accepting()
        server, self._server = self._server, None
        if server is not None:
            if not self._in_flight.wait_idle(DRAIN_TIMEOUT):
                log.warning("DIMSE requests still running %.0f s after the stop began", DRAIN_TIMEOUT)
            # Only established ones: a connection that never asked to associate (a readiness probe) holds nothing.
            associations = [assoc for assoc in server.active_associations if assoc.is_established]
            for assoc in associations:
                assoc.abort(block=False)
            for assoc in associations:
                assoc.join(ABORT_TIMEOUT)
            if associations:
                log.info("DIMSE: aborted %d idle association(s) on stopping", len(associations))

    def _on_requested(self, event: evt.Event) -> None:
        rejection = self.gate.association(event)
        if rejection is not None:
            event.assoc.acse.send_reject(*(REJECT_CALLING_AE if rejection.calling else REJECT_CALLED_AE))
            # As pynetdicom does for its own rejections: wait until the A-ASSOCIATE-RJ is on the wire.
            event.assoc.kill()
            return
        requestor = event.assoc.requestor
        log.debug("association from %r at %s:%s", requestor.ae_title, requestor.address, requestor.port)
        prefer_requestor_syntaxes(event.assoc)

    def _on_echo(self, event: evt.Event) -> int | Dataset:
        try:
            self.gate.operation(event, "echo")
        except DicomCloudError as exc:
            return refusal(exc)
        return STATUS_SUCCESS

    def _on_store(self, event: evt.Event) -> int | Dataset:
        peer = peer_identity(event)
        calling, called = peer.calling_ae, peer.called_ae
        try:
            admission = self.gate.operation(event, "store")
        except DicomCloudError as exc:
            return refusal(exc)
        try:
            received = event.dataset_path.open("rb")
            stored = self.archive.store.store(
                received,
                tenant_id=admission.tenant,
                source="dimse",
                calling_ae=calling,
                called_ae=called,
                may_replace=admission.may_replace,
            )
        except DuplicateInstance as exc:
            if admission.may_replace is False:
                self.gate.refused_store(event, admission.tenant, exc.dimse_status, exc.message)
            else:
                log.warning("C-STORE from %s refused with 0x%04X: %s", calling, exc.dimse_status, exc.message)
            return refusal(exc)
        except DicomCloudError as exc:
            log.warning("C-STORE from %s refused with 0x%04X: %s", calling, exc.dimse_status, exc.message)
            return refusal(exc)
        except Exception:
            # pynetdicom would answer 0xC211 and keep going; we log the cause and say "failed".
            log.exception("C-STORE from %s failed", calling)
            return STATUS_PROCESSING_FAILURE
        log.debug("C-STORE %s from %s stored as %s", stored.sop_instance_uid, calling, stored.file_path)
        return STATUS_SUCCESS


def dimse_socket(dimse: DimseSettings) -> socket.socket:
    """The DIMSE listening socket, bound once for every process of the service (port 0: the kernel's choice,
    which the SCP reports). Non-blocking: the processes that lose the race for a connection return from
    accept() at once rather than wait in it."""
    family = socket.AF_INET6 if ":" in dimse.host else socket.AF_INET
    sock = socket.create_server((dimse.host, dimse.port), family=family, backlog=DIMSE_BACKLOG)
    sock.setblocking(False)
    return sock


class SharedSocketServer(ThreadedAssociationServer):
    """pynetdicom's server on a listening socket bound before it (by this process or the service's), which
    other processes may accept on too.

    The socket stays non-blocking: a process whose select() woke for a connection another process accepted
    returns from accept() at once (pynetdicom's own socket, with a timeout, would wait there up to
    `network_timeout`, and so would `shutdown()`). Accepted sockets are blocking, as pynetdicom's are: its
    association reads time out by their own select(). Closing shuts the socket down in no other process."""

    def __init__(self, *args: Any, listening: socket.socket, **kwargs: Any) -> None:
        self._bound = listening
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        assert self.socket is not None
        self.socket.close()  # the unbound one TCPServer made
        self.socket = self._bound
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        """Listening already (the socket was bound and listened on before)."""

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        client.setblocking(True)
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True)
        return client, address

    def server_close(self) -> None:
        assert self.socket is not None
        self.socket.close()


class InFlight:
    """The DIMSE requests being answered, so a stop waits for exactly them."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._count = 0

    @contextmanager
    def _one(self) -> Iterator[None]:
        with self._changed:
            self._count += 1
        try:
            yield
        finally:
            with self._changed:
                self._count -= 1
                self._changed.notify_all()

    def counted(self, handler: Callable[[evt.Event], Any]) -> Callable[[evt.Event], Any]:
        """`handler`, counted while it runs (a generator handler until its last response is taken)."""
        if inspect.isgeneratorfunction(handler):

            def responses(event: evt.Event) -> Iterator[Any]:
                with self._one():
                    yield from handler(event)

            return responses

        def answer(event: evt.Event) -> Any:
            with self._one():
                return handler(event)

        return answer

    def wait_idle(self, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self._count == 0, timeout)


def _count_response(event: evt.Event) -> None:
    """Count each operation we answered (C-ECHO, C-STORE, C-FIND, C-GET, C-MOVE) by its final status."""
    name = type(event.message).__name__
    status = getattr(event.message.command_set, "Status", None)
    if name.endswith("_RSP") and status is not None and status not in PENDING_STATUSES:
        DIMSE_OPERATIONS.labels(name.removesuffix("_RSP").replace("_", "-"), f"0x{int(status):04X}").inc()
