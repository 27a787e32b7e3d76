"""The storage port's promises, run against every adapter (conftest.py `storage_target`): keys in, bytes out,
atomic durable writes, one rule for a missing object, no key leaving the root, no scratch file left behind.

Only the port is used above the line that starts the filesystem adapter's own promises; the S3 adapter runs
them on SeaweedFS's S3 gateway (the session's `weed server`), and its own promises (parts, big ranged reads,
credentials, timeouts) follow the filesystem adapter's.
"""

from __future__ import annotations

import dataclasses
import io
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import obstore
import pytest

from conftest import CONTRACT_BUCKET, StorageTarget, s3_storage
from dicomcloud.adapters.fs_storage import FsStorage
from dicomcloud.adapters.s3_storage import S3Storage
from dicomcloud.config import S3Settings
from dicomcloud.errors import InvalidInput, NotFound, ServiceUnavailable, StorageFailure
from dicomcloud.ports.storage import ObjectMissing, Storage
from dicomcloud.stack.seaweedfs import SeaweedFS
from dicomcloud.stack.servers import free_port

SERIES = "default/1.2.840.1/1.2.840.1.2/"
KEY = SERIES + "1.2.840.1.2.3.dcm"
OTHER = SERIES + "1.2.840.1.2.4.dcm"


def staged(storage: Storage, data: bytes) -> BinaryIO:
    stream = storage.stage()
    stream.write(data)
    return stream


def put(storage: Storage, key: str, data: bytes) -> None:
    storage.commit([(staged(storage, data), key)])


# -- stage, commit, discard ------------------------------------------------------------------------


def test_a_committed_object_reads_back_whole_as_a_stream_by_ranges_and_sized(storage: Storage) -> None:
    data = bytes(range(256)) * 40
    put(storage, KEY, data)
    assert storage.read(KEY) == data
    with storage.open(KEY) as stream:
        assert stream.read() == data
    assert storage.read_ranges(KEY, [(0, 4), (1000, 10)]) == [data[:4], data[1000:1010]]
    assert storage.size(KEY) == len(data)
    assert storage.list(SERIES) == [KEY]


def test_stage_gives_an_empty_scratch_file_open_for_writing_and_reading(storage: Storage) -> None:
    stream = storage.stage()
    assert stream.read() == b""
    stream.write(b"DICM part")
    stream.seek(0)
    assert stream.read() == b"DICM part"
    storage.discard(stream)
    assert storage.list("default/") == []


def test_commit_places_a_batch_of_objects_each_under_its_key(storage: Storage) -> None:
    keys = [SERIES + f"1.2.840.1.2.{n}.dcm" for n in range(5)]
    storage.commit([(staged(storage, f"object {n}".encode()), key) for n, key in enumerate(keys)])
    assert [storage.read(key) for key in keys] == [f"object {n}".encode() for n in range(5)]
    assert storage.list(SERIES) == sorted(keys)


def test_commit_writes_the_derivable_objects_of_the_batch_beside_the_staged_ones(storage_target: StorageTarget) -> None:
    storage = storage_target.storage
    entries = [(SERIES + f"1.2.840.1.2.{n}.json", f"entry {n}".encode()) for n in range(3)]
    storage.commit([(staged(storage, b"original"), KEY)], entries)
    assert storage.read(KEY) == b"original"
    assert [storage.read(key) for key, _ in entries] == [data for _, data in entries]
    storage.commit([], [(entries[0][0], b"replaced")])
    assert storage.read(entries[0][0]) == b"replaced"
    assert storage_target.scratch_files() == []


def test_a_derivable_object_with_a_refused_key_fails_the_batch(storage_target: StorageTarget) -> None:
    storage = storage_target.storage
    with pytest.raises(InvalidInput):
        storage.commit([(staged(storage, b"good"), KEY)], [("../outside.json", b"x")])
    assert storage_target.scratch_files() == []


def test_commit_consumes_the_staged_files_and_leaves_no_scratch_file(storage_target: StorageTarget) -> None:
    storage = storage_target.storage
    streams = [staged(storage, b"one"), staged(storage, b"two")]
    assert len(storage_target.scratch_files()) == 2
    storage.commit([(streams[0], KEY), (streams[1], OTHER)])
    assert storage_target.scratch_files() == []
    for stream in streams:
        storage.discard(stream)  # a no-op once consumed: the objects stay
    assert (storage.read(KEY), storage.read(OTHER)) == (b"one", b"two")


