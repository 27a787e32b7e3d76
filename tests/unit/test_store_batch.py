"""Store.store_many: a batch costs one bus publish and one index transaction; each object keeps its own outcome."""

from __future__ import annotations

import dataclasses
import hashlib
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import pydicom
import pytest
import support
from pydicom.data import get_testdata_file
from support import FailingBus

from dicomcloud.archive.core import Archive
from dicomcloud.archive.store import Refused
from dicomcloud.errors import DuplicateInstance, InvalidInput, StorageFailure
from dicomcloud.events import STORAGE_QUEUE, StorageEvent
from dicomcloud.ports.bus import BusConsumer, Message

STUDY, SERIES = "1.2.826.0.1.1", "1.2.826.0.1.1.1"


class CountingBus:
    """Passes publishes through, remembering each call's messages."""

    def __init__(self, archive: Archive) -> None:
        self.inner = archive.runtime.bus
        self.calls: list[list[Message]] = []

    def publish(self, messages: Sequence[Message]) -> None:
        self.calls.append(list(messages))
        self.inner.publish(messages)

    def subscribe(self, group: str, topics: Sequence[str]) -> BusConsumer:
        return self.inner.subscribe(group, topics)

    def ping(self) -> None:
        self.inner.ping()

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    archive = support.make_archive(tmp_path / "data", storage={"duplicate_policy": "reject"})
    yield archive
    archive.close()


def sources(tmp_path: Path, sops: Sequence[str], pixel: int = 0) -> list[Path]:
    return [support.write_ct(tmp_path / f"{n}-{pixel}.dcm", STUDY, SERIES, sop, pixel) for n, sop in enumerate(sops)]


def staged(archive: Archive, tmp_path: Path, sops: Sequence[str], pixel: int = 0) -> list[BinaryIO]:
    return [support.staged(archive, path) for path in sources(tmp_path, sops, pixel)]


def junk(archive: Archive) -> BinaryIO:
    stream = archive.runtime.storage.stage()
    stream.write(b"not DICOM")
    stream.flush()
    return stream


def store_many(archive: Archive, streams: Sequence[BinaryIO]) -> list[StorageEvent | Refused]:
    return archive.store.store_many(streams, tenant_id="default", source="stow")


def staging(archive: Archive) -> list[Path]:
    return list((archive.settings.data_path / "tmp").iterdir())


def test_a_batch_is_announced_in_one_publish_with_every_event_and_indexed_on_return(
    archive: Archive, tmp_path: Path
) -> None:
    bus = CountingBus(archive)
    counted = Archive(dataclasses.replace(archive.runtime, bus=bus))
    sops = [f"{SERIES}.{n}" for n in range(1, 6)]
    outcomes = store_many(counted, staged(archive, tmp_path, sops))
    assert [o.sop_instance_uid for o in outcomes if isinstance(o, StorageEvent)] == sops
    assert len(bus.calls) == 1
    announced = [StorageEvent.from_bytes(m.value).sop_instance_uid for m in bus.calls[0] if m.topic == STORAGE_QUEUE]
    assert announced == sops
    for outcome in outcomes:
        assert isinstance(outcome, StorageEvent)
        assert archive.runtime.storage.size(outcome.file_path) == outcome.file_size
    assert [i.sop_instance_uid for i in archive.runtime.index.list_instances("default", STUDY, SERIES)] == sops
    assert staging(archive) == []


def test_a_refused_object_keeps_its_place_and_the_others_are_stored(archive: Archive, tmp_path: Path) -> None:
    first, last = staged(archive, tmp_path, [f"{SERIES}.1", f"{SERIES}.2"])
    outcomes = store_many(archive, [first, junk(archive), last])
    assert isinstance(outcomes[0], StorageEvent) and isinstance(outcomes[2], StorageEvent)
    assert isinstance(outcomes[1], Refused) and isinstance(outcomes[1].error, InvalidInput)
    assert outcomes[1].identity.sop_instance_uid is None
    assert len(archive.runtime.index.list_instances("default", STUDY, SERIES)) == 2
    assert staging(archive) == []


