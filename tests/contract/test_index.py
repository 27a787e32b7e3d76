"""The index port's promises, run against every adapter (see conftest.py `index_factory`)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dicomcloud.adapters.postgres_index import PostgresIndex
from dicomcloud.adapters.sqlite_index import ANALYZE_EVERY, SqliteIndex
from dicomcloud.dicom.attributes import BY_KEYWORD, extracted
from dicomcloud.dicom.query import Level, Query, parse_qido
from dicomcloud.errors import InvalidInput
from dicomcloud.ports.index import Index, IndexedInstance, SeriesKey, UpsertOutcome

CT = "1.2.840.10008.5.1.4.1.1.2"
SR = "1.2.840.10008.5.1.4.1.1.88.11"
EXPLICIT_LE = "1.2.840.10008.1.2.1"

# What an instance carries unless a test says otherwise: every attribute ingest extracts (the index
# keeps the indexed ones and ignores the rest), by DICOM keyword.
DEFAULT_ATTRIBUTES: dict[str, Any] = {
    "PatientID": "P1",
    "PatientName": "Doe^John",
    "PatientBirthDate": "19700101",
    "PatientSex": "M",
    "StudyDate": "20200110",
    "StudyTime": "083000",
    "AccessionNumber": "A100",
    "StudyID": "1",
    "StudyDescription": "CHEST PA",
    "ReferringPhysicianName": "",
    "Modality": "CT",
    "SeriesNumber": 1,
    "SeriesDescription": "",
    "SeriesDate": "",
    "SeriesTime": "",
    "BodyPartExamined": "",
    "PerformedProcedureStepStartDate": "",
    "PerformedProcedureStepStartTime": "",
    "InstitutionName": "",
    "StationName": "",
    "SOPClassUID": CT,
    "InstanceNumber": 1,
    "TransferSyntaxUID": EXPLICIT_LE,
    "Rows": 512,
    "Columns": 512,
    "BitsAllocated": 16,
    "NumberOfFrames": 1,
    "PhotometricInterpretation": "MONOCHROME2",
    "ContentDate": "",
    "ContentTime": "",
    "AcquisitionDateTime": "",
    "ImageType": "ORIGINAL\\PRIMARY",
}
_IDENTITY = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
_EXTRACTED = {a.keyword for a in extracted()}


def indexed(
    study: str,
    series: str,
    sop: str,
    *,
    tenant: str = "t1",
    sha256: str = "sha-1",
    file_size: int = 1000,
    **attributes: Any,
) -> IndexedInstance:
    """One instance as the store hands it to the index; `attributes` (by keyword) override the defaults."""
    unknown = set(attributes) - (_EXTRACTED - set(_IDENTITY))
    assert not unknown, f"not catalogue keywords an instance carries: {unknown}"
    values = {**DEFAULT_ATTRIBUTES, **attributes, "StudyInstanceUID": study, "SeriesInstanceUID": series}
    values["SOPInstanceUID"] = sop
    return IndexedInstance(tenant, values, f"{tenant}/{study}/{series}/{sop}.dcm", file_size, sha256)


def put(index: Index, study: str, series: str, sop: str, **options: Any) -> UpsertOutcome:
    """Index one instance in a write transaction of its own (what the store does for one object)."""
    instance = indexed(study, series, sop, **options)
    with index.writing(instance.tenant_id, [(sop, study)]) as write:
        return write.upsert(instance)


def q(level: Level, params: Mapping[str, str] | None = None, **scope: str) -> Query:
    return parse_qido(level, {k: [v] for k, v in (params or {}).items()}, **scope)


_UID_OF_LEVEL = {"study": "StudyInstanceUID", "series": "SeriesInstanceUID", "instance": "SOPInstanceUID"}


def uids(index: Index, query: Query, tenant: str = "t1") -> list[str]:
    return [row[_UID_OF_LEVEL[query.level]] for row in index.search(tenant, query)]


def study_row(index: Index, study: str, tenant: str = "t1") -> dict[str, Any]:
    (row,) = index.search(tenant, q("study", {"StudyInstanceUID": study}))
    return row


def snapshot(index: Index, tenant: str = "t1") -> tuple[Any, ...]:
    """Everything the port shows about a tenant, to compare before and after an operation."""
    series = index.search(tenant, q("series"))
    return (
        index.search(tenant, q("study")),
        series,
        index.search(tenant, q("instance")),
        [index.series_version(SeriesKey(tenant, r["StudyInstanceUID"], r["SeriesInstanceUID"])) for r in series],
        index.stale_series(1000),
    )


# -- the write transaction ------------------------------------------------------------------------


def test_current_shows_the_rows_of_the_uids_the_write_was_opened_for(index: Index) -> None:
    put(index, "1.1", "1.1.1", "1.1.1.1")
    put(index, "1.1", "1.1.1", "1.1.1.2")
    put(index, "1.2", "1.2.1", "1.2.1.1")
    put(index, "1.1", "1.1.1", "1.1.1.1", tenant="t2", sha256="t2's")
    first, moved = index.get_instance("t1", "1.1.1.1"), index.get_instance("t1", "1.2.1.1")
    assert first is not None and moved is not None
    # 1.2.1.1 is named with the study it is about to move to; 1.3.1.1 is not indexed yet.
    with index.writing("t1", [("1.1.1.1", "1.1"), ("1.2.1.1", "1.1"), ("1.3.1.1", "1.3")]) as write:
        assert write.current() == {"1.1.1.1": first, "1.2.1.1": moved}
        assert write.upsert(indexed("1.3", "1.3.1", "1.3.1.1")) is UpsertOutcome.CREATED
        assert write.upsert(indexed("1.1", "1.1.1", "1.2.1.1", sha256="sha-2")) is UpsertOutcome.REPLACED
        now = write.current()
    assert now == {
        "1.1.1.1": first,
        "1.2.1.1": index.get_instance("t1", "1.2.1.1"),
        "1.3.1.1": index.get_instance("t1", "1.3.1.1"),
    }
    assert (now["1.2.1.1"].study_instance_uid, now["1.2.1.1"].sha256) == ("1.1", "sha-2")


def test_one_write_upserts_several_instances_and_commits_them_together(index: Index) -> None:
    sops = [f"1.1.1.{n}" for n in range(1, 6)]
    with index.writing("t1", [(sop, "1.1") for sop in sops]) as write:
        outcomes = [write.upsert(indexed("1.1", "1.1.1", sop, InstanceNumber=n)) for n, sop in enumerate(sops)]
    assert outcomes == [UpsertOutcome.CREATED] * 5
    assert uids(index, q("instance")) == sops
    assert study_row(index, "1.1")["NumberOfStudyRelatedInstances"] == 5


def test_a_write_of_several_instances_leaves_what_writing_them_one_by_one_leaves(index: Index) -> None:
    """Counts, modalities and patients are settled once per write: the same as after each instance alone."""
    batch = [
        ("1.3", "1.3.1", "a", {"sha256": "sha-2", "PatientID": "P3"}),  # moves out of study 1.1
        ("1.1", "1.1.1", "c", {}),
        ("1.1", "1.1.2", "d", {"Modality": "MR"}),
        ("1.2", "1.2.1", "e", {"PatientID": "P4"}),  # study 1.2 now names another patient
        ("1.2", "1.2.1", "b", {"sha256": "sha-2", "PatientID": "P4"}),
    ]
    for tenant in ("t1", "t2"):
        put(index, "1.1", "1.1.1", "a", tenant=tenant)
        put(index, "1.2", "1.2.1", "b", tenant=tenant, PatientID="P2")
    with index.writing("t1", [(sop, study) for study, _, sop, _ in batch]) as write:
        for study, series, sop, options in batch:
            write.upsert(indexed(study, series, sop, tenant="t1", **options))
    for study, series, sop, options in batch:
        put(index, study, series, sop, tenant="t2", **options)
    for level in ("study", "series", "instance"):
        assert index.search("t1", q(level)) == index.search("t2", q(level)), level
    assert uids(index, q("study", {"PatientID": "P2"})) == []
    counts = {row["StudyInstanceUID"]: row["NumberOfStudyRelatedInstances"] for row in index.search("t1", q("study"))}
    assert counts == {"1.1": 2, "1.2": 2, "1.3": 1}
    assert study_row(index, "1.1")["ModalitiesInStudy"] == ["CT", "MR"]


def test_an_upsert_of_an_instance_the_write_was_not_opened_for_is_refused(index: Index) -> None:
    with index.writing("t1", [("1.1.1.1", "1.1")]) as write:
        with pytest.raises(ValueError):
            write.upsert(indexed("1.1", "1.1.1", "1.1.1.2"))
        with pytest.raises(ValueError):
            write.upsert(indexed("1.1", "1.1.1", "1.1.1.1", tenant="t2"))
        assert write.upsert(indexed("1.1", "1.1.1", "1.1.1.1")) is UpsertOutcome.CREATED
    assert uids(index, q("instance")) == ["1.1.1.1"]
    assert index.get_instance("t1", "1.1.1.2") is None and index.search("t2", q("instance")) == []


def test_an_exception_inside_the_write_rolls_everything_back(index: Index) -> None:
    with (
        pytest.raises(RuntimeError, match="placing failed"),
        index.writing("t1", [("1.1.1.1", "1.1"), ("1.1.1.2", "1.1")]) as write,
    ):
        write.upsert(indexed("1.1", "1.1.1", "1.1.1.1"))
        write.upsert(indexed("1.1", "1.1.1", "1.1.1.2"))
        raise RuntimeError("placing failed")
    assert snapshot(index) == ([], [], [], [], [])
    assert index.get_instance("t1", "1.1.1.1") is None
    assert index.series_version(SeriesKey("t1", "1.1", "1.1.1")) is None
    # The locks went with the transaction: the same instances can be written at once.
    assert put(index, "1.1", "1.1.1", "1.1.1.1") is UpsertOutcome.CREATED


def test_a_rolled_back_replacement_and_move_leave_the_old_rows_as_they_were(index: Index) -> None:
    put(index, "1.1", "1.1.1", "1.1.1.1")
    put(index, "1.1", "1.1.1", "1.1.1.2")
    before = snapshot(index)
    with pytest.raises(RuntimeError), index.writing("t1", [("1.1.1.1", "1.1"), ("1.1.1.2", "1.2")]) as write:
        assert write.upsert(indexed("1.1", "1.1.1", "1.1.1.1", sha256="sha-2")) is UpsertOutcome.REPLACED
        assert write.upsert(indexed("1.2", "1.2.1", "1.1.1.2", Modality="MR")) is UpsertOutcome.REPLACED
        raise RuntimeError("placing failed")
    assert snapshot(index) == before


def test_writers_of_the_same_sop_instance_uid_take_turns(index_factory: Callable[[], Index]) -> None:
    """A second writer (another process: its own index object) waits for the first's commit and sees its row."""
    first, second = index_factory(), index_factory()
    first_wrote, second_started = threading.Event(), threading.Event()
    seen: dict[str, Any] = {}

    def second_writer() -> None:
        first_wrote.wait(30)
        second_started.set()
        with second.writing("t1", [("1.1.1.1", "1.1")]) as write:
            seen["current"] = write.current()
            seen["outcome"] = write.upsert(indexed("1.1", "1.1.1", "1.1.1.1", sha256="sha-second"))

    thread = threading.Thread(target=second_writer)
    thread.start()
    try:
        with first.writing("t1", [("1.1.1.1", "1.1")]) as write:
            assert write.upsert(indexed("1.1", "1.1.1", "1.1.1.1", sha256="sha-first")) is UpsertOutcome.CREATED
            first_wrote.set()
            assert second_started.wait(30)
            time.sleep(0.5)  # time for the second writer to reach the lock, and to get in if it were not held
            assert seen == {}
    finally:
        first_wrote.set()
        thread.join(60)
    assert not thread.is_alive()
    assert seen["current"]["1.1.1.1"].sha256 == "sha-first"
    assert seen["outcome"] is UpsertOutcome.REPLACED
    location = first.get_instance("t1", "1.1.1.1")
    assert location is not None and location.sha256 == "sha-second"
    assert study_row(first, "1.1")["NumberOfStudyRelatedInstances"] == 1


