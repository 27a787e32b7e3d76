"""Statistics, the issues' targets, and the two outputs: a text table and a JSON document.

Each operation compares two servers: ours (first) against a baseline (second): dicomcloud against Orthanc (or
against nginx serving the same bytes as a static file, or the floor under an ingest target against Orthanc), or,
with `--s3`, dicomcloud on S3 against the same archive on the local filesystem."""

from __future__ import annotations

import enum
import statistics
from dataclasses import dataclass, field
from typing import Any

SERVERS = ("dicomcloud", "orthanc")
NGINX_SERVERS = ("dicomcloud", "nginx")
S3_SERVERS = ("s3", "fs")
# What the machine allows under an ingest target (bench/floor.py) against Orthanc's figure for the same work.
FLOOR_SERVERS = ("floor", "orthanc")
MB = 1024 * 1024


class Unit(enum.Enum):
    INSTANCES = "inst/s"
    MEGABYTES = "MB/s"
    REQUESTS = "req/s"
    FRAMES = "frames/s"  # a load of parallel connections: the rate it sustained, not one over the median


class Goal(enum.Enum):
    """How the ratio ours/baseline is formed and compared with the target value."""

    TIME_AT_MOST = "time ratio <="  # median time ratio
    P95_TIME_AT_MOST = "p95 time ratio <="
    THROUGHPUT_AT_LEAST = "throughput ratio >="
    THROUGHPUT_AT_LEAST_P99_HALF = "throughput ratio >=, and our p99 at most half the baseline's"
    MEDIAN_WITHIN_MS = "median minus the baseline's median <= ms"
    RSS_PEAK_BELOW_MB = "our peak RSS < MB"
    RSS_GROWTH_BELOW_MB = "our RSS growth while streaming < MB"
    NONE = "reported only"


@dataclass(frozen=True)
class Target:
    goal: Goal
    value: float = 0.0

    def text(self) -> str:
        if self.goal is Goal.TIME_AT_MOST:
            return f"time <= {self.value:g}x" if self.value >= 1 else f"time <= 1/{round(1 / self.value)}"
        if self.goal is Goal.P95_TIME_AT_MOST:
            return f"p95 <= {self.value:g}x" if self.value >= 1 else f"p95 <= 1/{round(1 / self.value)}"
        if self.goal is Goal.THROUGHPUT_AT_LEAST:
            return f"thrpt >= {self.value:g}x"
        if self.goal is Goal.THROUGHPUT_AT_LEAST_P99_HALF:
            return f"thrpt >= {self.value:g}x, p99 <= 1/2"
        if self.goal is Goal.MEDIAN_WITHIN_MS:
            return f"p50 <= +{self.value:g} ms"
        if self.goal is Goal.RSS_PEAK_BELOW_MB:
            return f"RSS < {self.value:g} MB"
        if self.goal is Goal.RSS_GROWTH_BELOW_MB:
            return f"RSS +< {self.value:g} MB"
        return "-"


