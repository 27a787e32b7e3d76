"""The bus on Apache Kafka (confluent-kafka / librdkafka).

Publishing: one idempotent producer per bus (`acks=all`, compressed, batched with a short linger, so
concurrent publishes share requests). `publish` returns only once the broker acknowledged every message
of the call, i.e. once it is replicated to the in-sync replicas; a failure or the delivery timeout
raises StorageFailure. A call's messages are not atomic: after a failure some of them may be in the log
(callers publish idempotent events and resend after a failure, so that is harmless).

Topics are created on first use with the bus's partition count and replication factor, or up front by
`ensure_topics` (`dicomcloud init`).

Consuming: one Kafka consumer per subscription, in the group, with the cooperative-sticky assignor and
manual synchronous commits. `subscribe` returns once the group gave the consumer its first
assignment, so a member that joins later does not take partitions away from one already reading them
(sticky); with one partition per topic that is the embedded bus's one-reader-per-group rule. Commits never
move a partition's group offset backwards.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka import Message as KafkaMessage
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from dicomcloud.errors import ServiceUnavailable, StorageFailure
from dicomcloud.ports.bus import Message, Record, check_name

log = logging.getLogger(__name__)

ADMIN_TIMEOUT = 30.0
# How long a readiness check waits for any broker to answer a metadata request.
PING_TIMEOUT = 2.0
# How often the producer's delivery reports are served; publish waits on them, not on this.
REPORT_INTERVAL = 0.1
# A consumer's death is noticed (and its partitions reassigned) after this long without heartbeats.
SESSION_TIMEOUT_MS = 10_000
# A broker that comes back is reconnected to within a second (librdkafka's default backs off to 10 s).
RECONNECT_BACKOFF_MAX_MS = 1000
TopicPartitionKey = tuple[str, int]


class LibrdkafkaLog:
    """Takes librdkafka's log lines at DEBUG: it logs every failed reconnect, many per second while a
    broker is down. What matters reaches `on_error` once per event."""

    def log(self, _level: int, message: str, *args: object) -> None:
        log.debug(message, *args)


LIBRDKAFKA_LOG = LibrdkafkaLog()


class Throttle:
    """Lets one event through per `interval` seconds, across threads."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last = -interval
        self._lock = threading.Lock()

    def allow(self) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._last < self.interval:
                return False
            self._last = now
            return True


# While the cluster is down librdkafka reports "all brokers down" after every failed reconnect (each
# second, per client): one warning per interval, the repeats at DEBUG.
ALL_BROKERS_DOWN_WARNINGS = Throttle(60.0)


def on_error(error: KafkaError) -> None:
    """librdkafka's error callback: all brokers unreachable and fatal errors are worth a warning."""
    if error.fatal():
        log.warning("Kafka: %s", error.str())
    elif error.code() == KafkaError._ALL_BROKERS_DOWN and ALL_BROKERS_DOWN_WARNINGS.allow():
        log.warning("Kafka: %s (repeats within %.0fs at DEBUG)", error.str(), ALL_BROKERS_DOWN_WARNINGS.interval)
    else:
        log.debug("Kafka: %s", error.str())


