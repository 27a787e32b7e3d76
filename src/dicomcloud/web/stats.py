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


@router.get("/summary", summary="Studies, series, instances and bytes stored, per tenant and per modality")
def summary(request: Request) -> dict[str, Any]:
    return stats.summary(_warehouse(request))


@router.get("", summary="The statistics available")
def names() -> dict[str, list[str]]:
    return {"statistics": list(STATISTICS)}


@router.get("/{name}", summary="One statistic as rows")
def statistic(
    request: Request, name: str, limit: Annotated[int, Query(ge=1, le=10_000)] = 20
) -> list[dict[str, Any]]:
    if name not in STATISTICS:
        raise NotFound(f"no statistic {name[:64]!r}; known: {', '.join(STATISTICS)}")
    return _warehouse(request).statistics(name, limit)
