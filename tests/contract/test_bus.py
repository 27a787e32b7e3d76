"""The bus port's promises: durable publish, ordered delivery, commits after effects, at-least-once."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dicomcloud.adapters.kafka_bus import KafkaBus
from dicomcloud.adapters.sqlite_bus import SqliteBus
from dicomcloud.errors import DicomCloudError, ServiceUnavailable
from dicomcloud.ports.bus import Bus, BusConsumer, Message, Record
from dicomcloud.stack.servers import free_port

if TYPE_CHECKING:
    from conftest import BusTarget

PATIENCE = 10.0  # seconds a test waits for records that must arrive; never an assertion on timing


def drain(consumer: BusConsumer, count: int, patience: float = PATIENCE) -> list[Record]:
    """Poll until `count` records arrived or patience ran out."""
    records: list[Record] = []
    deadline = time.monotonic() + patience
    while len(records) < count and time.monotonic() < deadline:
        records.extend(consumer.poll(count - len(records), 0.2))
    return records


def drain_idle(consumer: BusConsumer) -> list[Record]:
    """Poll until a poll comes back empty: everything currently in the log."""
    records: list[Record] = []
    while batch := consumer.poll(1000, 1.0):
        records.extend(batch)
    return records


def publish_values(bus: Bus, topic: str, values: list[str]) -> None:
    bus.publish([Message(topic, "1.2.3", v.encode()) for v in values])


def values_of(records: list[Record]) -> list[str]:
    return [r.value.decode() for r in records]


def test_poll_returns_published_messages_in_order(bus: Bus, bus_target: BusTarget) -> None:
    topic = bus_target.name("events")
    consumer = bus.subscribe(bus_target.name("g"), [topic])
    publish_values(bus, topic, ["a", "b", "c"])
    bus.publish([Message(topic, "9.8", b"d")])
    records = drain(consumer, 4)
    assert values_of(records) == ["a", "b", "c", "d"]
    assert [r.topic for r in records] == [topic] * 4
    assert records[3].key == "9.8"
    offsets = [r.offset for r in records]
    assert offsets == sorted(offsets) and len(set(offsets)) == 4


def test_poll_returns_nothing_after_timeout_when_nothing_is_published(bus: Bus, bus_target: BusTarget) -> None:
    consumer = bus.subscribe(bus_target.name("g"), [bus_target.name("quiet")])
    assert consumer.poll(10, 0.2) == []


def test_second_poll_continues_after_records_already_handed_out(bus: Bus, bus_target: BusTarget) -> None:
    topic = bus_target.name("events")
    consumer = bus.subscribe(bus_target.name("g"), [topic])
    publish_values(bus, topic, ["a", "b", "c", "d"])
    first = drain(consumer, 2)
    second = drain(consumer, 2)
    assert values_of(first) + values_of(second) == ["a", "b", "c", "d"]


def test_new_consumer_redelivers_what_was_not_committed(bus: Bus, bus_target: BusTarget) -> None:
    topic, group = bus_target.name("events"), bus_target.name("g")
    consumer = bus.subscribe(group, [topic])
    publish_values(bus, topic, ["a", "b", "c"])
    records = drain(consumer, 3)
    consumer.commit(records[:1])
    consumer.close()
    restarted = bus_target.open().subscribe(group, [topic])
    assert values_of(drain(restarted, 2)) == ["b", "c"]


def test_commit_never_moves_backwards(bus: Bus, bus_target: BusTarget) -> None:
    topic, group = bus_target.name("events"), bus_target.name("g")
    consumer = bus.subscribe(group, [topic])
    publish_values(bus, topic, ["a", "b", "c", "d", "e"])
    records = drain(consumer, 5)
    consumer.commit([records[3]])
    consumer.commit([records[0]])
    consumer.close()
    restarted = bus_target.open().subscribe(group, [topic])
    assert values_of(drain(restarted, 1)) == ["e"]


def test_groups_are_independent(bus: Bus, bus_target: BusTarget) -> None:
    topic = bus_target.name("events")
    first = bus.subscribe(bus_target.name("first"), [topic])
    second = bus.subscribe(bus_target.name("second"), [topic])
    publish_values(bus, topic, ["a", "b"])
    first.commit(drain(first, 2))
    assert values_of(drain(second, 2)) == ["a", "b"]
    assert first.lag() == 0
    assert second.lag() == 2


def test_lag_counts_records_not_yet_committed(bus: Bus, bus_target: BusTarget) -> None:
    topics = [bus_target.name("one"), bus_target.name("two")]
    consumer = bus.subscribe(bus_target.name("g"), topics)
    publish_values(bus, topics[0], ["a", "b", "c"])
    publish_values(bus, topics[1], ["d"])
    records = drain(consumer, 4)
    assert consumer.lag() == 4
    consumer.commit([r for r in records if r.value in (b"b", b"d")])
    assert consumer.lag() == 1
    consumer.commit(records)
    assert consumer.lag() == 0


def test_concurrent_publishers_lose_nothing_and_keep_each_publishers_order(bus: Bus, bus_target: BusTarget) -> None:
    topic = bus_target.name("events")
    consumer = bus.subscribe(bus_target.name("g"), [topic])
    threads, per_thread = 8, 40

    def publisher(n: int) -> None:
        own = bus_target.open()
        for i in range(per_thread):
            publish_values(own if i % 2 else bus, topic, [f"{n}:{i}"])

    workers = [threading.Thread(target=publisher, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    received = values_of(drain(consumer, threads * per_thread))
    assert sorted(received) == sorted(f"{n}:{i}" for n in range(threads) for i in range(per_thread))
    for n in range(threads):
        assert [v for v in received if v.startswith(f"{n}:")] == [f"{n}:{i}" for i in range(per_thread)]


def test_consumers_of_one_group_never_receive_the_same_record(bus: Bus, bus_target: BusTarget) -> None:
    topic, group = bus_target.name("events"), bus_target.name("g")
    consumers = [bus.subscribe(group, [topic]), bus_target.open().subscribe(group, [topic])]
    expected = [str(i) for i in range(20)]
    publish_values(bus, topic, expected)
    received: list[str] = []
    deadline = time.monotonic() + PATIENCE
    while len(received) < len(expected) and time.monotonic() < deadline:
        for consumer in consumers:
            received.extend(values_of(consumer.poll(5, 0.1)))
    assert sorted(received, key=int) == expected


def test_closing_a_consumer_hands_its_records_to_the_next_one_of_the_group(bus: Bus, bus_target: BusTarget) -> None:
    topic, group = bus_target.name("events"), bus_target.name("g")
    owner = bus.subscribe(group, [topic])
    waiting = bus.subscribe(group, [topic])
    publish_values(bus, topic, ["a", "b", "c"])
    owner.commit(drain(owner, 1))
    owner.close()
    assert values_of(drain(waiting, 2)) == ["b", "c"]


def test_batch_with_an_invalid_message_publishes_nothing(bus: Bus, bus_target: BusTarget) -> None:
    topic = bus_target.name("events")
    consumer = bus.subscribe(bus_target.name("g"), [topic])
    with pytest.raises(DicomCloudError):
        bus.publish([Message(topic, "1", b"a"), Message("not a topic/..", "1", b"b")])
    publish_values(bus, topic, ["after"])
    assert values_of(drain(consumer, 1)) == ["after"]


def publish_until_killed(target: BusTarget, topic: str, batches: int, batch_size: int) -> list[int]:
    """A child publishes numbered batches, printing each number once publish returned; it is
    killed with SIGKILL at a random point. Returns the batch numbers the child reported done."""
    script = (
        "import sys\n"
        "from dicomcloud.ports.bus import Message\n"
        f"bus = {target.child_expression}\n"
        f"for n in range({batches}):\n"
        f"    bus.publish([Message({topic!r}, str(n), f'{{n}}:{{i}}'.encode()) for i in range({batch_size})])\n"
        "    print(n, flush=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": target.child_pythonpath}
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout is not None
    kill_after = random.randint(1, batches - 1)
    reported = [int(child.stdout.readline()) for _ in range(kill_after)]
    child.kill()
    rest, _ = child.communicate()
    reported.extend(int(line) for line in rest.split())
    return reported


@pytest.mark.slow
def test_every_publish_that_returned_survives_kill_9(bus_target: BusTarget) -> None:
    topic = bus_target.name("crash")
    reported = publish_until_killed(bus_target, topic, batches=500, batch_size=1)
    bus_target.check_integrity()
    bus = bus_target.open()
    received = {r.value.decode() for r in drain_idle(bus.subscribe(bus_target.name("g"), [topic]))}
    assert {f"{n}:0" for n in reported} <= received
    bus.publish([Message(topic, "x", b"after the crash")])


@pytest.mark.slow
def test_batch_that_returned_is_complete_and_in_order_under_kill_9(bus_target: BusTarget) -> None:
    topic, size = bus_target.name("crash"), 10
    reported = publish_until_killed(bus_target, topic, batches=100, batch_size=size)
    bus_target.check_integrity()
    records = drain_idle(bus_target.open().subscribe(bus_target.name("g"), [topic]))
    per_batch: dict[int, list[str]] = {}
    for record in records:
        per_batch.setdefault(int(record.key), []).append(record.value.decode())
    for n in reported:
        assert per_batch[n] == [f"{n}:{i}" for i in range(size)]
    if bus_target.atomic_batches:
        for n, values in per_batch.items():
            assert values == [f"{n}:{i}" for i in range(size)]


# The embedded bus's own promises, beyond the port.


def test_sqlite_bus_compact_keeps_whatever_some_group_has_not_committed(tmp_path: Path) -> None:
    bus = SqliteBus(tmp_path / "bus.sqlite")
    fast, slow = bus.subscribe("fast", ["events"]), bus.subscribe("slow", ["events"])
    unread = bus.subscribe("never-commits", ["other"])
    publish_values(bus, "events", ["a", "b", "c", "d"])
    publish_values(bus, "other", ["x"])
    publish_values(bus, "nobody-listens", ["y"])
    fast.commit(drain(fast, 4))
    slow.commit(drain(slow, 1))
    assert bus.compact() == 1
    slow.close()
    assert values_of(drain(bus.subscribe("slow", ["events"]), 3)) == ["b", "c", "d"]
    assert values_of(drain(unread, 1)) == ["x"]
    assert values_of(drain(bus.subscribe("late", ["nobody-listens"]), 1)) == ["y"]
    bus.close()


def test_sqlite_bus_second_consumer_of_a_group_takes_over_after_the_lease_lapses(tmp_path: Path) -> None:
    bus = SqliteBus(tmp_path / "bus.sqlite", lease_seconds=0.5)
    crashed = bus.subscribe("g", ["events"])
    publish_values(bus, "events", ["a", "b"])
    assert values_of(drain(crashed, 2)) == ["a", "b"]
    successor = bus.subscribe("g", ["events"])
    assert values_of(drain(successor, 2)) == ["a", "b"]
    bus.close()


def test_ping_answers_while_the_bus_is_reachable(bus: Bus) -> None:
    bus.ping()


def test_ping_of_a_kafka_bus_without_any_broker_raises_service_unavailable() -> None:
    bus = KafkaBus(f"127.0.0.1:{free_port()}", partitions=1, replication=1, delivery_timeout=5.0)
    try:
        with pytest.raises(ServiceUnavailable):
            bus.ping()
    finally:
        bus.close()
