"""Statistics from the warehouse, for the API, the dashboard and `dicomcloud stats`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dicomcloud.ports.warehouse import Warehouse

SUMMARY_PARTS = ("totals", "tenants", "modalities")


def summary(warehouse: Warehouse) -> dict[str, Any]:
    """Studies, series, instances and bytes stored: in all, per tenant and per modality."""
    totals = warehouse.statistics("totals")
    return {
        "totals": totals[0] if totals else {"studies": 0, "series": 0, "instances": 0, "bytes": 0},
        "tenants": warehouse.statistics("tenants", limit=1000),
        "modalities": warehouse.statistics("modalities", limit=1000),
    }


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
