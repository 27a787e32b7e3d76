"""The Kafka bus' error callback: a cluster that stays down is one warning, not one per reconnect."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import KafkaError

from dicomcloud.adapters import kafka_bus


def test_all_brokers_down_is_warned_once_per_interval_and_repeats_go_to_debug(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(kafka_bus, "ALL_BROKERS_DOWN_WARNINGS", kafka_bus.Throttle(3600.0))
    down = KafkaError(KafkaError._ALL_BROKERS_DOWN, "3/3 brokers are down")
    with caplog.at_level(logging.DEBUG, logger=kafka_bus.__name__):
        for _ in range(5):
            kafka_bus.on_error(down)
    levels = [record.levelno for record in caplog.records]
    assert levels == [logging.WARNING] + [logging.DEBUG] * 4


def test_a_fatal_error_is_always_warned(caplog: pytest.LogCaptureFixture) -> None:
    fatal = KafkaError(KafkaError._FATAL, "fenced", fatal=True)
    with caplog.at_level(logging.DEBUG, logger=kafka_bus.__name__):
        kafka_bus.on_error(fatal)
        kafka_bus.on_error(fatal)
    assert [record.levelno for record in caplog.records] == [logging.WARNING] * 2
