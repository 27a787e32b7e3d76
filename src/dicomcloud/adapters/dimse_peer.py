"""A DIMSE PACS as a peer to import from: C-FIND (Study Root) lists its studies, their series and their
instances; C-GET fetches each instance on its own association, the PACS sending it back as a C-STORE on a
presentation context per transfer syntax we accept, so it arrives in the syntax the PACS stores it in, its
dataset byte for byte (DIMSE carries no File Meta Information: pynetdicom writes it).

A PACS that does not do C-GET is asked by C-MOVE instead (`move_port`): it sends each instance to our AE
title, which it must know at this host and port, where a storage SCP the import runs for as long as it
lasts (`MoveReceiver`) hands it to the fetch waiting for that SOP Instance UID."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, cast

from pydicom.dataset import Dataset
from pynetdicom import AE, _config, build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.transport import ThreadedAssociationServer

from dicomcloud.dimse.refusal import refusal
from dicomcloud.dimse.scp import TRANSFER_SYNTAXES, storage_sop_classes
from dicomcloud.errors import OperationRefused, StorageFailure
from dicomcloud.ports.peer import RemoteInstance

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
PENDING = frozenset({0xFF00, 0xFF01})
SUCCESS = 0x0000


class DimsePeer:
    def __init__(
        self, address: str, calling_ae: str, timeout: float = 60.0, move_to: tuple[str, int] | None = None
    ) -> None:
        """`address` is AE_TITLE@host:port; with `move_to` (host, port), instances come by C-MOVE to a
        storage SCP listening there as `calling_ae`."""
        called, _, where = address.partition("@")
        host, _, port = where.rpartition(":")
        if not (called and host and port.isdigit()):
            raise ValueError(f"a DIMSE peer is AE_TITLE@host:port, not {address!r}")
        self.called_ae, self.host, self.port = called, host, int(port)
        self.calling_ae = calling_ae
        self.timeout = timeout
        # Received datasets go to a file undecoded, so what is stored is what the peer sent.
        _config.STORE_RECV_CHUNKED_DATASET = True
        self._receiver = MoveReceiver(calling_ae, move_to, timeout) if move_to else None

    @property
    def name(self) -> str:
        return f"{self.called_ae}@{self.host}:{self.port}"

    def studies(self) -> list[str]:
        return [str(found.StudyInstanceUID) for found in self._find("STUDY", StudyInstanceUID="")]

    def instances(self, study_instance_uid: str) -> list[RemoteInstance]:
        series = [str(s.SeriesInstanceUID) for s in self._find("SERIES", StudyInstanceUID=study_instance_uid,
                                                                SeriesInstanceUID="")]
        return [
            RemoteInstance(study_instance_uid, uid, str(found.SOPInstanceUID), str(found.get("SOPClassUID", "")))
            for uid in series
            for found in self._find(
                "IMAGE", StudyInstanceUID=study_instance_uid, SeriesInstanceUID=uid, SOPInstanceUID="", SOPClassUID=""
            )
        ]

    def fetch(self, instance: RemoteInstance, into: BinaryIO) -> None:
        identifier = _identifier(
            "IMAGE",
            StudyInstanceUID=instance.study_instance_uid,
            SeriesInstanceUID=instance.series_instance_uid,
            SOPInstanceUID=instance.sop_instance_uid,
        )
        if self._receiver is not None:
            with self._receiver.expecting(instance.sop_instance_uid, into) as received:
                final = self._retrieve(identifier, STUDY_ROOT_MOVE, self._associate([build_context(STUDY_ROOT_MOVE)]))
            self._check(instance, "C-MOVE", final, received[0])
        else:
            self._get(instance, identifier, into)
        into.flush()

    def _get(self, instance: RemoteInstance, identifier: Dataset, into: BinaryIO) -> None:
        if not instance.sop_class_uid:
            raise StorageFailure(f"{self.name} did not say the SOP Class of {instance.sop_instance_uid}")
        sent = 0

        def on_store(event: evt.Event) -> int:
            nonlocal sent
            sent += 1
            return _write_received(event, into)

        contexts = [build_context(STUDY_ROOT_GET)]
        contexts += [build_context(instance.sop_class_uid, syntax) for syntax in TRANSFER_SYNTAXES]
        assoc = self._associate(
            contexts, [build_role(instance.sop_class_uid, scp_role=True)], [(evt.EVT_C_STORE, on_store)]
        )
        final = self._retrieve(identifier, STUDY_ROOT_GET, assoc)
        self._check(instance, "C-GET", final, sent)

    def _retrieve(self, identifier: Dataset, model: str, assoc: Association) -> int | None:
        """Send a C-GET or C-MOVE on `assoc` and release it; the final status (None: no answer)."""
        try:
            final = None
            retrieve = (
                assoc.send_c_move(identifier, self.calling_ae, model)
                if model == STUDY_ROOT_MOVE
                else assoc.send_c_get(identifier, model)
            )
            for status, _ in retrieve:
                if status is not None and int(status.Status) not in PENDING:
                    final = int(status.Status)
        finally:
            assoc.release()
        return final

    def _check(self, instance: RemoteInstance, operation: str, final: int | None, sent: int) -> None:
        if final != SUCCESS or sent != 1:
            shown = "no answer" if final is None else f"0x{final:04X}"
            raise StorageFailure(
                f"{operation} of {instance.sop_instance_uid} from {self.name}: {shown}, {sent} instance(s) sent"
            )

    def close(self) -> None:
        """Each operation has its own association; only the C-MOVE receiver is held open."""
        if self._receiver is not None:
            self._receiver.close()

    def _find(self, level: str, **keys: str) -> Iterator[Dataset]:
        assoc = self._associate([build_context(STUDY_ROOT_FIND)])
        try:
            for status, found in assoc.send_c_find(_identifier(level, **keys), STUDY_ROOT_FIND):
                code = None if status is None else int(status.Status)
                if code in PENDING and found is not None:
                    yield found
                elif code != SUCCESS:
                    raise StorageFailure(f"C-FIND {level} at {self.name} ended with {code!r}")
        finally:
            assoc.release()

    def _associate(
        self, contexts: list[Any], roles: list[Any] | None = None, handlers: list[Any] | None = None
    ) -> Association:
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        assoc = ae.associate(
            self.host, self.port, contexts, ae_title=self.called_ae, ext_neg=roles or [], evt_handlers=handlers or []
        )
        if not assoc.is_established:
            raise StorageFailure(f"{self.name} did not accept an association from {self.calling_ae}")
        return assoc


def _identifier(level: str, **keys: str) -> Dataset:
    identifier = Dataset()
    for keyword, value in {"QueryRetrieveLevel": level, **keys}.items():
        setattr(identifier, keyword, value)
    return identifier


class MoveReceiver:
    """The storage SCP a C-MOVE sends to: an instance someone is fetching goes to that fetch's file; one
    nobody asked for is refused."""

    def __init__(self, ae_title: str, address: tuple[str, int], timeout: float) -> None:
        self._waiting: dict[str, tuple[BinaryIO, list[int]]] = {}
        self._lock = threading.Lock()
        _config.STORE_RECV_CHUNKED_DATASET = True  # as for C-GET: what is written is what the PACS sent
        ae = AE(ae_title=ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
        ae.require_called_aet = True
        for sop_class in storage_sop_classes():
            ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        # Not blocking, start_server returns the server.
        self._server = cast(
            ThreadedAssociationServer,
            ae.start_server(address, block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]),
        )

    @contextmanager
    def expecting(self, sop_instance_uid: str, into: BinaryIO) -> Iterator[list[int]]:
        """While inside, that instance goes to `into`; yields [how many times it came]."""
        received = [0]
        with self._lock:
            self._waiting[sop_instance_uid] = (into, received)
        try:
            yield received
        finally:
            with self._lock:
                del self._waiting[sop_instance_uid]

    def close(self) -> None:
        self._server.shutdown()

    def _on_store(self, event: evt.Event) -> int | Dataset:
        uid = str(cast(C_STORE, event.request).AffectedSOPInstanceUID)
        with self._lock:
            waiting = self._waiting.get(uid)
        if waiting is None:
            return refusal(OperationRefused(f"this import did not ask for {uid}"))
        into, received = waiting
        received[0] += 1
        return _write_received(event, into)


def _write_received(event: evt.Event, into: BinaryIO) -> int:
    """Copy a received C-STORE's file (File Meta Information and the dataset as sent) into `into`."""
    with Path(event.dataset_path).open("rb") as source:
        shutil.copyfileobj(source, into, 1024 * 1024)
    return SUCCESS
