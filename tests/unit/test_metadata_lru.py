"""The in-process LRU of parsed series documents is bounded by instances, not by series."""

from __future__ import annotations

from typing import Any

from dicomcloud.archive.metadata import _ParsedDocuments
from dicomcloud.dicom.seriesdoc import SeriesDocument
from dicomcloud.ports.index import SeriesKey


def document(series: str, instances: int) -> tuple[tuple[str, SeriesKey], SeriesDocument]:
    key = SeriesKey("t", "1.2", series)
    entries: dict[str, Any] = {f"{series}.{n}": object() for n in range(instances)}
    return ("/data", key), SeriesDocument("t", "1.2", series, 1, entries)


def test_least_recently_used_documents_go_once_the_instance_budget_is_exceeded() -> None:
    parsed = _ParsedDocuments(max_instances=100)
    (a_key, a), (b_key, b), (c_key, c) = document("1", 40), document("2", 40), document("3", 40)
    parsed.put(a_key, a)
    parsed.put(b_key, b)
    assert parsed.get(a_key) is a  # now b is the least recently used
    parsed.put(c_key, c)
    assert (parsed.get(a_key), parsed.get(b_key), parsed.get(c_key)) == (a, None, c)


def test_a_document_larger_than_the_budget_is_still_kept_alone() -> None:
    parsed = _ParsedDocuments(max_instances=10)
    (small_key, small), (big_key, big) = document("1", 5), document("2", 50)
    parsed.put(small_key, small)
    parsed.put(big_key, big)
    assert (parsed.get(small_key), parsed.get(big_key)) == (None, big)


def test_refresh_replaces_a_kept_document_and_keeps_no_other() -> None:
    parsed = _ParsedDocuments(max_instances=100)
    (kept_key, kept), (other_key, other) = document("1", 5), document("2", 5)
    parsed.put(kept_key, kept)
    _, newer = document("1", 7)
    parsed.refresh(kept_key, newer)
    parsed.refresh(other_key, other)
    assert (parsed.get(kept_key), parsed.get(other_key)) == (newer, None)
    parsed.put(other_key, document("2", 94)[1])
    assert parsed.get(kept_key) is None, "the refreshed size counts against the budget"
