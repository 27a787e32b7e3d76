"""What travels on the bus.

Every event is a frozen dataclass that serialises to one JSON object with PascalCase keys
(the user's message body: `TransferSyntax`, `SOPInstanceUID`, … `FilePath`), so any consumer,
including Doris Routine Load, can read it without this package. The warehouse rows
(`DicomStateMeta`, `DicomImageMeta`) carry the catalogue's attributes (dicom/attributes.py) as flat
columns, each under the name `json_name(column)`, which is the attribute's keyword.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from dicomcloud.dicom.attributes import Level, attributes

# Topic names, one per message type.
STORAGE_QUEUE = "storage_queue"
LOG_QUEUE = "log_queue"
DICOM_STATE_QUEUE = "dicom_state_queue"
DICOM_IMAGE_QUEUE = "dicom_image_queue"
TRANSCODE_QUEUE = "transcode_queue"
ACCESS_LOG_QUEUE = "wado_access_log"

_ACRONYMS = {"uid": "UID", "id": "ID", "ae": "AE", "sop": "SOP"}


@functools.cache  # field names are few, and each event sent names every field of its class
def json_name(field_name: str) -> str:
    """`sop_instance_uid` -> `SOPInstanceUID`, `file_path` -> `FilePath`."""
    return "".join(_ACRONYMS.get(part, part.capitalize()) for part in field_name.split("_"))


@dataclass(frozen=True)
class BusEvent:
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

    def row(self) -> dict[str, Any]:
        """The event's values by field name, as the warehouse tables take them."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @property
    def key(self) -> str:
        """Bus key: the study, so one study's events stay ordered on one partition."""
        return str(getattr(self, "study_instance_uid", ""))


@dataclass(frozen=True)
class StorageEvent(BusEvent):
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
    # What ingest read from the object: the catalogue's attributes by keyword, so no consumer reads it again.
    attributes: dict[str, Any] = field(default_factory=dict)


def catalogue_columns(*levels: Level) -> tuple[str, ...]:
    """The warehouse columns of these levels' attributes, identity UIDs aside (they are the row's key)."""
    return tuple(a.column for a in attributes(*levels, warehouse=True) if not a.identity)


class CatalogueRow:
    """Mixin of the warehouse rows: key fields, the catalogue columns in `values`, trailing facts, flat on the wire.

    The columns are the catalogue's (dicom/attributes.py) warehouse attributes of `levels`, identity aside.
    """

    columns: ClassVar[tuple[str, ...]]
    levels: ClassVar[tuple[Level, ...]]
    values: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.name == "values":
                out.update({json_name(column): self.values.get(column) for column in self.columns})
            else:
                out[json_name(f.name)] = getattr(self, f.name)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        kwargs: dict[str, Any] = {
            f.name: data[json_name(f.name)]
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            if f.name != "values" and json_name(f.name) in data
        }
        kwargs["values"] = {column: data.get(json_name(column)) for column in cls.columns}
        return cls(**kwargs)

    @classmethod
    def catalogue_values(cls, by_keyword: Mapping[str, Any]) -> dict[str, Any]:
        """This row's `values` from attributes by keyword (a StorageEvent's)."""
        return {a.column: by_keyword.get(a.keyword) for a in attributes(*cls.levels, warehouse=True) if not a.identity}

    def row(self) -> dict[str, Any]:
        """The row by column name, as the warehouse tables take it."""
        fields = dataclasses.fields(self)  # type: ignore[arg-type]
        out = {f.name: getattr(self, f.name) for f in fields if f.name != "values"}
        return {**out, **{column: self.values.get(column) for column in self.columns}}


@dataclass(frozen=True)
class DicomStateMeta(CatalogueRow, BusEvent):
    """Patient, study and series state of one series (the warehouse's `dicom_state_meta`)."""

    topic: ClassVar[str] = DICOM_STATE_QUEUE
    levels: ClassVar[tuple[Level, ...]] = ("patient", "study", "series")
    columns: ClassVar[tuple[str, ...]] = catalogue_columns("patient", "study", "series")

    tenant_id: str
    study_instance_uid: str
    series_instance_uid: str
    values: dict[str, Any]
    series_related_instances: int = 0
    updated_at: str = ""


@dataclass(frozen=True)
class DicomImageMeta(CatalogueRow, BusEvent):
    """One instance's image-level facts (the warehouse's `dicom_image_meta`)."""

    topic: ClassVar[str] = DICOM_IMAGE_QUEUE
    levels: ClassVar[tuple[Level, ...]] = ("instance",)
    columns: ClassVar[tuple[str, ...]] = catalogue_columns("instance")

    tenant_id: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    values: dict[str, Any]
    file_path: str = ""
    file_size: int = 0
    sha256: str = ""
    updated_at: str = ""


@dataclass(frozen=True)
class TranscodeRequest(BusEvent):
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
class TranscodeFailure(BusEvent):
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
class AccessLog(BusEvent):
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


@dataclass(frozen=True)
class DimseRefusal(BusEvent):
    """An association or DIMSE operation the access control refused: who, from where, what, and why."""

    topic: ClassVar[str] = "dimse_refusal"

    refused_at: str  # ISO 8601, UTC
    tenant_id: str  # "" when the refusal came before a tenant was known
    calling_ae: str
    called_ae: str
    client_address: str
    operation: str  # "associate", or one of echo, store, find, get, move
    status: int  # the DIMSE status answered; 0 for a rejected association
    reason: str
