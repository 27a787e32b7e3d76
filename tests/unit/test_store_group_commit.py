"""Store group commit: stores that arrive while another commits go out together in one index transaction and
one publish, each still answered only once its own objects are durable, indexed and announced; what is decided
per object stays that object's."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import support
from support import FailingBus
from test_store_batch import SERIES, STUDY, CountingBus, junk, sources

from dicomcloud.archive.core import Archive
from dicomcloud.archive.store import Refused
from dicomcloud.errors import DuplicateInstance, InvalidInput, StorageFailure
from dicomcloud.events import STORAGE_QUEUE, StorageEvent

STORES = 4


@dataclasses.dataclass
class Answer:
    """What one concurrent store got back, and what was there when it did."""

    outcome: list[StorageEvent | Refused] | BaseException
    indexed_on_return: bool = False
    durable_on_return: bool = False


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    archive = support.make_archive(tmp_path / "data", storage={"duplicate_policy": "reject"})
    yield archive
    archive.close()


def concurrently(
    archive: Archive, stores: list[Callable[[], list[StorageEvent | Refused]]], unreadable: int = 0
) -> list[Answer]:
    """Run `stores` in threads that all queue while a commit is under way (but the `unreadable` ones, refused
    before they queue), then let the commit go."""
    answers: dict[int, Answer] = {}

    def run(number: int) -> None:
        try:
            outcome = stores[number]()
        except BaseException as exc:
            answers[number] = Answer(exc)
            return
        events = [o for o in outcome if isinstance(o, StorageEvent)]
        answers[number] = Answer(
            outcome,
            indexed_on_return=all(
                archive.runtime.index.get_instance(e.tenant_id, e.sop_instance_uid) is not None for e in events
            ),
            durable_on_return=all(archive.runtime.storage.size(e.file_path) == e.file_size for e in events),
        )

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(stores))]
    with archive.store._group.turn:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while archive.store._group.queued() < len(stores) - unreadable and time.monotonic() < deadline:
            time.sleep(0.01)
        assert archive.store._group.queued() == len(stores) - unreadable, "the stores did not queue behind the commit"
    for thread in threads:
        thread.join(60)
    return [answers[n] for n in range(len(stores))]


def storing(archive: Archive, folder: Path, sop: str, pixel: int = 0) -> Callable[[], list[StorageEvent | Refused]]:
    folder.mkdir(parents=True, exist_ok=True)
    (source,) = sources(folder, [sop], pixel)

    def store() -> list[StorageEvent | Refused]:
        return archive.store.store_many([support.staged(archive, source)], tenant_id="default", source="dimse")

    return store


def test_stores_queued_behind_a_commit_share_one_publish_and_each_returns_indexed_and_durable(
    archive: Archive, tmp_path: Path
) -> None:
    bus = CountingBus(archive)
    counted = Archive(dataclasses.replace(archive.runtime, bus=bus))
    sops = [f"{SERIES}.{n}" for n in range(STORES)]
    answers = concurrently(counted, [storing(counted, tmp_path / f"s{n}", sop) for n, sop in enumerate(sops)])
    for sop, answer in zip(sops, answers, strict=True):
        assert isinstance(answer.outcome, list)
        (event,) = answer.outcome
        assert isinstance(event, StorageEvent) and event.sop_instance_uid == sop
        assert answer.indexed_on_return and answer.durable_on_return
    (published,) = bus.calls
    announced = [StorageEvent.from_bytes(m.value).sop_instance_uid for m in published if m.topic == STORAGE_QUEUE]
    assert sorted(announced) == sops
    assert sorted(i.sop_instance_uid for i in archive.runtime.index.list_instances("default", STUDY, SERIES)) == sops


def test_a_refused_object_in_a_group_fails_only_that_store(archive: Archive, tmp_path: Path) -> None:
    first = storing(archive, tmp_path / "first", f"{SERIES}.1", pixel=1)
    assert isinstance(first()[0], StorageEvent)

    def unreadable() -> list[StorageEvent | Refused]:
        return archive.store.store_many([junk(archive)], tenant_id="default", source="dimse")

    answers = concurrently(
        archive,
        [
            storing(archive, tmp_path / "a", f"{SERIES}.2"),
            storing(archive, tmp_path / "other", f"{SERIES}.1", pixel=2),  # other content under a stored UID
            unreadable,
            storing(archive, tmp_path / "b", f"{SERIES}.3"),
        ],
        unreadable=1,
    )
    outcomes = [answer.outcome for answer in answers]
    assert all(isinstance(outcome, list) for outcome in outcomes)
    stored, duplicate, junked, also_stored = (outcome[0] for outcome in outcomes if isinstance(outcome, list))
    assert isinstance(stored, StorageEvent) and isinstance(also_stored, StorageEvent)
    assert isinstance(duplicate, Refused) and isinstance(duplicate.error, DuplicateInstance)
    assert isinstance(junked, Refused) and isinstance(junked.error, InvalidInput)
    indexed = {i.sop_instance_uid for i in archive.runtime.index.list_instances("default", STUDY, SERIES)}
    assert indexed == {f"{SERIES}.1", f"{SERIES}.2", f"{SERIES}.3"}


def test_a_failed_shared_step_fails_every_store_of_the_group_and_leaves_nothing(
    archive: Archive, tmp_path: Path
) -> None:
    broken = Archive(dataclasses.replace(archive.runtime, bus=FailingBus(archive)))
    answers = concurrently(broken, [storing(broken, tmp_path / f"s{n}", f"{SERIES}.{n}") for n in range(STORES)])
    for answer in answers:
        assert isinstance(answer.outcome, list)
        (refused,) = answer.outcome
        assert isinstance(refused, Refused) and isinstance(refused.error, StorageFailure)
    assert archive.runtime.index.list_instances("default", STUDY) == []
    assert support.stored_keys(archive) == []


def test_stores_of_two_tenants_in_one_group_each_land_in_their_own_tenant(archive: Archive, tmp_path: Path) -> None:
    def store_for(tenant: str, sop: str) -> Callable[[], list[StorageEvent | Refused]]:
        (source,) = sources(tmp_path, [sop], pixel=int(sop.rsplit(".", 1)[1]))
        return lambda: archive.store.store_many([support.staged(archive, source)], tenant_id=tenant, source="stow")

    answers = concurrently(
        archive,
        [store_for(tenant, f"{SERIES}.{n}") for n, tenant in enumerate(["default", "tenant-b", "default"], 1)],
    )
    assert all(answer.indexed_on_return for answer in answers)
    listed = {
        tenant: {i.sop_instance_uid for i in archive.runtime.index.list_instances(tenant, STUDY, SERIES)}
        for tenant in ("default", "tenant-b")
    }
    assert listed == {"default": {f"{SERIES}.1", f"{SERIES}.3"}, "tenant-b": {f"{SERIES}.2"}}


def test_one_uid_from_stores_of_one_group_is_decided_as_if_they_came_in_turn(archive: Archive, tmp_path: Path) -> None:
    """Whichever content queued first is stored; the same content again is stored too (once), other content
    is refused under `reject`."""
    sop = f"{SERIES}.1"
    answers = concurrently(
        archive,
        [
            storing(archive, tmp_path / "first", sop, pixel=1),
            storing(archive, tmp_path / "again", sop, pixel=1),
            storing(archive, tmp_path / "other", sop, pixel=2),
        ],
    )
    first, again, other = (answer.outcome[0] for answer in answers if isinstance(answer.outcome, list))
    stored = [o for o in (first, again, other) if isinstance(o, StorageEvent)]
    refused = [o for o in (first, again, other) if isinstance(o, Refused)]
    assert isinstance(first, StorageEvent) == isinstance(again, StorageEvent) != isinstance(other, StorageEvent)
    assert all(isinstance(r.error, DuplicateInstance) for r in refused)
    (indexed,) = archive.runtime.index.list_instances("default", STUDY, SERIES)
    assert {event.sha256 for event in stored} == {indexed.sha256}
    assert archive.runtime.storage.size(stored[0].file_path) == stored[0].file_size