class _Deliveries:
    """The delivery reports of one publish call."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.errors: list[KafkaError] = []
        self._reported = 0
        self._lock = threading.Lock()
        self.done = threading.Event()

    def report(self, error: KafkaError | None, _message: KafkaMessage) -> None:
        with self._lock:
            self._reported += 1
            if error is not None:
                self.errors.append(error)
            if self._reported == self.expected:
                self.done.set()


class KafkaBus:
    """Implements `ports.bus.Bus` on a Kafka cluster."""

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        partitions: int = 3,
        replication: int = 1,
        delivery_timeout: float = 30.0,
        linger_ms: int = 5,
        compression: str = "lz4",
        join_timeout: float = 30.0,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.partitions = partitions
        self.replication = replication
        self.delivery_timeout = delivery_timeout
        self.join_timeout = join_timeout
        # Creating a topic on first publish must not outlast the publish's own deadline.
        self._admin_timeout = min(ADMIN_TIMEOUT, delivery_timeout)
        self._known_topics: set[str] = set()
        self._topics_lock = threading.Lock()
        self._admin = AdminClient({"bootstrap.servers": bootstrap_servers}, error_cb=on_error, logger=LIBRDKAFKA_LOG)
        self._compression = compression
        self._linger_ms = linger_ms
        self._producer_lock = threading.Lock()
        self._producer_failed = False
        self._producer = self._new_producer()
        self._closed = threading.Event()
        self._reporter = threading.Thread(target=self._serve_reports, name="kafka-delivery-reports", daemon=True)
        self._reporter.start()

    def _new_producer(self) -> Producer:
        return Producer(
            {
                "bootstrap.servers": self.bootstrap_servers,
                "enable.idempotence": True,
                "acks": "all",
                "compression.type": self._compression,
                "linger.ms": self._linger_ms,
                "delivery.timeout.ms": max(int(self.delivery_timeout * 1000), self._linger_ms + 1),
                "logger": LIBRDKAFKA_LOG,
                "error_cb": self._on_producer_error,
                "reconnect.backoff.max.ms": RECONNECT_BACKOFF_MAX_MS,
            }
        )

    def _on_producer_error(self, error: KafkaError) -> None:
        on_error(error)
        if error.fatal():
            self._producer_failed = True

    def _current_producer(self) -> Producer:
        """The producer, replaced after a fatal error: librdkafka fails everything on a producer after one."""
        with self._producer_lock:
            if self._producer_failed:
                self._producer = self._new_producer()
                self._producer_failed = False
            return self._producer

    def _serve_reports(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(REPORT_INTERVAL)

    def ensure_topics(
        self, names: Iterable[str], partitions: int | None = None, replication: int | None = None
    ) -> None:
        """Create the topics that do not exist yet; existing ones are left as they are."""
        wanted = [check_name(name, "topic") for name in dict.fromkeys(names)]
        if not wanted:
            return
        new = [NewTopic(name, partitions or self.partitions, replication or self.replication) for name in wanted]
        try:
            futures = self._admin.create_topics(
                new, operation_timeout=self._admin_timeout, request_timeout=self._admin_timeout
            )
            for name, future in futures.items():
                try:
                    future.result()
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        raise StorageFailure(f"cannot create topic {name}: {exc.args[0].str()}") from exc
            self._wait_for_leaders(wanted)
        except KafkaException as exc:
            raise StorageFailure(f"cannot create topics on {self.bootstrap_servers}: {exc}") from exc
        with self._topics_lock:
            self._known_topics.update(wanted)

    def _wait_for_leaders(self, names: Sequence[str]) -> None:
        """Until the brokers' metadata shows every partition of `names` with a leader."""
        deadline = time.monotonic() + self._admin_timeout
        while True:
            metadata = self._admin.list_topics(timeout=self._admin_timeout)
            if all(
                name in metadata.topics
                and metadata.topics[name].error is None
                and metadata.topics[name].partitions
                and all(p.leader >= 0 for p in metadata.topics[name].partitions.values())
                for name in names
            ):
                return
            if time.monotonic() > deadline:
                raise StorageFailure(f"topics {', '.join(names)} have no leader after {self._admin_timeout:.0f}s")
            time.sleep(0.05)

    def _ensure_known(self, names: Iterable[str]) -> None:
        with self._topics_lock:
            missing = set(names) - self._known_topics
        if missing:
            self.ensure_topics(sorted(missing))

    def publish(self, messages: Sequence[Message]) -> None:
        batch = [(check_name(m.topic, "topic"), m.key.encode(), bytes(m.value)) for m in messages]
        if not batch:
            return
        if self._closed.is_set():
            raise StorageFailure("the bus is closed")
        self._ensure_known(topic for topic, _, _ in batch)
        producer = self._current_producer()
        deliveries = _Deliveries(len(batch))
        deadline = time.monotonic() + self.delivery_timeout
        for topic, key, value in batch:
            self._produce(producer, topic, key, value, deliveries, deadline)
        # The reports come at the latest when librdkafka's own delivery timeout expires each message.
        if not deliveries.done.wait(max(deadline - time.monotonic(), 0) + 5.0):
            raise StorageFailure(f"Kafka did not acknowledge {len(batch)} messages in {self.delivery_timeout:.0f}s")
        if deliveries.errors:
            first = deliveries.errors[0]
            raise StorageFailure(f"Kafka refused {len(deliveries.errors)} of {len(batch)} messages: {first.str()}")

    @staticmethod
    def _produce(
        producer: Producer, topic: str, key: bytes, value: bytes, deliveries: _Deliveries, deadline: float
    ) -> None:
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=deliveries.report)
                return
            except BufferError:
                # The local queue is full: wait for deliveries to make room, within the publish's deadline.
                if time.monotonic() > deadline:
                    raise StorageFailure("the Kafka producer's queue stayed full") from None
                time.sleep(REPORT_INTERVAL)
            except KafkaException as exc:
                raise StorageFailure(f"cannot publish to {topic}: {exc}") from exc

    def subscribe(self, group: str, topics: Sequence[str]) -> KafkaBusConsumer:
        names = [check_name(topic, "topic") for topic in dict.fromkeys(topics)]
        self._ensure_known(names)
        return KafkaBusConsumer(self, check_name(group, "group"), names)

    def ping(self) -> None:
        """Some broker answers a metadata request (the cluster may still have others down)."""
        try:
            self._admin.list_topics(timeout=PING_TIMEOUT)
        except KafkaException as exc:
            raise ServiceUnavailable(f"no Kafka broker of {self.bootstrap_servers} answers: {exc}") from exc

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._reporter.join()
        self._producer.flush(self.delivery_timeout)


