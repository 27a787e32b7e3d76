"""QIDO-RS / C-FIND matching rules: parse_qido for each parameter rule, matches() for each kind."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from dicomcloud.dicom.query import (
    Condition,
    Level,
    Query,
    matches,
    parse_qido,
    response_attributes,
    returned_keywords,
    time_key,
    unsupported_warning,
)
from dicomcloud.errors import InvalidInput


def parse(level: Level, params: Mapping[str, str | Sequence[str]], **scope: str) -> Query:
    multi = {k: [v] if isinstance(v, str) else list(v) for k, v in params.items()}
    return parse_qido(level, multi, **scope)


def only(query: Query) -> Condition:
    assert len(query.conditions) == 1, query.conditions
    return query.conditions[0]


# -- parse_qido: parameter names ------------------------------------------------------------------


def test_keyword_and_tag_name_the_same_key() -> None:
    assert only(parse("study", {"PatientID": "X"})) == only(parse("study", {"00100020": "X"}))
    assert only(parse("study", {"00080061": "CT"})).keyword == "ModalitiesInStudy"


def test_lowercase_hex_tag_is_accepted() -> None:
    assert only(parse("study", {"0020000d": "1.2.3"})).keyword == "StudyInstanceUID"


@pytest.mark.parametrize("name", ["PatientNam", "patientname", "Foo", "0010001", "_", "StudyDate.StudyTime"])
def test_unknown_parameter_is_invalid_input(name: str) -> None:
    with pytest.raises(InvalidInput, match=r"not a DICOM keyword or tag|not a sequence"):
        parse("study", {name: "x"})


def test_tag_outside_the_dictionary_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="not in the DICOM dictionary"):
        parse("study", {"00091001": "x"})


def test_negotiation_parameters_are_left_to_the_http_layer() -> None:
    query = parse("study", {"accept": "application/dicom+json", "charset": "utf-8"})
    assert query.conditions == () and query.unsupported == ()


def test_key_not_supported_at_the_level_is_reported_not_applied() -> None:
    query = parse("study", {"Modality": "CT", "SOPInstanceUID": "1.2", "PatientID": "P"})
    assert [c.keyword for c in query.conditions] == ["PatientID"]
    assert query.unsupported == ("Modality", "SOPInstanceUID")
    warning = unsupported_warning(query)
    assert warning is not None and warning.startswith("299 ") and "Modality, SOPInstanceUID" in warning


def test_dictionary_attribute_without_index_support_is_reported() -> None:
    assert parse("study", {"PatientWeight": "70"}).unsupported == ("PatientWeight",)


def test_empty_value_for_unsupported_key_asks_for_the_attribute_and_warns_nothing() -> None:
    query = parse("study", {"OperatorsName": ""})
    assert query.unsupported == () and "OperatorsName" in query.includefields
    assert unsupported_warning(query) is None


def test_sequence_path_is_accepted_and_reported_unsupported_at_series_level() -> None:
    query = parse("series", {"RequestAttributesSequence.ScheduledProcedureStepID": "SPS1"})
    assert query.unsupported == ("RequestAttributesSequence.ScheduledProcedureStepID",)
    query = parse("series", {"00400275.00400009": "SPS1"})
    assert query.unsupported == ("RequestAttributesSequence.ScheduledProcedureStepID",)


def test_study_keys_apply_at_series_and_instance_level_series_keys_at_instance_level() -> None:
    assert only(parse("series", {"PatientID": "P"})).keyword == "PatientID"
    assert only(parse("series", {"PatientID": "P"}, study_instance_uid="1.2")).keyword == "PatientID"
    assert {c.keyword for c in parse("instance", {"Modality": "CT", "StudyDate": "20200101"}).conditions} == {
        "Modality",
        "StudyDate",
    }


# -- parse_qido: special parameters ---------------------------------------------------------------


def test_includefield_takes_keywords_tags_commas_and_repeats() -> None:
    query = parse("study", {"includefield": ["00081030,00080060", "PatientAge", " StudyID "]})
    assert query.includefields == {"StudyDescription", "Modality", "PatientAge", "StudyID"}
    assert not query.include_all


def test_includefield_all() -> None:
    assert parse("study", {"includefield": "all"}).include_all


def test_includefield_with_unknown_attribute_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="includefield"):
        parse("study", {"includefield": "StudyDescription,Nonsense"})


def test_matching_keys_are_returned_like_includefields() -> None:
    assert "AccessionNumber" in parse("study", {"AccessionNumber": "A1"}).includefields


def test_limit_and_offset() -> None:
    query = parse("study", {"limit": "101", "offset": "20"})
    assert (query.limit, query.offset) == (101, 20)
    assert parse("study", {}).limit is None


@pytest.mark.parametrize(
    ("name", "value"),
    [("limit", "0"), ("limit", "-1"), ("limit", "ten"), ("limit", "1.5"), ("offset", "-3"), ("offset", "x")],
)
def test_bad_limit_or_offset_is_invalid_input(name: str, value: str) -> None:
    with pytest.raises(InvalidInput, match=name):
        parse("study", {name: value})


def test_limit_given_twice_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="once"):
        parse("study", {"limit": ["1", "2"]})


def test_fuzzymatching_true_false_and_invalid() -> None:
    assert parse("study", {"fuzzymatching": "true"}).fuzzy
    assert not parse("study", {"fuzzymatching": "false"}).fuzzy
    with pytest.raises(InvalidInput, match="fuzzymatching"):
        parse("study", {"fuzzymatching": "yes"})


def test_scope_uids_are_validated() -> None:
    query = parse("instance", {}, study_instance_uid="1.2", series_instance_uid="1.2.3")
    assert (query.study_instance_uid, query.series_instance_uid) == ("1.2", "1.2.3")
    with pytest.raises(InvalidInput):
        parse("series", {}, study_instance_uid="1.2/../3")
    with pytest.raises(InvalidInput, match="series"):
        parse("series", {}, study_instance_uid="1.2", series_instance_uid="1.2.3")


# -- parse_qido: condition kinds ------------------------------------------------------------------


def test_empty_value_and_lone_star_are_universal() -> None:
    assert parse("study", {"PatientName": "", "AccessionNumber": "*"}).conditions == ()


def test_single_value() -> None:
    assert only(parse("study", {"AccessionNumber": "A1"})) == Condition("AccessionNumber", "single", "A1")


def test_wildcard_for_string_vrs() -> None:
    assert only(parse("study", {"PatientName": "Doe*"})).kind == "wildcard"
    assert only(parse("study", {"StudyDescription": "C?EST"})).kind == "wildcard"


@pytest.mark.parametrize(
    ("key", "value"), [("StudyInstanceUID", "1.2.*"), ("StudyDate", "2020*"), ("StudyTime", "10?0")]
)
def test_wildcard_on_ui_da_tm_is_invalid_input(key: str, value: str) -> None:
    with pytest.raises(InvalidInput, match=key):
        parse("study", {key: value})


@pytest.mark.parametrize(
    ("value", "bounds"),
    [("20200101-20201231", ("20200101", "20201231")), ("-20201231", ("", "20201231")), ("20200101-", ("20200101", ""))],
)
def test_date_range(value: str, bounds: tuple[str, str]) -> None:
    assert only(parse("study", {"StudyDate": value})) == Condition("StudyDate", "range", bounds)


def test_time_range() -> None:
    assert only(parse("study", {"StudyTime": "0800-101500.5"})) == Condition("StudyTime", "range", ("0800", "101500.5"))


@pytest.mark.parametrize(
    "value", ["2020-01-01", "20201301", "20200230", "2020010", "-", "20201231-20200101", "20200101-2021"]
)
def test_bad_date_is_invalid_input(value: str) -> None:
    with pytest.raises(InvalidInput, match="StudyDate"):
        parse("study", {"StudyDate": value})


@pytest.mark.parametrize("value", ["10:15", "2400", "1260", "101515.1234567", "1", "1100-1000"])
def test_bad_time_is_invalid_input(value: str) -> None:
    with pytest.raises(InvalidInput, match="StudyTime"):
        parse("study", {"StudyTime": value})


def test_uid_list_with_backslash_or_comma() -> None:
    expected = Condition("StudyInstanceUID", "uid_list", ("1.2", "1.3", "1.4"))
    assert only(parse("study", {"StudyInstanceUID": "1.2\\1.3,1.4"})) == expected
    assert only(parse("study", {"StudyInstanceUID": ["1.2", "1.3\\1.4"]})) == expected


def test_single_uid_is_single_value() -> None:
    assert only(parse("study", {"StudyInstanceUID": "1.2"})) == Condition("StudyInstanceUID", "single", "1.2")


def test_bad_uid_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="StudyInstanceUID"):
        parse("study", {"StudyInstanceUID": "1.2,abc"})


def test_cs_list_with_comma_or_backslash_as_ohif_sends_it() -> None:
    assert only(parse("study", {"ModalitiesInStudy": "CT,MR"})) == Condition("ModalitiesInStudy", "list", ("CT", "MR"))
    assert only(parse("study", {"00080061": "CT\\MR"})) == Condition("ModalitiesInStudy", "list", ("CT", "MR"))


def test_multiple_values_for_other_vrs_are_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="multiple values"):
        parse("study", {"PatientID": "A\\B"})
    with pytest.raises(InvalidInput, match="multiple values"):
        parse("study", {"PatientName": ["Doe", "Roe"]})


def test_integer_string_keys_compare_as_numbers() -> None:
    assert only(parse("series", {"SeriesNumber": "+007"})) == Condition("SeriesNumber", "single", "7")
    with pytest.raises(InvalidInput, match="SeriesNumber"):
        parse("series", {"SeriesNumber": "7a"})


# -- matches() -------------------------------------------------------------------------------------

STUDY: dict[str, Any] = {
    "StudyInstanceUID": "1.2.3",
    "PatientName": "Doe^John^^",
    "PatientID": "PID-1",
    "StudyDate": "20200615",
    "StudyTime": "101530",
    "AccessionNumber": "ACC[1]",
    "StudyDescription": "CHEST PA",
    "ModalitiesInStudy": ["CT", "SR"],
    "ReferringPhysicianName": "",
}


def hits(params: Mapping[str, str | Sequence[str]], values: Mapping[str, Any] = STUDY, level: Level = "study") -> bool:
    return matches(parse(level, params), values)


def test_matches_single_value_is_exact_and_case_sensitive() -> None:
    assert hits({"PatientID": "PID-1"})
    assert not hits({"PatientID": "pid-1"})
    assert not hits({"PatientID": "PID"})


def test_matches_wildcards() -> None:
    assert hits({"StudyDescription": "CHEST*"})
    assert hits({"StudyDescription": "*ST P?"})
    assert not hits({"StudyDescription": "chest*"})
    assert hits({"AccessionNumber": "ACC[*"})


def test_matches_person_name_case_insensitively_ignoring_empty_trailing_components() -> None:
    assert hits({"PatientName": "doe^john"})
    assert hits({"PatientName": "DOE*"})
    assert not hits({"PatientName": "Doe"})


def test_fuzzy_matching_finds_name_words_by_prefix_in_any_order() -> None:
    assert hits({"PatientName": "john do", "fuzzymatching": "true"})
    assert hits({"PatientName": "Jo", "fuzzymatching": "true"})
    assert not hits({"PatientName": "john do", "fuzzymatching": "false"})
    assert not hits({"PatientName": "ohn", "fuzzymatching": "true"})
    assert not hits({"PatientName": "john smith", "fuzzymatching": "true"})


def test_matches_date_ranges_with_open_ends() -> None:
    assert hits({"StudyDate": "20200101-20201231"})
    assert hits({"StudyDate": "-20200615"})
    assert hits({"StudyDate": "20200615-"})
    assert not hits({"StudyDate": "20200616-"})
    assert hits({"StudyDate": "20200615"})


def test_empty_stored_value_never_matches_a_condition() -> None:
    assert not hits({"StudyDate": "-20201231"}, {**STUDY, "StudyDate": ""})
    assert not hits({"ReferringPhysicianName": "?*"})


def test_partial_time_covers_its_whole_span() -> None:
    assert hits({"StudyTime": "1015"})
    assert hits({"StudyTime": "10-1015"})
    assert not hits({"StudyTime": "1016-"})
    assert hits({"StudyTime": "101530.0-"})
    assert time_key("10:15:30") == "101530.000000" and time_key("1015", upper=True) == "101559.999999"


def test_matches_uid_list() -> None:
    assert hits({"StudyInstanceUID": "1.2.4\\1.2.3"})
    assert not hits({"StudyInstanceUID": "1.2.4,1.2.5"})


def test_modalities_in_study_matches_any_of_its_values() -> None:
    assert hits({"ModalitiesInStudy": "SR"})
    assert hits({"ModalitiesInStudy": "MR,CT"})
    assert hits({"ModalitiesInStudy": "S?"})
    assert not hits({"ModalitiesInStudy": "MR"})
    assert not hits({"ModalitiesInStudy": "CT"}, {**STUDY, "ModalitiesInStudy": []})


def test_matches_integer_values() -> None:
    series = {**STUDY, "SeriesInstanceUID": "1.2.3.4", "SeriesNumber": 7}
    assert hits({"SeriesNumber": "007"}, series, "series")
    assert not hits({"SeriesNumber": "8"}, series, "series")
    assert not hits({"SeriesNumber": "8"}, {**series, "SeriesNumber": None}, "series")


def test_matches_the_scope_of_the_url() -> None:
    series = {**STUDY, "SeriesInstanceUID": "1.2.3.4"}
    assert matches(parse("series", {}, study_instance_uid="1.2.3"), series)
    assert not matches(parse("series", {}, study_instance_uid="1.2.9"), series)


def test_all_conditions_must_hold() -> None:
    assert hits({"PatientID": "PID-1", "StudyDate": "20200101-"})
    assert not hits({"PatientID": "PID-1", "StudyDate": "20210101-"})


# -- returned attributes ---------------------------------------------------------------------------


def test_study_response_has_defaults_matching_keys_and_includefields_only() -> None:
    query = parse("study", {"AccessionNumber": "A*", "includefield": "StudyDescription,Modality"})
    row = {**STUDY, "NumberOfStudyRelatedSeries": 2, "OperatorsName": "x"}
    returned = response_attributes(query, row)
    assert {"AccessionNumber", "StudyDescription", "PatientName", "NumberOfStudyRelatedSeries"} <= set(returned)
    assert "OperatorsName" not in returned


def test_all_series_response_includes_study_attributes_scoped_one_does_not() -> None:
    all_series = returned_keywords(parse("series", {}))
    scoped = returned_keywords(parse("series", {}, study_instance_uid="1.2"))
    assert all_series is not None and scoped is not None
    assert "PatientName" in all_series and "PatientName" not in scoped
    assert "StudyInstanceUID" in scoped


def test_includefield_all_returns_everything() -> None:
    assert returned_keywords(parse("study", {"includefield": "all"})) is None