def test_commit_copies_an_open_file_that_was_not_staged_and_leaves_the_file_alone(
    storage_target: StorageTarget, tmp_path: Path
) -> None:
    storage = storage_target.storage
    outside = tmp_path / "received.dcm"
    outside.write_bytes(b"received elsewhere")
    with open(outside, "rb") as received:
        storage.commit([(received, KEY)])
    assert storage.read(KEY) == b"received elsewhere"
    assert outside.read_bytes() == b"received elsewhere"
    assert storage_target.scratch_files() == []


def test_discard_drops_a_staged_file(storage_target: StorageTarget) -> None:
    storage = storage_target.storage
    stream = staged(storage, b"not wanted")
    storage.discard(stream)
    storage.discard(stream)
    assert storage_target.scratch_files() == []
    assert storage.list("default/") == []


def _replace_by_commit(storage: Storage, key: str, data: bytes) -> None:
    put(storage, key, data)


def _replace_by_write(storage: Storage, key: str, data: bytes) -> None:
    storage.write(key, data)


@pytest.mark.parametrize("replace", [_replace_by_commit, _replace_by_write], ids=["commit", "write"])
def test_a_reader_sees_the_old_object_or_the_new_one_never_a_mix(
    storage_target: StorageTarget, replace: Callable[[Storage, str, bytes], None]
) -> None:
    storage = storage_target.storage
    contents = [b"A" * 300_000, b"B" * 500_000]
    replace(storage, KEY, contents[0])
    seen: set[bytes] = set()
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            seen.add(storage.read(KEY))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(40):
            replace(storage, KEY, contents[i % 2])
    finally:
        done.set()
        thread.join()
    assert seen <= set(contents)
    assert storage.read(KEY) == contents[1]
    assert storage_target.scratch_files() == []


# -- write ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("durable", [True, False])
def test_write_puts_a_small_object_whole_and_replaces_it(storage_target: StorageTarget, durable: bool) -> None:
    storage = storage_target.storage
    key = SERIES + "series.json"
    storage.write(key, b'{"v": 1}', durable=durable)
    assert storage.read(key) == b'{"v": 1}'
    storage.write(key, b'{"v": 2}', durable=durable)
    assert (storage.read(key), storage.size(key)) == (b'{"v": 2}', 8)
    assert storage_target.scratch_files() == []


def test_an_empty_object_is_an_object(storage: Storage) -> None:
    storage.write(KEY, b"")
    assert (storage.read(KEY), storage.size(KEY), storage.list(SERIES)) == (b"", 0, [KEY])


# -- reads ----------------------------------------------------------------------------------------


def test_open_gives_a_seekable_stream_that_fills_a_buffer(storage: Storage) -> None:
    data = bytes(range(200))
    put(storage, KEY, data)
    with storage.open(KEY) as stream:
        assert stream.seek(0, os.SEEK_END) == len(data)
        stream.seek(100)
        buffer = bytearray(10)
        assert stream.readinto(buffer) == 10
        assert bytes(buffer) == data[100:110]
        stream.seek(5)
        assert stream.read(3) == data[5:8]


def test_read_ranges_returns_each_range_in_the_order_asked(storage: Storage) -> None:
    data = bytes(range(256))
    put(storage, KEY, data)
    ranges = [(200, 56), (0, 1), (10, 20), (15, 5), (100, 0)]
    assert storage.read_ranges(KEY, ranges) == [data[o : o + n] for o, n in ranges]
    assert storage.read_ranges(KEY, []) == []


def test_a_range_past_the_end_is_a_storage_failure(storage: Storage) -> None:
    put(storage, KEY, b"0123456789")
    with pytest.raises(StorageFailure):
        storage.read_ranges(KEY, [(5, 6)])
    with pytest.raises(StorageFailure):
        storage.read_ranges(KEY, [(20, 1)])


