"""The storage port's promises: the user's layout, no path traversal, atomic durable writes, no leftovers."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from dicomcloud.adapters.fs_storage import FsStorage
from dicomcloud.errors import InvalidInput, ServiceUnavailable, StorageFailure
from dicomcloud.ports.storage import Storage

STUDY, SERIES, SOP = "1.2.840.1", "1.2.840.1.2", "1.2.840.1.2.3"


def stored(storage: Storage, relpath: str, data: bytes) -> Path:
    """Write `data` through a temp file and commit it; returns the temp path used."""
    handle, temp = storage.new_temp()
    with handle:
        handle.write(data)
    storage.commit_instance(temp, relpath)
    return temp


def test_instance_relpath_is_tenant_study_series_sop(storage: Storage) -> None:
    assert storage.instance_relpath("default", STUDY, SERIES, SOP) == f"default/{STUDY}/{SERIES}/{SOP}.dcm"


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
def test_instance_relpath_refuses_anything_but_valid_ids(
    storage: Storage, tenant: str, study: str, series: str, sop: str
) -> None:
    with pytest.raises(InvalidInput):
        storage.instance_relpath(tenant, study, series, sop)


def test_committed_instance_is_at_its_path(storage: Storage) -> None:
    relpath = storage.instance_relpath("default", STUDY, SERIES, SOP)
    stored(storage, relpath, b"DICM data")
    assert storage.path(relpath).read_bytes() == b"DICM data"


def test_commit_leaves_no_temp_file(storage: Storage) -> None:
    temp = stored(storage, storage.instance_relpath("default", STUDY, SERIES, SOP), b"x")
    assert not temp.exists()
    assert list(temp.parent.iterdir()) == []


def test_commit_replaces_an_existing_file_atomically(storage: Storage) -> None:
    relpath = storage.instance_relpath("default", STUDY, SERIES, SOP)
    contents = [b"A" * 300_000, b"B" * 500_000]
    stored(storage, relpath, contents[0])
    seen: set[bytes] = set()
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            seen.add(storage.path(relpath).read_bytes())

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(40):
        stored(storage, relpath, contents[i % 2])
    done.set()
    thread.join()
    assert seen <= set(contents)
    assert storage.path(relpath).read_bytes() == contents[1]


def test_failed_commit_raises_storage_failure_and_leaves_no_temp_file(storage: Storage) -> None:
    relpath = storage.instance_relpath("default", STUDY, SERIES, SOP)
    occupied = storage.path(relpath)
    (occupied / "in-the-way").mkdir(parents=True)
    handle, temp = storage.new_temp()
    handle.close()
    with pytest.raises(StorageFailure):
        storage.commit_instance(temp, relpath)
    assert not temp.exists()


def test_commit_to_a_refused_path_leaves_no_temp_file(storage: Storage) -> None:
    handle, temp = storage.new_temp()
    handle.close()
    with pytest.raises(InvalidInput):
        storage.commit_instance(temp, "../outside.dcm")
    assert not temp.exists()


@pytest.mark.parametrize("relpath", ["../x", "/etc/passwd", "a/../../x", "a/./b", "a//b", "", "a/b\\..\\c", "a/b\x00"])
def test_path_refuses_escapes(storage: Storage, relpath: str) -> None:
    with pytest.raises(InvalidInput):
        storage.path(relpath)


def test_path_refuses_a_symlink_leading_out_of_the_root(storage: Storage, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    link = storage.path("default")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside)
    with pytest.raises(InvalidInput):
        storage.path(f"default/{STUDY}/x.dcm")


def test_remove_instance_prunes_folders_left_empty(storage: Storage) -> None:
    first = storage.instance_relpath("default", STUDY, SERIES, SOP)
    second = storage.instance_relpath("default", STUDY, "1.2.9", "1.2.9.1")
    stored(storage, first, b"1")
    stored(storage, second, b"2")
    storage.remove_instance(first)
    assert not storage.path(first).exists()
    assert not storage.path(f"default/{STUDY}/{SERIES}").exists()
    assert storage.path(second).read_bytes() == b"2"
    storage.remove_instance(second)
    assert not storage.path("default").exists()
    assert storage.path("default").parent.is_dir()


def test_remove_of_a_missing_instance_is_fine(storage: Storage) -> None:
    storage.remove_instance(storage.instance_relpath("default", STUDY, SERIES, SOP))


def test_a_derived_copy_sits_beside_its_original(storage: Storage) -> None:
    relpath = storage.instance_relpath("default", STUDY, SERIES, SOP)
    assert (
        storage.derived_relpath(relpath, "1.2.840.10008.1.2.1")
        == f"default/{STUDY}/{SERIES}/{SOP}_1.2.840.10008.1.2.1.dcm"
    )


@pytest.mark.parametrize("syntax", ["../x", "1.2/3", "", "1.2.a"])
def test_derived_relpath_refuses_an_invalid_syntax(storage: Storage, syntax: str) -> None:
    with pytest.raises(InvalidInput):
        storage.derived_relpath(storage.instance_relpath("default", STUDY, SERIES, SOP), syntax)


def test_replacing_or_removing_an_original_removes_its_derived_copies(storage: Storage) -> None:
    relpath = storage.instance_relpath("default", STUDY, SERIES, SOP)
    derived = storage.derived_relpath(relpath, "1.2.840.10008.1.2.1")
    stored(storage, relpath, b"original")
    stored(storage, derived, b"derived")
    assert storage.path(relpath).read_bytes() == b"original"
    stored(storage, relpath, b"replacement")
    assert not storage.path(derived).exists()
    stored(storage, derived, b"derived again")
    storage.remove_instance(relpath)
    assert not storage.path(derived).exists()
    assert not storage.path(relpath).parent.exists()


def test_documents_round_trip(storage: Storage) -> None:
    key = f"default/{STUDY}/{SERIES}.json"
    storage.write_document(key, b'{"v": 1}')
    assert storage.read_document(key) == b'{"v": 1}'
    storage.write_document(key, b'{"v": 2}')
    assert storage.read_document(key) == b'{"v": 2}'
    storage.delete_document(key)
    assert storage.read_document(key) is None
    storage.delete_document(key)


def test_unknown_document_reads_as_none(storage: Storage) -> None:
    assert storage.read_document("default/none.json") is None


@pytest.mark.parametrize("key", ["../x.json", "/abs.json", "a/../../x.json", "a//b.json", "a/b c.json", ""])
def test_document_keys_refuse_escapes(storage: Storage, key: str) -> None:
    with pytest.raises(InvalidInput):
        storage.write_document(key, b"x")
    with pytest.raises(InvalidInput):
        storage.read_document(key)
    with pytest.raises(InvalidInput):
        storage.delete_document(key)


# The filesystem adapter's own promises, beyond the port.


def test_fs_storage_sweep_removes_only_old_temp_files(tmp_path: Path) -> None:
    storage = FsStorage(root=tmp_path / "s", metadata_root=tmp_path / "m", temp_dir=tmp_path / "t")
    old_handle, old = storage.new_temp()
    new_handle, new = storage.new_temp()
    old_handle.close()
    new_handle.close()
    foreign = tmp_path / "t" / "not-ours"
    foreign.write_bytes(b"")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    os.utime(foreign, (an_hour_ago, an_hour_ago))
    assert storage.sweep_temp(older_than_seconds=600) == 1
    assert (old.exists(), new.exists(), foreign.exists()) == (False, True, True)


def test_fs_storage_refuses_to_commit_a_file_that_is_not_its_temp(tmp_path: Path) -> None:
    storage = FsStorage(root=tmp_path / "s", metadata_root=tmp_path / "m", temp_dir=tmp_path / "t")
    precious = tmp_path / "precious.dcm"
    precious.write_bytes(b"keep me")
    with pytest.raises(InvalidInput):
        storage.commit_instance(precious, "default/1.2/1.2.3/1.2.3.4.dcm")
    assert precious.read_bytes() == b"keep me"


def test_ping_answers_while_every_folder_is_writable(storage: Storage) -> None:
    storage.ping()


def test_ping_of_fs_storage_whose_temp_folder_is_gone_raises_service_unavailable(tmp_path: Path) -> None:
    storage = FsStorage(root=tmp_path / "storage", metadata_root=tmp_path / "metadata", temp_dir=tmp_path / "tmp")
    (tmp_path / "tmp").rmdir()
    with pytest.raises(ServiceUnavailable):
        storage.ping()
