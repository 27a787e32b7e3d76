"""QIDO-RS / C-FIND query parsing: parse_qido for each parameter rule, the conditions each kind of value makes,
and the bounds the index compares against. Matching itself is the index's (tests/contract/test_index.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from dicomcloud.dicom.attributes import BY_KEYWORD, CATALOGUE
from dicomcloud.dicom.query import (
    MATCHING_KEYS,
    Condition,
    Level,
    Query,
    fuzzy_name_patterns,
    normalize_pn,
    parse_condition,
    parse_qido,
    range_bounds,
    time_key,
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


@pytest.mark.parametrize("name", ["PatientNam", "patientname", "Foo", "0010001", "_", "StudyDate.StudyTime", "x..y"])
def test_a_parameter_that_names_no_attribute_is_ignored_and_reported(name: str) -> None:
    query = parse("study", {name: "x", "PatientID": "P1"})
    assert query.ignored == (name,)
    assert only(query).keyword == "PatientID"


def test_vendor_parameters_are_ignored_together() -> None:
    query = parse("series", {"_": "1700000000", "orthanc-expand": "true", "StudyDate": ""})
    assert query.ignored == ("_", "orthanc-expand")
    assert query.conditions == () and "StudyDate" in query.includefields


def test_a_tag_outside_the_dictionary_is_a_key_the_index_cannot_match() -> None:
    query = parse("instance", {"00091001": "x", "includefield": "0009100a"})
    assert query.unsupported == ("00091001",)
    assert {"00091001", "0009100A"} <= query.includefields
    assert query.ignored == ()


def test_negotiation_parameters_are_left_to_the_http_layer() -> None:
    query = parse("study", {"accept": "application/dicom+json", "charset": "utf-8"})
    assert query.conditions == () and query.unsupported == ()


def test_key_not_supported_at_the_level_is_reported_not_applied() -> None:
    query = parse("study", {"Modality": "CT", "SOPInstanceUID": "1.2", "PatientID": "P"})
    assert [c.keyword for c in query.conditions] == ["PatientID"]
    assert query.unsupported == ("Modality", "SOPInstanceUID")


def test_dictionary_attribute_without_index_support_is_reported() -> None:
    assert parse("study", {"PatientWeight": "70"}).unsupported == ("PatientWeight",)


def test_empty_value_for_unsupported_key_asks_for_the_attribute_and_warns_nothing() -> None:
    query = parse("study", {"OperatorsName": ""})
    assert query.unsupported == () and query.conditions == ()
    assert "OperatorsName" in query.includefields


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


def test_an_includefield_that_names_no_attribute_is_ignored() -> None:
    query = parse("study", {"includefield": "StudyDescription,Nonsense,StudyDate.StudyTime"})
    assert query.includefields == {"StudyDescription"}
    assert query.ignored == ()


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


# -- parse_condition and the matching keys -------------------------------------------------------


def test_matching_keys_are_the_catalogues_matching_attributes() -> None:
    assert set(MATCHING_KEYS) == {attribute.keyword for attribute in CATALOGUE if attribute.matching}
    assert all(MATCHING_KEYS[keyword] is BY_KEYWORD[keyword] for keyword in MATCHING_KEYS)
    assert (MATCHING_KEYS["PatientID"].query_level, MATCHING_KEYS["PatientID"].vr) == ("study", "LO")
    assert (MATCHING_KEYS["SeriesNumber"].query_level, MATCHING_KEYS["SeriesNumber"].vr) == ("series", "IS")


def test_parse_condition_takes_a_catalogue_attribute() -> None:
    assert parse_condition(MATCHING_KEYS["Modality"], " CT ") == Condition("Modality", "single", "CT")
    assert parse_condition(MATCHING_KEYS["StudyDate"], "*") is None
    with pytest.raises(InvalidInput, match="InstanceNumber"):
        parse_condition(MATCHING_KEYS["InstanceNumber"], "x")


# -- the bounds and forms the index compares -------------------------------------------------------


def test_partial_time_covers_its_whole_span() -> None:
    assert range_bounds(only(parse("study", {"StudyTime": "1015"}))) == ("101500.000000", "101559.999999")
    assert range_bounds(only(parse("study", {"StudyTime": "10-1015"}))) == ("100000.000000", "101559.999999")
    assert range_bounds(only(parse("study", {"StudyTime": "1016-"}))) == ("101600.000000", "")
    assert range_bounds(only(parse("study", {"StudyTime": "101530.0-"}))) == ("101530.000000", "")


def test_time_key_reads_old_colon_form_and_fills_to_the_end_of_the_span() -> None:
    assert time_key("10:15:30") == "101530.000000" and time_key("1015", upper=True) == "101559.999999"
    assert time_key("101530.5") == "101530.500000"
    assert time_key("") == "" and time_key("later") == ""


def test_date_bounds_are_the_dates_with_open_ends() -> None:
    assert range_bounds(only(parse("study", {"StudyDate": "20200615"}))) == ("20200615", "20200615")
    assert range_bounds(only(parse("study", {"StudyDate": "-20201231"}))) == ("", "20201231")
    assert range_bounds(only(parse("study", {"StudyDate": "20200101-"}))) == ("20200101", "")


def test_person_names_compare_lower_case_without_empty_trailing_components() -> None:
    assert normalize_pn("Doe^John^^") == "doe^john"
    assert normalize_pn(" DOE^John=  ") == "doe^john"


def test_fuzzy_patterns_are_one_prefix_per_query_word() -> None:
    assert fuzzy_name_patterns("john do") == ["* john*", "* do*"]
    assert fuzzy_name_patterns("Doe^J*,=x") == ["* doe*", "* j*", "* x*"]
    assert fuzzy_name_patterns("*") == []