@pytest.mark.parametrize(
    "missing",
    [KEY, "default/1.2.840.1", SERIES + "1.2.840.1.2.4.dcm/x"],
    ids=["never-stored", "a-prefix-of-stored-keys", "beneath-a-stored-object"],
)
def test_any_read_of_a_missing_object_raises_object_missing_its_size_is_none_and_its_delete_succeeds(
    storage: Storage, missing: str
) -> None:
    put(storage, OTHER, b"another object")
    with pytest.raises(ObjectMissing):
        storage.open(missing)
    with pytest.raises(ObjectMissing):
        storage.read(missing)
    with pytest.raises(ObjectMissing):
        storage.read_ranges(missing, [(0, 1)])
    assert storage.size(missing) is None
    storage.delete([missing])  # deleting what is not there is a success
    assert storage.read(OTHER) == b"another object"
    assert issubclass(ObjectMissing, NotFound)


def test_a_deleted_object_is_missing(storage: Storage) -> None:
    put(storage, KEY, b"x")
    storage.delete([KEY])
    with pytest.raises(ObjectMissing):
        storage.read(KEY)
    assert storage.size(KEY) is None


def test_list_returns_every_key_starting_with_the_prefix_sorted(storage: Storage) -> None:
    sop = SERIES + "1.2.840.1.2.3"
    keys = [
        SERIES + "series.json",
        sop + "_1.2.840.10008.1.2.1.dcm",
        sop + ".json",
        sop + ".dcm",
        sop + "_1.2.840.10008.1.2.4.50.dcm",
        SERIES + "1.2.840.1.2.30.dcm",
        "default/1.2.840.1/1.2.840.1.9/1.2.840.1.9.1.dcm",
        "default/1.2.840.10/1.2.840.10.1/1.2.840.10.1.1.dcm",
        "other/1.2.840.1/1.2.840.1.2/1.2.840.1.2.3.dcm",
    ]
    for key in keys:
        storage.write(key, b"x")
    assert storage.list(SERIES) == sorted(keys[:6])
    assert storage.list(sop + "_") == [sop + "_1.2.840.10008.1.2.1.dcm", sop + "_1.2.840.10008.1.2.4.50.dcm"]
    assert storage.list(sop) == [
        sop + ".dcm",
        sop + ".json",
        SERIES + "1.2.840.1.2.30.dcm",
        sop + "_1.2.840.10008.1.2.1.dcm",
        sop + "_1.2.840.10008.1.2.4.50.dcm",
    ]
    assert storage.list("default/1.2.840.1/") == sorted(keys[:7])
    assert storage.list("default/1.2.840.1") == sorted(keys[:8])
    assert storage.list("default/9.9/") == [] and storage.list(SERIES + "nothing") == []


# -- delete ---------------------------------------------------------------------------------------


def test_delete_removes_the_objects_named_and_missing_ones_are_fine(storage: Storage) -> None:
    put(storage, KEY, b"1")
    put(storage, OTHER, b"2")
    storage.delete([KEY, SERIES + "never-stored.dcm"])
    storage.delete([KEY])
    storage.delete([])
    assert storage.list(SERIES) == [OTHER]
    assert storage.read(OTHER) == b"2"


# -- keys -----------------------------------------------------------------------------------------

REFUSED_KEYS = [
    "../x",
    "/etc/passwd",
    "a/../../x",
    "a/./b",
    "a//b",
    "a/",
    "",
    ".",
    "..",
    "a/b\\..\\c",
    "a/b\x00",
    "a/b c",
    "a/b?c",
    "a/é",
]


@pytest.mark.parametrize("key", REFUSED_KEYS)
def test_a_key_that_could_escape_or_carries_odd_characters_is_refused_by_every_operation(
    storage: Storage, key: str
) -> None:
    operations: list[Callable[[], object]] = [
        lambda: storage.write(key, b"x"),
        lambda: storage.commit([(staged(storage, b"x"), key)]),
        lambda: storage.open(key),
        lambda: storage.read(key),
        lambda: storage.read_ranges(key, [(0, 1)]),
        lambda: storage.size(key),
        lambda: storage.delete([key]),
    ]
    for operation in operations:
        with pytest.raises(InvalidInput):
            operation()
    assert storage.list("") == []


