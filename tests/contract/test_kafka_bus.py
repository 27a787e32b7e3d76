"""The Kafka bus's own promises, beyond the port: replication across a three-broker KRaft cluster."""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import pytest
from test_bus import drain

from dicomcloud.adapters.kafka_bus import KafkaBus
from dicomcloud.ports.bus import Message
from dicomcloud.stack.kafka import start_kafka

pytestmark = pytest.mark.slow


def test_publishing_continues_and_nothing_acknowledged_is_lost_when_one_of_three_brokers_dies(
    tmp_path: Path,
) -> None:
    cluster = start_kafka(tmp_path / "kafka", brokers=3)
    bus = KafkaBus(cluster.bootstrap, partitions=3, replication=3, delivery_timeout=60.0)
    try:
        topic = f"t{uuid.uuid4().hex[:8]}-events"
        acknowledged: list[str] = []

        def publish(batch: int) -> None:
            values = [f"{batch}:{i}" for i in range(10)]
            bus.publish([Message(topic, f"1.2.{batch}.{i}", v.encode()) for i, v in enumerate(values)])
            acknowledged.extend(values)

        for batch in range(5):
            publish(batch)
        cluster.stop_node(1, signal.SIGKILL)
        for batch in range(5, 10):
            publish(batch)
        consumer = bus.subscribe(f"t{uuid.uuid4().hex[:8]}-g", [topic])
        received = [r.value.decode() for r in drain(consumer, len(acknowledged), patience=60.0)]
        consumer.close()
        assert sorted(received) == sorted(acknowledged)
    finally:
        bus.close()
        cluster.stop()
