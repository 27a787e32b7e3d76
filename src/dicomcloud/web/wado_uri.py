"""WADO-URI (PS3.18 chapter 9): `/wado?requestType=WADO&studyUID=…&seriesUID=…&objectUID=…`.

The legacy form of a single-instance retrieve that viewers (Cornerstone's `wadouri:` loader) and reporting
tools still use. This module only reads the URI form; what is served is the WADO-RS operations' own
(web/wado.py `single_instance_response`, archive/retrieve.py `render`), behind the same authentication and
tenancy (`/wado` is the default tenant, `/{tenant}/wado` a named one).

- Media type: the `contentType` parameter (the name older editions and clients use) or `accept` (the
  current name), else the Accept header, read as an Accept list (web/negotiation.py). An image is offered
  in the rendered types dicom/render.py makes (image/jpeg, the default for `*/*` or no list, image/png
  and image/gif) and as application/dicom; anything else only as application/dicom. A list naming none of
  those (video, text) is 406.
- application/dicom: `transferSyntax` names the syntax (406 when it cannot be made); without it the
  object comes in Explicit VR Little Endian (PS3.18 9.4.2.4), or as stored when its pixels cannot be
  decoded or are lossy (8.7.3.4 allows both). No rendering parameter may come with it (400).
- Rendered: `frameNumber` (1-based; 400 beyond the instance's frames), `windowCenter` with `windowWidth`
  (linear VOI), `rows` and/or `columns` (the largest output size, the aspect ratio kept), `region`
  (`xmin,ymin,xmax,ymax` as fractions of the image, applied before scaling), `imageQuality` (1-100).
- `anonymize`, `presentationUID` and `presentationSeriesUID` are refused (400): serving the object
  without them would be a wrong answer, not a plainer one. `annotation` is ignored with a `Warning`
  (the image is served without burnt-in text); `charset` is ignored (no text is served).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fastapi import APIRouter, Request, Response
from starlette.datastructures import QueryParams

from dicomcloud.dicom.render import RENDERED_MEDIA_TYPES, RenderOptions, Viewport, Window, parse_quality
from dicomcloud.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN, validate_uid
from dicomcloud.errors import InvalidInput, NotAcceptable
from dicomcloud.ports.index import InstanceLocation
from dicomcloud.web.context import RequestScope, Scope
from dicomcloud.web.negotiation import accept_of, parse_accept
from dicomcloud.web.wado import instance_at, servable_syntax, single_instance_response

DICOM = "application/dicom"
RENDERING_PARAMS = ("frameNumber", "windowCenter", "windowWidth", "rows", "columns", "region", "imageQuality")
REFUSED_PARAMS = ("anonymize", "presentationUID", "presentationSeriesUID")
ANNOTATION_WARNING = '299 dicomcloud "annotation is not supported; the image has no burnt-in text"'

router = APIRouter(tags=["WADO-URI"])


@dataclass(frozen=True)
class UriRequest:
    """The parameters of one WADO-URI request, each present at most once."""

    params: QueryParams

    def get(self, name: str) -> str | None:
        values = self.params.getlist(name)
        if len(values) > 1:
            raise InvalidInput(f"{name} may be given once, got {len(values)} values")
        return values[0].strip() if values else None

    def required(self, name: str) -> str:
        value = self.get(name)
        if not value:
            raise InvalidInput(f"WADO-URI needs the {name} parameter")
        return value


@router.get("/wado", summary="Retrieve an instance (WADO-URI, PS3.18 chapter 9)")
def wado_uri(request: Request, scope: Scope) -> Response:
    uri = UriRequest(request.query_params)
    if uri.required("requestType") != "WADO":
        raise InvalidInput(f"requestType must be WADO, got {uri.get('requestType')!r:.40}")
    refused = [name for name in REFUSED_PARAMS if uri.get(name) is not None]
    if refused:
        raise InvalidInput(f"WADO-URI {', '.join(refused)} is not supported")
    location = instance_at(scope, uri.required("studyUID"), uri.required("seriesUID"), uri.required("objectUID"))
    frames = scope.archive.retrieve.image_frames(location)
    media_type = _media_type(uri.get("contentType") or accept_of(request), frames)
    if media_type == DICOM:
        given = [name for name in RENDERING_PARAMS if uri.get(name) is not None]
        if given:
            raise InvalidInput(f"{', '.join(given)} apply to rendered images, not to application/dicom")
        return single_instance_response(scope, location, _dicom_syntax(location, uri), media_type_params=False)
    if uri.get("transferSyntax") is not None:
        raise InvalidInput("transferSyntax applies to application/dicom only")
    options = RenderOptions(
        media_type=media_type,
        window=_window(uri),
        viewport=_viewport(scope, location, uri),
        quality=parse_quality(quality) if (quality := uri.get("imageQuality")) is not None else None,
    )
    image = scope.archive.retrieve.render(location, _frame_number(uri, frames), options)
    headers = {"Warning": ANNOTATION_WARNING} if uri.get("annotation") is not None else {}
    return Response(image, media_type=media_type, headers=headers)


def _media_type(accept: str | None, frames: int) -> str:
    """The first acceptable of the rendered types (for images only) and application/dicom; the default first,
    so that `*/*` means it."""
    offered = [*RENDERED_MEDIA_TYPES, DICOM] if frames else [DICOM]
    for media_range in parse_accept(accept):
        for media_type in offered:
            if media_range.matches(media_type):
                return media_type
    shown = " or ".join(offered)
    raise NotAcceptable(f"this instance is served as {shown}; contentType / Accept was {accept!r:.120}")


def _dicom_syntax(location: InstanceLocation, uri: UriRequest) -> str | None:
    """The syntax to serve the object in (None: as stored)."""
    requested = uri.get("transferSyntax")
    if requested is not None:
        requested = validate_uid(requested, "transferSyntax")
    fits, syntax = servable_syntax({location.transfer_syntax}, requested or EXPLICIT_VR_LITTLE_ENDIAN)
    if not fits and requested is not None:
        raise NotAcceptable(f"stored as {location.transfer_syntax}; {requested} cannot be made from it")
    return syntax


def _number(uri: UriRequest, name: str) -> float | None:
    text = uri.get(name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise InvalidInput(f"{name}={text[:40]!r}: a decimal number expected") from None
    if not math.isfinite(value):
        raise InvalidInput(f"{name}={text[:40]!r}: a finite number expected")
    return value


def _window(uri: UriRequest) -> Window | None:
    center, width = _number(uri, "windowCenter"), _number(uri, "windowWidth")
    if center is None and width is None:
        return None
    if center is None or width is None:
        raise InvalidInput("windowCenter and windowWidth go together")
    return Window(center, width)


def _frame_number(uri: UriRequest, frames: int) -> int:
    text = uri.get("frameNumber")
    if text is None:
        return 1
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= frames:
        raise InvalidInput(f"frameNumber={text[:20]!r}: a frame of the instance, 1 to {frames}")
    return int(text)


def _size(uri: UriRequest, name: str, largest: int) -> int | None:
    text = uri.get(name)
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= largest:
        raise InvalidInput(f"{name}={text[:20]!r}: an integer from 1 to {largest}")
    return int(text)


def _viewport(scope: RequestScope, location: InstanceLocation, uri: UriRequest) -> Viewport | None:
    """rows and columns bound the output (aspect kept); region, as fractions, becomes a source region in pixels."""
    largest = scope.archive.settings.limits.max_viewport
    rows, columns = _size(uri, "rows", largest), _size(uri, "columns", largest)
    region = uri.get("region")
    if region is None:
        return None if rows is None and columns is None else Viewport(columns or largest, rows or largest)
    bounds = _region(region)
    image_columns, image_rows = scope.archive.retrieve.image_size(location)
    left, top = math.floor(bounds[0] * image_columns), math.floor(bounds[1] * image_rows)
    width = max(1, math.ceil(bounds[2] * image_columns) - left)
    height = max(1, math.ceil(bounds[3] * image_rows) - top)
    if rows is None and columns is None:
        rows, columns = min(height, largest), min(width, largest)
    return Viewport(columns or largest, rows or largest, (left, top, width, height))


def _region(text: str) -> tuple[float, float, float, float]:
    try:
        values = [float(item) for item in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or not all(0.0 <= value <= 1.0 for value in values):
        raise InvalidInput(f"region={text[:80]!r}: xmin,ymin,xmax,ymax as fractions from 0.0 to 1.0")
    xmin, ymin, xmax, ymax = values
    if xmin >= xmax or ymin >= ymax:
        raise InvalidInput(f"region={text[:80]!r}: xmin must be below xmax and ymin below ymax")
    return xmin, ymin, xmax, ymax
