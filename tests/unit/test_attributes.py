"""The one catalogue of indexed attributes (dicom/attributes.py): every other place that names an indexed
attribute is derived from it or held to it here: the query parser, header extraction, the SQL index
(SQLite as created, PostgreSQL as migrated), the warehouse tables and the Doris DDL and Routine Load,
and the bus events' field names."""

from __future__ import annotations

import re
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pydicom.datadict import dictionary_VR, tag_for_keyword

from bench.synthetic import ct_series, write_part10
from dicomcloud.adapters.index_sql import INSTANCE_OUT, SERIES_OUT, STUDY_OUT, TABLE_COLUMNS
from dicomcloud.adapters.postgres_index import PostgresIndex
from dicomcloud.adapters.sqlite_index import SqliteIndex
from dicomcloud.dicom.attributes import CATALOGUE, attributes, extracted, snake_case
from dicomcloud.dicom.parse import parse_instance
from dicomcloud.dicom.query import MATCHING_KEYS, parse_qido
from dicomcloud.events import DicomImageMeta, DicomStateMeta, StorageEvent, json_name
from dicomcloud.ports.warehouse import DICOM_IMAGE_META, DICOM_STATE_META
from dicomcloud.stack.servers import Server

DORIS = Path(__file__).resolve().parents[2] / "deploy" / "doris"


def test_every_catalogue_keyword_is_a_dicom_attribute_whose_tag_and_vr_come_from_the_dictionary() -> None:
    for attribute in CATALOGUE:
        assert attribute.tag == tag_for_keyword(attribute.keyword)
        assert attribute.vr == dictionary_VR(attribute.keyword)
    assert len({a.keyword for a in CATALOGUE}) == len(CATALOGUE)


def test_a_column_is_the_keyword_in_snake_case_and_its_wire_name_the_keyword_again() -> None:
    for attribute in CATALOGUE:
        if not attribute.column_name:
            assert attribute.column == snake_case(attribute.keyword)
            assert json_name(attribute.column) == attribute.keyword


SAMPLE_VALUES = {"DA": "20240102", "TM": "1015", "IS": "7", "UI": "1.2.3", "PN": "Doe*"}


def test_the_query_parser_matches_exactly_the_catalogue_matching_keys_at_their_levels() -> None:
    assert set(MATCHING_KEYS) == {a.keyword for a in CATALOGUE if a.matching}
    for keyword, attribute in MATCHING_KEYS.items():
        value = SAMPLE_VALUES.get(attribute.vr, "X*")
        query = parse_qido("instance", {keyword: [value]})
        assert [c.keyword for c in query.conditions] == [keyword], keyword
        on_studies = parse_qido("study", {keyword: [value]})
        assert (keyword in on_studies.unsupported) == (attribute.query_level != "study"), keyword


def test_header_extraction_yields_every_extracted_attribute_and_nothing_else(tmp_path: Path) -> None:
    (ds,) = ct_series(1, rows=8, columns=8, patient_name="Doe^Jane")
    ds.AcquisitionDate, ds.AcquisitionTime = "20240102", "101500"
    path = tmp_path / "ct.dcm"
    write_part10(ds, path)
    with path.open("rb") as stream:
        parsed = parse_instance(stream)
    assert set(parsed.attributes) == {a.keyword for a in extracted()}
    assert parsed.attributes["PatientName"] == "Doe^Jane"
    assert parsed.attributes["Rows"] == 8
    assert parsed.attributes["AcquisitionDateTime"] == "20240102101500"


def _expected_columns() -> dict[str, set[str]]:
    """The index tables' columns as the catalogue implies them, spelled out independently of index_sql."""
    stored = {
        table: {a.column for a in attributes(*levels, index=True)}
        for table, levels in {
            "patient": ("patient",),
            "study": ("patient", "study"),
            "series": ("series",),
            "instance": ("instance",),
        }.items()
    }
    matched = {
        table: {a.match_column for a in attributes(*levels) if a.has_match_column}
        for table, levels in {"study": ("patient", "study"), "series": ("series",)}.items()
    }
    return {
        "patient": {"tenant_id", "created_at", "updated_at"} | stored["patient"],
        "study": {"tenant_id", "created_at", "updated_at"} | stored["study"] | matched["study"],
        "series": {"tenant_id", "study_instance_uid", "version", "built_version", "created_at", "updated_at"}
        | stored["series"]
        | matched["series"],
        "instance": {"tenant_id", "study_instance_uid", "series_instance_uid", "created_at", "updated_at"}
        | {"file_path", "file_size", "sha256"}
        | stored["instance"],
    }


