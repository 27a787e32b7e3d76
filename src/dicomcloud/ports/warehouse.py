"""The warehouse: the analytics tables the loader fills from the bus, and the statistics over them.

The tables are part of the contract, described here once as data: every adapter creates them from
this description (DuckDB) or ships DDL that a test holds to it (Doris, `deploy/doris/`). Types use
Doris' names. UNIQUE tables are upserts on their key, the newer `sequence` value winning (Doris'
sequence column); DUPLICATE tables keep every row (logs).

A load is a batch of rows with a label derived from its bus position; a label loaded once is never
loaded again, so a batch replayed after a crash changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from dicomcloud.dicom.attributes import Level, attributes
from dicomcloud.errors import InvalidInput
from dicomcloud.events import DicomImageMeta, DicomStateMeta


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # VARCHAR(n), STRING, INT, BIGINT, DOUBLE or DATETIME(6)
    nullable: bool = True


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    unique: bool
    sequence: str | None = None

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def row(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """This table's row from snake_case values: datetimes as UTC `YYYY-MM-DD HH:MM:SS.ffffff`,
        missing or empty optional values as None; InvalidInput when a NOT NULL value is missing."""
        row: dict[str, Any] = {}
        for column in self.columns:
            value = values.get(column.name)
            if column.type.startswith("DATETIME"):
                value = warehouse_datetime(value) if value else None
            if value is None and not column.nullable:
                raise InvalidInput(f"{self.name}.{column.name} must not be empty")
            row[column.name] = value
        return row


def warehouse_datetime(value: str) -> str:
    """An ISO 8601 timestamp as a naive UTC datetime literal both warehouses parse."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidInput(f"not an ISO 8601 timestamp: {value[:64]!r}") from exc
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed.isoformat(sep=" ", timespec="microseconds")


def _cols(spec: str) -> tuple[Column, ...]:
    """`name TYPE [NOT NULL], …` -> columns; keeps the table list below readable."""
    columns = []
    for item in spec.split(","):
        words = item.split()
        columns.append(Column(words[0], words[1], nullable=not item.rstrip().endswith("NOT NULL")))
    return tuple(columns)


_UID = "VARCHAR(64)"


def _catalogue_columns(levels: tuple[Level, ...]) -> str:
    """The columns of the catalogue's warehouse attributes of these levels (dicom/attributes.py), in its order."""
    return ", ".join(
        f"{a.column} {'INT' if a.integer else 'STRING'}" for a in attributes(*levels, warehouse=True) if not a.identity
    )


