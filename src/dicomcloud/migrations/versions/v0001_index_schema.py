"""The index schema: patient, study, series and the instance registry, tenant first in every key.

Text columns use the "C" collation so ordering and wildcard matching compare bytes, as the SQLite
index does, whatever the database's locale; it also lets a B-tree index serve LIKE 'prefix%'. The
instance table's key includes the study UID so it can be co-located with `study` under Citus
(a distributed table's unique keys must contain its distribution column); lookups by SOP Instance
UID use their own index.

Revision ID: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_TEXT = """text COLLATE "C" NOT NULL DEFAULT ''"""
_KEY = 'text COLLATE "C" NOT NULL'
_STAMPS = "created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL"

_UPGRADE = (
    # Metadata versions come from one sequence, so a series deleted and received again never
    # reuses a version its old document was built for.
    "CREATE SEQUENCE index_version",
    f"""CREATE TABLE patient (
        tenant_id {_KEY}, patient_id {_KEY},
        patient_name {_TEXT}, patient_birth_date {_TEXT}, patient_sex {_TEXT},
        {_STAMPS},
        PRIMARY KEY (tenant_id, patient_id))""",
    f"""CREATE TABLE study (
        tenant_id {_KEY}, study_instance_uid {_KEY},
        patient_id {_TEXT}, patient_name {_TEXT}, patient_name_lc {_TEXT}, patient_birth_date {_TEXT},
        patient_sex {_TEXT}, study_date {_TEXT}, study_time {_TEXT}, study_time_key {_TEXT},
        accession_number {_TEXT}, study_id {_TEXT}, study_description {_TEXT},
        referring_physician_name {_TEXT}, referring_physician_name_lc {_TEXT}, modalities {_TEXT},
        num_series integer NOT NULL DEFAULT 0, num_instances integer NOT NULL DEFAULT 0,
        {_STAMPS},
        PRIMARY KEY (tenant_id, study_instance_uid))""",
    f"""CREATE TABLE series (
        tenant_id {_KEY}, study_instance_uid {_KEY}, series_instance_uid {_KEY},
        modality {_TEXT}, series_number integer, series_description {_TEXT}, series_date {_TEXT},
        series_time {_TEXT}, body_part_examined {_TEXT}, performed_procedure_step_start_date {_TEXT},
        performed_procedure_step_start_time {_TEXT}, performed_procedure_step_start_time_key {_TEXT},
        institution_name {_TEXT}, station_name {_TEXT},
        num_instances integer NOT NULL DEFAULT 0,
        version bigint NOT NULL, built_version bigint NOT NULL DEFAULT 0,
        {_STAMPS},
        PRIMARY KEY (tenant_id, study_instance_uid, series_instance_uid))""",
    f"""CREATE TABLE instance (
        tenant_id {_KEY}, study_instance_uid {_KEY}, sop_instance_uid {_KEY},
        series_instance_uid {_KEY}, sop_class_uid {_KEY}, instance_number integer,
        transfer_syntax {_KEY}, "rows" integer, "columns" integer, bits_allocated integer,
        number_of_frames integer, file_path {_KEY}, file_size bigint NOT NULL, sha256 {_KEY},
        {_STAMPS},
        PRIMARY KEY (tenant_id, study_instance_uid, sop_instance_uid))""",
    "CREATE INDEX study_by_date ON study (tenant_id, study_date, study_time_key, study_instance_uid)",
    "CREATE INDEX study_by_patient_id ON study (tenant_id, patient_id)",
    "CREATE INDEX study_by_patient_name ON study (tenant_id, patient_name_lc)",
    "CREATE INDEX study_by_accession ON study (tenant_id, accession_number)",
    "CREATE INDEX series_by_uid ON series (tenant_id, series_instance_uid)",
    "CREATE INDEX series_by_modality ON series (tenant_id, modality)",
    "CREATE INDEX series_stale ON series (updated_at) WHERE version > built_version",
    "CREATE INDEX instance_by_sop ON instance (tenant_id, sop_instance_uid)",
    """CREATE INDEX instance_by_series
        ON instance (tenant_id, study_instance_uid, series_instance_uid, instance_number)""",
    "CREATE INDEX instance_by_sop_class ON instance (tenant_id, sop_class_uid)",
)


def upgrade() -> None:
    for statement in _UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TABLE instance, series, study, patient")
    op.execute("DROP SEQUENCE index_version")