def test_an_integer_attribute_that_is_not_an_integer_is_invalid_input_and_indexes_nothing(index: Index) -> None:
    with pytest.raises(InvalidInput, match="SeriesNumber"):
        put(index, "1.1", "1.1.1", "1.1.1.1", SeriesNumber="7a")
    assert snapshot(index) == ([], [], [], [], [])


# -- upsert ----------------------------------------------------------------------------------------


def test_first_upsert_creates_and_registers_the_instance(index: Index) -> None:
    assert put(index, "1.1", "1.1.1", "1.1.1.1", InstanceNumber=3, NumberOfFrames=2) is UpsertOutcome.CREATED
    location = index.get_instance("t1", "1.1.1.1")
    assert location is not None
    assert (location.study_instance_uid, location.series_instance_uid, location.sop_class_uid) == ("1.1", "1.1.1", CT)
    assert (location.instance_number, location.number_of_frames, location.transfer_syntax) == (3, 2, EXPLICIT_LE)
    assert (location.file_path, location.file_size, location.sha256) == ("t1/1.1/1.1.1/1.1.1.1.dcm", 1000, "sha-1")


def test_replayed_upsert_is_unchanged_and_changes_nothing(index: Index) -> None:
    put(index, "1.1", "1.1.1", "1.1.1.1")
    put(index, "1.1", "1.1.1", "1.1.1.2", InstanceNumber=2)
    before = snapshot(index)
    assert put(index, "1.1", "1.1.1", "1.1.1.1") is UpsertOutcome.UNCHANGED
    assert put(index, "1.1", "1.1.1", "1.1.1.2", InstanceNumber=2) is UpsertOutcome.UNCHANGED
    assert snapshot(index) == before


