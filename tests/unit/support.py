"""Helpers the service tests share: a CT object with chosen UIDs, an archive on a temp folder, storing
through the archive's store, running the bus workers over what is pending, a bus that is down, a
storage that counts what is read from it, the wado-server on a real socket, and the HTTP workers of one
service as one client."""

from __future__ import annotations

import builtins
import copy
import dataclasses
import io
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file

from dicomcloud.archive.core import Archive
from dicomcloud.archive.keys import LAYOUT_MARKER
from dicomcloud.config import load_settings
from dicomcloud.dimse.scp import StoreSCP
from dicomcloud.errors import StorageFailure
from dicomcloud.events import StorageEvent
from dicomcloud.ports.bus import Bus, BusConsumer, Message, Record
from dicomcloud.ports.storage import ByteRange, Storage
from dicomcloud.service_workers import http_server
from dicomcloud.web.app import create_app
from dicomcloud.workers.loop import Batching, BusLoop, Handler


def ct_dataset(study: str, series: str, sop: str, pixel: int = 0) -> pydicom.Dataset:
    """pydicom's CT_small with our UIDs; `pixel` changes the content (and so the sha256), not the UIDs."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.PixelData = bytes([pixel]) * len(ds.PixelData)
    return ds


def write_ct(path: Path, study: str, series: str, sop: str, pixel: int = 0) -> Path:
    ct_dataset(study, series, sop, pixel).save_as(path, enforce_file_format=True)
    return path


def make_archive(data: Path, **sections: dict[str, Any]) -> Archive:
    """An archive on `data`, with settings sections overlaid, e.g. `storage={"duplicate_policy": "reject"}`."""
    storage = {"data_dir": str(data), **sections.pop("storage", {})}
    return Archive.from_settings(load_settings(overrides={"storage": storage, **sections}, environ={}))


@contextmanager
def running_scp(data: Path, ae_title: str, **dimse: Any) -> Iterator[StoreSCP]:
    """A DICOM SCP on a free loopback port over an archive on `data`, with `dimse` settings overlaid."""
    archive = make_archive(data, dimse={"host": "127.0.0.1", "port": 0, "ae_title": ae_title, **dimse})
    server = StoreSCP(archive)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        archive.close()


def make_workers(data: Path, count: int, **sections: dict[str, Any]) -> list[Archive]:
    """The archives of the `count` HTTP workers of one service (`http.workers`): one per worker process, each
    with its own connections, cache and parsed documents, on one data folder."""
    storage = {"data_dir": str(data), **sections.pop("storage", {})}
    http = {**sections.pop("http", {}), "workers": count}
    settings = load_settings(overrides={"storage": storage, "http": http, **sections}, environ={})
    return [Archive.from_settings(copy.deepcopy(settings)) for _ in range(count)]


class WorkerClient(TestClient):
    """The apps of several workers (`make_workers`) as one client: writes reach the first, reads the last, so
    every read after a write is answered by another worker than the write (with one worker, by the same)."""

    def __init__(self, archives: Sequence[Archive]) -> None:
        super().__init__(create_app(archives[0]), base_url="http://archive.test")
        many = len(archives) > 1
        self.reader = TestClient(create_app(archives[-1]), base_url="http://archive.test") if many else None

    def request(self, method: str, url: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if self.reader is not None and method.upper() in ("GET", "HEAD"):
            return self.reader.request(method, url, *args, **kwargs)
        return super().request(method, url, *args, **kwargs)

    def __enter__(self) -> WorkerClient:
        super().__enter__()
        if self.reader is not None:
            self.reader.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.reader is not None:
            self.reader.__exit__(*exc)
        super().__exit__(*exc)


def stored_keys(archive: Archive) -> list[str]:
    """Every object in the archive's storage but the record of its key layout (archive/keys.py LAYOUT_MARKER)."""
    return [key for key in archive.runtime.storage.list("") if key != LAYOUT_MARKER]


def staged(archive: Archive, source: Path) -> BinaryIO:
    """A copy of the file at `source`, staged in the archive's storage as STOW-RS stages a part."""
    stream = archive.runtime.storage.stage()
    stream.write(source.read_bytes())
    stream.flush()
    return stream


def store(archive: Archive, source: Path, source_name: str = "import", **options: str) -> StorageEvent:
    return archive.store.store(staged(archive, source), tenant_id="default", source=source_name, **options)


def run_pending(archive: Archive, handler: Handler) -> None:
    """Run a bus worker once over everything pending for it, as its service would, and commit."""
    loop = BusLoop(archive.runtime.bus, handler, Batching(10_000), 0.1)
    consumer = archive.runtime.bus.subscribe(handler.group, list(handler.topics))
    try:
        records = consumer.poll(10_000, 0.1)
        if records:
            loop.process(records, threading.Event())
            consumer.commit(records)
    finally:
        consumer.close()


class FailingBus:
    """Accepts subscriptions, refuses every publish: the bus is down."""

    def __init__(self, archive: Archive) -> None:
        self.inner = archive.runtime.bus

    def publish(self, messages: Sequence[Message]) -> None:
        raise StorageFailure("bus unavailable")

    def subscribe(self, group: str, topics: Sequence[str]) -> BusConsumer:
        return self.inner.subscribe(group, topics)

    def ping(self) -> None:
        self.inner.ping()

    def close(self) -> None:
        self.inner.close()


