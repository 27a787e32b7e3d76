"""The index port's promises, run against every adapter (see conftest.py `index_factory`)."""

from __future__ import annotations

import dataclasses
import random
import threading
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from dicomcloud.dicom.query import Level, Query, matches, parse_qido
from dicomcloud.events import DicomImageMeta, DicomStateMeta
from dicomcloud.ports.index import Index, SeriesKey, UpsertOutcome

CT = "1.2.840.10008.5.1.4.1.1.2"
SR = "1.2.840.10008.5.1.4.1.1.88.11"
EXPLICIT_LE = "1.2.840.10008.1.2.1"

_STATE_FIELDS = {f.name for f in dataclasses.fields(DicomStateMeta)}
_IMAGE_FIELDS = {f.name for f in dataclasses.fields(DicomImageMeta)}


def dicom_object(
    study: str, series: str, sop: str, *, tenant: str = "t1", sha256: str = "sha-1", **attrs: Any
) -> tuple[DicomStateMeta, DicomImageMeta]:
    """State and image events of one instance; `attrs` go to whichever event has the field."""
    unknown = set(attrs) - _STATE_FIELDS - _IMAGE_FIELDS
    assert not unknown, unknown
    state = DicomStateMeta(
        **{
            "tenant_id": tenant,
            "patient_id": "P1",
            "patient_name": "Doe^John",
            "patient_birth_date": "19700101",
            "patient_sex": "M",
            "study_instance_uid": study,
            "study_date": "20200110",
            "study_time": "083000",
            "accession_number": "A100",
            "study_id": "1",
            "study_description": "CHEST PA",
            "referring_physician_name": "",
            "series_instance_uid": series,
            "modality": "CT",
            "series_number": 1,
            "series_description": "",
            "series_date": "",
            "series_time": "",
            "body_part_examined": "",
            "performed_procedure_step_start_date": "",
            "performed_procedure_step_start_time": "",
            "institution_name": "",
            "station_name": "",
            **{k: v for k, v in attrs.items() if k in _STATE_FIELDS and k not in _IMAGE_FIELDS},
        }
    )
    image = DicomImageMeta(
        **{
            "tenant_id": tenant,
            "study_instance_uid": study,
            "series_instance_uid": series,
            "sop_instance_uid": sop,
            "sop_class_uid": CT,
            "instance_number": 1,
            "transfer_syntax": EXPLICIT_LE,
            "rows": 512,
            "columns": 512,
            "bits_allocated": 16,
            "number_of_frames": 1,
            "photometric_interpretation": "MONOCHROME2",
            "content_date": "",
            "content_time": "",
            "acquisition_date_time": "",
            "image_type": "ORIGINAL\\PRIMARY",
            "file_path": f"{tenant}/{study}/{series}/{sop}.dcm",
            "file_size": 1000,
            "sha256": sha256,
            **{k: v for k, v in attrs.items() if k in _IMAGE_FIELDS},
        }
    )
    return state, image


def put(index: Index, study: str, series: str, sop: str, **attrs: Any) -> UpsertOutcome:
    return index.upsert(*dicom_object(study, series, sop, **attrs))


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


# -- upsert ----------------------------------------------------------------------------------------


def test_first_upsert_creates_and_registers_the_instance(index: Index) -> None:
    assert put(index, "1.1", "1.1.1", "1.1.1.1", instance_number=3, number_of_frames=2) is UpsertOutcome.CREATED
    location = index.get_instance("t1", "1.1.1.1")
    assert location is not None
    assert (location.study_instance_uid, location.series_instance_uid, location.sop_class_uid) == ("1.1", "1.1.1", CT)
    assert (location.instance_number, location.number_of_frames, location.transfer_syntax) == (3, 2, EXPLICIT_LE)
    assert (location.file_path, location.file_size, location.sha256) == ("t1/1.1/1.1.1/1.1.1.1.dcm", 1000, "sha-1")


