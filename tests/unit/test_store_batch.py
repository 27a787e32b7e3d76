"""Ingest.store_many: a batch costs one bus publish and one fsync per folder; each file keeps its own outcome."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import support
from support import FailingBus

from dicomcloud.archive.store import Ingest, Refused, file_digest
from dicomcloud.errors import DuplicateInstance, InvalidInput, StorageFailure
from dicomcloud.events import STORAGE_QUEUE, StorageEvent
from dicomcloud.ports.bus import BusConsumer, Message
from dicomcloud.runtime import Runtime

STUDY, SERIES = "1.2.826.0.1.1", "1.2.826.0.1.1.1"


class CountingBus:
    """Passes publishes through, remembering each call's messages."""

    def __init__(self, runtime: Runtime) -> None:
        self.inner = runtime.bus
        self.calls: list[list[Message]] = []

    def publish(self, messages: Sequence[Message]) -> None:
        self.calls.append(list(messages))
        self.inner.publish(messages)

    def subscribe(self, group: str, topics: Sequence[str]) -> BusConsumer:
        return self.inner.subscribe(group, topics)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    rt = support.make_runtime(tmp_path / "data", storage={"duplicate_policy": "reject"})
    yield rt
    rt.close()


def temps(runtime: Runtime, tmp_path: Path, sops: Sequence[str], pixel: int = 0) -> list[Path]:
    return [
        support.as_temp(runtime, support.write_ct(tmp_path / f"{n}-{pixel}.dcm", STUDY, SERIES, sop, pixel))
        for n, sop in enumerate(sops)
    ]


def junk_temp(runtime: Runtime) -> Path:
    handle, temp = runtime.storage.new_temp()
    with handle:
        handle.write(b"not DICOM")
    return temp


def store_many(runtime: Runtime, files: list[Path]) -> list[StorageEvent | Refused]:
    return Ingest(runtime).store_many(files, tenant_id="default", source="stow")


def leftover_temps(runtime: Runtime) -> list[Path]:
    return list((runtime.settings.data_path / "tmp").iterdir())


def test_a_batch_is_announced_in_one_publish_with_every_event(runtime: Runtime, tmp_path: Path) -> None:
    bus = CountingBus(runtime)
    counted = dataclasses.replace(runtime, bus=bus)
    sops = [f"{SERIES}.{n}" for n in range(1, 6)]
    outcomes = store_many(counted, temps(runtime, tmp_path, sops))
    assert [o.sop_instance_uid for o in outcomes if isinstance(o, StorageEvent)] == sops
    assert len(bus.calls) == 1
    announced = [StorageEvent.from_bytes(m.value).sop_instance_uid for m in bus.calls[0] if m.topic == STORAGE_QUEUE]
    assert announced == sops
    for outcome in outcomes:
        assert isinstance(outcome, StorageEvent)
        assert runtime.storage.path(outcome.file_path).is_file()
    assert leftover_temps(runtime) == []


def test_a_refused_file_keeps_its_place_and_the_others_are_stored(runtime: Runtime, tmp_path: Path) -> None:
    first, last = temps(runtime, tmp_path, [f"{SERIES}.1", f"{SERIES}.2"])
    outcomes = store_many(runtime, [first, junk_temp(runtime), last])
    assert isinstance(outcomes[0], StorageEvent) and isinstance(outcomes[2], StorageEvent)
    assert isinstance(outcomes[1], Refused) and isinstance(outcomes[1].error, InvalidInput)
    assert outcomes[1].header is None
    assert leftover_temps(runtime) == []


def test_a_uid_sent_twice_in_one_batch_meets_its_first_copy(runtime: Runtime, tmp_path: Path) -> None:
    sop = f"{SERIES}.1"
    (first,) = temps(runtime, tmp_path, [sop], pixel=1)
    (other,) = temps(runtime, tmp_path, [sop], pixel=2)
    outcomes = store_many(runtime, [first, other])
    assert isinstance(outcomes[0], StorageEvent)
    refused = outcomes[1]
    assert isinstance(refused, Refused) and isinstance(refused.error, DuplicateInstance)
    assert refused.header is not None and refused.header.sop_instance_uid == sop
    stored = runtime.storage.path(outcomes[0].file_path)
    assert file_digest(stored)[0] == outcomes[0].sha256


def test_a_bus_failure_refuses_the_whole_batch_and_leaves_no_new_file(runtime: Runtime, tmp_path: Path) -> None:
    broken = dataclasses.replace(runtime, bus=FailingBus(runtime))
    outcomes = store_many(broken, temps(runtime, tmp_path, [f"{SERIES}.1", f"{SERIES}.2"]))
    assert all(isinstance(o, Refused) and isinstance(o.error, StorageFailure) for o in outcomes)
    assert [p for p in (runtime.settings.data_path / "storage").rglob("*") if p.is_file()] == []
    assert leftover_temps(runtime) == []


def test_sync_temps_refuses_a_file_that_is_not_a_temp_of_the_storage(runtime: Runtime, tmp_path: Path) -> None:
    precious = tmp_path / "precious.dcm"
    precious.write_bytes(b"keep me")
    with pytest.raises(InvalidInput):
        runtime.storage.sync_temps([junk_temp(runtime), precious])
    assert precious.read_bytes() == b"keep me"