def test_replayed_old_event_does_not_undo_newer_values(index: Index) -> None:
    put(index, "1.1", "1.1.1", "1.1.1.1", StudyDescription="OLD")
    put(index, "1.1", "1.1.1", "1.1.1.2", StudyDescription="NEW")
    put(index, "1.1", "1.1.1", "1.1.1.1", StudyDescription="OLD")
    assert study_row(index, "1.1")["StudyDescription"] == "NEW"


def test_different_content_is_replaced_and_bumps_the_series_version(index: Index) -> None:
    put(index, "1.1", "1.1.1", "1.1.1.1")
    key = SeriesKey("t1", "1.1", "1.1.1")
    version = index.series_version(key)
    assert version is not None
    index.mark_built(key, version)
    assert put(index, "1.1", "1.1.1", "1.1.1.1", sha256="sha-2", file_size=2000) is UpsertOutcome.REPLACED
    assert (index.series_version(key) or 0) > version
    assert [s.key for s in index.stale_series(10)] == [key]
    location = index.get_instance("t1", "1.1.1.1")
    assert location is not None and (location.sha256, location.file_size) == ("sha-2", 2000)
    assert study_row(index, "1.1")["NumberOfStudyRelatedInstances"] == 1


def test_instance_moved_to_another_series_is_replaced_and_old_series_updated(index: Index) -> None:
    put(index, "1.1", "1.1.1", "1.1.1.1")
    put(index, "1.1", "1.1.1", "1.1.1.2")
    old_key = SeriesKey("t1", "1.1", "1.1.1")
    old_version = index.series_version(old_key)
    assert put(index, "1.1", "1.1.2", "1.1.1.2", sha256="sha-2", Modality="SR") is UpsertOutcome.REPLACED
    assert (index.series_version(old_key) or 0) > (old_version or 0)
    counts = {r["SeriesInstanceUID"]: r["NumberOfSeriesRelatedInstances"] for r in index.search("t1", q("series"))}
    assert counts == {"1.1.1": 1, "1.1.2": 1}
    assert study_row(index, "1.1")["ModalitiesInStudy"] == ["CT", "SR"]


def test_series_emptied_by_a_move_is_removed(index: Index) -> None:
    put(index, "1.1", "1.1.1", "1.1.1.1")
    put(index, "1.2", "1.2.1", "1.1.1.1", sha256="sha-2")
    assert index.series_version(SeriesKey("t1", "1.1", "1.1.1")) is None
    assert uids(index, q("study")) == ["1.2"]


def test_latest_values_win_but_a_blank_never_replaces_a_value(index: Index) -> None:
    put(index, "1.1", "1.1.1", "1.1.1.1", PatientName="Doe^John", AccessionNumber="A1", SeriesNumber=4)
    put(index, "1.1", "1.1.1", "1.1.1.2", PatientName="Doe^Johnny", AccessionNumber="", SeriesNumber=None)
    row = study_row(index, "1.1")
    assert (row["PatientName"], row["AccessionNumber"]) == ("Doe^Johnny", "A1")
    (series,) = index.search("t1", q("series"))
    assert series["SeriesNumber"] == 4
    assert uids(index, q("study", {"PatientName": "doe^johnny"})) == ["1.1"]


def test_counts_and_modalities_in_study_are_exact(index: Index) -> None:
    put(index, "1.1", "1.1.1", "1.1.1.1", Modality="MR")
    put(index, "1.1", "1.1.1", "1.1.1.2", Modality="MR")
    put(index, "1.1", "1.1.2", "1.1.2.1", Modality="CT")
    put(index, "1.1", "1.1.3", "1.1.3.1", Modality="MR")
    row = study_row(index, "1.1")
    assert (row["NumberOfStudyRelatedSeries"], row["NumberOfStudyRelatedInstances"]) == (3, 4)
    assert row["ModalitiesInStudy"] == ["CT", "MR"]
    counts = {r["SeriesInstanceUID"]: r["NumberOfSeriesRelatedInstances"] for r in index.search("t1", q("series"))}
    assert counts == {"1.1.1": 2, "1.1.2": 1, "1.1.3": 1}


def test_integer_string_values_are_ints_and_missing_ones_none(index: Index) -> None:
    put(index, "1.1", "1.1.1", "1.1.1.1", SeriesNumber=7, InstanceNumber=12, Rows=None)
    (row,) = index.search("t1", q("instance"))
    assert (row["SeriesNumber"], row["InstanceNumber"], row["Rows"], row["Columns"]) == (7, 12, None, 512)


def test_instance_rows_carry_image_facts_and_parent_attributes(index: Index) -> None:
    put(index, "1.1", "1.1.1", "1.1.1.1", NumberOfFrames=5)
    (row,) = index.search("t1", q("instance"))
    assert row["AvailableTransferSyntaxUID"] == EXPLICIT_LE
    assert (row["SOPClassUID"], row["NumberOfFrames"], row["BitsAllocated"]) == (CT, 5, 16)
    assert (row["StudyInstanceUID"], row["SeriesInstanceUID"], row["PatientName"], row["Modality"]) == (
        "1.1",
        "1.1.1",
        "Doe^John",
        "CT",
    )


