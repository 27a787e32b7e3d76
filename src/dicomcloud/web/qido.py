"""QIDO-RS search (PS3.18 10.6): the index answers, the series documents fill in instance attributes.

Decisions:
- An empty result is 200 with `[]` (RFC 9110, and the direction of DICOM CP-2473); dicomweb-client
  and OHIF read both that and 204.
- At most MAX_RESULTS matches are returned; when a request asks for more (or sets no limit and more
  exist) the response carries `Warning: 299` as PS3.18 8.3.4.4 describes, and the client pages
  with `offset`.
- Matching keys the index cannot match are ignored and named in a `Warning: 299` (PS3.18 8.3.4.3).
- Each match holds the level's default attributes, the matching keys, the includefields and
  RetrieveURL (0008,1190). At instance level, includefields the index does not keep (or `all`) are
  taken from the instance's DICOM JSON in its series document, bulk data left out.
- Answers are kept for `backends.qido_cache_ttl` seconds in the cache port, keyed by tenant and the
  normalised request, and dropped as soon as the data they cover changes (services/qido_cache.py).
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from typing import Any

from fastapi import APIRouter, Request, Response
from pydicom.datadict import tag_for_keyword

from dicomcloud.archive.qido_cache import CachedResult
from dicomcloud.dicom.dicomjson import KeywordEncoder, dumps
from dicomcloud.dicom.query import QIDO_LEVEL_KEYWORDS, Level, Query, parse_qido
from dicomcloud.web.context import DicomWeb, WebContext, path_uid
from dicomcloud.web.negotiation import json_media_type

MAX_RESULTS = 10_000
LIMIT_WARNING = (
    '299 dicomcloud "The number of results exceeded the maximum supported by the server. '
    'Additional results can be requested."'
)

router = APIRouter(tags=["QIDO-RS"])


@router.get("/studies", summary="Search for studies")
def search_studies(request: Request, web: WebContext) -> Response:
    return search(web, request, "study")


@router.get("/series", summary="Search for series")
def search_all_series(request: Request, web: WebContext) -> Response:
    return search(web, request, "series")


@router.get("/studies/{study}/series", summary="Search for series of a study")
def search_study_series(request: Request, web: WebContext, study: str) -> Response:
    return search(web, request, "series", study=path_uid(study, "StudyInstanceUID"))


@router.get("/instances", summary="Search for instances")
def search_all_instances(request: Request, web: WebContext) -> Response:
    return search(web, request, "instance")


@router.get("/studies/{study}/instances", summary="Search for instances of a study")
def search_study_instances(request: Request, web: WebContext, study: str) -> Response:
    return search(web, request, "instance", study=path_uid(study, "StudyInstanceUID"))


@router.get("/studies/{study}/series/{series}/instances", summary="Search for instances of a series")
def search_series_instances(request: Request, web: WebContext, study: str, series: str) -> Response:
    return search(
        web,
        request,
        "instance",
        study=path_uid(study, "StudyInstanceUID"),
        series=path_uid(series, "SeriesInstanceUID"),
    )


def search(
    web: DicomWeb, request: Request, level: Level, *, study: str | None = None, series: str | None = None
) -> Response:
    media_type = json_media_type(request.headers.get("accept"))
    params: dict[str, list[str]] = defaultdict(list)
    for name, value in request.query_params.multi_items():
        params[name].append(value)
    query = parse_qido(level, params, study_instance_uid=study, series_instance_uid=series)
    slot = web.archive.qido_cache.slot(web.tenant, study, _normalised(web, level, study, series, params))
    cached = slot.get() if slot is not None else None
    if cached is None:
        cached = _search(web, query)
        if slot is not None:
            slot.put(cached)
    headers = {"Warning": cached.warning} if cached.warning else {}
    return Response(cached.body, media_type=media_type, headers=headers)


def _normalised(
    web: DicomWeb, level: Level, study: str | None, series: str | None, params: dict[str, list[str]]
) -> str:
    """What the answer depends on; parameter order does not matter, the base URL (RetrieveURL) does."""
    return json.dumps([level, study, series, web.base_url, sorted(params.items())])


def _search(web: DicomWeb, query: Query) -> CachedResult:
    level = query.level
    capped = query.limit is None or query.limit > MAX_RESULTS
    limit = MAX_RESULTS if query.limit is None or query.limit > MAX_RESULTS else query.limit
    # One extra row tells whether the cap cut anything off.
    rows = web.runtime.index.search(web.tenant, dataclasses.replace(query, limit=limit + 1 if capped else limit))
    warnings = []
    if len(rows) > limit or limit < (query.limit or 0):
        warnings.append(LIMIT_WARNING)
    if query.unsupported:
        warnings.append(f'299 dicomcloud "Not supported for matching, ignored: {", ".join(query.unsupported)}"')
    rows = rows[:limit]
    results = _instance_results(web, query, rows) if level == "instance" else _results(web, query, rows)
    return CachedResult(dumps(results), ", ".join(warnings))


def _wanted(query: Query, row: dict[str, Any]) -> list[str]:
    """The keywords of the row this query returns (PS3.18 Tables 10.6.3-3 to -5).

    Those are the level's defaults, plus the defaults of a parent level the URL does not fix, the
    parents' UIDs, the includefields and the matching keys (parse_qido folds those in).
    """
    if query.include_all:
        return list(row)
    names = set(QIDO_LEVEL_KEYWORDS[query.level]) | query.includefields | {"StudyInstanceUID"}
    if query.level != "study":
        names.add("SeriesInstanceUID")
        if query.study_instance_uid is None:
            names.update(QIDO_LEVEL_KEYWORDS["study"])
    if query.level == "instance" and query.series_instance_uid is None:
        names.update(QIDO_LEVEL_KEYWORDS["series"])
    return [name for name in row if name in names]


def _retrieve_url(web: DicomWeb, level: Level, row: dict[str, Any]) -> str:
    study = str(row["StudyInstanceUID"])
    if level == "study":
        return web.study_url(study)
    series = str(row["SeriesInstanceUID"])
    if level == "series":
        return web.series_url(study, series)
    return web.instance_url(study, series, str(row["SOPInstanceUID"]))


def _results(web: DicomWeb, query: Query, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row's attributes and RetrieveURL; the rows of one search share their keys, so one encoder serves all."""
    if not rows:
        return []
    encode = KeywordEncoder([*_wanted(query, rows[0]), "RetrieveURL"])
    return [encode({**row, "RetrieveURL": _retrieve_url(web, query.level, row)}) for row in rows]