@pytest.mark.parametrize("prefix", ["../", "/etc/", "a/../../", "a//"])
def test_list_refuses_a_prefix_that_could_escape(storage: Storage, prefix: str) -> None:
    with pytest.raises(InvalidInput):
        storage.list(prefix)


def test_a_batch_with_a_refused_key_places_nothing_and_leaves_no_scratch_file(storage_target: StorageTarget) -> None:
    storage = storage_target.storage
    with pytest.raises(InvalidInput):
        storage.commit([(staged(storage, b"good"), KEY), (staged(storage, b"bad"), "../outside.dcm")])
    assert storage.size(KEY) is None
    assert storage_target.scratch_files() == []


def test_ping_answers_while_the_storage_can_be_written(storage: Storage) -> None:
    storage.ping()


# -- the filesystem adapter's own promises, beyond the port ---------------------------------------


@pytest.fixture
def fs(tmp_path: Path) -> FsStorage:
    return FsStorage(root=tmp_path / "storage", staging=tmp_path / "tmp")


def test_fs_storage_keeps_the_object_of_key_a_b_c_in_the_file_root_a_b_c(fs: FsStorage, tmp_path: Path) -> None:
    put(fs, KEY, b"DICM data")
    assert (tmp_path / "storage" / KEY).read_bytes() == b"DICM data"


