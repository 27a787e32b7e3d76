"""The LRU of parsed series documents: bounded by instances, not by series, and one per archive."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import support

from dicomcloud.archive.metadata import LRU_INSTANCES, _ParsedDocuments
from dicomcloud.dicom.seriesdoc import SeriesDocument, metadata_of_stored
from dicomcloud.ports.index import SeriesKey

STUDY, SERIES = "1.2.826.0.7.1", "1.2.826.0.7.1.1"


def document(series: str, instances: int) -> tuple[SeriesKey, SeriesDocument]:
    key = SeriesKey("t", "1.2", series)
    entries: dict[str, Any] = {f"{series}.{n}": object() for n in range(instances)}
    return key, SeriesDocument("t", "1.2", series, 1, entries)


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


def test_forget_drops_a_document_and_frees_its_share_of_the_budget() -> None:
    parsed = _ParsedDocuments(max_instances=100)
    (gone_key, gone), (kept_key, kept) = document("1", 60), document("2", 40)
    parsed.put(gone_key, gone)
    parsed.forget(gone_key)
    parsed.put(kept_key, kept)
    parsed.put(*document("3", 60))
    assert (parsed.get(gone_key), parsed.get(kept_key)) == (None, kept)


def test_two_archives_in_one_process_keep_their_own_documents(tmp_path: Path) -> None:
    """The same series UIDs at the same index version in two archives: each composes and keeps its own."""
    first, second = support.make_archive(tmp_path / "first"), support.make_archive(tmp_path / "second")
    try:
        key = SeriesKey("default", STUDY, SERIES)
        support.store(first, support.write_ct(tmp_path / "a.dcm", STUDY, SERIES, f"{SERIES}.1"))
        support.store(second, support.write_ct(tmp_path / "b.dcm", STUDY, SERIES, f"{SERIES}.2"))
        assert first.runtime.index.series_version(key) == second.runtime.index.series_version(key) is not None

        kept = first.metadata.document(key)
        assert kept is not None and list(kept.instances) == [f"{SERIES}.1"]
        assert first.metadata.document(key) is kept, "the first archive keeps its parsed document"
        other = second.metadata.document(key)
        assert other is not None and list(other.instances) == [f"{SERIES}.2"]
        assert second.metadata.document(key) is other

        second.metadata.forget(key)
        assert first.metadata.document(key) is kept, "forgetting in one archive leaves the other's"
        assert first.metadata._parsed is not second.metadata._parsed
        assert first.metadata._parsed.max_instances == second.metadata._parsed.max_instances == LRU_INSTANCES
    finally:
        first.close()
        second.close()


def test_a_fresh_process_sends_the_stored_metadata_of_the_current_version_without_parsing_the_document(
    tmp_path: Path,
) -> None:
    """Two archives on one folder stand for the webworker's process and a process started after it."""
    data = tmp_path / "data"
    writer, fresh = support.make_archive(data), support.make_archive(data)
    try:
        key = SeriesKey("default", STUDY, SERIES)
        for number in (1, 2):
            support.store(writer, support.write_ct(tmp_path / f"{number}.dcm", STUDY, SERIES, f"{SERIES}.{number}"))
        consolidated = writer.metadata.consolidate(key)
        assert consolidated is not None
        stored = fresh.runtime.storage.read(fresh.runtime.layout.metadata_key(key))
        assert stored == consolidated.stored_metadata()

        array = fresh.metadata.metadata_array(key)
        assert array == consolidated.metadata_array()
        assert fresh.metadata._parsed.get(key) is None, "sent as stored, the document unparsed"
        assert [row["00080018"]["Value"][0] for row in json.loads(array or b"")] == [f"{SERIES}.1", f"{SERIES}.2"]

        # A store after the webworker's write makes the stored response older than the index: not sent.
        support.store(writer, support.write_ct(tmp_path / "3.dcm", STUDY, SERIES, f"{SERIES}.3"))
        current = fresh.metadata.metadata_array(key)
        assert current is not None and f"{SERIES}.3".encode() in current
        assert metadata_of_stored(stored, fresh.runtime.index.series_version(key) or 0) is None

        writer.remove.delete("default", STUDY)
        assert fresh.metadata.metadata_array(key) is None
        assert fresh.runtime.storage.size(fresh.runtime.layout.metadata_key(key)) is None
    finally:
        writer.close()
        fresh.close()


def test_stored_metadata_is_taken_only_at_its_own_version_and_intact() -> None:
    _, doc = document("1", 0)
    stored = doc.stored_metadata()
    assert metadata_of_stored(stored, doc.version) == doc.metadata_array() == b"[]"
    assert metadata_of_stored(stored, doc.version + 1) is None
    assert metadata_of_stored(b"1", 1) is None
    assert metadata_of_stored(b"1\n{}", 1) is None
