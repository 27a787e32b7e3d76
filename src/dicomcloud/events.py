"""What travels on the bus, and the records the index and warehouse keep.

Every event is a frozen dataclass that serialises to one JSON object with PascalCase keys
(the user's message body: `TransferSyntax`, `SOPInstanceUID`, … `FilePath`), so any consumer,
including Doris Routine Load, can read it without this package.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, ClassVar, Self

# Topic names, one per message type.
STORAGE_QUEUE = "storage_queue"
LOG_QUEUE = "log_queue"
DICOM_STATE_QUEUE = "dicom_state_queue"
DICOM_IMAGE_QUEUE = "dicom_image_queue"
TRANSCODE_QUEUE = "transcode_queue"
ACCESS_LOG_QUEUE = "wado_access_log"

_ACRONYMS = {"uid": "UID", "id": "ID", "ae": "AE", "sop": "SOP"}


def json_name(field_name: str) -> str:
    """`sop_instance_uid` -> `SOPInstanceUID`, `file_path` -> `FilePath`."""
    return "".join(_ACRONYMS.get(part, part.capitalize()) for part in field_name.split("_"))


@dataclass(frozen=True)
class Event:
    """Base of bus messages: JSON in, JSON out, unknown keys ignored for forward compatibility."""

    topic: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return {json_name(f.name): getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        kwargs = {f.name: data[json_name(f.name)] for f in dataclasses.fields(cls) if json_name(f.name) in data}
        return cls(**kwargs)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Self:
        return cls.from_dict(json.loads(raw))

    @property
    def key(self) -> str:
        """Bus key: the study, so one study's events stay ordered on one partition."""
        return str(getattr(self, "study_instance_uid", ""))


@dataclass(frozen=True)
class StorageEvent(Event):
    """A file is durable on storage: announced on `storage_queue` and `log_queue`."""

    topic: ClassVar[str] = STORAGE_QUEUE

    tenant_id: str
    transfer_syntax: str
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    file_name: str
    file_size: int
    # Relative to the storage root: <TenantID>/<StudyUID>/<SeriesUID>/<SOPUID>.dcm
    file_path: str
    sha256: str
    source: str  # "dimse", "stow" or "import"
    calling_ae: str
    called_ae: str
    received_at: str  # ISO 8601, UTC


@dataclass(frozen=True)
class DicomStateMeta(Event):
    """Patient, study and series state of one series, as the index holds it."""

    topic: ClassVar[str] = DICOM_STATE_QUEUE

    tenant_id: str
    patient_id: str
    patient_name: str
    patient_birth_date: str
    patient_sex: str
    study_instance_uid: str
    study_date: str
    study_time: str
    accession_number: str
    study_id: str
    study_description: str
    referring_physician_name: str
    series_instance_uid: str
    modality: str
    series_number: int | None
    series_description: str
    series_date: str
    series_time: str
    body_part_examined: str
    performed_procedure_step_start_date: str
    performed_procedure_step_start_time: str
    institution_name: str
    station_name: str
    # Filled by the index when it publishes: counts after this upsert.
    series_related_instances: int = 0
    updated_at: str = ""


@dataclass(frozen=True)
class DicomImageMeta(Event):
    """One instance's image-level facts."""

    topic: ClassVar[str] = DICOM_IMAGE_QUEUE

    tenant_id: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None
    transfer_syntax: str
    rows: int | None
    columns: int | None
    bits_allocated: int | None
    number_of_frames: int | None
    photometric_interpretation: str
    content_date: str
    content_time: str
    acquisition_date_time: str
    image_type: str
    file_path: str
    file_size: int
    sha256: str
    updated_at: str = ""


@dataclass(frozen=True)
class TranscodeRequest(Event):
    """An instance is stored in a syntax the viewer cannot decode: derive a `target_syntax` copy."""

    topic: ClassVar[str] = TRANSCODE_QUEUE

    tenant_id: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    file_path: str
    sha256: str
    transfer_syntax: str
    target_syntax: str


@dataclass(frozen=True)
class TranscodeFailure(Event):
    topic: ClassVar[str] = "transcode_failure"

    tenant_id: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    target_syntax: str
    reason: str
    attempts: int
    failed_at: str


@dataclass(frozen=True)
class AccessLog(Event):
    """One wado-server request, as the warehouse's `wado_access_log` keeps it. Never headers or tokens."""

    topic: ClassVar[str] = ACCESS_LOG_QUEUE

    accessed_at: str  # ISO 8601, UTC: when the request arrived
    tenant_id: str
    user_id: str  # the token's subject; "" without authentication
    client_address: str
    method: str
    route: str  # the route template, e.g. /dicom-web/studies/{study}/series
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    status: int
    bytes_sent: int
    duration_ms: float
