"""The index: patient, study and series state (plus a slim instance registry) with QIDO search.

The instance registry holds only UIDs and file facts, so counts stay exact under replayed events
(a count is a COUNT, never an increment), duplicates can be detected and deletes find their files.
Instance-level attributes beyond those live in the series metadata documents and the warehouse.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Protocol

from dicomcloud.dicom.query import Query
from dicomcloud.events import DicomImageMeta, DicomStateMeta


@dataclass(frozen=True)
class SeriesKey:
    tenant_id: str
    study_instance_uid: str
    series_instance_uid: str


@dataclass(frozen=True)
class InstanceLocation:
    """Where an instance's file is, and the facts WADO needs without opening it."""

    tenant_id: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    instance_number: int | None
    number_of_frames: int | None
    file_path: str  # relative to the storage root
    file_size: int
    sha256: str


@dataclass(frozen=True)
class StaleSeries:
    key: SeriesKey
    version: int


class UpsertOutcome(enum.Enum):
    CREATED = "created"
    REPLACED = "replaced"  # same SOP Instance UID, different content (sha256)
    UNCHANGED = "unchanged"  # a replayed event: nothing changed


class Index(Protocol):
    def upsert(self, state: DicomStateMeta, image: DicomImageMeta) -> UpsertOutcome:
        """Insert or update patient, study, series and instance in one transaction.

        Anything but UNCHANGED bumps the series' metadata version, which marks its document stale.
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

    def ping(self) -> None:
        """Return once the index's database answers; raise ServiceUnavailable if it cannot (for /ready)."""
        ...

    def close(self) -> None: ...
