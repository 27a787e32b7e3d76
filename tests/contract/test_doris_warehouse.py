"""The Doris adapter's protocol: Stream Load's redirect, auth, labels and statuses; the shipped DDL and Routine Load."""

from __future__ import annotations

import dataclasses
import re
import threading
from pathlib import Path

import pytest
from doris_server import DDL, DorisTestServer, parse_ddl

from conftest import doris_settings
from dicomcloud.adapters.doris_warehouse import DorisWarehouse
from dicomcloud.archive.core import Archive
from dicomcloud.config import load_settings
from dicomcloud.errors import InvalidInput, StorageFailure
from dicomcloud.events import AccessLog, json_name
from dicomcloud.ports.bus import Message
from dicomcloud.ports.warehouse import LOADED_BATCH, TABLES, Batch
from dicomcloud.runtime import open_warehouse
from dicomcloud.workers.loader import Loader
from dicomcloud.workers.loop import Batching, BusLoop

ROUTINE_LOAD = Path(__file__).resolve().parents[2] / "deploy" / "doris" / "routine_load.sql"


def access_row(**changes: object) -> dict[str, object]:
    row: dict[str, object] = {
        "accessed_at": "2026-01-02 03:04:05.000000", "tenant_id": "default", "user_id": "", "client_address": "",
        "method": "GET", "route": "/health", "study_instance_uid": "", "series_instance_uid": "",
        "sop_instance_uid": "", "status": 200, "bytes_sent": 15, "duration_ms": 0.5,
    }
    row.update(changes)
    return row


def batch(first: int = 0, last: int = 0) -> Batch:
    return Batch("wado_access_log", "wado_access_log", 0, first, last)


def test_the_fe_redirects_to_a_be_before_the_body_is_sent(doris: DorisTestServer) -> None:
    warehouse = DorisWarehouse(doris_settings(doris))
    assert warehouse.load(batch(), [access_row()]) is True
    assert doris.loads == [batch().label, "rec-" + batch().label]
    assert doris.fe_body_bytes == 0
    assert warehouse.count("wado_access_log") == 1


def test_wrong_credentials_fail_loads_and_queries(doris: DorisTestServer) -> None:
    warehouse = DorisWarehouse(doris_settings(doris, password="wrong"))
    with pytest.raises(StorageFailure, match="credentials"):
        warehouse.load(batch(), [access_row()])
    with pytest.raises(StorageFailure, match="Access denied"):
        warehouse.count("wado_access_log")
    assert doris.loads == []


def test_a_reused_label_loads_nothing(doris: DorisTestServer) -> None:
    warehouse = DorisWarehouse(doris_settings(doris))
    assert warehouse.load(batch(5, 6), [access_row(), access_row()]) is True
    assert warehouse.load(batch(5, 6), [access_row(), access_row()]) is False
    assert warehouse.count("wado_access_log") == 2
    assert warehouse.loaded_until("wado_access_log", 0) == 6


def test_a_label_whose_first_load_still_runs_is_a_transient_failure(doris: DorisTestServer) -> None:
    doris.running.add(batch().label)
    with pytest.raises(StorageFailure, match="still"):
        DorisWarehouse(doris_settings(doris)).load(batch(), [access_row()])


def test_publish_timeout_counts_as_loaded(doris: DorisTestServer) -> None:
    doris.publish_timeout.add(batch().label)
    warehouse = DorisWarehouse(doris_settings(doris))
    assert warehouse.load(batch(), [access_row()]) is True
    assert warehouse.count("wado_access_log") == 1


def test_a_rejected_row_fails_the_load_with_the_reason_from_the_error_log(doris: DorisTestServer) -> None:
    warehouse = DorisWarehouse(doris_settings(doris))
    with pytest.raises(InvalidInput, match="route is NULL, but it is NOT NULL"):
        warehouse.load(batch(), [access_row(), access_row(route=None)])
    with pytest.raises(InvalidInput, match="exceed VARCHAR"):
        warehouse.load(batch(), [access_row(tenant_id="t" * 65)])
    assert warehouse.count("wado_access_log") == 0
    assert warehouse.load(batch(), [access_row()]) is True  # a failed load frees its label


def test_an_unreachable_fe_is_a_storage_failure(doris: DorisTestServer) -> None:
    warehouse = DorisWarehouse(doris_settings(doris, http_url="http://127.0.0.1:1", mysql_port=1))
    with pytest.raises(StorageFailure):
        warehouse.load(batch(), [access_row()])
    with pytest.raises(StorageFailure):
        warehouse.loaded_until("wado_access_log", 0)


def test_the_shipped_ddl_declares_the_ports_tables() -> None:
    shipped = parse_ddl(DDL.read_text(encoding="utf-8"))
    for table in (*TABLES.values(), LOADED_BATCH):
        ddl = shipped[table.name]
        assert [(c.name, c.type, c.nullable) for c in ddl.columns] == [
            (c.name, c.type, c.nullable) for c in table.columns
        ], table.name
        assert (ddl.key, ddl.unique, ddl.sequence) == (table.key, table.unique, table.sequence), table.name
    assert set(shipped) == {*TABLES, LOADED_BATCH.name}


def test_each_routine_load_maps_its_topics_json_onto_the_tables_columns() -> None:
    text = ROUTINE_LOAD.read_text(encoding="utf-8")
    loads = re.findall(r"ON (\w+)\nCOLUMNS \(([^)]*)\).*?\"jsonpaths\" = \"\[(.*?)\]\"", text, re.S)
    assert {name for name, _, _ in loads} == set(TABLES)
    for name, columns, paths in loads:
        expected = TABLES[name].column_names
        assert [c.strip(" `") for c in columns.split(",")] == list(expected)
        assert re.findall(r'\$\.(\w+)', paths) == [json_name(c) for c in expected]


def test_settings_choose_doris(doris: DorisTestServer) -> None:
    doris_section = dataclasses.asdict(doris_settings(doris))
    settings = load_settings(
        overrides={"backends": {"warehouse": "doris"}, "warehouse": {"doris": doris_section}}, environ={}
    )
    warehouse = open_warehouse(settings)
    assert isinstance(warehouse, DorisWarehouse)
    assert warehouse.count("dicom_image_meta") == 0


def test_a_batch_the_loader_replays_after_a_crash_is_not_loaded_twice(doris: DorisTestServer, tmp_path: Path) -> None:
    doris_section = dataclasses.asdict(doris_settings(doris))
    archive = Archive.from_settings(
        load_settings(
            overrides={"storage": {"data_dir": str(tmp_path)}, "backends": {"warehouse": "doris"},
                       "warehouse": {"doris": doris_section}},
            environ={},
        )
    )
    bus = archive.runtime.bus
    event = AccessLog("2026-01-01T00:00:00+00:00", "default", "", "", "GET", "/health", "", "", "", 200, 1, 0.1)
    message = Message(event.topic, event.key, event.to_bytes())

    def run_loader(commit: bool) -> None:
        """A loader process (a new Loader: nothing remembered) handling what is pending, committing or not."""
        loader = Loader(archive)
        consumer = bus.subscribe(loader.group, list(loader.topics))
        records = consumer.poll(100, 0.2)
        BusLoop(bus, loader, Batching(100), 0.2).process(records, threading.Event())
        if commit:
            consumer.commit(records)
        consumer.close()

    try:
        bus.publish([message, message])
        run_loader(commit=False)  # loaded, then the loader died before committing
        bus.publish([message])
        run_loader(commit=True)
        assert archive.runtime.warehouse.count("wado_access_log") == 3
    finally:
        archive.close()