def test_replayed_upsert_is_unchanged_and_changes_nothing(index: Index) -> None:
    put(index, "1.1", "1.1.1", "1.1.1.1")
    put(index, "1.1", "1.1.1", "1.1.1.2", instance_number=2)
    before = snapshot(index)
    assert put(index, "1.1", "1.1.1", "1.1.1.1") is UpsertOutcome.UNCHANGED
    assert put(index, "1.1", "1.1.1", "1.1.1.2", instance_number=2) is UpsertOutcome.UNCHANGED
    assert snapshot(index) == before


def test_replayed_old_event_does_not_undo_newer_values(index: Index) -> None:
    put(index, "1.1", "1.1.1", "1.1.1.1", study_description="OLD")
    put(index, "1.1", "1.1.1", "1.1.1.2", study_description="NEW")
    put(index, "1.1", "1.1.1", "1.1.1.1", study_description="OLD")
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
    assert put(index, "1.1", "1.1.2", "1.1.1.2", sha256="sha-2", modality="SR") is UpsertOutcome.REPLACED
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
    put(index, "1.1", "1.1.1", "1.1.1.1", patient_name="Doe^John", accession_number="A1", series_number=4)
    put(index, "1.1", "1.1.1", "1.1.1.2", patient_name="Doe^Johnny", accession_number="", series_number=None)
    row = study_row(index, "1.1")
    assert (row["PatientName"], row["AccessionNumber"]) == ("Doe^Johnny", "A1")
    (series,) = index.search("t1", q("series"))
    assert series["SeriesNumber"] == 4
    assert uids(index, q("study", {"PatientName": "doe^johnny"})) == ["1.1"]


def test_counts_and_modalities_in_study_are_exact(index: Index) -> None:
    put(index, "1.1", "1.1.1", "1.1.1.1", modality="MR")
    put(index, "1.1", "1.1.1", "1.1.1.2", modality="MR")
    put(index, "1.1", "1.1.2", "1.1.2.1", modality="CT")
    put(index, "1.1", "1.1.3", "1.1.3.1", modality="MR")
    row = study_row(index, "1.1")
    assert (row["NumberOfStudyRelatedSeries"], row["NumberOfStudyRelatedInstances"]) == (3, 4)
    assert row["ModalitiesInStudy"] == ["CT", "MR"]
    counts = {r["SeriesInstanceUID"]: r["NumberOfSeriesRelatedInstances"] for r in index.search("t1", q("series"))}
    assert counts == {"1.1.1": 2, "1.1.2": 1, "1.1.3": 1}


def test_integer_string_values_are_ints_and_missing_ones_none(index: Index) -> None:
    put(index, "1.1", "1.1.1", "1.1.1.1", series_number=7, instance_number=12, rows=None)
    (row,) = index.search("t1", q("instance"))
    assert (row["SeriesNumber"], row["InstanceNumber"], row["Rows"], row["Columns"]) == (7, 12, None, 512)


