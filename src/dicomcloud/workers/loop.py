"""One bus loop for every worker: a worker is a handler bound to it (pynetdicom's shape: the service
class owns the protocol mechanics, the handler is pure logic).

The loop owns what every consumer of the bus must get right, once:
- At-least-once. A batch is committed only after the handler's effects and the messages it returned
  are durable; every handler's effects are idempotent, so a batch replayed after a crash changes nothing.
- Transient failures. A handler that cannot reach a dependency (index, warehouse, bus) raises; the same
  batch is retried in place with exponential backoff until it succeeds or the loop is stopped, with one
  warning when the outage starts and one when it ends (`Outage`).
- Poison. A record that can never be handled (not its topic's event, a value the index or warehouse
  refuses) is returned by the handler as `Poisoned`; the loop publishes it, with the error, to the
  worker's dead-letter topic `<group>.dlq` in one format and commits it. Nothing is dropped silently and
  nothing blocks a partition.
- A failed poll, commit or subscribe closes the subscription (so the group hands its partitions on at
  once) and opens a new one after the backoff: delivery resumes at the last commit.
- Batching. Records are gathered across polls until `Batching.size` are pending or the oldest has
  waited `Batching.seconds` (0: every poll is a batch). On stop, what was polled is handled and committed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from dicomcloud.errors import DicomCloudError, StorageFailure
from dicomcloud.metrics import EVENTS_FAILED, EVENTS_PROCESSED, LagReporter, count_records
from dicomcloud.ports.bus import Bus, BusConsumer, Message, Record
from dicomcloud.workers.retry import Outage

log = logging.getLogger(__name__)

DEAD_LETTER_SUFFIX = ".dlq"


def dead_letter_topic(group: str) -> str:
    return group + DEAD_LETTER_SUFFIX


@dataclass(frozen=True)
class Poisoned:
    """A record that can never be handled, and why."""

    record: Record
    error: DicomCloudError


@dataclass
class Outcome:
    """What handling a batch produced: messages to publish before the commit, and poisoned records."""

    messages: list[Message] = field(default_factory=list)
    poisoned: list[Poisoned] = field(default_factory=list)


@dataclass(frozen=True)
class Batching:
    size: int
    seconds: float = 0.0


class Handler:
    """A worker's logic. `handle` raises on a transient failure and returns poison in its Outcome."""

    group: str
    topics: Sequence[str]
    service: str  # the metrics label

    def handle(self, records: Sequence[Record], stop: threading.Event) -> Outcome:
        raise NotImplementedError

    def subscribed(self) -> None:
        """Called on every new subscription (partitions may have moved): drop what was learnt about positions."""


class BusLoop:
    def __init__(self, bus: Bus, handler: Handler, batching: Batching, poll_timeout: float) -> None:
        self.bus = bus
        self.handler = handler
        self.batching = batching
        self.poll_timeout = poll_timeout
        self.lag = LagReporter(handler.group, handler.topics)

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set; a bus failure reopens the subscription at the last commit."""
        bus = Outage(f"consuming {', '.join(self.handler.topics)}", log)
        effects = Outage(f"{self.handler.service} handling a batch", log)
        while not stop.is_set():
            try:
                self._subscription(stop, bus, effects)
            except Exception as exc:
                # A service loop outlives any one failure; nothing uncommitted is lost, it is redelivered.
                bus.failed(exc, stop)

    def _subscription(self, stop: threading.Event, bus: Outage, effects: Outage) -> None:
        consumer = self.bus.subscribe(self.handler.group, list(self.handler.topics))
        try:
            self.handler.subscribed()
            self._consume(consumer, stop, bus, effects)
        finally:
            try:
                consumer.close()
            except DicomCloudError as exc:
                log.warning("closing the subscription failed: %s", exc.message)

    def _consume(self, consumer: BusConsumer, stop: threading.Event, bus: Outage, effects: Outage) -> None:
        pending: list[Record] = []
        oldest = 0.0
        while not stop.is_set():
            records = consumer.poll(max(1, self.batching.size - len(pending)), self.poll_timeout)
            self.lag.update(consumer)
            if records and not pending:
                oldest = time.monotonic()
            pending.extend(records)
            if not pending:
                bus.recovered()
                continue
            if len(pending) < self.batching.size and time.monotonic() - oldest < self.batching.seconds:
                continue
            if not self._until_durable(pending, stop, effects):
                return
            consumer.commit(pending)
            count_records(EVENTS_PROCESSED, self.handler.service, pending)
            pending = []
            bus.recovered()
        # Stopping: what was polled, and what is there right now, is handled before the loop ends.
        pending.extend(consumer.poll(max(1, self.batching.size - len(pending)), 0))
        if pending and self._until_durable(pending, threading.Event(), effects, attempts=1):
            consumer.commit(pending)
            count_records(EVENTS_PROCESSED, self.handler.service, pending)

    def _until_durable(
        self, records: Sequence[Record], stop: threading.Event, effects: Outage, attempts: int | None = None
    ) -> bool:
        """Retry the batch until its effects are durable; False when stopped (or out of attempts) first."""
        tried = 0
        while not stop.is_set() and (attempts is None or tried < attempts):
            tried += 1
            try:
                self.process(records, stop)
            except Exception as exc:
                # Poison never gets here (the handler returns it): this is a dependency being down.
                count_records(EVENTS_FAILED, self.handler.service, records)
                if attempts is not None and tried >= attempts:
                    log.warning("%s: a batch left uncommitted at stop: %s", self.handler.service, exc)
                    return False
                effects.failed(exc, stop)
                continue
            effects.recovered()
            return True
        return False

    def process(self, records: Sequence[Record], stop: threading.Event | None = None) -> None:
        """Handle a batch and publish what it produced; raises on a transient failure, so nothing is committed."""
        outcome = self.handler.handle(records, stop or threading.Event())
        messages = list(outcome.messages)
        for poisoned in outcome.poisoned:
            log.warning(
                "%s dead-lettered %s@%d:%d: %s",
                self.handler.service,
                poisoned.record.topic,
                poisoned.record.partition,
                poisoned.record.offset,
                poisoned.error.message,
            )
            EVENTS_FAILED.labels(self.handler.service, poisoned.record.topic).inc()
            messages.append(dead_letter(self.handler.group, poisoned))
        if not messages:
            return
        try:
            self.bus.publish(messages)
        except StorageFailure:
            raise
        except Exception as exc:
            raise StorageFailure(f"the bus did not accept {len(messages)} messages: {exc}") from exc


def dead_letter(group: str, poisoned: Poisoned) -> Message:
    """The original record and why it failed, readable without this package."""
    record = poisoned.record
    body = {
        "Error": poisoned.error.message,
        "ErrorType": type(poisoned.error).__name__,
        "Group": group,
        "Topic": record.topic,
        "Partition": record.partition,
        "Offset": record.offset,
        "Key": record.key,
        "Value": record.value.decode("utf-8", "backslashreplace"),
        "FailedAt": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }
    return Message(dead_letter_topic(group), record.key, json.dumps(body, ensure_ascii=False).encode())