def test_the_sql_index_tables_are_the_catalogues(tmp_path: Path) -> None:
    assert {table: set(columns) for table, columns in TABLE_COLUMNS.items()} == _expected_columns()
    assert {k for k in {**STUDY_OUT, **SERIES_OUT, **INSTANCE_OUT}} == {
        a.keyword for a in CATALOGUE if a.index and a.keyword != "TransferSyntaxUID"
    } | {"AvailableTransferSyntaxUID"}


def test_the_sqlite_index_creates_the_catalogues_tables(tmp_path: Path) -> None:
    SqliteIndex(tmp_path / "index.sqlite").close()
    with sqlite3.connect(tmp_path / "index.sqlite") as conn:
        found = {table: {row[1] for row in conn.execute(f"PRAGMA table_info({table})")} for table in TABLE_COLUMNS}
    assert found == _expected_columns()


@pytest.fixture
def postgres_dsn(postgres_server: Server) -> Iterator[str]:
    """A fresh database on the session's PostgreSQL, dropped afterwards."""
    name = f"catalogue_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{postgres_server.url.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(postgres_server.url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_the_postgres_migrations_create_the_catalogues_tables(postgres_dsn: str) -> None:
    PostgresIndex(postgres_dsn).close()
    with psycopg.connect(postgres_dsn) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema()"
        ).fetchall()
    found: dict[str, set[str]] = {}
    for table, column in rows:
        if table in TABLE_COLUMNS:
            found.setdefault(table, set()).add(column)
    assert found == _expected_columns()


def test_the_warehouse_rows_carry_the_catalogues_warehouse_attributes() -> None:
    state = {a.column for a in attributes("patient", "study", "series", warehouse=True)}
    image = {a.column for a in attributes("instance", warehouse=True)}
    assert set(DICOM_STATE_META.column_names) == state | {"tenant_id", "series_related_instances", "updated_at"}
    keys = {"tenant_id", "study_instance_uid", "series_instance_uid"}
    assert set(DICOM_IMAGE_META.column_names) == image | keys | {"file_path", "file_size", "sha256", "updated_at"}
    assert set(DicomStateMeta.columns) == state - {"study_instance_uid", "series_instance_uid"}
    assert set(DicomImageMeta.columns) == image - {"sop_instance_uid"}


def _ddl_columns(sql: str, table: str) -> list[str]:
    body = re.search(rf"CREATE TABLE IF NOT EXISTS {table} \((.*?)\)\s*(UNIQUE|DUPLICATE) KEY", sql, re.S)
    assert body is not None, table
    return re.findall(r"^\s*`?(\w+)`?\s+[A-Z]", body.group(1), re.M)


def test_the_shipped_doris_ddl_and_routine_load_name_the_catalogues_columns() -> None:
    tables = (DORIS / "tables.sql").read_text()
    routine = (DORIS / "routine_load.sql").read_text()
    for table in (DICOM_STATE_META, DICOM_IMAGE_META):
        assert _ddl_columns(tables, table.name) == list(table.column_names), table.name
        load = re.search(rf"ON {table.name}\s+COLUMNS \((.*?)\)\s+PROPERTIES", routine, re.S)
        assert load is not None, table.name
        assert re.findall(r"`(\w+)`", load.group(1)) == list(table.column_names), table.name


def test_a_storage_event_carries_the_extracted_attributes_under_their_keywords() -> None:
    values = {a.keyword: None for a in extracted()}
    event = StorageEvent(
        tenant_id="t",
        transfer_syntax="1.2.840.10008.1.2.1",
        sop_instance_uid="1.2",
        sop_class_uid="1.2",
        study_instance_uid="1.3",
        series_instance_uid="1.4",
        patient_id="",
        file_name="1.2.dcm",
        file_size=1,
        file_path="t/1.3/1.4/1.2.dcm",
        sha256="0",
        source="import",
        calling_ae="",
        called_ae="",
        received_at="2024-01-02T10:15:00+00:00",
        attributes=values,
    )
    assert StorageEvent.from_bytes(event.to_bytes()).attributes == values
