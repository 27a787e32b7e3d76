"""Statistics from the warehouse, for the API, the dashboard and `dicomcloud stats`.

A time range (`RANGES`: the last 24 hours, 7 or 30 days, or all) bounds what the logs count: received,
read, failed, refused. What is stored is counted as it is now, whatever the range.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pydicom.uid import UID

from dicomcloud.errors import InvalidInput
from dicomcloud.ports.warehouse import Warehouse

SUMMARY_PARTS = ("totals", "tenants", "modalities")
RANGES: dict[str, timedelta | None] = {
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
    "all": None,
}
DAY = timedelta(days=1)


def since(range_name: str, now: datetime | None = None) -> datetime | None:
    """The naive UTC moment a range starts (None for all); InvalidInput for a range not in RANGES."""
    if range_name not in RANGES:
        raise InvalidInput(f"unknown range {range_name[:16]!r}; known: {', '.join(RANGES)}")
    span = RANGES[range_name]
    if span is None:
        return None
    return (now or datetime.now(UTC)).astimezone(UTC).replace(tzinfo=None) - span


def summary(warehouse: Warehouse, range_name: str = "all", now: datetime | None = None) -> dict[str, Any]:
    """Studies, series, instances and bytes stored (in all, per tenant, per modality); what was received in
    the range, at what rate per day; and the requests in it: reads (successful GETs of a study) and failures."""
    start = since(range_name, now)
    totals = warehouse.statistics("totals")
    received = warehouse.statistics("received", since=start)[0]
    requests = warehouse.statistics("requests", since=start)[0]
    return {
        "range": range_name,
        "since": start.isoformat() if start else None,
        "totals": totals[0] if totals else {"studies": 0, "series": 0, "instances": 0, "bytes": 0},
        "tenants": warehouse.statistics("tenants", limit=1000),
        "modalities": warehouse.statistics("modalities", limit=1000),
        "received": {**received, **_per_day(received, RANGES[range_name], now)},
        "requests": requests,
    }


def _per_day(received: dict[str, Any], span: timedelta | None, now: datetime | None) -> dict[str, float]:
    """Instances and bytes per day over the range (for "all": since the first object arrived; a day at least)."""
    if span is None:
        end = (now or datetime.now(UTC)).astimezone(UTC).replace(tzinfo=None)
        first = received["first_received_at"]
        span = end - datetime.fromisoformat(first) if first else DAY
    days = max(span / DAY, 1.0)
    return {
        "days": round(days, 3),
        "instances_per_day": round(received["instances"] / days, 3),
        "bytes_per_day": round(received["bytes"] / days, 3),
    }


def statistic(warehouse: Warehouse, name: str, limit: int, range_name: str = "all") -> list[dict[str, Any]]:
    """One statistic over a range; transfer syntaxes also by name (a person reads "JPEG Baseline", not a UID)."""
    rows = warehouse.statistics(name, limit, since(range_name))
    for row in rows:
        for column in ("transfer_syntax", "target_syntax"):
            if column in row:
                row[f"{column}_name"] = UID(row[column]).name if row[column] else ""
    return rows


def format_table(title: str, rows: Sequence[dict[str, Any]]) -> str:
    """Rows as an aligned text table under a title; numbers right-aligned."""
    if not rows:
        return f"{title}\n  (none)\n"
    names = list(rows[0])
    cells = [[_text(row.get(name)) for name in names] for row in rows]
    widths = [max(len(name), *(len(line[i]) for line in cells)) for i, name in enumerate(names)]
    numeric = [all(isinstance(row.get(name), (int, float)) for row in rows) for name in names]

    def line(values: Sequence[str]) -> str:
        padded = (v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True))
        return "  " + "  ".join(padded).rstrip()

    rule = "  " + "  ".join("-" * w for w in widths)
    return "\n".join([title, line(names), rule, *(line(c) for c in cells)]) + "\n"


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    return str(value)