class KafkaBusConsumer:
    """Implements `ports.bus.BusConsumer`; see the module docstring for its group semantics."""

    def __init__(self, bus: KafkaBus, group: str, topics: Sequence[str]) -> None:
        self.group = group
        self.topics = tuple(topics)
        # The group's next offset per partition as this consumer knows it (fetched on assignment).
        self._committed: dict[TopicPartitionKey, int] = {}
        self._buffer: list[Record] = []
        self._assigned = False
        self._closed = False
        self._consumer = Consumer(
            {
                "bootstrap.servers": bus.bootstrap_servers,
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "partition.assignment.strategy": "cooperative-sticky",
                "session.timeout.ms": SESSION_TIMEOUT_MS,
                "heartbeat.interval.ms": SESSION_TIMEOUT_MS // 5,
                "logger": LIBRDKAFKA_LOG,
                "error_cb": on_error,
                "reconnect.backoff.max.ms": RECONNECT_BACKOFF_MAX_MS,
            }
        )
        try:
            self._consumer.subscribe(
                list(self.topics), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
            )
            deadline = time.monotonic() + bus.join_timeout
            while not self._assigned and time.monotonic() < deadline:
                self._buffer.extend(self._fetch(1000, 0.1))
        except BaseException:
            self._consumer.close()
            raise

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if partitions:
            for tp in consumer.committed(partitions, timeout=ADMIN_TIMEOUT):
                self._committed[(tp.topic, tp.partition)] = tp.offset
        self._assigned = True

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Forget revoked partitions; records buffered from them go to their next owner instead."""
        gone = {(tp.topic, tp.partition) for tp in partitions}
        for key in gone:
            self._committed.pop(key, None)
        self._buffer = [r for r in self._buffer if (r.topic, r.partition) not in gone]

    def _fetch(self, max_records: int, timeout: float) -> list[Record]:
        """The first record waits up to `timeout`; the rest are what is already fetched."""
        try:
            return self._fetch_messages(max_records, timeout)
        except KafkaException as exc:
            raise StorageFailure(f"Kafka consumer of group {self.group}: {exc}") from exc

    def _fetch_messages(self, max_records: int, timeout: float) -> list[Record]:
        deadline = time.monotonic() + timeout
        while True:
            first = self._consumer.poll(max(deadline - time.monotonic(), 0))
            if first is None:
                return []
            messages = [first, *self._consumer.consume(max_records - 1, 0)] if max_records > 1 else [first]
            records = [record for message in messages if (record := self._record(message)) is not None]
            if records or time.monotonic() >= deadline:
                return records

    @staticmethod
    def _record(message: KafkaMessage) -> Record | None:
        error = message.error()
        if error is not None:
            if error.fatal():
                raise StorageFailure(f"Kafka consumer failed: {error.str()}")
            log.warning("Kafka consumer: %s", error.str())
            return None
        key = message.key()
        value = message.value()
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        if topic is None or partition is None or offset is None:
            return None
        return Record(
            topic,
            partition,
            offset,
            key.decode() if isinstance(key, bytes) else (key or ""),
            value if isinstance(value, bytes) else (value or "").encode(),
        )

    def poll(self, max_records: int, timeout: float) -> list[Record]:
        if self._buffer:
            records, self._buffer = self._buffer[:max_records], self._buffer[max_records:]
            return records
        return self._fetch(max_records, timeout)

    def commit(self, records: Sequence[Record]) -> None:
        """Synchronously store, per partition still assigned, the offset after the newest record."""
        latest: dict[TopicPartitionKey, int] = {}
        for record in records:
            key = (record.topic, record.partition)
            latest[key] = max(latest.get(key, 0), record.offset + 1)
        offsets = [
            TopicPartition(topic, partition, offset)
            for (topic, partition), offset in latest.items()
            if (topic, partition) in self._committed and offset > self._committed[(topic, partition)]
        ]
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            raise StorageFailure(f"Kafka commit of group {self.group} failed: {exc}") from exc
        for tp in offsets:
            self._committed[(tp.topic, tp.partition)] = tp.offset

    def lag(self) -> int:
        """Sum over the topics' partitions of the high watermark minus the group's committed offset."""
        try:
            partitions = [
                TopicPartition(topic, partition)
                for topic in self.topics
                for partition in self._consumer.list_topics(topic, timeout=ADMIN_TIMEOUT).topics[topic].partitions
            ]
            total = 0
            for tp in self._consumer.committed(partitions, timeout=ADMIN_TIMEOUT):
                low, high = self._consumer.get_watermark_offsets(tp, timeout=ADMIN_TIMEOUT, cached=False)
                total += max(high - max(tp.offset, low), 0)
        except KafkaException as exc:
            raise StorageFailure(f"Kafka lag of group {self.group}: {exc}") from exc
        return total

    def close(self) -> None:
        """Leave the group at once, so its partitions go to the other members without a session timeout."""
        if not self._closed:
            self._closed = True
            self._consumer.close()
