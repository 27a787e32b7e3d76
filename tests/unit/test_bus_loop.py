"""The one bus loop every worker runs (workers/loop.py): at-least-once, retried batches, dead letters,
batching across polls and a flush at stop, driven by small fake handlers over the real SqliteBus."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from support import JournalingBus

from dicomcloud.adapters.sqlite_bus import SqliteBus
from dicomcloud.errors import InvalidInput, StorageFailure
from dicomcloud.ports.bus import Message, Record
from dicomcloud.workers.loop import Batching, BusLoop, Handler, Outcome, Poisoned, dead_letter_topic

IN, OUT = "loop-in", "loop-out"
POISON = b"poison"
ONE_BATCH = Batching(100)


class Echo(Handler):
    """Copies each record to OUT; POISON is poisoned; the first `failures` batches fail as a dependency would."""

    group = "loop-test"
    topics = (IN,)
    service = "echo"

    def __init__(self, journal: list[str], failures: int = 0) -> None:
        self.journal = journal
        self.failures = failures
        self.batches: list[list[bytes]] = []
        self.handled_at: list[float] = []

    def handle(self, records: Sequence[Record], stop: threading.Event) -> Outcome:
        self.handled_at.append(time.monotonic())
        if self.failures > 0:
            self.failures -= 1
            self.journal.append("failed")
            raise StorageFailure("dependency unavailable")
        self.journal.append("handled")
        self.batches.append([record.value for record in records])
        outcome = Outcome()
        for record in records:
            if record.value == POISON:
                outcome.poisoned.append(Poisoned(record, InvalidInput("not an event")))
            else:
                outcome.messages.append(Message(OUT, record.key, record.value))
        return outcome


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[SqliteBus]:
    bus = SqliteBus(tmp_path / "bus.sqlite")
    yield bus
    bus.close()


def send(bus: SqliteBus, *values: bytes) -> None:
    bus.publish([Message(IN, "k", value) for value in values])


def read(bus: SqliteBus, topic: str) -> list[bytes]:
    consumer = bus.subscribe("test-reader", [topic])
    try:
        return [record.value for record in consumer.poll(1000, 0.1)]
    finally:
        consumer.close()


def uncommitted(bus: SqliteBus) -> list[bytes]:
    """What the handler's group would get again, as a restarted worker would (ask once the loop stopped:
    while it runs, it holds the group's lease)."""
    consumer = bus.subscribe(Echo.group, [IN])
    try:
        return [record.value for record in consumer.poll(1000, 0.1)]
    finally:
        consumer.close()


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@contextmanager
def running(loop: BusLoop) -> Iterator[threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,))
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(20)
        assert not thread.is_alive()


def test_a_batch_is_handled_its_outputs_published_and_only_then_committed(bus: SqliteBus) -> None:
    journal: list[str] = []
    handler = Echo(journal)
    send(bus, b"a", b"b", b"c")
    with running(BusLoop(JournalingBus(bus, journal), handler, ONE_BATCH, 0.05)):
        wait_for(lambda: "commit" in journal)
    assert journal[:4] == ["subscribe", "handled", "publish", "commit"]
    assert handler.batches == [[b"a", b"b", b"c"]]
    assert read(bus, OUT) == [b"a", b"b", b"c"]
    assert uncommitted(bus) == []


def test_a_failing_batch_is_retried_with_growing_backoff_and_committed_once_handled_logging_one_outage(
    bus: SqliteBus, caplog: pytest.LogCaptureFixture
) -> None:
    journal: list[str] = []
    handler = Echo(journal, failures=3)
    send(bus, b"a", b"b")
    with (
        caplog.at_level(logging.WARNING, logger="dicomcloud.workers.loop"),
        running(BusLoop(JournalingBus(bus, journal), handler, ONE_BATCH, 0.05)),
    ):
        wait_for(lambda: "commit" in journal)
    assert journal[:6] == ["subscribe", "failed", "failed", "failed", "handled", "publish"]
    assert journal[6] == "commit"
    assert handler.batches == [[b"a", b"b"]]
    pauses = [later - earlier for earlier, later in zip(handler.handled_at, handler.handled_at[1:], strict=False)]
    assert pauses[0] >= 0.15 and pauses[1] > pauses[0] * 1.5 and pauses[2] > pauses[1] * 1.5, pauses
    outage = [record.getMessage() for record in caplog.records if record.name == "dicomcloud.workers.loop"]
    assert len(outage) == 2, outage
    assert "echo handling a batch failed" in outage[0] and "dependency unavailable" in outage[0]
    assert "works again after 3 failed attempts" in outage[1]
    assert uncommitted(bus) == []


def test_nothing_is_committed_while_the_bus_refuses_the_outputs(bus: SqliteBus) -> None:
    journal: list[str] = []
    journaling = JournalingBus(bus, journal)
    journaling.publish_failures = 2
    send(bus, b"a")
    with running(BusLoop(journaling, Echo(journal), ONE_BATCH, 0.05)):
        wait_for(lambda: "commit" in journal)
    assert journal[:8] == [
        "subscribe",
        "handled",
        "publish failed",
        "handled",
        "publish failed",
        "handled",
        "publish",
        "commit",
    ]
    assert read(bus, OUT) == [b"a"]