def test_instance_rows_carry_image_facts_and_parent_attributes(index: Index) -> None:
    put(index, "1.1", "1.1.1", "1.1.1.1", number_of_frames=5)
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
            put(index, "1.1", f"1.1.{n}", f"1.1.{n}.{i}", instance_number=i)

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
    put(index, "1.1", "1.1.2", "1.1.2.1", series_number=2, instance_number=1)
    put(index, "1.1", "1.1.1", "1.1.1.9", series_number=1, instance_number=2)
    put(index, "1.1", "1.1.1", "1.1.1.3", series_number=1, instance_number=1)
    put(index, "1.1", "1.1.1", "1.1.1.2", series_number=1, instance_number=1)
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
    put(index, "1.1", "1.1.1", "1.1.1.1", modality="CT")
    put(index, "1.1", "1.1.2", "1.1.2.1", modality="MR")
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
    put(index, "1.1", "1.1.1", "1.1.1.1", tenant="a", patient_name="Alpha^A")
    put(index, "1.1", "1.1.1", "1.1.1.2", tenant="a")
    put(index, "1.1", "1.1.1", "1.1.1.1", tenant="b", patient_name="Beta^B", sha256="other")
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
def archive(index: Index) -> Index:
    """Three studies, four series, six instances, chosen so each matching rule tells them apart."""
    study_1 = {
        "patient_name": "Doe^John",
        "patient_id": "P1",
        "study_date": "20200110",
        "study_time": "083000",
        "accession_number": "A100",
        "study_description": "CHEST PA",
        "referring_physician_name": "Smith^Ann",
        "patient_sex": "M",
    }
    put(
        index,
        "1.1",
        "1.1.1",
        "1.1.1.1",
        **study_1,
        series_number=1,
        instance_number=1,
        performed_procedure_step_start_date="20200110",
        performed_procedure_step_start_time="0830",
    )
    put(index, "1.1", "1.1.1", "1.1.1.2", **study_1, series_number=1, instance_number=2)
    put(index, "1.1", "1.1.2", "1.1.2.1", **study_1, modality="SR", series_number=2, sop_class_uid=SR)
    study_2 = {
        "patient_name": "Roe^Jane",
        "patient_id": "P2",
        "study_date": "20210520",
        "study_time": "141500",
        "accession_number": "B200",
        "study_description": "head",
        "referring_physician_name": "",
        "patient_sex": "F",
    }
    put(index, "1.2", "1.2.1", "1.2.1.1", **study_2, modality="MR", series_number=3, instance_number=5)
    study_3 = {
        "patient_name": "DOE^JANE^^",
        "patient_id": "P3",
        "study_date": "",
        "study_time": "",
        "accession_number": "A101",
        "study_description": "Chest[1]",
        "referring_physician_name": "",
        "patient_sex": "",
    }
    put(index, "1.3", "1.3.1", "1.3.1.1", **study_3, series_number=None, instance_number=None)
    put(index, "1.3", "1.3.1", "1.3.1.2", **study_3, series_number=None, instance_number=7)
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
    archive: Index, level: Level, params: dict[str, str], scope: dict[str, str], expected: list[str]
) -> None:
    query = q(level, params, **scope)
    assert uids(archive, query) == expected
    assert archive.count("t1", query) == len(expected)


def test_limit_and_offset_page_through_the_ordered_matches(archive: Index) -> None:
    assert uids(archive, q("study", {"limit": "2"})) == ["1.2", "1.1"]
    assert uids(archive, q("study", {"limit": "2", "offset": "2"})) == ["1.3"]
    assert uids(archive, q("study", {"offset": "1"})) == ["1.1", "1.3"]
    assert archive.count("t1", q("study", {"limit": "1", "offset": "1"})) == 3


def test_search_values_are_strings_ints_and_lists(archive: Index) -> None:
    row = study_row(archive, "1.1")
    assert row["StudyDate"] == "20200110" and row["PatientName"] == "Doe^John"
    assert row["ModalitiesInStudy"] == ["CT", "SR"]
    assert (row["NumberOfStudyRelatedSeries"], row["NumberOfStudyRelatedInstances"]) == (2, 3)


# -- matches() and search() agree ------------------------------------------------------------------

NAMES = ["Doe^John", "DOE^JANE^^", "doe^jo", "Roe^Jane", "Smith", "Müller^Jürgen", "O'Neil^Pat", "Li^Na=李^娜", ""]
DATES = ["20190101", "20200110", "20200615", "20201231", "20210520", ""]
TIMES = ["08", "0830", "083015", "083015.5", "14:15:00", "2359", "", "bogus"]
MODALITIES = ["CT", "MR", "SR", "PT", ""]
DESCRIPTIONS = ["CHEST PA", "chest", "Chest[1]", "HEAD_NECK", "50%", ""]


