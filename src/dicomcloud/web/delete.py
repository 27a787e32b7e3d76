"""DELETE of a study, series or instance (not in PS3.18; the shape common archives offer).

Once the answer is sent, the instances are gone from every answer of every server (archive/remove.py).
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from dicomcloud.web.context import RequestScope, Scope, path_uid

router = APIRouter(tags=["Delete"])


@router.delete("/studies/{study}", status_code=204, summary="Delete a study")
def delete_study(scope: Scope, study: str) -> Response:
    return delete(scope, path_uid(study, "StudyInstanceUID"))


@router.delete("/studies/{study}/series/{series}", status_code=204, summary="Delete a series")
def delete_series(scope: Scope, study: str, series: str) -> Response:
    return delete(scope, path_uid(study, "StudyInstanceUID"), path_uid(series, "SeriesInstanceUID"))


@router.delete("/studies/{study}/series/{series}/instances/{instance}", status_code=204, summary="Delete an instance")
def delete_instance(scope: Scope, study: str, series: str, instance: str) -> Response:
    return delete(
        scope,
        path_uid(study, "StudyInstanceUID"),
        path_uid(series, "SeriesInstanceUID"),
        path_uid(instance, "SOPInstanceUID"),
    )


def delete(scope: RequestScope, study: str, series: str | None = None, sop: str | None = None) -> Response:
    scope.archive.remove.delete(scope.tenant, study, series, sop)
    return Response(status_code=204)