DICOM_STATE_META = Table(
    "dicom_state_meta",
    _cols(
        f"tenant_id VARCHAR(64) NOT NULL, study_instance_uid {_UID} NOT NULL, series_instance_uid {_UID} NOT NULL, "
        + _catalogue_columns(DicomStateMeta.levels)
        + ", series_related_instances INT, updated_at DATETIME(6)"
    ),
    key=("tenant_id", "study_instance_uid", "series_instance_uid"),
    unique=True,
    sequence="updated_at",
)
DICOM_IMAGE_META = Table(
    "dicom_image_meta",
    _cols(
        f"tenant_id VARCHAR(64) NOT NULL, sop_instance_uid {_UID} NOT NULL, study_instance_uid {_UID} NOT NULL,"
        f" series_instance_uid {_UID} NOT NULL, "
        + _catalogue_columns(DicomImageMeta.levels)
        + ", file_path STRING, file_size BIGINT, sha256 STRING, updated_at DATETIME(6)"
    ),
    key=("tenant_id", "sop_instance_uid"),
    unique=True,
    sequence="updated_at",
)
DICOM_OBJECT_META = Table(
    "dicom_object_meta",
    _cols(
        f"received_at DATETIME(6) NOT NULL, tenant_id VARCHAR(64) NOT NULL, study_instance_uid {_UID} NOT NULL,"
        f" series_instance_uid {_UID} NOT NULL, sop_instance_uid {_UID} NOT NULL, sop_class_uid STRING,"
        " transfer_syntax STRING, patient_id STRING, file_name STRING, file_size BIGINT, file_path STRING,"
        " sha256 STRING, source STRING, calling_ae STRING, called_ae STRING"
    ),
    key=("received_at", "tenant_id"),
    unique=False,
)
WADO_ACCESS_LOG = Table(
    "wado_access_log",
    _cols(
        "accessed_at DATETIME(6) NOT NULL, tenant_id VARCHAR(64) NOT NULL, user_id STRING, client_address STRING,"
        " method STRING NOT NULL, route STRING NOT NULL, study_instance_uid STRING, series_instance_uid STRING,"
        " sop_instance_uid STRING, status INT NOT NULL, bytes_sent BIGINT, duration_ms DOUBLE"
    ),
    key=("accessed_at", "tenant_id"),
    unique=False,
)
TRANSCODE_FAILURE = Table(
    "transcode_failure",
    _cols(
        f"failed_at DATETIME(6) NOT NULL, tenant_id VARCHAR(64) NOT NULL, study_instance_uid {_UID} NOT NULL,"
        f" series_instance_uid {_UID}, sop_instance_uid {_UID} NOT NULL, transfer_syntax STRING,"
        " target_syntax STRING, reason STRING, attempts INT"
    ),
    key=("failed_at", "tenant_id"),
    unique=False,
)
DIMSE_REFUSAL = Table(
    "dimse_refusal",
    _cols(
        "refused_at DATETIME(6) NOT NULL, tenant_id VARCHAR(64), calling_ae STRING, called_ae STRING,"
        " client_address STRING, operation STRING NOT NULL, status INT, reason STRING"
    ),
    key=("refused_at",),
    unique=False,
)
# Which batches are in: the loader resumes after the highest offset loaded per topic and partition.
LOADED_BATCH = Table(
    "loaded_batch",
    _cols(
        "label VARCHAR(128) NOT NULL, topic STRING NOT NULL, bus_partition INT NOT NULL,"
        " first_offset BIGINT NOT NULL, last_offset BIGINT NOT NULL, table_name STRING NOT NULL,"
        " row_count INT NOT NULL, loaded_at DATETIME(6) NOT NULL"
    ),
    key=("label",),
    unique=True,
)
TABLES: dict[str, Table] = {
    t.name: t
    for t in (DICOM_STATE_META, DICOM_IMAGE_META, DICOM_OBJECT_META, WADO_ACCESS_LOG, TRANSCODE_FAILURE, DIMSE_REFUSAL)
}

# The first four count what is stored now; the others what the logs hold since a moment (`since`).
STATISTICS = (
    "totals",  # studies, series, instances and bytes stored
    "tenants",  # the same per tenant
    "modalities",  # the same per modality (the modality mix)
    "storage",  # per tenant and modality
    "received",  # studies, instances and bytes received, and when the first and last arrived
    "received_per_day",  # studies, instances and bytes received per day
    "received_per_hour",  # instances and bytes received per hour
    "busiest_ae_titles",  # DIMSE senders by objects received
    "requests",  # DICOMweb requests: all, successful study reads, failed (4xx/5xx)
    "most_read_studies",  # successful WADO reads per study, with its patient, description and date
    "slowest_endpoints",  # mean and max duration per route
    "transcode_failures",  # failures per source and target syntax and reason
    "dimse_refusals",  # DIMSE associations and operations refused, per peer, address and operation
)

_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class Batch:
    """Rows from one run of offsets of one topic partition, bound for one table."""

    table: str
    topic: str
    partition: int
    first_offset: int
    last_offset: int

    @property
    def label(self) -> str:
        """Deterministic from the bus position, so a replay carries the same label (Doris: `[-_A-Za-z0-9]`)."""
        topic = _LABEL_UNSAFE.sub("_", self.topic)[:80]
        return f"dc-{topic}-{self.partition}-{self.first_offset}-{self.last_offset}"


class Warehouse(Protocol):
    def load(self, batch: Batch, rows: Sequence[Mapping[str, Any]]) -> bool:
        """Load all rows or none, under `batch.label`; False (nothing loaded) if the label is already in.

        InvalidInput when the warehouse refuses a row (nothing is loaded); StorageFailure when it
        cannot be reached or fails otherwise.
        """
        ...

    def loaded_until(self, topic: str, partition: int) -> int:
        """The highest offset of this topic partition already loaded; -1 if none."""
        ...

    def statistics(self, name: str, limit: int = 20, since: datetime | None = None) -> list[dict[str, Any]]:
        """One of STATISTICS as rows of plain values, the log ones counting from `since` (naive UTC; None:
        everything); InvalidInput for an unknown name."""
        ...

    def count(self, table: str) -> int:
        """Rows in one of TABLES (for UNIQUE tables: distinct keys)."""
        ...

    def close(self) -> None: ...