def _generate(index: Index, seed: int) -> None:
    rng = random.Random(seed)
    for s in range(40):
        study = f"2.{s + 1}"
        attrs = {
            "patient_name": rng.choice(NAMES),
            "patient_id": f"P{rng.randrange(12)}",
            "patient_sex": rng.choice(["M", "F", "O", ""]),
            "study_date": rng.choice(DATES),
            "study_time": rng.choice(TIMES),
            "accession_number": rng.choice(["A1", "A12", "B1", "a1", ""]),
            "study_description": rng.choice(DESCRIPTIONS),
            "referring_physician_name": rng.choice(NAMES),
        }
        for n in range(rng.randrange(1, 4)):
            series = f"{study}.{n + 1}"
            series_attrs = {
                "modality": rng.choice(MODALITIES),
                "series_number": rng.choice([1, 2, 3, None]),
                "performed_procedure_step_start_date": rng.choice(DATES),
                "performed_procedure_step_start_time": rng.choice(TIMES),
                "body_part_examined": rng.choice(["CHEST", "HEAD", ""]),
            }
            for i in range(rng.randrange(1, 4)):
                put(
                    index,
                    study,
                    series,
                    f"{series}.{i + 1}",
                    **attrs,
                    **series_attrs,
                    instance_number=rng.choice([1, 2, 10, None]),
                    sop_class_uid=rng.choice([CT, SR]),
                )


AGREEMENT_QUERIES: list[tuple[Level, dict[str, str]]] = (
    [
        (level, params)
        for level in ("study", "series", "instance")
        for params in [
            {"PatientName": "doe*"},
            {"PatientName": "DOE^JOHN"},
            {"PatientName": "*an*"},
            {"PatientName": "jo", "fuzzymatching": "true"},
            {"PatientName": "jane doe", "fuzzymatching": "true"},
            {"PatientName": "müller", "fuzzymatching": "true"},
            {"PatientName": "?i^*"},
            {"ReferringPhysicianName": "*smith*"},
            {"PatientID": "P1"},
            {"PatientID": "P1*"},
            {"PatientSex": "F,O"},
            {"AccessionNumber": "A1"},
            {"AccessionNumber": "a*"},
            {"StudyDescription": "Chest[*"},
            {"StudyDescription": "*%"},
            {"StudyDescription": "HEAD?NECK"},
            {"StudyDate": "20200101-20201231"},
            {"StudyDate": "-20200615"},
            {"StudyDate": "20200615-"},
            {"StudyTime": "08"},
            {"StudyTime": "0830-1415"},
            {"StudyTime": "083015.5-"},
            {"ModalitiesInStudy": "CT"},
            {"ModalitiesInStudy": "MR\\PT"},
            {"StudyInstanceUID": "2.1\\2.5,2.9"},
            {"PatientName": "d*", "StudyDate": "20200101-", "ModalitiesInStudy": "CT"},
        ]
    ]
    + [
        (level, params)
        for level in ("series", "instance")
        for params in [
            {"Modality": "CT"},
            {"Modality": "?R"},
            {"SeriesNumber": "2"},
            {"BodyPartExamined": "CH*"},
            {"PerformedProcedureStepStartDate": "20200110"},
            {"PerformedProcedureStepStartTime": "08-0830"},
            {"SeriesInstanceUID": "2.1.1\\2.3.2"},
        ]
    ]
    + [
        ("instance", {"InstanceNumber": "10"}),
        ("instance", {"SOPClassUID": SR}),
        ("instance", {"SOPInstanceUID": "2.1.1.1,2.2.1.2"}),
    ]
)


def test_matches_and_search_agree_on_generated_rows(index: Index) -> None:
    _generate(index, seed=20240612)
    everything = {level: index.search("t1", Query(level)) for level in ("study", "series", "instance")}
    assert all(everything.values())
    matched_something = 0
    for level, params in AGREEMENT_QUERIES:
        query = q(level, params)
        expected = [row for row in everything[level] if matches(query, row)]
        assert index.search("t1", query) == expected, (level, params)
        assert index.count("t1", query) == len(expected), (level, params)
        matched_something += bool(expected)
    assert matched_something > len(AGREEMENT_QUERIES) // 2


def test_matches_and_search_agree_within_a_scope(index: Index) -> None:
    _generate(index, seed=7)
    (study, *_) = index.search("t1", Query("study"))
    uid = study["StudyInstanceUID"]
    for level in ("series", "instance"):
        query = q(level, {}, study_instance_uid=uid)
        expected = [row for row in index.search("t1", Query(level)) if matches(query, row)]
        assert expected and index.search("t1", query) == expected


def test_ping_answers_while_the_database_is_reachable(index: Index) -> None:
    index.ping()
