"""Every Prometheus metric of the archive, in one module, so names and labels stay one vocabulary.

In a service of one process all live in prometheus_client's default registry, which `/metrics` serves.
Labels are bounded sets:
HTTP routes by their template (`/dicom-web/studies/{study}`, never a UID), DIMSE commands and
statuses, the services and topics of this code base.

A service of several processes keeps every value in its run folder (run_folder.py), one file per process,
and `/metrics` serves their sum (ops.py): counters and histograms add up; a process that dies leaves its
counts in the sum, so a total never goes down. A gauge states how to merge the processes' values
(`multiprocess_mode`). None is "live" (summed over live processes only), so a dead process leaves nothing
to retract.
"""

from __future__ import annotations

import logging
import time
from collections import Counter as Tally
from collections.abc import Sequence

from prometheus_client import Counter, Gauge, Histogram

from dicomcloud.errors import DicomCloudError
from dicomcloud.ports.bus import BusConsumer, Record

log = logging.getLogger(__name__)

# Seconds; STOW-RS of large studies and whole-study retrieves run long, so the buckets reach minutes.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# A group's lag costs broker round trips (Kafka), so it is refreshed at most this often.
LAG_INTERVAL = 5.0

HTTP_REQUESTS = Counter(
    "dicomcloud_http_requests",
    "HTTP requests answered, by method, route template and status",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "dicomcloud_http_request_duration_seconds",
    "Time from a request's arrival to the last byte of its response",
    ["method", "route"],
    buckets=DURATION_BUCKETS,
)
HTTP_RESPONSE_BYTES = Counter(
    "dicomcloud_http_response_bytes", "Response body bytes sent (after compression)", ["method", "route"]
)
DIMSE_OPERATIONS = Counter(
    "dicomcloud_dimse_operations", "DIMSE requests answered, by command and final status", ["command", "status"]
)
EVENTS_PROCESSED = Counter(
    "dicomcloud_events_processed",
    "Bus records handled and committed (dead-lettered ones included)",
    ["service", "topic"],
)
EVENTS_FAILED = Counter(
    "dicomcloud_events_failed",
    "Bus records dead-lettered, and the records of each batch attempt that failed and is retried",
    ["service", "topic"],
)
# A group's lag is the group's, not a process's: the one measured last is the truth (one process measures it).
CONSUMER_LAG = Gauge(
    "dicomcloud_consumer_lag",
    "Records published but not yet committed by a consumer group",
    ["group", "topic"],
    multiprocess_mode="mostrecent",
)
TRANSCODE_FAILURES = Counter(
    "dicomcloud_transcode_failures", "Instances whose viewer copy could not be made (a TranscodeFailure was published)"
)
SERIES_METADATA_BUILDS = Counter(
    "dicomcloud_series_metadata_builds", "Series metadata documents written by the webworker, by outcome", ["outcome"]
)


def count_records(counter: Counter, service: str, records: Sequence[Record]) -> None:
    """Add `records` to `counter`, per topic."""
    for topic, count in Tally(record.topic for record in records).items():
        counter.labels(service, topic).inc(count)


class LagReporter:
    """Keeps `dicomcloud_consumer_lag` of one group current, without asking the bus more than every LAG_INTERVAL."""

    def __init__(self, group: str, topics: Sequence[str]) -> None:
        # A consumer of several topics reports their sum, labelled with all of them.
        self._gauge = CONSUMER_LAG.labels(group, ",".join(topics))
        self._due = 0.0

    def update(self, consumer: BusConsumer) -> None:
        now = time.monotonic()
        if now < self._due:
            return
        self._due = now + LAG_INTERVAL
        try:
            self._gauge.set(consumer.lag())
        except DicomCloudError as exc:
            # The loop that owns the consumer reports bus outages; the gauge keeps its last value.
            log.debug("consumer lag not measured: %s", exc.message)
