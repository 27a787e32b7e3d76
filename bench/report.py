"""Statistics, the issue's targets, and the two outputs: a text table and a JSON document."""

from __future__ import annotations

import enum
import statistics
from dataclasses import dataclass, field
from typing import Any

SERVERS = ("dicomcloud", "orthanc")
MB = 1024 * 1024


class Unit(enum.Enum):
    INSTANCES = "inst/s"
    MEGABYTES = "MB/s"
    REQUESTS = "req/s"


class Goal(enum.Enum):
    """How the ratio dicomcloud/Orthanc is formed and compared with the target value."""

    TIME_AT_MOST = "time ratio <="  # median time ratio
    THROUGHPUT_AT_LEAST = "throughput ratio >="
    RSS_PEAK_BELOW_MB = "dicomcloud peak RSS < MB"
    NONE = "reported only"


@dataclass(frozen=True)
class Target:
    goal: Goal
    value: float = 0.0

    def text(self) -> str:
        if self.goal is Goal.TIME_AT_MOST:
            return f"time <= {self.value:g}x" if self.value >= 1 else f"time <= 1/{round(1 / self.value)}"
        if self.goal is Goal.THROUGHPUT_AT_LEAST:
            return f"thrpt >= {self.value:g}x"
        if self.goal is Goal.RSS_PEAK_BELOW_MB:
            return f"RSS < {self.value:g} MB"
        return "-"


@dataclass
class Measured:
    """One server's samples for one operation."""

    seconds: list[float] = field(default_factory=list)
    size: int = 0  # bytes of one response (or request body, for uploads)
    items: int = 1  # instances per sample (ingest, STOW) or results per response (QIDO)
    rss_before: int = 0
    rss_peak: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def p90(self) -> float:
        ordered = sorted(self.seconds)
        return ordered[max(0, -(-9 * len(ordered) // 10) - 1)]

    def throughput(self, unit: Unit) -> float:
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
    results: dict[str, Measured] = field(default_factory=lambda: {name: Measured() for name in SERVERS})

    @property
    def complete(self) -> bool:
        return all(self.results[name].seconds for name in SERVERS)

    def ratio(self) -> float | None:
        if not self.complete:
            return None
        ours, theirs = self.results["dicomcloud"], self.results["orthanc"]
        if self.target.goal is Goal.RSS_PEAK_BELOW_MB:
            return ours.rss_peak / theirs.rss_peak
        if self.target.goal is Goal.THROUGHPUT_AT_LEAST:
            return ours.throughput(self.unit) / theirs.throughput(self.unit)
        return ours.median / theirs.median

    def met(self) -> bool | None:
        ratio = self.ratio()
        if ratio is None or self.target.goal is Goal.NONE:
            return None
        if self.target.goal is Goal.TIME_AT_MOST:
            return ratio <= self.target.value
        if self.target.goal is Goal.THROUGHPUT_AT_LEAST:
            return ratio >= self.target.value
        return self.results["dicomcloud"].rss_peak < self.target.value * MB

    def to_json(self) -> dict[str, Any]:
        servers: dict[str, Any] = {}
        for name, measured in self.results.items():
            entry: dict[str, Any] = {"samples_s": measured.seconds, "bytes": measured.size, "items": measured.items}
            if measured.seconds:
                entry |= {
                    "median_s": measured.median,
                    "p90_s": measured.p90,
                    "throughput": measured.throughput(self.unit),
                    "throughput_unit": self.unit.value,
                }
            if measured.rss_peak:
                entry |= {"rss_before_bytes": measured.rss_before, "rss_peak_bytes": measured.rss_peak}
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
    header = ("operation", "dc median", "dc p90", "orthanc median", "orthanc p90", "dc thrpt", "orthanc thrpt",
              "ratio dc/orthanc", "target", "met")
    rows: list[tuple[str, ...]] = [header]
    for op in operations:
        if not op.complete:
            rows.append((op.name, *["-"] * 8, "not run"))
            continue
        ours, theirs = op.results["dicomcloud"], op.results["orthanc"]
        ratio, met = op.ratio(), op.met()
        rows.append((
            op.name,
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
        for name, measured in op.results.items():
            if measured.rss_peak:
                lines.append(f"{op.name}: {name} RSS {measured.rss_before / MB:.0f} MB before, "
                             f"{measured.rss_peak / MB:.0f} MB peak while streaming {measured.size / MB:.0f} MB")
    for name, counts in result_counts.items():
        if len(set(counts.values())) > 1:
            lines.append(f"{name}: the servers returned different numbers of results: {counts}")
    return "\n".join(lines)
