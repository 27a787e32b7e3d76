"""The archive's storage key layout (archive/keys.py): the user's folder layout, and no key built from
an id that is not one (what the storage adapter used to promise for its paths)."""

from __future__ import annotations

import pytest

from dicomcloud.archive.keys import (
    copy_prefix_of,
    derived_key,
    derived_prefix,
    document_key,
    entry_key,
    original_key,
    series_prefix,
)
from dicomcloud.errors import InvalidInput
from dicomcloud.ports.index import SeriesKey

STUDY, SERIES, SOP = "1.2.840.1", "1.2.840.1.2", "1.2.840.1.2.3"
ORIGINAL = f"default/{STUDY}/{SERIES}/{SOP}.dcm"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def test_an_original_is_kept_under_tenant_study_series_sop() -> None:
    assert original_key("default", STUDY, SERIES, SOP) == ORIGINAL
    assert series_prefix("default", STUDY, SERIES) == f"default/{STUDY}/{SERIES}/"


@pytest.mark.parametrize(
    ("tenant", "study", "series", "sop"),
    [
        ("../etc", STUDY, SERIES, SOP),
        ("/abs", STUDY, SERIES, SOP),
        ("Bad Tenant", STUDY, SERIES, SOP),
        ("", STUDY, SERIES, SOP),
        ("default", "../x", SERIES, SOP),
        ("default", "/abs", SERIES, SOP),
        ("default", "1.2.3/../x", SERIES, SOP),
        ("default", STUDY, "1.2.a", SOP),
        ("default", STUDY, SERIES, "1.2.3.dcm"),
        ("default", STUDY, SERIES, ""),
        ("default", STUDY, SERIES, "1." + "2" * 64),
    ],
)
def test_an_original_key_refuses_anything_but_valid_ids(tenant: str, study: str, series: str, sop: str) -> None:
    with pytest.raises(InvalidInput):
        original_key(tenant, study, series, sop)


def test_a_derived_copy_sits_beside_its_original_and_is_found_by_its_prefix() -> None:
    derived = derived_key(ORIGINAL, EXPLICIT_LE)
    assert derived == f"default/{STUDY}/{SERIES}/{SOP}_{EXPLICIT_LE}.dcm"
    assert derived.startswith(derived_prefix(ORIGINAL))
    assert copy_prefix_of(derived) == derived_prefix(ORIGINAL)
    assert copy_prefix_of(ORIGINAL) is None
    # Another instance whose UID starts with this one's is not taken for a copy of it.
    assert not original_key("default", STUDY, SERIES, SOP + "4").startswith(derived_prefix(ORIGINAL))


@pytest.mark.parametrize("syntax", ["../x", "1.2/3", "", "1.2.a"])
def test_a_derived_key_refuses_an_invalid_syntax(syntax: str) -> None:
    with pytest.raises(InvalidInput):
        derived_key(ORIGINAL, syntax)


def test_entries_and_series_documents_live_in_the_series_folder() -> None:
    assert entry_key(ORIGINAL) == f"default/{STUDY}/{SERIES}/{SOP}.json"
    assert document_key(SeriesKey("default", STUDY, SERIES)) == f"default/{STUDY}/{SERIES}/series.json"


@pytest.mark.parametrize("key", [derived_key(ORIGINAL, EXPLICIT_LE), f"default/{STUDY}/{SERIES}/series.json"])
def test_keys_of_copies_and_documents_are_not_taken_for_originals(key: str) -> None:
    with pytest.raises(ValueError):
        derived_key(key, EXPLICIT_LE)
    with pytest.raises(ValueError):
        entry_key(key)