def _instance_results(web: DicomWeb, query: Query, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Instance matches; attributes beyond the index's come from the series documents."""
    extra_tags = {_tag(k) for k in query.includefields} - {None}
    results = _results(web, query, rows)
    if not (query.include_all or any(k not in row for row in rows for k in query.includefields)):
        return results
    documents: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    merged_results = []
    for row, result in zip(rows, results, strict=True):
        study, series = str(row["StudyInstanceUID"]), str(row["SeriesInstanceUID"])
        if (study, series) not in documents:
            doc = web.archive.metadata.document(web.series_key(study, series))
            documents[(study, series)] = (
                {sop: entry.metadata for sop, entry in doc.instances.items()} if doc is not None else {}
            )
        metadata = documents[(study, series)].get(str(row["SOPInstanceUID"]), {})
        from_document = {
            tag: value
            for tag, value in metadata.items()
            if (query.include_all or tag in extra_tags) and not _is_bulkdata(value)
        }
        merged = {**from_document, **result}
        merged_results.append(dict(sorted(merged.items())))
    return merged_results


def _tag(keyword: str) -> str | None:
    tag = tag_for_keyword(keyword)
    return None if tag is None else f"{tag:08X}"


def _is_bulkdata(value: Any) -> bool:
    """Bulk data anywhere in an attribute: QIDO responses carry no bulk data (PS3.18 10.6.3.3.1)."""
    if not isinstance(value, dict):
        return False
    if "BulkDataURI" in value or "InlineBinary" in value:
        return True
    return value.get("vr") == "SQ" and any(
        _is_bulkdata(attribute) for item in value.get("Value", []) for attribute in item.values()
    )
