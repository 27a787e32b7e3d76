"""WADO-RS rendered and thumbnail resources (PS3.18 10.4.1.1.3-4, 8.3.5): JPEG, PNG or GIF images.

- Media type: `image/jpeg` (the default, for `*/*` and `image/*`), `image/png` or `image/gif`, named bare or as
  the `type` of `multipart/related`; the resource decides the packaging, not the Accept header:
  one image for a single-frame instance, a single frame and a thumbnail; `multipart/related` with
  one part per frame for a multi-frame instance, a frame list, a series and a study (every frame
  of every image instance, in index order; instances without pixels are left out).
- Query parameters: `window`, `viewport`, `quality` (dicom/render.py parses and applies them);
  a malformed value is 400.
- Thumbnail (PS3.18 10.4.3.3.4 leaves the choice to the server): one image, the middle frame of
  the middle image instance (for a study, of its first series with images; for a frame list, its
  first frame), fitted to 128 x 128 unless a `viewport` says otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from dicomcloud.archive.retrieve import Retrieve
from dicomcloud.dicom.render import (
    RENDERED_MEDIA_TYPES,
    THUMBNAIL_SIZE,
    RenderOptions,
    Viewport,
    parse_quality,
    parse_viewport,
    parse_window,
)
from dicomcloud.errors import NotAcceptable, NotFound
from dicomcloud.ports.index import InstanceLocation
from dicomcloud.web.context import Scope
from dicomcloud.web.multipart import Part, new_boundary, write_multipart
from dicomcloud.web.negotiation import MULTIPART_RELATED, MediaRange, accept_of, format_media_type, parse_accept
from dicomcloud.web.wado import check_frame_list, instance_at, parse_frame_list, series_instances

log = logging.getLogger(__name__)

router = APIRouter(tags=["WADO-RS rendered"])

INSTANCE = "/studies/{study}/series/{series}/instances/{instance}"


def rendering_options(
    request: Request, window: str | None = None, viewport: str | None = None, quality: str | None = None
) -> RenderOptions:
    """The `window`, `viewport` and `quality` query parameters and the Accept header, parsed once."""
    limits = request.app.state.archive.settings.limits
    return RenderOptions(
        media_type=_rendered_media_type(accept_of(request)),
        window=parse_window(window) if window is not None else None,
        viewport=parse_viewport(viewport, limits.max_viewport) if viewport is not None else None,
        quality=parse_quality(quality) if quality is not None else None,
    )


Rendering = Annotated[RenderOptions, Depends(rendering_options)]


def _rendered_media_type(accept: str | None) -> str:
    for media_range in parse_accept(accept):
        if media_range.is_multipart_related:
            media_range = media_range.part_range()
        elif media_range.media_type == "multipart/*":
            media_range = MediaRange("*/*")
        for media_type in RENDERED_MEDIA_TYPES:
            if media_range.matches(media_type):
                return media_type
    raise NotAcceptable(f"rendered images are {' or '.join(RENDERED_MEDIA_TYPES)}; Accept was {accept!r}")


def _single(retrieve: Retrieve, location: InstanceLocation, frame: int, options: RenderOptions) -> Response:
    return Response(retrieve.render(location, frame, options), media_type=options.media_type)


def _multipart(
    retrieve: Retrieve, frames: Iterator[tuple[InstanceLocation, int]], options: RenderOptions
) -> Response:
    """Renders the first part before answering, so a failure is a clean status; the rest as sent."""
    first = next(frames, None)
    if first is None:
        raise NotFound("nothing to render: no image instances")
    headers = {"Content-Type": options.media_type}
    first_image = retrieve.render(*first, options)

    def parts() -> Iterator[Part]:
        yield headers, [first_image]
        for location, frame in frames:
            yield headers, [retrieve.render(location, frame, options)]

    boundary = new_boundary()
    return StreamingResponse(
        write_multipart(parts(), boundary),
        media_type=format_media_type(MULTIPART_RELATED, type=options.media_type, boundary=boundary),
    )


def _image(retrieve: Retrieve, location: InstanceLocation) -> int:
    """How many frames the instance's image has; NotFound when it is not an image."""
    frames = retrieve.image_frames(location)
    if not frames:
        raise NotFound(f"instance {location.sop_instance_uid} is not an image")
    return frames