class CountingStorage:
    """A Storage that delegates every port method and records each read of an object (open, read,
    read_ranges) as (method, key). Several wrappers may share one record."""

    def __init__(self, inner: Storage, reads: builtins.list[tuple[str, str]] | None = None) -> None:
        self.inner = inner
        self.reads: builtins.list[tuple[str, str]] = [] if reads is None else reads
        self.remote = inner.remote

    def stage(self) -> BinaryIO:
        return self.inner.stage()

    def commit(
        self, placements: Sequence[tuple[BinaryIO, str]], derivable: Sequence[tuple[str, bytes]] = ()
    ) -> None:
        self.inner.commit(placements, derivable)

    def discard(self, staged: BinaryIO) -> None:
        self.inner.discard(staged)

    def write(self, key: str, data: bytes, *, durable: bool = True) -> None:
        self.inner.write(key, data, durable=durable)

    def open(self, key: str) -> io.BufferedReader:
        self.reads.append(("open", key))
        return self.inner.open(key)

    def read(self, key: str) -> bytes:
        self.reads.append(("read", key))
        return self.inner.read(key)

    def read_ranges(self, key: str, ranges: Sequence[ByteRange]) -> builtins.list[bytes]:
        self.reads.append(("read_ranges", key))
        return self.inner.read_ranges(key, ranges)

    def size(self, key: str) -> int | None:
        return self.inner.size(key)

    def list(self, prefix: str) -> builtins.list[str]:
        return self.inner.list(prefix)

    def delete(self, keys: Sequence[str]) -> None:
        self.inner.delete(keys)

    def ping(self) -> None:
        self.inner.ping()

    def keys_read(self) -> builtins.list[str]:
        return [key for _, key in self.reads]

    def originals_read(self) -> builtins.list[str]:
        """Originals and derived copies (`*.dcm`) opened or read."""
        return [key for key in self.keys_read() if key.endswith(".dcm")]


def counted(archive: Archive, reads: list[tuple[str, str]] | None = None) -> tuple[Archive, CountingStorage]:
    """An archive on the same adapters whose storage counts reads."""
    storage = CountingStorage(archive.runtime.storage, reads)
    return Archive(dataclasses.replace(archive.runtime, storage=storage)), storage


class JournalingConsumer:
    """A subscription that records its commits; the first `commit_failures` commits fail."""

    def __init__(self, inner: BusConsumer, journal: list[str], commit_failures: int) -> None:
        self.inner, self.journal, self.commit_failures = inner, journal, commit_failures

    def poll(self, max_records: int, timeout: float) -> list[Record]:
        return self.inner.poll(max_records, timeout)

    def commit(self, records: Sequence[Record]) -> None:
        if self.commit_failures > 0:
            self.commit_failures -= 1
            self.journal.append("commit failed")
            raise StorageFailure("commit refused")
        self.inner.commit(records)
        self.journal.append("commit")

    def lag(self) -> int:
        return self.inner.lag()

    def close(self) -> None:
        self.inner.close()


class JournalingBus:
    """A real bus, recording publishes, subscribes and commits in `journal`; the first publishes,
    subscribes and commits can be made to fail (a publish as an adapter's own error would)."""

    def __init__(
        self,
        inner: Bus,
        journal: list[str],
        *,
        publish_failures: int = 0,
        subscribe_failures: int = 0,
        commit_failures: int = 0,
    ) -> None:
        self.inner, self.journal = inner, journal
        self.publish_failures = publish_failures
        self.subscribe_failures, self.commit_failures = subscribe_failures, commit_failures

    def publish(self, messages: Sequence[Message]) -> None:
        if self.publish_failures > 0:
            self.publish_failures -= 1
            self.journal.append("publish failed")
            raise RuntimeError("broker gone")
        self.inner.publish(messages)
        self.journal.append("publish")

    def subscribe(self, group: str, topics: Sequence[str]) -> BusConsumer:
        if self.subscribe_failures > 0:
            self.subscribe_failures -= 1
            self.journal.append("subscribe failed")
            raise StorageFailure("bus unavailable")
        self.journal.append("subscribe")
        failures, self.commit_failures = self.commit_failures, 0
        return JournalingConsumer(self.inner.subscribe(group, topics), self.journal, failures)

    def ping(self) -> None:
        self.inner.ping()

    def close(self) -> None:
        self.inner.close()


class Serving:
    """The archive's wado-server (uvicorn with its HTTP limits) on a free loopback port, in a thread."""

    def __init__(self, archive: Archive) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        archive.settings.http.host, archive.settings.http.port = "127.0.0.1", self.port
        self.server = http_server(archive)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Serving:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def truncated_ct(path: Path, study: str, series: str, sop: str, missing: int = 62) -> Path:
    """A CT Part 10 file whose last `missing` bytes (of its Pixel Data) are cut off, as a broken copy leaves it."""
    ds = ct_dataset(study, series, sop)
    del ds[0xFFFCFFFC]  # CT_small's trailing padding: Pixel Data is then the last element
    ds.save_as(path, enforce_file_format=True)
    path.write_bytes(path.read_bytes()[:-missing])
    return path