def test_a_uid_sent_twice_in_one_batch_meets_its_first_copy(archive: Archive, tmp_path: Path) -> None:
    sop = f"{SERIES}.1"
    (first,) = staged(archive, tmp_path, [sop], pixel=1)
    (other,) = staged(archive, tmp_path, [sop], pixel=2)
    outcomes = store_many(archive, [first, other])
    assert isinstance(outcomes[0], StorageEvent)
    refused = outcomes[1]
    assert isinstance(refused, Refused) and isinstance(refused.error, DuplicateInstance)
    assert refused.identity.sop_instance_uid == sop
    stored = archive.runtime.storage.read(outcomes[0].file_path)
    assert hashlib.sha256(stored).hexdigest() == outcomes[0].sha256
    indexed = archive.runtime.index.get_instance("default", sop)
    assert indexed is not None and indexed.sha256 == outcomes[0].sha256
    assert staging(archive) == []


def test_a_bus_failure_refuses_the_whole_batch_and_leaves_no_object_and_no_index_row(
    archive: Archive, tmp_path: Path
) -> None:
    broken = Archive(dataclasses.replace(archive.runtime, bus=FailingBus(archive)))
    outcomes = store_many(broken, staged(archive, tmp_path, [f"{SERIES}.1", f"{SERIES}.2"]))
    assert all(isinstance(o, Refused) and isinstance(o.error, StorageFailure) for o in outcomes)
    assert support.stored_keys(archive) == []
    assert archive.runtime.index.list_instances("default", STUDY) == []
    assert staging(archive) == []


def test_a_received_file_outside_the_staging_folder_is_copied_and_left_in_place(
    archive: Archive, tmp_path: Path
) -> None:
    """A C-STORE dataset pynetdicom wrote elsewhere is stored from a copy: the store never removes a file
    it did not stage, stored or refused."""
    precious = support.write_ct(tmp_path / "precious.dcm", STUDY, SERIES, f"{SERIES}.1")
    unreadable = tmp_path / "unreadable.dcm"
    unreadable.write_bytes(b"keep me")
    data = precious.read_bytes()
    with precious.open("rb") as good, unreadable.open("rb") as bad:
        outcomes = store_many(archive, [good, bad])
    assert isinstance(outcomes[0], StorageEvent) and isinstance(outcomes[1], Refused)
    assert archive.runtime.storage.read(outcomes[0].file_path) == data
    assert precious.read_bytes() == data
    assert unreadable.read_bytes() == b"keep me"
    assert staging(archive) == []


@pytest.mark.parametrize(
    ("name", "syntax"),
    [
        ("rtstruct.dcm", "1.2.840.10008.1.2"),
        ("ExplVR_LitEndNoMeta.dcm", "1.2.840.10008.1.2.1"),
        ("ExplVR_BigEndNoMeta.dcm", "1.2.840.10008.1.2.2"),
    ],
)
def test_a_bare_dataset_is_stored_behind_the_part10_header_it_lacks(archive: Archive, name: str, syntax: str) -> None:
    sent = (Path(str(get_testdata_file("CT_small.dcm"))).parent / name).read_bytes()
    stream = archive.runtime.storage.stage()
    stream.write(sent)
    stream.flush()
    (outcome,) = store_many(archive, [stream])
    assert isinstance(outcome, StorageEvent), outcome
    assert outcome.transfer_syntax == syntax
    stored = archive.runtime.storage.read(outcome.file_path)
    assert stored[128:132] == b"DICM" and stored.endswith(sent)
    assert pydicom.dcmread(io.BytesIO(stored)).file_meta.MediaStorageSOPInstanceUID == outcome.sop_instance_uid
    assert staging(archive) == []