# ---------------------------------------------------------------------------------------------
# Rendered


@router.get("/studies/{study}/rendered", summary="Retrieve a rendered study")
def rendered_study(scope: Scope, study: str, options: Rendering) -> Response:
    retrieve = scope.archive.retrieve
    return _multipart(retrieve, retrieve.rendered_frames(series_instances(scope, study)), options)


@router.get("/studies/{study}/series/{series}/rendered", summary="Retrieve a rendered series")
def rendered_series(scope: Scope, study: str, series: str, options: Rendering) -> Response:
    retrieve = scope.archive.retrieve
    return _multipart(retrieve, retrieve.rendered_frames(series_instances(scope, study, series)), options)


@router.get(INSTANCE + "/rendered", summary="Retrieve a rendered instance")
def rendered_instance(scope: Scope, study: str, series: str, instance: str, options: Rendering) -> Response:
    retrieve = scope.archive.retrieve
    location = instance_at(scope, study, series, instance)
    frames = _image(retrieve, location)
    if frames == 1:
        return _single(retrieve, location, 1, options)
    return _multipart(retrieve, ((location, frame) for frame in range(1, frames + 1)), options)


@router.get(INSTANCE + "/frames/{frames}/rendered", summary="Retrieve rendered frames")
def rendered_frames(
    scope: Scope, study: str, series: str, instance: str, frames: str, options: Rendering
) -> Response:
    retrieve = scope.archive.retrieve
    location = instance_at(scope, study, series, instance)
    numbers = parse_frame_list(frames)
    check_frame_list(numbers, _image(retrieve, location))
    if len(numbers) == 1:
        return _single(retrieve, location, numbers[0], options)
    return _multipart(retrieve, ((location, number) for number in numbers), options)


# ---------------------------------------------------------------------------------------------
# Thumbnails


def thumbnail_options(options: Rendering) -> RenderOptions:
    return options if options.viewport else replace(options, viewport=Viewport(THUMBNAIL_SIZE, THUMBNAIL_SIZE))


Thumbnail = Annotated[RenderOptions, Depends(thumbnail_options)]


@router.get("/studies/{study}/thumbnail", summary="Retrieve a study thumbnail")
def study_thumbnail(scope: Scope, study: str, options: Thumbnail) -> Response:
    retrieve = scope.archive.retrieve
    return _single(retrieve, *retrieve.representative(series_instances(scope, study)), options)


@router.get("/studies/{study}/series/{series}/thumbnail", summary="Retrieve a series thumbnail")
def series_thumbnail(scope: Scope, study: str, series: str, options: Thumbnail) -> Response:
    retrieve = scope.archive.retrieve
    return _single(retrieve, *retrieve.representative(series_instances(scope, study, series)), options)


@router.get(INSTANCE + "/thumbnail", summary="Retrieve an instance thumbnail")
def instance_thumbnail(scope: Scope, study: str, series: str, instance: str, options: Thumbnail) -> Response:
    retrieve = scope.archive.retrieve
    location = instance_at(scope, study, series, instance)
    return _single(retrieve, location, (_image(retrieve, location) + 1) // 2, options)


@router.get(INSTANCE + "/frames/{frames}/thumbnail", summary="Retrieve a frame thumbnail")
def frame_thumbnail(
    scope: Scope, study: str, series: str, instance: str, frames: str, options: Thumbnail
) -> Response:
    retrieve = scope.archive.retrieve
    location = instance_at(scope, study, series, instance)
    numbers = parse_frame_list(frames)
    count = _image(retrieve, location)
    if numbers[0] > count:
        raise NotFound(f"frame {numbers[0]} is out of range 1-{count}")
    return _single(retrieve, location, numbers[0], options)
