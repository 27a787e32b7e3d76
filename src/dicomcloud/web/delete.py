"""DELETE of a study, series or instance (not in PS3.18; the shape common archives offer).

The index forgets first, then the files go, then the series documents of the touched series: a
crash in between leaves at worst an orphan file or a stale document, never an indexed instance
without its file. A series that still has instances gets a newer index version, so its document
is rebuilt on the next read; only the documents of series that are gone are removed here.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response

from dicomcloud.archive.metadata import document_key
from dicomcloud.errors import NotFound
from dicomcloud.ports.index import SeriesKey
from dicomcloud.web.context import DicomWeb, WebContext, path_uid

log = logging.getLogger(__name__)

router = APIRouter(tags=["Delete"])


@router.delete("/studies/{study}", status_code=204, summary="Delete a study")
def delete_study(web: WebContext, study: str) -> Response:
    return delete(web, path_uid(study, "StudyInstanceUID"))


@router.delete("/studies/{study}/series/{series}", status_code=204, summary="Delete a series")
def delete_series(web: WebContext, study: str, series: str) -> Response:
    return delete(web, path_uid(study, "StudyInstanceUID"), path_uid(series, "SeriesInstanceUID"))


@router.delete("/studies/{study}/series/{series}/instances/{instance}", status_code=204, summary="Delete an instance")
def delete_instance(web: WebContext, study: str, series: str, instance: str) -> Response:
    return delete(
        web,
        path_uid(study, "StudyInstanceUID"),
        path_uid(series, "SeriesInstanceUID"),
        path_uid(instance, "SOPInstanceUID"),
    )


def delete(web: DicomWeb, study: str, series: str | None = None, sop: str | None = None) -> Response:
    runtime = web.runtime
    removed = runtime.index.delete(web.tenant, study, series, sop)
    if not removed:
        raise NotFound(f"nothing to delete at study {study}" + (f" series {series}" if series else ""))
    web.archive.qido_cache.changed(web.tenant, {loc.study_instance_uid for loc in removed})
    for location in removed:
        runtime.storage.remove_instance(location.file_path)
    touched = {SeriesKey(web.tenant, loc.study_instance_uid, loc.series_instance_uid) for loc in removed}
    for key in touched:
        if runtime.index.series_version(key) is None:
            runtime.storage.delete_document(document_key(key))
    log.info("DELETE %s: %d instances of %d series removed", web.tenant, len(removed), len(touched))
    return Response(status_code=204)
