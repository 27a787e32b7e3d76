"""A DIMSE PACS as a peer to import from: C-FIND (Study Root) lists its studies, their series and their
instances; C-GET fetches each instance on its own association, the PACS sending it back as a C-STORE on a
presentation context per transfer syntax we accept, so it arrives in the syntax the PACS stores it in, its
dataset byte for byte (DIMSE carries no File Meta Information: pynetdicom writes it)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from pydicom.dataset import Dataset
from pynetdicom import AE, _config, build_context, build_role, evt
from pynetdicom.association import Association

from dicomcloud.dimse.scp import TRANSFER_SYNTAXES
from dicomcloud.errors import StorageFailure
from dicomcloud.ports.peer import RemoteInstance

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
PENDING = frozenset({0xFF00, 0xFF01})
SUCCESS = 0x0000


class DimsePeer:
    def __init__(self, address: str, calling_ae: str, timeout: float = 60.0) -> None:
        """`address` is AE_TITLE@host:port."""
        called, _, where = address.partition("@")
        host, _, port = where.rpartition(":")
        if not (called and host and port.isdigit()):
            raise ValueError(f"a DIMSE peer is AE_TITLE@host:port, not {address!r}")
        self.called_ae, self.host, self.port = called, host, int(port)
        self.calling_ae = calling_ae
        self.timeout = timeout
        # Received datasets go to a file undecoded, so what is stored is what the peer sent.
        _config.STORE_RECV_CHUNKED_DATASET = True

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
        if not instance.sop_class_uid:
            raise StorageFailure(f"{self.name} did not say the SOP Class of {instance.sop_instance_uid}")
        received: list[Path] = []

        def on_store(event: evt.Event) -> int:
            received.append(Path(event.dataset_path))
            with Path(event.dataset_path).open("rb") as source:
                shutil.copyfileobj(source, into, 1024 * 1024)
            return SUCCESS

        contexts = [build_context(STUDY_ROOT_GET)]
        contexts += [build_context(instance.sop_class_uid, syntax) for syntax in TRANSFER_SYNTAXES]
        identifier = _identifier(
            "IMAGE",
            StudyInstanceUID=instance.study_instance_uid,
            SeriesInstanceUID=instance.series_instance_uid,
            SOPInstanceUID=instance.sop_instance_uid,
        )
        assoc = self._associate(
            contexts, [build_role(instance.sop_class_uid, scp_role=True)], [(evt.EVT_C_STORE, on_store)]
        )
        try:
            final = None
            for status, _ in assoc.send_c_get(identifier, STUDY_ROOT_GET):
                if status is not None and int(status.Status) not in PENDING:
                    final = int(status.Status)
        finally:
            assoc.release()
        if final != SUCCESS or len(received) != 1:
            shown = "no answer" if final is None else f"0x{final:04X}"
            sent = f"{len(received)} instance(s) sent"
            raise StorageFailure(f"C-GET of {instance.sop_instance_uid} from {self.name}: {shown}, {sent}")
        into.flush()

    def close(self) -> None:
        """Nothing is held open: each operation has its own association."""

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
