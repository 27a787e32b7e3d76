"""C-FIND/C-GET/C-MOVE identifiers on the QIDO matching engine: translation, patients, responses."""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.dataset import Dataset

from dicomcloud.dicom.attributes import attributes
from dicomcloud.dicom.cfind import (
    PATIENT_KEYS,
    find_query,
    find_response,
    patient_rows,
    query_retrieve_level,
    retrieve_query,
)
from dicomcloud.dicom.query import parse_qido
from dicomcloud.errors import IdentifierMismatch, InvalidInput


def identifier(level: str, **keys: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def test_find_keys_become_the_conditions_qido_would_make() -> None:
    keys = {"PatientName": "doe*", "StudyDate": "20200101-20201231", "ModalitiesInStudy": ["CT", "MR"]}
    query = find_query(identifier("STUDY", **keys, StudyInstanceUID=""), "study")
    qido = parse_qido("study", {"PatientName": ["doe*"], "StudyDate": ["20200101-20201231"],
                                "ModalitiesInStudy": ["CT\\MR"]})  # fmt: skip
    assert query.level == "study"
    assert set(query.conditions) == set(qido.conditions)


def test_a_multi_valued_uid_key_is_uid_list_matching() -> None:
    query = find_query(identifier("SERIES", StudyInstanceUID=["1.2.3", "1.2.4"], SeriesInstanceUID=""), "patient")
    (condition,) = query.conditions
    assert (condition.kind, condition.value) == ("uid_list", ("1.2.3", "1.2.4"))


def test_keys_below_the_level_are_not_applied() -> None:
    query = find_query(identifier("STUDY", PatientID="P1", Modality="CT", SOPInstanceUID="1.2.3"), "study")
    assert [c.keyword for c in query.conditions] == ["PatientID"]


def test_patient_keys_are_the_catalogues_patient_matching_keys() -> None:
    assert {a.keyword for a in attributes("patient") if a.matching} == PATIENT_KEYS


def test_patient_level_applies_only_patient_keys_to_a_study_search() -> None:
    query = find_query(identifier("PATIENT", PatientID="P*", StudyDate="20200101"), "patient")
    assert query.level == "study"
    assert [c.keyword for c in query.conditions] == ["PatientID"]


@pytest.mark.parametrize(("model", "level"), [("study", "PATIENT"), ("patient", "FRAME"), ("patient", "")])
def test_a_level_outside_the_information_model_is_an_identifier_mismatch(model: Any, level: str) -> None:
    with pytest.raises(IdentifierMismatch) as raised:
        query_retrieve_level(identifier(level), model)
    assert raised.value.dimse_status == 0xA900


def test_a_malformed_value_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match=r"StudyDate.*ends before"):
        find_query(identifier("STUDY", StudyDate="20201231-20200101"), "study")


def test_a_retrieve_selects_instances_by_the_unique_keys_of_its_level() -> None:
    query = retrieve_query(identifier("SERIES", StudyInstanceUID="1.2.3", SeriesInstanceUID=["1.2.3.1", "1.2.3.2"]),
                           "study")  # fmt: skip
    assert query.level == "instance"
    assert {c.keyword: c.value for c in query.conditions} == {
        "StudyInstanceUID": "1.2.3",
        "SeriesInstanceUID": ("1.2.3.1", "1.2.3.2"),
    }


@pytest.mark.parametrize(
    "keys",
    [{"StudyInstanceUID": "1.2.3"}, {"StudyInstanceUID": "1.2.3", "SeriesInstanceUID": ""}],
    ids=["missing", "empty"],
)
def test_a_retrieve_without_its_unique_key_is_an_identifier_mismatch(keys: dict[str, str]) -> None:
    with pytest.raises(IdentifierMismatch, match="SeriesInstanceUID"):
        retrieve_query(identifier("SERIES", **keys), "study")


def test_a_retrieve_by_patient_id_refuses_wildcards() -> None:
    with pytest.raises(IdentifierMismatch, match="wildcards"):
        retrieve_query(identifier("PATIENT", PatientID="P*"), "patient")


def test_patients_are_the_distinct_patient_ids_of_the_studies_with_summed_counts() -> None:
    studies = [
        {"PatientID": "P1", "PatientName": "Doe^Jane", "NumberOfStudyRelatedSeries": 2,
         "NumberOfStudyRelatedInstances": 5},
        {"PatientID": "P2", "PatientName": "Roe^Rick", "NumberOfStudyRelatedSeries": 1,
         "NumberOfStudyRelatedInstances": 1},
        {"PatientID": "P1", "PatientName": "Doe^J", "NumberOfStudyRelatedSeries": 1,
         "NumberOfStudyRelatedInstances": 3},
        {"PatientID": "", "PatientName": "Anon^A", "NumberOfStudyRelatedSeries": 1, "NumberOfStudyRelatedInstances": 1},
        {"PatientID": "", "PatientName": "Anon^B", "NumberOfStudyRelatedSeries": 1, "NumberOfStudyRelatedInstances": 1},
    ]  # fmt: skip
    patients = patient_rows(studies)
    summary = [(p["PatientID"], p["PatientName"], p["NumberOfPatientRelatedStudies"],
                p["NumberOfPatientRelatedSeries"], p["NumberOfPatientRelatedInstances"]) for p in patients]  # fmt: skip
    assert summary == [
        ("P1", "Doe^Jane", 2, 3, 8),  # the newest study's name
        ("P2", "Roe^Rick", 1, 1, 1),
        ("", "Anon^A", 1, 1, 1),
        ("", "Anon^B", 1, 1, 1),
    ]


def test_a_response_holds_exactly_the_requested_keys_with_the_match_values() -> None:
    request = identifier("IMAGE", SOPInstanceUID="", InstanceNumber="", ImageType="", InstanceAvailability="")
    request.SpecificCharacterSet = "ISO_IR 100"
    request.add_new(0x00081140, "SQ", [])  # ReferencedImageSequence: returned empty
    row = {"SOPInstanceUID": "1.2.3", "InstanceNumber": 7, "ImageType": ["ORIGINAL", "PRIMARY"], "Rows": 64}
    response = find_response(request, row, qr_level="IMAGE", retrieve_ae_title="ARCHIVE")
    assert {e.keyword for e in response} == {
        "SpecificCharacterSet", "QueryRetrieveLevel", "RetrieveAETitle", "SOPInstanceUID", "InstanceNumber",
        "ImageType", "InstanceAvailability", "ReferencedImageSequence",
    }  # fmt: skip
    assert response.SpecificCharacterSet == "ISO_IR 192"
    assert (response.QueryRetrieveLevel, response.RetrieveAETitle) == ("IMAGE", "ARCHIVE")
    assert (response.SOPInstanceUID, response.InstanceNumber) == ("1.2.3", 7)
    assert list(response.ImageType) == ["ORIGINAL", "PRIMARY"]
    assert response.InstanceAvailability == "ONLINE"
    assert len(response.ReferencedImageSequence) == 0


def test_a_requested_key_without_a_value_is_returned_empty() -> None:
    request = identifier("STUDY", StudyDescription="", AccessionNumber="")
    response = find_response(request, {"StudyDescription": ""}, qr_level="STUDY", retrieve_ae_title="A")
    assert response["StudyDescription"].value in ("", None)
    assert response["AccessionNumber"].value in ("", None)