@dataclass
class Measured:
    """One server's samples for one operation.

    For a load of parallel connections (Unit.FRAMES), `seconds` holds the latency at percentiles 1 to 99 and
    `rate` the requests per second the load sustained."""

    seconds: list[float] = field(default_factory=list)
    size: int = 0  # bytes of one response (or request body, for uploads)
    items: int = 1  # instances per sample (ingest, STOW) or results per response (QIDO)
    rss_before: int = 0
    rss_peak: int = 0
    rss_idle_after: int = 0
    rate: float = 0.0

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def p90(self) -> float:
        ordered = sorted(self.seconds)
        return ordered[max(0, -(-9 * len(ordered) // 10) - 1)]

    @property
    def p95(self) -> float:
        ordered = sorted(self.seconds)
        return ordered[max(0, -(-95 * len(ordered) // 100) - 1)]

    @property
    def p99(self) -> float:
        ordered = sorted(self.seconds)
        return ordered[max(0, -(-99 * len(ordered) // 100) - 1)]

    def throughput(self, unit: Unit) -> float:
        if unit is Unit.FRAMES:
            return self.rate
        if unit is Unit.INSTANCES:
            return self.items / self.median
        if unit is Unit.MEGABYTES:
            return self.size / MB / self.median
        return 1 / self.median


@dataclass
class Operation:
    name: str
    description: str
    unit: Unit
    target: Target
    servers: tuple[str, str] = SERVERS  # ours, the baseline
    results: dict[str, Measured] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.servers:
            self.results.setdefault(name, Measured())

    @property
    def complete(self) -> bool:
        return all(self.results[name].seconds for name in self.servers)

    def ratio(self) -> float | None:
        if not self.complete:
            return None
        ours, theirs = (self.results[name] for name in self.servers)
        if self.target.goal in (Goal.RSS_PEAK_BELOW_MB, Goal.RSS_GROWTH_BELOW_MB):
            return ours.rss_peak / theirs.rss_peak
        if self.target.goal is Goal.P95_TIME_AT_MOST:
            return ours.p95 / theirs.p95
        throughput_goals = (Goal.THROUGHPUT_AT_LEAST, Goal.THROUGHPUT_AT_LEAST_P99_HALF)
        if self.target.goal in throughput_goals or self.unit is Unit.FRAMES:
            return ours.throughput(self.unit) / theirs.throughput(self.unit)
        return ours.median / theirs.median

    def met(self) -> bool | None:
        ratio = self.ratio()
        if ratio is None or self.target.goal is Goal.NONE:
            return None
        ours, theirs = (self.results[name] for name in self.servers)
        if self.target.goal in (Goal.TIME_AT_MOST, Goal.P95_TIME_AT_MOST):
            return ratio <= self.target.value
        if self.target.goal is Goal.THROUGHPUT_AT_LEAST:
            return ratio >= self.target.value
        if self.target.goal is Goal.THROUGHPUT_AT_LEAST_P99_HALF:
            return ratio >= self.target.value and ours.p99 <= theirs.p99 / 2
        if self.target.goal is Goal.MEDIAN_WITHIN_MS:
            return (ours.median - theirs.median) * 1000 <= self.target.value
        if self.target.goal is Goal.RSS_GROWTH_BELOW_MB:
            return ours.rss_peak - ours.rss_before < self.target.value * MB
        return ours.rss_peak < self.target.value * MB

    def to_json(self) -> dict[str, Any]:
        servers: dict[str, Any] = {}
        for name, measured in self.results.items():
            entry: dict[str, Any] = {"samples_s": measured.seconds, "bytes": measured.size, "items": measured.items}
            if measured.seconds:
                entry |= {
                    "median_s": measured.median,
                    "p90_s": measured.p90,
                    "p95_s": measured.p95,
                    "p99_s": measured.p99,
                    "throughput": measured.throughput(self.unit),
                    "throughput_unit": self.unit.value,
                }
            if measured.rss_peak:
                entry |= {"rss_before_bytes": measured.rss_before, "rss_peak_bytes": measured.rss_peak,
                          "rss_idle_after_bytes": measured.rss_idle_after}
            servers[name] = entry
        return {
            "name": self.name,
            "description": self.description,
            "target": {"goal": self.target.goal.value, "value": self.target.value, "text": self.target.text()},
            "ratio": self.ratio(),
            "met": self.met(),
            "servers": servers,
        }


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def table(operations: list[Operation], result_counts: dict[str, dict[str, int]]) -> str:
    ours_name, theirs_name = operations[0].servers if operations else SERVERS
    header = ("operation", f"{ours_name} median", f"{ours_name} p90", f"{theirs_name} median", f"{theirs_name} p90",
              f"{ours_name} thrpt", f"{theirs_name} thrpt", f"ratio {ours_name}/{theirs_name}", "target", "met")
    rows: list[tuple[str, ...]] = [header]
    for op in operations:
        if not op.complete:
            rows.append((op.name, *["-"] * 8, "not run"))
            continue
        ours, theirs = (op.results[name] for name in op.servers)
        ratio, met = op.ratio(), op.met()
        rows.append((
            op.name if op.servers == (ours_name, theirs_name) else f"{op.name} (vs {op.servers[1]})",
            _ms(ours.median), _ms(ours.p90), _ms(theirs.median), _ms(theirs.p90),
            f"{ours.throughput(op.unit):.1f} {op.unit.value}", f"{theirs.throughput(op.unit):.1f} {op.unit.value}",
            "-" if ratio is None else f"{ratio:.3f}",
            op.target.text(),
            "-" if met is None else "yes" if met else "NO",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [" | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    for op in operations:
        if op.target.goal is Goal.P95_TIME_AT_MOST and op.complete:
            lines.append(f"{op.name}: p95 " + ", ".join(
                f"{name} {_ms(op.results[name].p95)}" for name in op.servers
            ))  # fmt: skip
        if op.unit is Unit.FRAMES and op.complete:
            lines.append(f"{op.name}: p99 " + ", ".join(
                f"{name} {_ms(op.results[name].p99)}" for name in op.servers
            ))  # fmt: skip
        for name, measured in op.results.items():
            if measured.rss_peak:
                lines.append(f"{op.name}: {name} RSS {measured.rss_before / MB:.0f} MB before, "
                             f"{measured.rss_peak / MB:.0f} MB peak while streaming {measured.size / MB:.0f} MB, "
                             f"{measured.rss_idle_after / MB:.0f} MB idle after")
    for name, counts in result_counts.items():
        if len(set(counts.values())) > 1:
            lines.append(f"{name}: the servers returned different numbers of results: {counts}")
    return "\n".join(lines)