def test_concurrent_upserts_from_threads_all_count(index_factory: Callable[[], Index]) -> None:
    index = index_factory()

    def worker(n: int) -> None:
        for i in range(25):
            put(index, "1.1", f"1.1.{n}", f"1.1.{n}.{i}", InstanceNumber=i)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(1, 9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    row = study_row(index_factory(), "1.1")
    assert (row["NumberOfStudyRelatedSeries"], row["NumberOfStudyRelatedInstances"]) == (8, 200)


def test_index_reopened_on_the_same_store_keeps_everything(index_factory: Callable[[], Index]) -> None:
    first = index_factory()
    put(first, "1.1", "1.1.1", "1.1.1.1")
    before = snapshot(first)
    first.close()
    assert snapshot(index_factory()) == before


# -- metadata versions -----------------------------------------------------------------------------


def test_new_series_is_stale_until_its_version_is_marked_built(index: Index) -> None:
    put(index, "1.1", "1.1.1", "1.1.1.1")
    key = SeriesKey("t1", "1.1", "1.1.1")
    (stale,) = index.stale_series(10)
    assert stale.key == key and stale.version == index.series_version(key)
    index.mark_built(key, stale.version)
    assert index.stale_series(10) == []


def test_new_instance_makes_a_built_series_stale_again(index: Index) -> None:
    put(index, "1.1", "1.1.1", "1.1.1.1")
    key = SeriesKey("t1", "1.1", "1.1.1")
    index.mark_built(key, index.series_version(key) or 0)
    put(index, "1.1", "1.1.1", "1.1.1.2")
    assert [s.key for s in index.stale_series(10)] == [key]


def test_marking_an_older_build_is_a_no_op(index: Index) -> None:
    put(index, "1.1", "1.1.1", "1.1.1.1")
    key = SeriesKey("t1", "1.1", "1.1.1")
    old = index.series_version(key) or 0
    put(index, "1.1", "1.1.1", "1.1.1.2")
    new = index.series_version(key) or 0
    index.mark_built(key, new)
    index.mark_built(key, old)
    assert index.stale_series(10) == []


def test_stale_series_respects_the_limit(index: Index) -> None:
    for n in range(5):
        put(index, "1.1", f"1.1.{n}", f"1.1.{n}.1")
    assert len(index.stale_series(3)) == 3


def test_series_version_of_an_unknown_series_is_none(index: Index) -> None:
    assert index.series_version(SeriesKey("t1", "9.9", "9.9.9")) is None


def test_a_series_received_again_after_deletion_gets_a_newer_version(index: Index) -> None:
    put(index, "1.1", "1.1.1", "1.1.1.1")
    key = SeriesKey("t1", "1.1", "1.1.1")
    first = index.series_version(key) or 0
    index.delete("t1", "1.1")
    put(index, "1.1", "1.1.1", "1.1.1.1")
    assert (index.series_version(key) or 0) > first


# -- list, get, delete -----------------------------------------------------------------------------


def test_list_instances_orders_by_series_then_instance_number_then_uid(index: Index) -> None:
    put(index, "1.1", "1.1.2", "1.1.2.1", SeriesNumber=2, InstanceNumber=1)
    put(index, "1.1", "1.1.1", "1.1.1.9", SeriesNumber=1, InstanceNumber=2)
    put(index, "1.1", "1.1.1", "1.1.1.3", SeriesNumber=1, InstanceNumber=1)
    put(index, "1.1", "1.1.1", "1.1.1.2", SeriesNumber=1, InstanceNumber=1)
    put(index, "1.2", "1.2.1", "1.2.1.1")
    assert [i.sop_instance_uid for i in index.list_instances("t1", "1.1")] == [
        "1.1.1.2",
        "1.1.1.3",
        "1.1.1.9",
        "1.1.2.1",
    ]
    assert [i.sop_instance_uid for i in index.list_instances("t1", "1.1", "1.1.2")] == ["1.1.2.1"]


def test_get_unknown_instance_is_none(index: Index) -> None:
    assert index.get_instance("t1", "9.9.9") is None


def test_delete_instance_keeps_its_series_recounted_and_stale(index: Index) -> None:
    put(index, "1.1", "1.1.1", "1.1.1.1")
    put(index, "1.1", "1.1.1", "1.1.1.2")
    key = SeriesKey("t1", "1.1", "1.1.1")
    index.mark_built(key, index.series_version(key) or 0)
    removed = index.delete("t1", "1.1", "1.1.1", "1.1.1.2")
    assert [r.sop_instance_uid for r in removed] == ["1.1.1.2"]
    assert index.get_instance("t1", "1.1.1.2") is None
    assert study_row(index, "1.1")["NumberOfStudyRelatedInstances"] == 1
    assert [s.key for s in index.stale_series(10)] == [key]


def test_delete_series_removes_it_and_leaves_other_series_alone(index: Index) -> None:
    put(index, "1.1", "1.1.1", "1.1.1.1", Modality="CT")
    put(index, "1.1", "1.1.2", "1.1.2.1", Modality="MR")
    other = SeriesKey("t1", "1.1", "1.1.2")
    other_version = index.series_version(other) or 0
    index.mark_built(other, other_version)
    removed = index.delete("t1", "1.1", "1.1.1")
    assert [r.sop_instance_uid for r in removed] == ["1.1.1.1"]
    assert uids(index, q("series")) == ["1.1.2"]
    assert index.series_version(other) == other_version and index.stale_series(10) == []
    row = study_row(index, "1.1")
    assert (row["NumberOfStudyRelatedSeries"], row["ModalitiesInStudy"]) == (1, ["MR"])


def test_delete_study_prunes_series_and_study(index: Index) -> None:
    put(index, "1.1", "1.1.1", "1.1.1.1")
    put(index, "1.1", "1.1.2", "1.1.2.1")
    put(index, "1.2", "1.2.1", "1.2.1.1")
    removed = index.delete("t1", "1.1")
    assert sorted(r.sop_instance_uid for r in removed) == ["1.1.1.1", "1.1.2.1"]
    assert uids(index, q("study")) == ["1.2"]
    assert uids(index, q("series")) == ["1.2.1"]
    assert [s.key.study_instance_uid for s in index.stale_series(10)] == ["1.2"]


def test_deleting_the_last_instance_prunes_everything_above_it(index: Index) -> None:
    put(index, "1.1", "1.1.1", "1.1.1.1")
    index.delete("t1", "1.1", "1.1.1", "1.1.1.1")
    assert index.count("t1", q("study")) == 0 and index.count("t1", q("series")) == 0
    assert index.series_version(SeriesKey("t1", "1.1", "1.1.1")) is None


def test_delete_of_nothing_returns_nothing(index: Index) -> None:
    put(index, "1.1", "1.1.1", "1.1.1.1")
    assert index.delete("t1", "9.9") == []
    assert index.delete("t1", "1.1", "1.1.9") == []
    assert index.count("t1", q("instance")) == 1


# -- tenants ---------------------------------------------------------------------------------------


def test_tenant_never_sees_another_tenants_rows(index: Index) -> None:
    put(index, "1.1", "1.1.1", "1.1.1.1", tenant="a", PatientName="Alpha^A")
    put(index, "1.1", "1.1.1", "1.1.1.2", tenant="a")
    put(index, "1.1", "1.1.1", "1.1.1.1", tenant="b", PatientName="Beta^B", sha256="other")
    assert [r["PatientName"] for r in index.search("b", q("study"))] == ["Beta^B"]
    assert study_row(index, "1.1", tenant="b")["NumberOfStudyRelatedInstances"] == 1
    assert index.count("b", q("instance")) == 1
    assert index.search("c", q("study")) == [] and index.count("c", q("series")) == 0
    b_instance = index.get_instance("b", "1.1.1.1")
    assert b_instance is not None and b_instance.sha256 == "other"
    assert [i.sop_instance_uid for i in index.list_instances("b", "1.1")] == ["1.1.1.1"]
    assert len(index.delete("b", "1.1")) == 1
    assert index.count("a", q("instance")) == 2
    assert index.get_instance("a", "1.1.1.1") is not None


def test_same_instance_in_another_tenant_is_created_not_replaced(index: Index) -> None:
    put(index, "1.1", "1.1.1", "1.1.1.1", tenant="a")
    assert put(index, "1.1", "1.1.1", "1.1.1.1", tenant="b") is UpsertOutcome.CREATED


# -- search: each matching kind at each level ------------------------------------------------------


@pytest.fixture
def studies(index: Index) -> Index:
    """Three studies, four series, six instances, chosen so each matching rule tells them apart."""
    study_1 = {
        "PatientName": "Doe^John",
        "PatientID": "P1",
        "StudyDate": "20200110",
        "StudyTime": "083000",
        "AccessionNumber": "A100",
        "StudyDescription": "CHEST PA",
        "ReferringPhysicianName": "Smith^Ann",
        "PatientSex": "M",
    }
    put(
        index,
        "1.1",
        "1.1.1",
        "1.1.1.1",
        **study_1,
        SeriesNumber=1,
        InstanceNumber=1,
        PerformedProcedureStepStartDate="20200110",
        PerformedProcedureStepStartTime="0830",
    )
    put(index, "1.1", "1.1.1", "1.1.1.2", **study_1, SeriesNumber=1, InstanceNumber=2)
    put(index, "1.1", "1.1.2", "1.1.2.1", **study_1, Modality="SR", SeriesNumber=2, SOPClassUID=SR)
    study_2 = {
        "PatientName": "Roe^Jane",
        "PatientID": "P2",
        "StudyDate": "20210520",
        "StudyTime": "141500",
        "AccessionNumber": "B200",
        "StudyDescription": "head",
        "ReferringPhysicianName": "",
        "PatientSex": "F",
    }
    put(index, "1.2", "1.2.1", "1.2.1.1", **study_2, Modality="MR", SeriesNumber=3, InstanceNumber=5)
    study_3 = {
        "PatientName": "DOE^JANE^^",
        "PatientID": "P3",
        "StudyDate": "",
        "StudyTime": "",
        "AccessionNumber": "A101",
        "StudyDescription": "Chest[1]",
        "ReferringPhysicianName": "",
        "PatientSex": "",
    }
    put(index, "1.3", "1.3.1", "1.3.1.1", **study_3, SeriesNumber=None, InstanceNumber=None)
    put(index, "1.3", "1.3.1", "1.3.1.2", **study_3, SeriesNumber=None, InstanceNumber=7)
    return index


SEARCH_CASES: list[tuple[Level, dict[str, str], dict[str, str], list[str]]] = [
    ("study", {}, {}, ["1.2", "1.1", "1.3"]),
    ("study", {"PatientID": "P1"}, {}, ["1.1"]),
    ("study", {"PatientID": "p1"}, {}, []),
    ("study", {"PatientName": "doe*"}, {}, ["1.1", "1.3"]),
    ("study", {"PatientName": "DOE^JANE"}, {}, ["1.3"]),
    ("study", {"PatientName": "d?e^j*"}, {}, ["1.1", "1.3"]),
    ("study", {"PatientName": "jane", "fuzzymatching": "true"}, {}, ["1.2", "1.3"]),
    ("study", {"PatientName": "jane", "fuzzymatching": "false"}, {}, []),
    ("study", {"ReferringPhysicianName": "smith*"}, {}, ["1.1"]),
    ("study", {"AccessionNumber": "A10?"}, {}, ["1.1", "1.3"]),
    ("study", {"StudyDescription": "CHEST*"}, {}, ["1.1"]),
    ("study", {"StudyDescription": "Chest[*"}, {}, ["1.3"]),
    ("study", {"StudyDescription": "*%*"}, {}, []),
    ("study", {"StudyDate": "20200101-20201231"}, {}, ["1.1"]),
    ("study", {"StudyDate": "-20211231"}, {}, ["1.2", "1.1"]),
    ("study", {"StudyDate": "20210101-"}, {}, ["1.2"]),
    ("study", {"StudyDate": "20200110"}, {}, ["1.1"]),
    ("study", {"StudyTime": "08"}, {}, ["1.1"]),
    ("study", {"StudyTime": "1200-"}, {}, ["1.2"]),
    ("study", {"StudyTime": "-0830"}, {}, ["1.1"]),
    ("study", {"ModalitiesInStudy": "CT"}, {}, ["1.1", "1.3"]),
    ("study", {"ModalitiesInStudy": "MR,SR"}, {}, ["1.2", "1.1"]),
    ("study", {"ModalitiesInStudy": "?R"}, {}, ["1.2", "1.1"]),
    ("study", {"StudyInstanceUID": "1.1\\1.3"}, {}, ["1.1", "1.3"]),
    ("study", {"StudyInstanceUID": "1.3"}, {}, ["1.3"]),
    ("study", {"PatientSex": "F"}, {}, ["1.2"]),
    ("study", {"PatientName": "doe*", "ModalitiesInStudy": "CT", "StudyDate": "20200101-"}, {}, ["1.1"]),
    ("study", {"PatientID": "P1", "StudyDate": "20210101-"}, {}, []),
    ("study", {"Modality": "MR"}, {}, ["1.2", "1.1", "1.3"]),
    ("series", {}, {}, ["1.1.1", "1.1.2", "1.2.1", "1.3.1"]),
    ("series", {}, {"study_instance_uid": "1.1"}, ["1.1.1", "1.1.2"]),
    ("series", {"Modality": "CT"}, {}, ["1.1.1", "1.3.1"]),
    ("series", {"Modality": "CT,MR"}, {}, ["1.1.1", "1.2.1", "1.3.1"]),
    ("series", {"SeriesNumber": "2"}, {}, ["1.1.2"]),
    ("series", {"SeriesInstanceUID": "1.1.2\\1.3.1"}, {}, ["1.1.2", "1.3.1"]),
    ("series", {"PerformedProcedureStepStartDate": "20200110"}, {}, ["1.1.1"]),
    ("series", {"PerformedProcedureStepStartTime": "0800-0900"}, {}, ["1.1.1"]),
    ("series", {"PatientName": "roe*"}, {}, ["1.2.1"]),
    ("series", {"Modality": "SR"}, {"study_instance_uid": "1.2"}, []),
    ("instance", {}, {"study_instance_uid": "1.1", "series_instance_uid": "1.1.1"}, ["1.1.1.1", "1.1.1.2"]),
    ("instance", {}, {"study_instance_uid": "1.3"}, ["1.3.1.2", "1.3.1.1"]),
    ("instance", {"SOPClassUID": SR}, {}, ["1.1.2.1"]),
    ("instance", {"InstanceNumber": "1"}, {}, ["1.1.1.1", "1.1.2.1"]),
    ("instance", {"SOPInstanceUID": "1.2.1.1,1.3.1.1"}, {}, ["1.2.1.1", "1.3.1.1"]),
    ("instance", {"Modality": "SR"}, {"study_instance_uid": "1.1"}, ["1.1.2.1"]),
    ("instance", {"StudyDate": "20210101-"}, {}, ["1.2.1.1"]),
    ("instance", {"ModalitiesInStudy": "MR"}, {}, ["1.2.1.1"]),
]


@pytest.mark.parametrize(
    ("level", "params", "scope", "expected"),
    SEARCH_CASES,
    ids=[f"{level}-{params}-{scope}" for level, params, scope, _ in SEARCH_CASES],
)
def test_search_applies_each_matching_rule_in_order(
    studies: Index, level: Level, params: dict[str, str], scope: dict[str, str], expected: list[str]
) -> None:
    query = q(level, params, **scope)
    assert uids(studies, query) == expected
    assert studies.count("t1", query) == len(expected)


def test_limit_and_offset_page_through_the_ordered_matches(studies: Index) -> None:
    assert uids(studies, q("study", {"limit": "2"})) == ["1.2", "1.1"]
    assert uids(studies, q("study", {"limit": "2", "offset": "2"})) == ["1.3"]
    assert uids(studies, q("study", {"offset": "1"})) == ["1.1", "1.3"]
    assert studies.count("t1", q("study", {"limit": "1", "offset": "1"})) == 3


def test_search_values_are_strings_ints_and_lists(studies: Index) -> None:
    row = study_row(studies, "1.1")
    assert row["StudyDate"] == "20200110" and row["PatientName"] == "Doe^John"
    assert row["ModalitiesInStudy"] == ["CT", "SR"]
    assert (row["NumberOfStudyRelatedSeries"], row["NumberOfStudyRelatedInstances"]) == (2, 3)


# -- matching rules, one attribute at a time -------------------------------------------------------
#
# Each rule stores one row per value, the rows differing only in that attribute (a study, series or
# instance of its own, by the attribute's level), then states which stored values each query matches.
# A study attribute is searched at study, series and instance level, a series attribute at series and
# instance level: the rule holds through the joins. These are the rules of dicom/query.py.


@dataclass(frozen=True)
class Rule:
    keyword: str
    stored: tuple[Any, ...]
    # (query value, or query parameters; the stored values it matches)
    queries: tuple[tuple[str | dict[str, str], tuple[Any, ...]], ...]


def fuzzy(name: str) -> dict[str, str]:
    return {"PatientName": name, "fuzzymatching": "true"}


NAMES = (
    "Doe^John^^",
    "DOE^JANE",
    "doe^jo",
    "Roe^Jane",
    "Smith",
    "Johnson^Mary",
    "Müller^Jürgen",
    "O'Neil^Pat",
    "Li^Na=李^娜",
    "",
)
TIMES = ("08", "0830", "083015", "083015.5", "101530", "14:15:00", "2359", "", "bogus")
_NOT_EMPTY_TIMES = tuple(t for t in TIMES if t not in ("", "bogus"))

RULES: list[Rule] = [
    # single values are exact and case-sensitive; `*` and `?` are DICOM's wildcards, nothing else is
    Rule(
        "PatientID",
        ("PID-1", "pid-1", "PID", "PID-10", "P_1", ""),
        (
            ("PID-1", ("PID-1",)),
            ("pid-1", ("pid-1",)),
            ("PID*", ("PID-1", "PID", "PID-10")),
            ("P?1", ("P_1",)),
            ("P_*", ("P_1",)),
            ("?*", ("PID-1", "pid-1", "PID", "PID-10", "P_1")),
        ),
    ),
    Rule(
        "AccessionNumber",
        ("ACC[1]", "ACC1", "A100", "a100", "A%0", ""),
        (
            ("ACC[1]", ("ACC[1]",)),
            ("ACC[*", ("ACC[1]",)),
            ("A*", ("ACC[1]", "ACC1", "A100", "A%0")),
            ("A%*", ("A%0",)),
            ("a100", ("a100",)),
        ),
    ),
    Rule(
        "StudyDescription",
        ("CHEST PA", "chest pa", "CHEST", "Chest[1]", "HEAD_NECK", "HEADXNECK", "50%", "500", ""),
        (
            ("CHEST*", ("CHEST PA", "CHEST")),
            ("*ST P?", ("CHEST PA",)),
            ("chest*", ("chest pa",)),
            ("Chest[*", ("Chest[1]",)),
            ("HEAD?NECK", ("HEAD_NECK", "HEADXNECK")),
            ("HEAD_*", ("HEAD_NECK",)),
            ("50%", ("50%",)),
            ("*%", ("50%",)),
            ("5*", ("50%", "500")),
            ("?*", ("CHEST PA", "chest pa", "CHEST", "Chest[1]", "HEAD_NECK", "HEADXNECK", "50%", "500")),
        ),
    ),
    # person names: case-insensitive, trailing empty components ignored (stored or asked)
    Rule(
        "PatientName",
        NAMES,
        (
            ("doe^john", ("Doe^John^^",)),
            ("Doe^John^^", ("Doe^John^^",)),
            ("DOE*", ("Doe^John^^", "DOE^JANE", "doe^jo")),
            ("Doe", ()),
            ("d?e^j*", ("Doe^John^^", "DOE^JANE", "doe^jo")),
            ("*john", ("Doe^John^^",)),
            ("*an*", ("DOE^JANE", "Roe^Jane")),
            ("müller^jürgen", ("Müller^Jürgen",)),
            ("o'neil^pat", ("O'Neil^Pat",)),
            ("LI^NA=李^娜", ("Li^Na=李^娜",)),
            ("?*", NAMES[:-1]),
            # fuzzy: every word asked is the start of a word of the name, in any order; it only widens
            (fuzzy("john do"), ("Doe^John^^",)),
            (fuzzy("Jo"), ("Doe^John^^", "doe^jo", "Johnson^Mary")),
            (fuzzy("jo*"), ("Doe^John^^", "doe^jo", "Johnson^Mary")),
            (fuzzy("doe^jo"), ("Doe^John^^", "doe^jo")),
            (fuzzy("jane"), ("DOE^JANE", "Roe^Jane")),
            (fuzzy("MÜLLER"), ("Müller^Jürgen",)),
            (fuzzy("李"), ("Li^Na=李^娜",)),
            (fuzzy("pat o'neil"), ("O'Neil^Pat",)),
            (fuzzy("ohn"), ()),
            (fuzzy("john smith"), ()),
            ({"PatientName": "john do", "fuzzymatching": "false"}, ()),
        ),
    ),
    Rule(
        "ReferringPhysicianName",
        ("Smith^Ann", "SMITH^ANNA", ""),
        (
            ("smith^ann", ("Smith^Ann",)),
            ("smith*", ("Smith^Ann", "SMITH^ANNA")),
            ("?*", ("Smith^Ann", "SMITH^ANNA")),
        ),
    ),
    # dates: single values and ranges open at either end; an empty date never matches
    Rule(
        "StudyDate",
        ("20190101", "20200110", "20200615", "20201231", "20210520", ""),
        (
            ("20200101-20201231", ("20200110", "20200615", "20201231")),
            ("-20200615", ("20190101", "20200110", "20200615")),
            ("20200615-", ("20200615", "20201231", "20210520")),
            ("20200616-", ("20201231", "20210520")),
            ("20200615", ("20200615",)),
            ("-20991231", ("20190101", "20200110", "20200615", "20201231", "20210520")),
        ),
    ),
    Rule(
        "PatientBirthDate",
        ("19650101", "19700101", "19791231", "19800101", ""),
        (("19700101-19791231", ("19700101", "19791231")),),
    ),
    # times: a partial time covers its whole span, as a value or a bound; HH:MM:SS is read; no time never matches
    Rule(
        "StudyTime",
        TIMES,
        (
            ("1015", ("101530",)),
            ("10-1015", ("101530",)),
            ("1016-", ("14:15:00", "2359")),
            ("101530.0-", ("101530", "14:15:00", "2359")),
            ("08", ("08", "0830", "083015", "083015.5")),
            ("0830-1415", ("0830", "083015", "083015.5", "101530", "14:15:00")),
            ("083015.5-", ("083015.5", "101530", "14:15:00", "2359")),
            ("-0830", ("08", "0830", "083015", "083015.5")),
            ("083015", ("083015", "083015.5")),
            ("141500", ("14:15:00",)),
            ("00-23", _NOT_EMPTY_TIMES),
        ),
    ),
    # code strings: lists (comma as OHIF sends them, or backslash), each item single or wildcard
    Rule(
        "PatientSex",
        ("M", "F", "O", ""),
        (("F", ("F",)), ("F,O", ("F", "O")), ("?", ("M", "F", "O"))),
    ),
    Rule(
        "ModalitiesInStudy",  # one series per modality of the study
        ("CT\\SR", "MR", "CT", "MR\\PT", ""),
        (
            ("SR", ("CT\\SR",)),
            ("CT", ("CT\\SR", "CT")),
            ("MR,CT", ("CT\\SR", "MR", "CT", "MR\\PT")),
            ("MR\\PT", ("MR", "MR\\PT")),
            ("S?", ("CT\\SR",)),
            ("?R", ("CT\\SR", "MR", "MR\\PT")),
            ("?*", ("CT\\SR", "MR", "CT", "MR\\PT")),
        ),
    ),
    Rule(
        "Modality",
        ("CT", "MR", "SR", "PT", ""),
        (
            ("CT", ("CT",)),
            ("ct", ()),
            ("CT,MR", ("CT", "MR")),
            ("CT\\PT", ("CT", "PT")),
            ("?R", ("MR", "SR")),
            ("?*", ("CT", "MR", "SR", "PT")),
        ),
    ),
    Rule(
        "BodyPartExamined",
        ("CHEST", "HEAD", "CHESTABDOMEN", ""),
        (("CH*", ("CHEST", "CHESTABDOMEN")), ("HEAD,CHEST", ("CHEST", "HEAD"))),
    ),
    Rule(
        "PerformedProcedureStepStartDate",
        ("20200110", "20200111", ""),
        (("20200110", ("20200110",)), ("20200110-", ("20200110", "20200111"))),
    ),
    Rule(
        "PerformedProcedureStepStartTime",
        ("08", "0830", "0900", ""),
        (("08-0830", ("08", "0830")), ("09", ("0900",))),
    ),
    # integer strings compare as numbers; an instance without the number never matches
    Rule(
        "SeriesNumber",
        (7, 8, 70, None),
        (("7", (7,)), ("007", (7,)), ("+7", (7,)), ("8", (8,)), ("70", (70,)), ("0", ())),
    ),
    Rule(
        "InstanceNumber",
        (1, 2, 10, None),
        (("1", (1,)), ("01", (1,)), ("10", (10,)), ("-1", ())),
    ),
    # UIDs: one value, or a list (backslash or comma); never a prefix
    Rule(
        "StudyInstanceUID",
        ("1.2.3", "1.2.4", "1.2.5", "1.2.30"),
        (
            ("1.2.3", ("1.2.3",)),
            ("1.2.4\\1.2.3", ("1.2.3", "1.2.4")),
            ("1.2.4,1.2.5", ("1.2.4", "1.2.5")),
            ("1.2.6\\1.2.5,1.2.30", ("1.2.5", "1.2.30")),
            ("9.9", ()),
        ),
    ),
    Rule(
        "SeriesInstanceUID",
        ("1.3.1", "1.3.2", "1.3.10"),
        (("1.3.1", ("1.3.1",)), ("1.3.1\\1.3.10", ("1.3.1", "1.3.10"))),
    ),
    Rule(
        "SOPInstanceUID",
        ("1.4.1", "1.4.2", "1.4.3"),
        (("1.4.2", ("1.4.2",)), ("1.4.1,1.4.3", ("1.4.1", "1.4.3"))),
    ),
    Rule("SOPClassUID", (CT, SR), ((SR, (SR,)), (f"{CT}\\{SR}", (CT, SR)))),
]
_LEVELS: tuple[Level, ...] = ("study", "series", "instance")


def store_rule_rows(index: Index, rule: Rule) -> list[dict[Level, set[str]]]:
    """One row per stored value, differing only in the rule's attribute; the UIDs each one made, by level."""
    made: list[dict[Level, set[str]]] = []
    level = BY_KEYWORD[rule.keyword].query_level
    for n, value in enumerate(rule.stored, start=1):
        if level == "study":
            study = value if rule.keyword == "StudyInstanceUID" else f"2.{n}"
            if rule.keyword == "ModalitiesInStudy":
                rows = [
                    (study, f"{study}.{m}", f"{study}.{m}.1", {"Modality": modality})
                    for m, modality in enumerate(value.split("\\"), start=1)
                ]
            else:
                rows = [(study, f"{study}.1", f"{study}.1.1", {rule.keyword: value})]
        elif level == "series":
            series = value if rule.keyword == "SeriesInstanceUID" else f"3.1.{n}"
            rows = [("3.1", series, f"{series}.1", {rule.keyword: value})]
        else:
            sop = value if rule.keyword == "SOPInstanceUID" else f"4.1.1.{n}"
            rows = [("4.1", "4.1.1", sop, {rule.keyword: value})]
        for study, series, sop, attributes in rows:
            put(index, study, series, sop, **{k: v for k, v in attributes.items() if k not in _IDENTITY})
        made.append(
            {
                "study": {study for study, _, _, _ in rows},
                "series": {series for _, series, _, _ in rows},
                "instance": {sop for _, _, sop, _ in rows},
            }
        )
    return made


@pytest.mark.parametrize("rule", RULES, ids=[rule.keyword for rule in RULES])
def test_each_matching_rule_finds_exactly_the_rows_it_should_at_every_level(index: Index, rule: Rule) -> None:
    assert len(set(rule.stored)) == len(rule.stored)
    made = store_rule_rows(index, rule)
    query_level = BY_KEYWORD[rule.keyword].query_level
    wrong = []
    for asked, matched in rule.queries:
        assert set(matched) <= set(rule.stored), (asked, matched)
        params = asked if isinstance(asked, dict) else {rule.keyword: asked}
        for level in _LEVELS[_LEVELS.index(query_level) :]:
            query = q(level, params)
            expected = sorted(uid for n, value in enumerate(rule.stored) if value in matched for uid in made[n][level])
            found = sorted(uids(index, query))
            if found != expected or index.count("t1", query) != len(expected):
                wrong.append(f"{level} {params}: found {found}, counted {index.count('t1', query)}, want {expected}")
    assert wrong == []


def test_search_within_a_study_or_series_finds_only_what_is_in_it(index: Index) -> None:
    for study in ("2.1", "2.2", "2.3"):
        for series, modality in ((f"{study}.1", "CT"), (f"{study}.2", "MR")):
            for sop in (f"{series}.1", f"{series}.2"):
                put(index, study, series, sop, Modality=modality)
    assert uids(index, q("series", study_instance_uid="2.2")) == ["2.2.1", "2.2.2"]
    assert uids(index, q("series", {"Modality": "MR"}, study_instance_uid="2.2")) == ["2.2.2"]
    assert sorted(uids(index, q("instance", study_instance_uid="2.2"))) == ["2.2.1.1", "2.2.1.2", "2.2.2.1", "2.2.2.2"]
    scoped = q("instance", study_instance_uid="2.2", series_instance_uid="2.2.1")
    assert (uids(index, scoped), index.count("t1", scoped)) == (["2.2.1.1", "2.2.1.2"], 2)
    assert uids(index, q("instance", {"Modality": "MR"}, study_instance_uid="2.3")) == ["2.3.2.1", "2.3.2.2"]
    # a series of another study, and a study that is not there, hold nothing
    assert uids(index, q("instance", study_instance_uid="2.1", series_instance_uid="2.2.1")) == []
    assert (
        uids(index, q("series", study_instance_uid="9.9")) == []
        and index.count("t1", q("series", study_instance_uid="9.9")) == 0
    )


def test_ping_answers_while_the_database_is_reachable(index: Index) -> None:
    index.ping()


def test_the_change_marker_moves_when_another_writer_commits_or_says_it_cannot_tell(
    index_factory: Callable[[], Index],
) -> None:
    """SQLite tells every commit (a process-local QIDO cache keys its results by it); PostgreSQL cannot (None:
    such a cache keeps nothing)."""
    reader, writer = index_factory(), index_factory()
    before = reader.change_marker()
    if isinstance(reader, PostgresIndex):
        assert before is None
        return
    assert before is not None and reader.change_marker() == before
    put(writer, "1.1", "1.1.1", "1.1.1.1")
    moved = reader.change_marker()
    assert moved != before
    put(reader, "1.1", "1.1.1", "1.1.1.2")
    assert reader.change_marker() != moved, "a commit through the reader's own object moves it too"


def test_sqlite_planner_statistics_follow_the_instances_written_not_the_transactions(tmp_path: Path) -> None:
    """One bulk batch of ANALYZE_EVERY instances refreshes them: counted by transaction, a load of 1,000-instance
    batches went a million instances with the planner knowing nothing of the tables."""
    index = SqliteIndex(tmp_path / "index.sqlite")
    try:
        batch = [indexed("1.1", "1.1.1", f"1.1.1.{n}") for n in range(ANALYZE_EVERY)]
        with index.writing("t1", [(i.sop_instance_uid, i.study_instance_uid) for i in batch]) as write:
            for instance in batch:
                write.upsert(instance)
        with sqlite3.connect(tmp_path / "index.sqlite") as conn:
            rows = conn.execute("SELECT stat FROM sqlite_stat1 WHERE tbl = 'instance'").fetchall()
    finally:
        index.close()
    assert rows and int(rows[0][0].split()[0]) > 0
