"""C-FIND, C-GET and C-MOVE for wado-storescp: handlers bound to the same AE as C-STORE (one port).

The domain (`dicomcloud.dicom.cfind`) turns identifiers into queries and matches into response
identifiers; the archive matches them (archive/search.py, the same matcher and fill as QIDO-RS) and
reads the instances (archive/retrieve.py, the same selection as WADO-RS).

- C-FIND: pending responses are produced one by one as pynetdicom sends them; a C-CANCEL stops the
  stream with 0xFE00. IMAGE level fills keys the index does not keep from the instances' metadata
  entries, as QIDO-RS does for instance includefields (bulk data left out).
- C-GET and C-MOVE send stored files as stored: the dataset is read without decoding its pixel data
  and written back in its stored transfer syntax when the peer accepted that syntax for the SOP
  class (for C-MOVE we propose it), so the dataset's bytes are the stored ones. Instances stored
  uncompressed may also go in another accepted uncompressed syntax (pynetdicom re-encodes; values
  are unchanged). A compressed instance whose syntax a C-GET requestor did not accept is
  decompressed to Explicit VR Little Endian, keeping its SOP Instance UID (PS3.5 A.4: a transfer
  syntax change is not a new instance), if the requestor accepted a native syntax for its SOP
  class (pynetdicom, as acceptor, picks our first supported syntax among those proposed, so a
  requestor proposing both gets the native one); otherwise, and always for C-MOVE, that
  sub-operation fails and is counted.
- An identifier that names no level or lacks its unique keys fails with 0xA900 after the C-MOVE
  destination is known (pynetdicom asks for the destination first).
- A C-MOVE destination comes from `dimse.move_destinations` (AE title -> host, port, TLS);
  any other Move Destination is refused with 0xA801 (pynetdicom sends that one, without Error Comment).
- A refusal says why in Error Comment (0000,0902), as C-STORE's does (dimse/refusal.py).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_context, evt
from pynetdicom.presentation import PresentationContext

from dicomcloud.archive.core import Archive
from dicomcloud.config import MoveDestination
from dicomcloud.dicom.cfind import (
    InformationModel,
    find_query,
    find_response,
    patient_rows,
    query_retrieve_level,
    retrieve_query,
)
from dicomcloud.dicom.codecs import check_decoded_size
from dicomcloud.dicom.uids import NATIVE_SYNTAXES, TransferSyntax
from dicomcloud.dimse.access import Gate
from dicomcloud.dimse.refusal import refusal
from dicomcloud.errors import CannotConvert, DicomCloudError
from dicomcloud.ports.index import InstanceLocation

log = logging.getLogger(__name__)

FIND_MODELS: dict[str, InformationModel] = {
    "1.2.840.10008.5.1.4.1.2.1.1": "patient",  # Patient Root Query/Retrieve Information Model - FIND
    "1.2.840.10008.5.1.4.1.2.2.1": "study",  # Study Root Query/Retrieve Information Model - FIND
}
MOVE_MODELS: dict[str, InformationModel] = {
    "1.2.840.10008.5.1.4.1.2.1.2": "patient",
    "1.2.840.10008.5.1.4.1.2.2.2": "study",
}
GET_MODELS: dict[str, InformationModel] = {
    "1.2.840.10008.5.1.4.1.2.1.3": "patient",
    "1.2.840.10008.5.1.4.1.2.2.3": "study",
}
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"
QR_TRANSFER_SYNTAXES = [str(syntax) for syntax in NATIVE_SYNTAXES]
MAX_CONTEXTS = 128  # PS3.8: presentation context ids are odd numbers 1..255
STATUS_SUCCESS = 0x0000
STATUS_PENDING = 0xFF00
STATUS_CANCEL = 0xFE00

# A status (a Dataset when it carries an Error Comment) and an identifier.
FindResult = tuple[int | Dataset, Dataset | None]


class QueryRetrieveSCP:
    """Query/retrieve handlers; the gate (dimse/access.py) says for which tenant, and whether allowed at all."""

    def __init__(self, archive: Archive, gate: Gate) -> None:
        self.archive = archive
        self.gate = gate
        self.destinations: dict[str, MoveDestination] = archive.settings.dimse.move_destinations

    def add_contexts(self, ae: AE) -> None:
        """Accept the Patient Root and Study Root FIND, MOVE and GET SOP classes."""
        for sop_class in (*FIND_MODELS, *MOVE_MODELS, *GET_MODELS):
            ae.add_supported_context(sop_class, QR_TRANSFER_SYNTAXES)

    @property
    def handlers(self) -> list[tuple[evt.EventType, Callable[[evt.Event], Any]]]:
        return [(evt.EVT_C_FIND, self._on_find), (evt.EVT_C_GET, self._on_get), (evt.EVT_C_MOVE, self._on_move)]

    def _on_find(self, event: evt.Event) -> Iterator[FindResult]:
        called = called_ae(event)
        try:
            tenant = self.gate.operation(event, "find").tenant
            model = FIND_MODELS[str(event.request.AffectedSOPClassUID)]
            identifier = event.identifier
            qr_level = query_retrieve_level(identifier, model)
            wanted = [element.keyword for element in identifier if element.keyword and element.VR != "SQ"]
            matches = self.archive.search.find(tenant, find_query(identifier, model), wanted)
        except DicomCloudError as exc:
            log.warning("C-FIND to %s refused with 0x%04X: %s", called, exc.dimse_status, exc.message)
            yield refusal(exc), None
            return
        rows = [_values(match.values, match.extra) for match in matches]
        if qr_level == "PATIENT":
            rows = patient_rows(rows)
        for row in rows:
            if event.is_cancelled:
                yield STATUS_CANCEL, None
                return
            yield STATUS_PENDING, find_response(identifier, row, qr_level=qr_level, retrieve_ae_title=called)
        yield STATUS_SUCCESS, None

    def _on_get(self, event: evt.Event) -> Iterator[int | FindResult]:
        called = called_ae(event)
        try:
            tenant = self.gate.operation(event, "get").tenant
            instances = self._instances(tenant, event.identifier, GET_MODELS[str(event.request.AffectedSOPClassUID)])
        except DicomCloudError as exc:
            log.warning("C-GET to %s refused with 0x%04X: %s", called, exc.dimse_status, exc.message)
            yield 1
            yield refusal(exc), None
            return
        # Contexts we may send C-STOREs on: those the requestor took the storage SCP role for.
        accepted = {
            (str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in event.assoc.accepted_contexts if cx.as_scu
        }
        yield len(instances)
        yield from self._sub_operations(event, instances, accepted)

    def _on_move(self, event: evt.Event) -> Iterator[Any]:
        called = called_ae(event)
        name = str(event.move_destination).strip()
        destination = self.destinations.get(name)
        if destination is None:
            log.warning("C-MOVE to %s refused: unknown Move Destination %r", called, name)
            yield None, None
            return
        options: dict[str, Any] = {"tls_args": (tls_context(destination), destination.host)} if destination.tls else {}
        try:
            tenant = self.gate.operation(event, "move").tenant
            model = MOVE_MODELS[str(event.request.AffectedSOPClassUID)]
            instances = self._instances(tenant, event.identifier, model)
        except DicomCloudError as exc:
            log.warning("C-MOVE to %s refused with 0x%04X: %s", called, exc.dimse_status, exc.message)
            # pynetdicom reports a status only after associating with the destination.
            yield destination.host, destination.port, {**options, "contexts": [build_context(VERIFICATION_SOP_CLASS)]}
            yield 1
            yield refusal(exc), None
            return
        yield destination.host, destination.port, {**options, "contexts": move_contexts(instances)}
        yield len(instances)
        yield from self._sub_operations(event, instances)

    def _sub_operations(
        self, event: evt.Event, instances: list[InstanceLocation], accepted: set[tuple[str, str]] | None = None
    ) -> Iterator[FindResult]:
        """One C-STORE per instance; with the peer's `accepted` (SOP class, syntax) pairs known (C-GET),
        a compressed instance whose syntax was not accepted is decompressed if a native one was."""
        for location in instances:
            if event.is_cancelled:
                yield STATUS_CANCEL, None
                return
            dataset = self.archive.retrieve.dataset(location)
            if accepted is not None and needs_decompression(location, accepted):
                try:
                    check_decoded_size(dataset, self.archive.settings.limits.max_decoded_frame_bytes)
                except CannotConvert as exc:
                    # Sent as stored, the peer's missing context fails this sub-operation alone.
                    log.warning("C-GET of %s not decompressed: %s", location.sop_instance_uid, exc.message)
                else:
                    dataset.decompress(generate_instance_uid=False)
            yield STATUS_PENDING, dataset

    def _instances(self, tenant: str, identifier: Dataset, model: InformationModel) -> list[InstanceLocation]:
        """The stored instances a C-GET/C-MOVE identifier names, series by series."""
        return self.archive.retrieve.matching(tenant, retrieve_query(identifier, model))


def _values(values: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """A match's values by keyword: the index's, and those of its metadata entry (DICOM JSON by tag)."""
    if not extra:
        return values
    return {**{element.keyword: element.value for element in Dataset.from_json(extra)}, **values}


def needs_decompression(location: InstanceLocation, accepted: set[tuple[str, str]]) -> bool:
    """Compressed as stored, that syntax not accepted for its SOP class, a native syntax accepted."""
    sop_class, syntax = location.sop_class_uid, location.transfer_syntax
    return (
        not TransferSyntax(syntax).is_native
        and (sop_class, syntax) not in accepted
        and any((sop_class, native) in accepted for native in NATIVE_SYNTAXES)
    )


def move_contexts(instances: list[InstanceLocation]) -> list[PresentationContext]:
    """One context per (SOP class, stored syntax); native syntaxes also offer the other native ones."""
    pairs = dict.fromkeys((loc.sop_class_uid, loc.transfer_syntax) for loc in instances)
    if len(pairs) > MAX_CONTEXTS:
        log.warning("C-MOVE needs %d presentation contexts; the instances beyond %d fail", len(pairs), MAX_CONTEXTS)
    contexts = []
    for sop_class, syntax in list(pairs)[:MAX_CONTEXTS]:
        others = [str(native) for native in NATIVE_SYNTAXES if native != syntax]
        syntaxes = [syntax, *others] if TransferSyntax(syntax).is_native else [syntax]
        contexts.append(build_context(sop_class, syntaxes))
    return contexts


def tls_context(destination: MoveDestination) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=destination.ca_file or None)
    if destination.cert_file:
        context.load_cert_chain(destination.cert_file, destination.key_file or None)
    return context


def called_ae(event: evt.Event) -> str:
    """The AE title the peer asked for (ours may answer to several, one per tenant)."""
    request = event.assoc.requestor.primitive
    return str(request.called_ae_title).strip() if request is not None else ""