def test_process_raises_a_storage_failure_whatever_the_bus_adapter_raised(bus: SqliteBus) -> None:
    journal: list[str] = []
    journaling = JournalingBus(bus, journal)
    journaling.publish_failures = 1
    send(bus, b"a")
    consumer = bus.subscribe(Echo.group, [IN])
    try:
        records = consumer.poll(10, 0.1)
    finally:
        consumer.close()
    with pytest.raises(StorageFailure):
        BusLoop(journaling, Echo(journal), ONE_BATCH, 0.05).process(records)
    assert uncommitted(bus) == [b"a"]


def test_poison_is_dead_lettered_in_the_one_format_and_committed_without_blocking_the_rest(bus: SqliteBus) -> None:
    journal: list[str] = []
    handler = Echo(journal)
    send(bus, b"a", POISON, b"c")
    reader = bus.subscribe("test-reader", [IN])
    try:
        offset = reader.poll(10, 0.1)[1].offset
    finally:
        reader.close()
    with running(BusLoop(bus, handler, ONE_BATCH, 0.05)):
        wait_for(lambda: bool(handler.batches))
    assert handler.batches == [[b"a", POISON, b"c"]], "poison is not retried"
    assert read(bus, OUT) == [b"a", b"c"]
    consumer = bus.subscribe("test-reader", [dead_letter_topic(Echo.group)])
    try:
        [dead] = consumer.poll(10, 0.1)
    finally:
        consumer.close()
    assert dead.topic == "loop-test.dlq"
    body = json.loads(dead.value)
    assert set(body) == {"Error", "ErrorType", "Group", "Topic", "Partition", "Offset", "Key", "Value", "FailedAt"}
    assert (body["Error"], body["ErrorType"], body["Group"]) == ("not an event", "InvalidInput", Echo.group)
    assert (body["Topic"], body["Offset"], body["Key"], body["Value"]) == (IN, offset, "k", "poison")
    assert body["FailedAt"]
    assert uncommitted(bus) == []


def test_records_are_gathered_across_polls_until_the_batch_is_full(bus: SqliteBus) -> None:
    journal: list[str] = []
    handler = Echo(journal)
    send(bus, b"a", b"b")
    with running(BusLoop(bus, handler, Batching(4, seconds=60.0), 0.05)):
        time.sleep(0.5)  # polled, and held: the batch is not full and has not waited a minute
        assert handler.batches == []
        send(bus, b"c", b"d", b"e")
        wait_for(lambda: len(handler.batches) == 1)
    assert handler.batches[0] == [b"a", b"b", b"c", b"d"]


def test_a_partial_batch_is_handled_once_its_oldest_record_waited_the_batching_seconds(bus: SqliteBus) -> None:
    journal: list[str] = []
    handler = Echo(journal)
    started = time.monotonic()
    send(bus, b"a", b"b")
    with running(BusLoop(bus, handler, Batching(1000, seconds=0.4), 0.05)):
        wait_for(lambda: bool(handler.batches))
    assert handler.batches == [[b"a", b"b"]]
    assert handler.handled_at[0] - started >= 0.4


def test_at_stop_what_was_polled_is_handled_and_committed(bus: SqliteBus) -> None:
    journal: list[str] = []
    handler = Echo(journal)
    send(bus, b"a", b"b")
    with running(BusLoop(bus, handler, Batching(1000, seconds=60.0), 0.05)):
        time.sleep(0.5)
        assert handler.batches == []
    assert handler.batches == [[b"a", b"b"]]
    assert read(bus, OUT) == [b"a", b"b"]
    assert uncommitted(bus) == []


def test_a_batch_failing_at_stop_is_left_uncommitted_for_the_next_worker(
    bus: SqliteBus, caplog: pytest.LogCaptureFixture
) -> None:
    journal: list[str] = []
    handler = Echo(journal, failures=1_000)
    send(bus, b"a")
    with (
        caplog.at_level(logging.WARNING, logger="dicomcloud.workers.loop"),
        running(BusLoop(bus, handler, Batching(1000, seconds=60.0), 0.05)),
    ):
        time.sleep(0.3)
    assert journal == ["failed"]
    assert "left uncommitted at stop" in caplog.text
    assert uncommitted(bus) == [b"a"]


def test_a_failed_subscribe_is_retried_after_a_pause(bus: SqliteBus) -> None:
    journal: list[str] = []
    handler = Echo(journal)
    send(bus, b"a")
    with running(BusLoop(JournalingBus(bus, journal, subscribe_failures=2), handler, ONE_BATCH, 0.05)):
        wait_for(lambda: "commit" in journal)
    assert journal[:5] == ["subscribe failed", "subscribe failed", "subscribe", "handled", "publish"]
    assert uncommitted(bus) == []


def test_a_failed_commit_reopens_the_subscription_and_delivery_resumes_at_the_last_commit(bus: SqliteBus) -> None:
    journal: list[str] = []
    handler = Echo(journal)
    send(bus, b"a", b"b")
    with running(BusLoop(JournalingBus(bus, journal, commit_failures=1), handler, ONE_BATCH, 0.05)):
        wait_for(lambda: "commit" in journal)
    assert journal[:8] == [
        "subscribe",
        "handled",
        "publish",
        "commit failed",
        "subscribe",
        "handled",
        "publish",
        "commit",
    ]
    assert handler.batches == [[b"a", b"b"], [b"a", b"b"]], "redelivered: at least once"
    assert uncommitted(bus) == []
