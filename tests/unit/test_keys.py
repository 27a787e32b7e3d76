"""The archive's storage key layout (archive/keys.py): the user's folder layout or the hashed one, no key built
from an id that is not one (what the storage adapter used to promise for its paths), and one layout per archive."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import seahash

from dicomcloud.adapters.fs_storage import FsStorage
from dicomcloud.archive.keys import (
    LAYOUT_MARKER,
    UNDATED,
    KeyLayout,
    copy_prefix_of,
    derived_key,
    derived_prefix,
    document_key,
    entry_key,
    original_key,
    series_prefix,
    settled_layout,
    uid_hash,
)
from dicomcloud.errors import InvalidInput, StorageFailure
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


# -- the hashed layout and its record -------------------------------------------------------------


def test_the_uids_layout_is_the_users_folder_layout() -> None:
    assert KeyLayout.UIDS.original_key("default", STUDY, SERIES, SOP, "20240131") == ORIGINAL
    assert KeyLayout.UIDS.document_key(SeriesKey("default", STUDY, SERIES)) == document_key(
        SeriesKey("default", STUDY, SERIES)
    )


def test_the_hashed_layout_groups_fixed_length_uid_hashes_by_study_date() -> None:
    long_uid = "1.2.826.0.1.3680043.8.498." + "1" * 38
    key = KeyLayout.HASHED.original_key("default", STUDY, SERIES, long_uid, "20240131")
    tenant, year, month, day, study, series, name = key.split("/")
    assert (tenant, year, month, day) == ("default", "2024", "01", "31")
    assert (study, series, name) == (uid_hash(STUDY), uid_hash(SERIES), uid_hash(long_uid) + ".dcm")
    assert all(len(part) == 16 and int(part, 16) >= 0 for part in (study, series, name.removesuffix(".dcm")))
    assert uid_hash(STUDY) == f"{seahash.hash(STUDY.encode()):016x}"
    # The copies and the entry of an original sit beside it, as in the default layout.
    assert derived_key(key, EXPLICIT_LE).startswith(derived_prefix(key))
    assert entry_key(key) == key.removesuffix(".dcm") + ".json"


@pytest.mark.parametrize("study_date", ["", "2024", "20241301", "20240132", "20240101-20240131", "2024013a"])
def test_a_study_without_a_valid_date_is_undated(study_date: str) -> None:
    key = KeyLayout.HASHED.original_key("default", STUDY, SERIES, SOP, study_date)
    assert key.split("/")[1] == UNDATED


def test_the_hashed_layout_keeps_a_series_document_apart_from_any_date() -> None:
    key = KeyLayout.HASHED.document_key(SeriesKey("default", STUDY, SERIES))
    assert key == f"default/series/{uid_hash(STUDY)}/{uid_hash(SERIES)}.json"


def test_the_hashed_layout_refuses_anything_but_valid_ids() -> None:
    for tenant, study, series, sop in [
        ("../etc", STUDY, SERIES, SOP),
        ("default", "../x", SERIES, SOP),
        ("default", STUDY, "1.2.a", SOP),
        ("default", STUDY, SERIES, "1.2.3.dcm"),
    ]:
        with pytest.raises(InvalidInput):
            KeyLayout.HASHED.original_key(tenant, study, series, sop, "20240131")


@pytest.fixture
def storage(tmp_path: Path) -> FsStorage:
    return FsStorage(tmp_path / "storage", tmp_path / "tmp")


@pytest.mark.parametrize("layout", list(KeyLayout))
def test_a_new_archive_records_the_layout_of_its_setting_and_keeps_it(storage: FsStorage, layout: KeyLayout) -> None:
    assert settled_layout(storage, layout.value) is layout
    assert json.loads(storage.read(LAYOUT_MARKER)) == {"key_layout": layout.value}
    assert settled_layout(storage, layout.value) is layout


def test_a_changed_layout_setting_is_refused_with_what_to_set(storage: FsStorage) -> None:
    settled_layout(storage, "hashed")
    with pytest.raises(StorageFailure, match="keeps its objects in the 'hashed' key layout") as refused:
        settled_layout(storage, "uids")
    assert "DICOMCLOUD_STORAGE__KEY_LAYOUT=hashed" in refused.value.message
    assert json.loads(storage.read(LAYOUT_MARKER)) == {"key_layout": "hashed"}


def test_an_archive_from_before_the_record_keeps_the_default_layout(storage: FsStorage) -> None:
    storage.write(ORIGINAL, b"an instance stored before layouts were recorded")
    with pytest.raises(StorageFailure, match="'uids' key layout"):
        settled_layout(storage, "hashed")
    assert settled_layout(storage, "uids") is KeyLayout.UIDS
    assert json.loads(storage.read(LAYOUT_MARKER)) == {"key_layout": "uids"}


def test_an_unknown_layout_setting_is_refused(storage: FsStorage) -> None:
    with pytest.raises(InvalidInput, match=r"unknown storage\.key_layout"):
        settled_layout(storage, "dates")
