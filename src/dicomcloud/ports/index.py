"""The index: patient, study and series state (plus a slim instance registry) with QIDO search.

The instance registry holds only UIDs, a few attributes and where the object is, so counts stay
exact (a count is a COUNT, never an increment), duplicates are decided against it and deletes find
their objects. Instance-level attributes beyond those live in the metadata entries and the warehouse.

Instances are written by the store (archive/store.py) in a `writing` transaction: it holds the
index's lock on those SOP Instance UIDs (and their studies) from the moment the current rows are
read until the new ones are committed, so the decision about a duplicate and the placing of its
object cannot interleave with another writer's, in this process or any other.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from dicomcloud.dicom.query import Query


@dataclass(frozen=True)
class SeriesKey:
    tenant_id: str
    study_instance_uid: str
    series_instance_uid: str


@dataclass(frozen=True)
class InstanceLocation:
    """Where an instance's object is, and the facts WADO needs without opening it."""

    tenant_id: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    instance_number: int | None
    number_of_frames: int | None
    file_path: str  # the original's storage key: <TenantID>/<StudyUID>/<SeriesUID>/<SOPUID>.dcm
    file_size: int
    sha256: str

    @property
    def series_key(self) -> SeriesKey:
        return SeriesKey(self.tenant_id, self.study_instance_uid, self.series_instance_uid)


@dataclass(frozen=True)
class IndexedInstance:
    """What the index keeps of one instance: the catalogue's attributes and where its object is."""

    tenant_id: str
    attributes: Mapping[str, Any]  # by keyword (dicom/attributes.py), identity UIDs included
    file_path: str
    file_size: int
    sha256: str

    @property
    def study_instance_uid(self) -> str:
        return str(self.attributes["StudyInstanceUID"])

    @property
    def series_instance_uid(self) -> str:
        return str(self.attributes["SeriesInstanceUID"])

    @property
    def sop_instance_uid(self) -> str:
        return str(self.attributes["SOPInstanceUID"])


@dataclass(frozen=True)
class StaleSeries:
    key: SeriesKey
    version: int


class UpsertOutcome(enum.Enum):
    CREATED = "created"
    REPLACED = "replaced"  # same SOP Instance UID, different content or place
    UNCHANGED = "unchanged"  # the same object again: nothing changed


class IndexWrite(Protocol):
    """An open write transaction, holding the locks of the instances it was opened for."""

    def current(self) -> dict[str, InstanceLocation]:
        """The rows of those SOP Instance UIDs as they are now, by SOP Instance UID."""
        ...

    def upsert(self, instance: IndexedInstance) -> UpsertOutcome:
        """Insert or update patient, study, series and instance; what changed is recounted before the commit.

        Anything but UNCHANGED bumps the series' metadata version (and the old series' when the instance moved).
        """
        ...


class Index(Protocol):
    # Whether every query waits for a network round trip (a database server) rather than reading a local file: a
    # request answered on the event loop may ask a local index, never a remote one.
    remote: bool

    def writing(self, tenant_id: str, instances: Sequence[tuple[str, str]]) -> AbstractContextManager[IndexWrite]:
        """A write transaction locking these (SOP Instance UID, Study Instance UID) pairs and the studies
        their current rows are in; committed when the block ends, rolled back when it raises.

        Upserts inside it may only name these SOP Instance UIDs.
        """
        ...

    def get_instance(self, tenant_id: str, sop_instance_uid: str) -> InstanceLocation | None: ...

    def list_instances(
        self, tenant_id: str, study_instance_uid: str, series_instance_uid: str | None = None
    ) -> list[InstanceLocation]:
        """Instances of a study or series, ordered by series then InstanceNumber then UID."""
        ...

    def search(self, tenant_id: str, query: Query) -> list[dict[str, Any]]:
        """QIDO/C-FIND at the query's level: one dict per match, keyed by DICOM keyword.

        Values are Python values (str, int, list[str] for multi-valued such as ModalitiesInStudy);
        counts (NumberOfStudyRelated…) are included at study and series level.
        """
        ...

    def count(self, tenant_id: str, query: Query) -> int:
        """How many matches `search` would return without limit/offset."""
        ...

    def stale_series(self, limit: int) -> list[StaleSeries]:
        """Series whose metadata version is newer than the document last built for them."""
        ...

    def series_version(self, key: SeriesKey) -> int | None:
        """Current metadata version of a series; None if the series does not exist."""
        ...

    def mark_built(self, key: SeriesKey, version: int) -> None:
        """Record that the document for `version` is written (a no-op if a newer build is recorded)."""
        ...

    def delete(
        self,
        tenant_id: str,
        study_instance_uid: str,
        series_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> list[InstanceLocation]:
        """Remove the instances and any series/study/patient left empty; return what was removed."""
        ...

    def change_marker(self) -> str | None:
        """A value that differs once any connection of any process has committed a change to the index since
        it was last returned (it may differ without one); None where the index cannot tell. What lets a cache
        that other processes' writers cannot reach notice their writes."""
        ...

    def ping(self) -> None:
        """Return once the index's database answers; raise ServiceUnavailable if it cannot (for /ready)."""
        ...

    def close(self) -> None: ...
