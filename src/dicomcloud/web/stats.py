"""`/api/stats/…`: the warehouse's statistics as JSON, served beside DICOMweb by the same app."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from dicomcloud.archive import stats
from dicomcloud.errors import NotFound
from dicomcloud.ports.warehouse import STATISTICS, Warehouse

router = APIRouter(prefix="/api/stats", tags=["Statistics"])


def _warehouse(request: Request) -> Warehouse:
    warehouse: Warehouse = request.app.state.archive.runtime.warehouse
    return warehouse


Range = Annotated[str, Query(alias="range", description="what the logs count: 24h, 7d, 30d or all")]


@router.get("/summary", summary="What is stored, per tenant and modality; what was received and read in a range")
def summary(request: Request, range_name: Range = "all") -> dict[str, Any]:
    return stats.summary(_warehouse(request), range_name)


@router.get("", summary="The statistics available")
def names() -> dict[str, list[str]]:
    return {"statistics": list(STATISTICS)}


@router.get("/{name}", summary="One statistic as rows")
def statistic(
    request: Request, name: str, limit: Annotated[int, Query(ge=1, le=10_000)] = 20, range_name: Range = "all"
) -> list[dict[str, Any]]:
    if name not in STATISTICS:
        raise NotFound(f"no statistic {name[:64]!r}; known: {', '.join(STATISTICS)}")
    return stats.statistic(_warehouse(request), name, limit, range_name)
