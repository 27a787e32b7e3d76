"""SqliteBus group commit: publishes that wait for the writer go out together, each still all-or-nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from dicomcloud.adapters.sqlite_bus import SqliteBus
from dicomcloud.errors import StorageFailure
from dicomcloud.ports.bus import Message

PUBLISHERS = 4
PER_PUBLISH = 3


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[SqliteBus]:
    bus = SqliteBus(tmp_path / "bus.sqlite")
    yield bus
    bus.close()


def _messages(publisher: int) -> list[Message]:
    return [Message("topic", f"k{publisher}", f"{publisher}-{n}".encode()) for n in range(PER_PUBLISH)]


def _publish_while_writer_busy(bus: SqliteBus) -> dict[int, BaseException | None]:
    """Start publishers while the writer lock is held, release it once all of them are queued."""
    outcomes: dict[int, BaseException | None] = {}

    def publish(number: int) -> None:
        try:
            bus.publish(_messages(number))
            outcomes[number] = None
        except BaseException as exc:
            outcomes[number] = exc

    threads = [threading.Thread(target=publish, args=(n,)) for n in range(PUBLISHERS)]
    with bus._writer:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while bus._publishes.queued() < PUBLISHERS and time.monotonic() < deadline:
            time.sleep(0.01)
        assert bus._publishes.queued() == PUBLISHERS
    for thread in threads:
        thread.join(30)
    return outcomes


def _count_transactions(bus: SqliteBus, monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> list[int]:
    calls: list[int] = []
    original: Callable[[], AbstractContextManager[object]] = bus._locked_transaction

    def counted() -> AbstractContextManager[object]:
        calls.append(1)
        if fail:
            raise StorageFailure("disk full")
        return original()

    monkeypatch.setattr(bus, "_locked_transaction", counted)
    return calls


def test_publishes_queued_behind_the_writer_share_one_transaction(
    bus: SqliteBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    transactions = _count_transactions(bus, monkeypatch)
    outcomes = _publish_while_writer_busy(bus)
    assert outcomes == {n: None for n in range(PUBLISHERS)}
    assert len(transactions) == 1
    consumer = bus.subscribe("g", ["topic"])
    records = consumer.poll(100, 5)
    assert len(records) == PUBLISHERS * PER_PUBLISH
    # Each publish's messages stay together and in order.
    values = [r.value.decode() for r in records]
    for start in range(0, len(values), PER_PUBLISH):
        publisher = values[start].split("-")[0]
        assert values[start : start + PER_PUBLISH] == [f"{publisher}-{n}" for n in range(PER_PUBLISH)]


def test_a_failed_group_commit_fails_every_publish_it_held(bus: SqliteBus, monkeypatch: pytest.MonkeyPatch) -> None:
    _count_transactions(bus, monkeypatch, fail=True)
    outcomes = _publish_while_writer_busy(bus)
    assert all(isinstance(outcome, StorageFailure) for outcome in outcomes.values())
    assert len(outcomes) == PUBLISHERS
    monkeypatch.undo()
    assert bus.subscribe("g", ["topic"]).poll(100, 0.2) == []