def test_fs_storage_refuses_a_key_through_a_symlink_leading_out_of_its_root(fs: FsStorage, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.dcm").write_bytes(b"secret")
    (tmp_path / "storage" / "default").symlink_to(outside)
    for operation in (
        lambda: fs.read("default/secret.dcm"),
        lambda: fs.size("default/secret.dcm"),
        lambda: fs.write("default/x.dcm", b"x"),
        lambda: fs.commit([(staged(fs, b"x"), "default/x.dcm")]),
        lambda: fs.delete(["default/secret.dcm"]),
        lambda: fs.list("default/"),
    ):
        with pytest.raises(InvalidInput):
            operation()
    assert sorted(p.name for p in outside.iterdir()) == ["secret.dcm"]


def test_fs_storage_delete_prunes_folders_left_empty_but_never_the_root(fs: FsStorage, tmp_path: Path) -> None:
    second = "default/1.2.840.1/1.2.9/1.2.9.1.dcm"
    put(fs, KEY, b"1")
    put(fs, second, b"2")
    fs.delete([KEY])
    assert not (tmp_path / "storage" / SERIES).exists()
    assert fs.read(second) == b"2"
    fs.delete([second])
    assert list((tmp_path / "storage").iterdir()) == []


def test_fs_storage_failed_commit_is_a_storage_failure_and_leaves_no_scratch_file(
    fs: FsStorage, tmp_path: Path
) -> None:
    fs.write(KEY + "/in-the-way", b"a folder where the object should go")
    with pytest.raises(StorageFailure):
        put(fs, KEY, b"x")
    assert list((tmp_path / "tmp").iterdir()) == []


def test_fs_storage_sweep_staging_removes_only_files_older_than_asked(fs: FsStorage, tmp_path: Path) -> None:
    old, new = fs.stage(), fs.stage()
    old.close()
    new.close()
    received = tmp_path / "tmp" / "pynetdicom-received"  # a dataset a crashed receiver left behind
    received.write_bytes(b"")
    folder = tmp_path / "tmp" / "a-folder"
    folder.mkdir()
    an_hour_ago = time.time() - 3600
    for path in (Path(old.name), received, folder):
        os.utime(path, (an_hour_ago, an_hour_ago))
    assert fs.sweep_staging(older_than_seconds=600) == 2
    assert (Path(old.name).exists(), received.exists(), Path(new.name).exists(), folder.is_dir()) == (
        False,
        False,
        True,
        True,
    )


@pytest.mark.parametrize("folder", ["tmp", "storage"])
def test_fs_storage_ping_raises_service_unavailable_when_a_folder_is_gone(
    fs: FsStorage, tmp_path: Path, folder: str
) -> None:
    (tmp_path / folder).rmdir()
    with pytest.raises(ServiceUnavailable):
        fs.ping()


def test_fs_storage_moves_a_file_received_into_its_staging_folder_instead_of_copying_it(
    fs: FsStorage, tmp_path: Path
) -> None:
    """pynetdicom writes a C-STORE's dataset to the process's temp folder, which the SCP points at staging:
    storing it is a rename, so the received bytes are written once."""
    received = fs.staging / "tmpreceived.dcm"
    received.write_bytes(b"received dataset")
    inode = received.stat().st_ino
    with received.open("rb") as stream:
        fs.commit([(stream, "t/1.2/1.3/1.4.dcm")])
    assert not received.exists()
    assert (fs.root / "t/1.2/1.3/1.4.dcm").stat().st_ino == inode
    assert fs.read("t/1.2/1.3/1.4.dcm") == b"received dataset"


def test_fs_storage_never_reads_an_object_that_is_a_symlink(fs: FsStorage, tmp_path: Path) -> None:
    """A symlink placed where an object should be (which the archive never makes) is not followed out."""
    (tmp_path / "secret").write_bytes(b"secret")
    put(fs, "default/a.dcm", b"object")
    (tmp_path / "storage" / "default" / "b.dcm").symlink_to(tmp_path / "secret")
    for read in (lambda: fs.read("default/b.dcm"), lambda: fs.open("default/b.dcm").read()):
        with pytest.raises(StorageFailure):
            read()
    with pytest.raises(StorageFailure):
        fs.read_ranges("default/b.dcm", [(0, 6)])
    assert fs.size("default/b.dcm") is None
    assert fs.read("default/a.dcm") == b"object"


# -- the S3 adapter's own promises, beyond the port (on the session's SeaweedFS) ------------------


@pytest.fixture
def s3(request: pytest.FixtureRequest, tmp_path: Path) -> S3Storage:
    return s3_storage(request, tmp_path / "tmp")


def test_s3_storage_uploads_a_large_object_in_parts_and_reads_it_back_whole(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    storage = s3_storage(request, tmp_path / "tmp", multipart_threshold=5 * 1024**2, multipart_chunk=5 * 1024**2)
    data = os.urandom(13 * 1024**2)
    put(storage, KEY, data)
    etag = obstore.head(storage._store, KEY)["e_tag"] or ""
    assert etag.strip('"').endswith("-3"), f"not a 3-part multipart upload: ETag {etag}"
    assert storage.read(KEY) == data
    assert storage.size(KEY) == len(data)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_s3_storage_reads_ranges_and_a_stream_of_a_big_object_without_reading_all_of_it(s3: S3Storage) -> None:
    data = os.urandom(24 * 1024**2)
    put(s3, KEY, data)
    ranges = [(len(data) - 100, 100), (0, 132), (12 * 1024**2, 64 * 1024), (12 * 1024**2 + 70_000, 10)]
    assert s3.read_ranges(KEY, ranges) == [data[o : o + n] for o, n in ranges]
    with s3.open(KEY) as stream:
        assert stream.seek(0, os.SEEK_END) == len(data)
        stream.seek(20 * 1024**2)
        buffer = bytearray(4 * 1024**2)
        assert stream.readinto(buffer) == len(buffer)
        assert buffer == data[20 * 1024**2 : 24 * 1024**2]
        stream.seek(7)
        assert stream.read(5) == data[7:12]


def test_s3_storage_stream_fails_rather_than_mixing_an_object_replaced_while_it_is_read(s3: S3Storage) -> None:
    put(s3, KEY, b"A" * (3 * 1024**2))
    with s3.open(KEY) as stream:
        assert stream.read(10) == b"A" * 10
        s3.write(KEY, b"B" * (3 * 1024**2))
        stream.seek(2 * 1024**2)
        with pytest.raises(StorageFailure, match="replaced"):
            stream.read(10)


def test_s3_storage_uploads_a_file_received_into_its_scratch_folder_and_removes_it(s3: S3Storage) -> None:
    """pynetdicom writes a C-STORE's dataset to the process's temp folder, which the SCP points at the scratch
    folder: it is uploaded from there, not copied first, and gone once stored."""
    received = s3.staging / "tmpreceived.dcm"
    received.write_bytes(b"received dataset")
    with received.open("rb") as stream:
        s3.commit([(stream, "t/1.2/1.3/1.4.dcm")])
    assert not received.exists()
    assert s3.read("t/1.2/1.3/1.4.dcm") == b"received dataset"


def test_s3_storage_uploads_a_stream_without_a_file_through_a_scratch_copy_it_then_removes(s3: S3Storage) -> None:
    s3.commit([(io.BytesIO(b"in memory"), KEY)])
    assert s3.read(KEY) == b"in memory"
    assert list(s3.staging.iterdir()) == []


def test_s3_storage_keeps_each_key_prefix_to_itself(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    first, second = s3_storage(request, tmp_path / "a"), s3_storage(request, tmp_path / "b")
    put(first, KEY, b"first")
    put(second, KEY, b"second")
    assert (first.read(KEY), second.read(KEY)) == (b"first", b"second")
    assert first.list("") == second.list("") == [KEY]
    first.delete([KEY])
    assert (first.size(KEY), second.read(KEY)) == (None, b"second")


def test_s3_storage_refuses_wrong_credentials_with_a_clear_message(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    storage = s3_storage(request, tmp_path / "tmp", secret_access_key="not-the-secret")
    with pytest.raises(StorageFailure, match="SignatureDoesNotMatch") as refused:
        storage.verify()
    assert "not-the-secret" not in refused.value.message
    with pytest.raises(ServiceUnavailable):
        storage.ping()
    with pytest.raises(StorageFailure):
        storage.write(KEY, b"x")


def test_s3_storage_refuses_a_bucket_that_does_not_exist_and_names_the_command_that_creates_it(
    seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    storage = S3Storage(seaweedfs.settings("no-such-bucket"), tmp_path / "tmp")
    with pytest.raises(StorageFailure, match="dicomcloud init"):
        storage.verify()


def test_s3_storage_reads_credentials_from_an_aws_credentials_file(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    keys = seaweedfs.credentials
    file = tmp_path / "credentials"
    file.write_text(f"[archive]\naws_access_key_id = {keys.access_key}\naws_secret_access_key = {keys.secret_key}\n")
    settings = dataclasses.replace(
        seaweedfs.settings(CONTRACT_BUCKET, key_prefix="from-file"),
        access_key_id="",
        secret_access_key="",
        credentials_file=str(file),
        profile="archive",
    )
    storage = S3Storage(settings, tmp_path / "tmp")
    storage.verify()
    storage.write(KEY, b"x")
    assert storage.read(KEY) == b"x"


def test_s3_storage_fails_within_its_timeout_when_the_store_stops_answering_and_works_again_after(
    request: pytest.FixtureRequest, seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    storage = s3_storage(request, tmp_path / "tmp", timeout=2.0, max_retries=1)
    put(storage, KEY, b"before")
    (server,) = seaweedfs.servers.values()
    os.kill(server.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(StorageFailure):
            put(storage, OTHER, b"while stopped")
        with pytest.raises(StorageFailure):
            storage.read(KEY)
        with pytest.raises(ServiceUnavailable):
            storage.ping()
        assert time.monotonic() - started < 3 * 2 * 2.0 + 5
    finally:
        os.kill(server.pid, signal.SIGCONT)
    assert storage.read(KEY) == b"before"
    # A PUT that timed out may still be applied once the store answers again (S3 promises nothing either way),
    # and after a later PUT of its key: the store working again is shown on a key of its own.
    after = SERIES + "1.2.840.1.2.5.dcm"
    put(storage, after, b"after")
    assert storage.read(after) == b"after"
    assert list((tmp_path / "tmp").iterdir()) == []


def test_s3_storage_is_down_as_a_storage_failure_when_nothing_listens(tmp_path: Path) -> None:
    settings = S3Settings(
        endpoint=f"http://127.0.0.1:{free_port()}", bucket="b", access_key_id="k", secret_access_key="s", timeout=2
    )
    storage = S3Storage(settings, tmp_path / "tmp")
    storage.verify()  # a store that does not answer yet does not stop a service from starting
    with pytest.raises(StorageFailure):
        put(storage, KEY, b"x")
    with pytest.raises(ServiceUnavailable):
        storage.ping()
    assert list((tmp_path / "tmp").iterdir()) == []
