"""WADO-RS rendered and thumbnail resources (PS3.18 10.4.1.1.3-4, 8.3.5): JPEG or PNG images.

- Media type: `image/jpeg` (the default, for `*/*` and `image/*`) or `image/png`, named bare or as
  the `type` of `multipart/related`; the resource decides the packaging, not the Accept header:
  one image for a single-frame instance, a single frame and a thumbnail; `multipart/related` with
  one part per frame for a multi-frame instance, a frame list, a series and a study (every frame
  of every image instance, in index order; instances without pixels are left out). GIF is not
  offered.
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
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from dicomcloud.dicom.render import (
    RENDERED_MEDIA_TYPES,
    THUMBNAIL_SIZE,
    RenderOptions,
    Viewport,
    number_of_frames,
    parse_quality,
    parse_viewport,
    parse_window,
    render_frame,
)
from dicomcloud.errors import NotAcceptable, NotFound
from dicomcloud.ports.index import InstanceLocation
from dicomcloud.web.context import DicomWeb, WebContext, path_uid
from dicomcloud.web.multipart import Part, new_boundary, write_multipart
from dicomcloud.web.negotiation import MULTIPART_RELATED, MediaRange, format_media_type, parse_accept
from dicomcloud.web.wado import _instance, _locations, parse_frame_list

log = logging.getLogger(__name__)

router = APIRouter(tags=["WADO-RS rendered"])

INSTANCE = "/studies/{study}/series/{series}/instances/{instance}"


def rendering_options(
    request: Request, window: str | None = None, viewport: str | None = None, quality: str | None = None
) -> RenderOptions:
    """The `window`, `viewport` and `quality` query parameters and the Accept header, parsed once."""
    return RenderOptions(
        media_type=_rendered_media_type(request.headers.get("accept")),
        window=parse_window(window) if window is not None else None,
        viewport=parse_viewport(viewport) if viewport is not None else None,
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


def _frames_of(web: DicomWeb, locations: list[InstanceLocation]) -> Iterator[tuple[Path, int]]:
    """(file, frame number) for every frame of the image instances among `locations`."""
    for location in locations:
        path = web.runtime.storage.path(location.file_path)
        if not path.is_file():
            log.error("instance %s is indexed but its file is not on storage; left out", location.sop_instance_uid)
            continue
        for frame in range(1, number_of_frames(path) + 1):
            yield path, frame


def _single(path: Path, frame: int, options: RenderOptions) -> Response:
    return Response(render_frame(path, frame, options), media_type=options.media_type)


def _multipart(frames: Iterator[tuple[Path, int]], options: RenderOptions) -> Response:
    """Renders the first part before answering, so a failure is a clean status; the rest as sent."""
    first = next(frames, None)
    if first is None:
        raise NotFound("nothing to render: no image instances")
    headers = {"Content-Type": options.media_type}
    first_image = render_frame(*first, options)

    def parts() -> Iterator[Part]:
        yield headers, [first_image]
        for path, frame in frames:
            yield headers, [render_frame(path, frame, options)]

    boundary = new_boundary()
    return StreamingResponse(
        write_multipart(parts(), boundary),
        media_type=format_media_type(MULTIPART_RELATED, type=options.media_type, boundary=boundary),
    )


def _image_path(web: DicomWeb, location: InstanceLocation) -> tuple[Path, int]:
    path = web.runtime.storage.path(location.file_path)
    if not path.is_file():
        raise NotFound(f"the file of instance {location.sop_instance_uid} is not on storage")
    frames = number_of_frames(path)
    if not frames:
        raise NotFound(f"instance {location.sop_instance_uid} is not an image")
    return path, frames


# ---------------------------------------------------------------------------------------------
# Rendered


@router.get("/studies/{study}/rendered", summary="Retrieve a rendered study")
def rendered_study(
    web: WebContext,
    study: str,
    options: Rendering,
) -> Response:
    return _multipart(_frames_of(web, _locations(web, path_uid(study, "StudyInstanceUID"))), options)


@router.get("/studies/{study}/series/{series}/rendered", summary="Retrieve a rendered series")
def rendered_series(
    web: WebContext,
    study: str,
    series: str,
    options: Rendering,
) -> Response:
    locations = _locations(web, path_uid(study, "StudyInstanceUID"), path_uid(series, "SeriesInstanceUID"))
    return _multipart(_frames_of(web, locations), options)


@router.get(INSTANCE + "/rendered", summary="Retrieve a rendered instance")
def rendered_instance(
    web: WebContext,
    study: str,
    series: str,
    instance: str,
    options: Rendering,
) -> Response:
    path, frames = _image_path(web, _instance(web, study, series, instance))
    if frames == 1:
        return _single(path, 1, options)
    return _multipart(((path, frame) for frame in range(1, frames + 1)), options)


@router.get(INSTANCE + "/frames/{frames}/rendered", summary="Retrieve rendered frames")
def rendered_frames(
    web: WebContext,
    study: str,
    series: str,
    instance: str,
    frames: str,
    options: Rendering,
) -> Response:
    location = _instance(web, study, series, instance)
    numbers = parse_frame_list(frames)
    path, count = _image_path(web, location)
    beyond = [n for n in numbers if n > count]
    if beyond:
        raise NotFound(f"frame {beyond[0]} is out of range 1-{count}")
    if len(numbers) == 1:
        return _single(path, numbers[0], options)
    return _multipart(((path, number) for number in numbers), options)


# ---------------------------------------------------------------------------------------------
# Thumbnails


def thumbnail_options(options: Rendering) -> RenderOptions:
    return options if options.viewport else replace(options, viewport=Viewport(THUMBNAIL_SIZE, THUMBNAIL_SIZE))


Thumbnail = Annotated[RenderOptions, Depends(thumbnail_options)]


def _representative(web: DicomWeb, locations: list[InstanceLocation]) -> tuple[Path, int]:
    """The middle frame of the middle image instance of the first series that has images.

    Only headers are read, the middle instance's first, so a large series costs one file read.
    """
    by_series: dict[str, list[InstanceLocation]] = {}
    for location in locations:
        by_series.setdefault(location.series_instance_uid, []).append(location)
    for members in by_series.values():
        middle = len(members) // 2
        for location in [members[middle], *members[:middle], *members[middle + 1 :]]:
            path = web.runtime.storage.path(location.file_path)
            if path.is_file() and (count := number_of_frames(path)):
                return path, (count + 1) // 2
    raise NotFound("nothing to show: no image instances")


@router.get("/studies/{study}/thumbnail", summary="Retrieve a study thumbnail")
def study_thumbnail(
    web: WebContext,
    study: str,
    options: Thumbnail,
) -> Response:
    return _single(*_representative(web, _locations(web, path_uid(study, "StudyInstanceUID"))), options)


@router.get("/studies/{study}/series/{series}/thumbnail", summary="Retrieve a series thumbnail")
def series_thumbnail(
    web: WebContext,
    study: str,
    series: str,
    options: Thumbnail,
) -> Response:
    locations = _locations(web, path_uid(study, "StudyInstanceUID"), path_uid(series, "SeriesInstanceUID"))
    return _single(*_representative(web, locations), options)


@router.get(INSTANCE + "/thumbnail", summary="Retrieve an instance thumbnail")
def instance_thumbnail(
    web: WebContext,
    study: str,
    series: str,
    instance: str,
    options: Thumbnail,
) -> Response:
    path, count = _image_path(web, _instance(web, study, series, instance))
    return _single(path, (count + 1) // 2, options)


@router.get(INSTANCE + "/frames/{frames}/thumbnail", summary="Retrieve a frame thumbnail")
def frame_thumbnail(
    web: WebContext,
    study: str,
    series: str,
    instance: str,
    frames: str,
    options: Thumbnail,
) -> Response:
    location = _instance(web, study, series, instance)
    numbers = parse_frame_list(frames)
    path, count = _image_path(web, location)
    if numbers[0] > count:
        raise NotFound(f"frame {numbers[0]} is out of range 1-{count}")
    return _single(path, numbers[0], options)
