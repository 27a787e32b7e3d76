"""QIDO-RS search (PS3.18 10.6): the index answers, the series documents fill in instance attributes.

Decisions:
- An empty result is 200 with `[]` (RFC 9110, and the direction of DICOM CP-2473); dicomweb-client
  and OHIF read both that and 204.
- At most MAX_RESULTS matches are returned; when a request asks for more (or sets no limit and more
  exist) the response carries `Warning: 299` as PS3.18 8.3.4.4 describes, and the client pages
  with `offset`.
- Matching keys the index cannot match are ignored and named in a `Warning: 299` (PS3.18 8.3.4.3); so are
  parameters that are no DICOM attribute and no PS3.18 parameter (vendor parameters), never a 400.
- Each match holds the level's default attributes, the matching keys, the includefields and
  RetrieveURL (0008,1190); a series or instance match carries its study's (and patient's) attributes
  when they are named. At instance level, includefields the index does not keep (or `all`), private tags
  included, are taken from the instance's metadata entry, bulk data left out (archive/search.py, shared
  with C-FIND). An includefield the archive cannot know for the level is left out, never an error.
- Answers are kept for `backends.qido_cache_ttl` seconds in the cache port, keyed by tenant and the
  normalised request, and dropped as soon as the data they cover changes (archive/qido_cache.py).
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from typing import Any

from fastapi import APIRouter, Request, Response

from dicomcloud.archive.qido_cache import CachedResult
from dicomcloud.archive.search import Match
from dicomcloud.dicom.dicomjson import KeywordEncoder, dumps
from dicomcloud.dicom.query import QIDO_LEVEL_KEYWORDS, Level, Query, parse_qido
from dicomcloud.web.context import RequestScope, Scope, path_uid
from dicomcloud.web.negotiation import negotiate_json

MAX_RESULTS = 10_000
# Ignored parameters a Warning names, at most (the rest are counted).
MAX_NAMED = 10
LIMIT_WARNING = (
    '299 dicomcloud "The number of results exceeded the maximum supported by the server. '
    'Additional results can be requested."'
)

router = APIRouter(tags=["QIDO-RS"])


@router.get("/studies", summary="Search for studies")
def search_studies(request: Request, scope: Scope) -> Response:
    return search(scope, request, "study")


@router.get("/series", summary="Search for series")
def search_all_series(request: Request, scope: Scope) -> Response:
    return search(scope, request, "series")


@router.get("/studies/{study}/series", summary="Search for series of a study")
def search_study_series(request: Request, scope: Scope, study: str) -> Response:
    return search(scope, request, "series", study=path_uid(study, "StudyInstanceUID"))


@router.get("/instances", summary="Search for instances")
def search_all_instances(request: Request, scope: Scope) -> Response:
    return search(scope, request, "instance")


@router.get("/studies/{study}/instances", summary="Search for instances of a study")
def search_study_instances(request: Request, scope: Scope, study: str) -> Response:
    return search(scope, request, "instance", study=path_uid(study, "StudyInstanceUID"))


@router.get("/studies/{study}/series/{series}/instances", summary="Search for instances of a series")
def search_series_instances(request: Request, scope: Scope, study: str, series: str) -> Response:
    return search(
        scope,
        request,
        "instance",
        study=path_uid(study, "StudyInstanceUID"),
        series=path_uid(series, "SeriesInstanceUID"),
    )


def search(
    scope: RequestScope, request: Request, level: Level, *, study: str | None = None, series: str | None = None
) -> Response:
    media_type = negotiate_json(request)
    params: dict[str, list[str]] = defaultdict(list)
    for name, value in request.query_params.multi_items():
        params[name].append(value)
    query = parse_qido(level, params, study_instance_uid=study, series_instance_uid=series)
    slot = scope.archive.qido_cache.slot(scope.tenant, study, _normalised(scope, level, study, series, params))
    cached = slot.get() if slot is not None else None
    if cached is None:
        cached = _search(scope, query)
        if slot is not None:
            slot.put(cached)
    headers = {"Warning": cached.warning} if cached.warning else {}
    return Response(cached.body, media_type=media_type, headers=headers)


def _normalised(
    scope: RequestScope, level: Level, study: str | None, series: str | None, params: dict[str, list[str]]
) -> str:
    """What the answer depends on; parameter order does not matter, the base URL (RetrieveURL) does."""
    return json.dumps([level, study, series, scope.base_url, sorted(params.items())])


def _search(scope: RequestScope, query: Query) -> CachedResult:
    capped = query.limit is None or query.limit > MAX_RESULTS
    limit = MAX_RESULTS if query.limit is None or query.limit > MAX_RESULTS else query.limit
    # One extra row tells whether the cap cut anything off.
    bounded = dataclasses.replace(query, limit=limit + 1 if capped else limit)
    matches = scope.archive.search.find(scope.tenant, bounded, None if query.include_all else query.includefields)
    warnings = []
    if len(matches) > limit or limit < (query.limit or 0):
        warnings.append(LIMIT_WARNING)
    if query.unsupported:
        warnings.append(f'299 dicomcloud "Not supported for matching, ignored: {", ".join(query.unsupported)}"')
    if query.ignored:
        names = ", ".join(_header_safe(name) for name in query.ignored[:MAX_NAMED])
        if len(query.ignored) > MAX_NAMED:
            names += f" and {len(query.ignored) - MAX_NAMED} more"
        warnings.append(f'299 dicomcloud "Not a DICOM attribute nor a QIDO-RS parameter, ignored: {names}"')
    return CachedResult(dumps(_results(scope, query, matches[:limit])), ", ".join(warnings))


def _header_safe(name: str) -> str:
    """A client's parameter name as a header's quoted text can carry it: printable ASCII, no quote or backslash."""
    return "".join(char if " " <= char <= "~" and char not in '"\\' else "?" for char in name)


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


def _retrieve_url(scope: RequestScope, level: Level, row: dict[str, Any]) -> str:
    study = str(row["StudyInstanceUID"])
    if level == "study":
        return scope.study_url(study)
    series = str(row["SeriesInstanceUID"])
    if level == "series":
        return scope.series_url(study, series)
    return scope.instance_url(study, series, str(row["SOPInstanceUID"]))


def _results(scope: RequestScope, query: Query, matches: list[Match]) -> list[dict[str, Any]]:
    """Each match's attributes and RetrieveURL in DICOM JSON; the rows of one search share their keys, so
    one encoder serves all. Attributes from the metadata entries join in tag order."""
    if not matches:
        return []
    encode = KeywordEncoder([*_wanted(query, matches[0].values), "RetrieveURL"])
    results = []
    for match in matches:
        result = encode({**match.values, "RetrieveURL": _retrieve_url(scope, query.level, match.values)})
        results.append(dict(sorted({**match.extra, **result}.items())) if match.extra else result)
    return results
