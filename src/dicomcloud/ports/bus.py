"""The bus: durable topics, consumer groups, commits after effects (at-least-once)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from dicomcloud.errors import InvalidInput

# Kafka's rule for topic and group names; every adapter enforces it, so nothing works embedded that fails on Kafka.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def check_name(value: str, what: str) -> str:
    """`value` if it is a valid topic or group name; InvalidInput otherwise."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise InvalidInput(f"invalid {what} name: {str(value)[:80]!r}")
    return value


@dataclass(frozen=True)
class Message:
    topic: str
    key: str
    value: bytes


@dataclass(frozen=True)
class Record:
    """A message as a consumer sees it, with its position."""

    topic: str
    partition: int
    offset: int
    key: str
    value: bytes


class BusConsumer(Protocol):
    def poll(self, max_records: int, timeout: float) -> list[Record]:
        """Up to `max_records` records after the group's committed position; [] after `timeout` seconds."""
        ...

    def commit(self, records: Sequence[Record]) -> None:
        """Mark these records (and all before them in their partitions) done for the group."""
        ...

    def lag(self) -> int:
        """Records published but not yet committed by this group, over its topics."""
        ...

    def close(self) -> None: ...


class Bus(Protocol):
    def publish(self, messages: Sequence[Message]) -> None:
        """Durably accept all messages before returning; raise StorageFailure if that is not possible.

        After a StorageFailure some of the messages may be in the log (the Kafka bus does not make a call
        atomic): callers resend, and consumers' effects are idempotent.
        """
        ...

    def subscribe(self, group: str, topics: Sequence[str]) -> BusConsumer: ...

    def ping(self) -> None:
        """Return once the bus answers; raise ServiceUnavailable if it cannot be reached (for /ready)."""
        ...

    def close(self) -> None: ...
