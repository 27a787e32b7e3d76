"""Request metrics of wado-server: count, duration and bytes per method, route template and status.

Recorded by the access log's middleware (web/access_log.py) in its one pass over each response, so they see the
bytes actually sent (after gzip) and the route the router matched; a request that matched no route is labelled
`<unmatched>`, so a scan of random paths cannot grow the label set. The labelled series are kept once looked up:
prometheus_client's `labels()` costs more than the increments it leads to, and the label values are few.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from dicomcloud.metrics import HTTP_DURATION, HTTP_REQUESTS, HTTP_RESPONSE_BYTES


class HttpMetrics:
    def __init__(self) -> None:
        self._requests: dict[tuple[str, str, int], Counter] = {}
        self._timings: dict[tuple[str, str], tuple[Histogram, Counter]] = {}

    def record(self, method: str, route: str, status: int, sent: int, seconds: float) -> None:
        requests = self._requests.get((method, route, status))
        if requests is None:
            requests = self._requests[(method, route, status)] = HTTP_REQUESTS.labels(method, route, str(status))
        timings = self._timings.get((method, route))
        if timings is None:
            timings = self._timings[(method, route)] = (
                HTTP_DURATION.labels(method, route),
                HTTP_RESPONSE_BYTES.labels(method, route),
            )
        requests.inc()
        duration, response_bytes = timings
        duration.observe(seconds)
        response_bytes.inc(sent)
