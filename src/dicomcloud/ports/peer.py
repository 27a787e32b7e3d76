"""Another archive to import from: what it holds, listed, and each instance, fetched as stored.

`dicomcloud import --from …` (archive/migrate.py) works against this port; a DICOMweb server
(QIDO-RS and WADO-RS, adapters/dicomweb_peer.py) and a DIMSE PACS (C-FIND, then C-GET or C-MOVE,
adapters/dimse_peer.py) implement it. `fetch` may be called from several threads at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Protocol


@dataclass(frozen=True)
class RemoteInstance:
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str = ""


class Peer(Protocol):
    @property
    def name(self) -> str:
        """The peer as a person names it (its URL, or AE title@host:port)."""
        ...

    def studies(self) -> list[str]:
        """Every Study Instance UID the peer holds."""
        ...

    def instances(self, study_instance_uid: str) -> list[RemoteInstance]:
        """Every instance of one study."""
        ...

    def fetch(self, instance: RemoteInstance, into: BinaryIO) -> None:
        """Write the instance, a DICOM Part 10 file in the transfer syntax the peer stores it in, to `into`;
        StorageFailure when the peer does not give it."""
        ...

    def close(self) -> None: ...
