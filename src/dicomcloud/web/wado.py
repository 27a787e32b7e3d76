"""WADO-RS retrieve (PS3.18 10.4): instances, metadata, frames and bulk data.

Negotiation (PS3.18 8.7), in the client's order of preference:
- Instances: `multipart/related; type="application/dicom"` with no transfer-syntax or `*` gets
  the files as stored, as do `*/*` and `multipart/*`; a bare `application/dicom` is accepted for a
  single instance (one body, not multipart). A named transfer syntax gets, per instance, the stored
  file if it has that syntax, else its derived copy, made now (services/transcoder.py `derive`) if
  it does not exist yet, and kept for the next request. 406 when no encoder makes that syntax or the
  pixels are lossy and the syntax lossless (dicom/codecs.py).
- Frames: `type="*/*"` (dicomweb-client's default) or octet-stream with `transfer-syntax=*` get
  the frames as stored (compressed bitstreams under their own media type). Octet-stream with no
  transfer syntax or Explicit VR Little Endian gets uncompressed little endian frames, decoded
  when stored compressed. `image/jpeg` & co. get the stored bitstream when their media type and
  transfer syntax (if named) fit the stored one; a named syntax of that media type (or the media
  type's lossless default, PS3.18 Table 8.7.3-5) is otherwise encoded per frame when an encoder
  exists; otherwise 406.
- Metadata is DICOM JSON (gzip by the app's middleware); bulk data is one octet-stream part.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from dicomcloud.dicom.codecs import (
    TRANSCODE_TARGETS,
    check_transcodable,
    decode_frame,
    encode_frame,
    frame_media_type,
    frame_transfer_syntax,
)
from dicomcloud.dicom.dicomjson import parse_tag_path
from dicomcloud.dicom.seriesdoc import FrameIndex, index_frames, read_bulkdata, read_frames
from dicomcloud.errors import InvalidInput, NotAcceptable, NotFound, StorageFailure
from dicomcloud.ports.index import InstanceLocation
from dicomcloud.web.context import DicomWeb, WebContext, path_uid
from dicomcloud.web.multipart import CRLF, Part, close_delimiter, new_boundary, part_head, write_multipart
from dicomcloud.web.negotiation import (
    MULTIPART_RELATED,
    MediaRange,
    format_media_type,
    json_media_type,
    parse_accept,
)
from dicomcloud.workers.transcoder import derive

log = logging.getLogger(__name__)

# File bytes per socket write: a typical instance is one piece, framing included.
PIECE_SIZE = 4 * 1024 * 1024
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
OCTET_STREAM = "application/octet-stream"
DICOM = "application/dicom"
MAX_FRAMES_PER_REQUEST = 100_000
PART10_PREFIX = b"\0" * 128 + b"DICM"

router = APIRouter(tags=["WADO-RS"])


# ---------------------------------------------------------------------------------------------
# Instances


@router.get("/studies/{study}", summary="Retrieve a study")
def retrieve_study(request: Request, web: WebContext, study: str) -> Response:
    locations = _locations(web, path_uid(study, "StudyInstanceUID"))
    return _dicom_response(web, request, locations, single=False)


@router.get("/studies/{study}/series/{series}", summary="Retrieve a series")
def retrieve_series(request: Request, web: WebContext, study: str, series: str) -> Response:
    locations = _locations(web, path_uid(study, "StudyInstanceUID"), path_uid(series, "SeriesInstanceUID"))
    return _dicom_response(web, request, locations, single=False)


@router.get("/studies/{study}/series/{series}/instances/{instance}", summary="Retrieve an instance")
def retrieve_instance(request: Request, web: WebContext, study: str, series: str, instance: str) -> Response:
    location = _instance(web, study, series, instance)
    return _dicom_response(web, request, [location], single=True)


def _locations(web: DicomWeb, study: str, series: str | None = None) -> list[InstanceLocation]:
    locations = web.runtime.index.list_instances(web.tenant, study, series)
    if not locations:
        raise NotFound(f"no {'series ' + series if series else 'study ' + study} in this archive")
    return locations


def _instance(web: DicomWeb, study: str, series: str, instance: str) -> InstanceLocation:
    study = path_uid(study, "StudyInstanceUID")
    series = path_uid(series, "SeriesInstanceUID")
    sop = path_uid(instance, "SOPInstanceUID")
    location = web.runtime.index.get_instance(web.tenant, sop)
    if location is None or (location.study_instance_uid, location.series_instance_uid) != (study, series):
        raise NotFound(f"no instance {sop} in series {series} of study {study}")
    return location


class _Packaging(enum.Enum):
    MULTIPART = "multipart"
    SINGLE = "single"


def _dicom_packaging(ranges: list[MediaRange], stored: set[str], single: bool) -> tuple[_Packaging, str | None]:
    """How to package the instances, and the transfer syntax to serve them in (None: as stored)."""

    def wanted(transfer_syntax: str | None) -> tuple[bool, str | None]:
        if transfer_syntax in (None, "*") or stored == {transfer_syntax}:
            return True, None
        if transfer_syntax not in TRANSCODE_TARGETS:
            return False, None
        try:
            for syntax in stored - {transfer_syntax}:
                check_transcodable(syntax, transfer_syntax)
        except NotAcceptable:
            return False, None
        return True, transfer_syntax

    for media_range in ranges:
        if media_range.media_type in ("*/*", "multipart/*"):
            return _Packaging.MULTIPART, None
        if media_range.is_multipart_related:
            part = media_range.part_range()
            fits, syntax = wanted(part.transfer_syntax)
            if part.matches(DICOM) and fits:
                return _Packaging.MULTIPART, syntax
        elif single and media_range.matches(DICOM):
            fits, syntax = wanted(media_range.transfer_syntax)
            if fits:
                return _Packaging.SINGLE, syntax
    raise NotAcceptable(f"stored as {', '.join(sorted(stored))}; no acceptable transfer syntax can be made from it")


def _dicom_response(web: DicomWeb, request: Request, locations: list[InstanceLocation], single: bool) -> Response:
    ranges = parse_accept(request.headers.get("accept"))
    packaging, target = _dicom_packaging(ranges, {loc.transfer_syntax for loc in locations}, single)
    stored = _stored_files(web, locations, target)
    if packaging is _Packaging.SINGLE:
        file = stored[0]
        return StreamingResponse(
            _pieces(file, file.prefix, b""),
            media_type=format_media_type(DICOM, transfer_syntax=file.transfer_syntax),
            headers={"Content-Length": str(file.length)},
        )
    boundary = new_boundary()
    heads = [part_head(boundary, file.part_headers()) for file in stored]
    closing = close_delimiter(boundary)
    length = sum(len(head) + file.length + len(CRLF) for head, file in zip(heads, stored, strict=True))
    return StreamingResponse(
        _multipart_pieces(stored, heads, closing),
        media_type=format_media_type(MULTIPART_RELATED, type=DICOM, boundary=boundary),
        headers={"Content-Length": str(length + len(closing))},
    )


def _stored_files(web: DicomWeb, locations: list[InstanceLocation], target: str | None) -> list[_StoredFile]:
    """Each instance's file, or its copy in `target` (made now if missing); NotFound if none is on storage."""
    storage = web.runtime.storage
    files = []
    for loc in locations:
        file = _StoredFile.open(storage.path(loc.file_path), loc.transfer_syntax)
        if file is not None and target is not None and file.transfer_syntax != target:
            file = _StoredFile.open(derive(web.runtime, loc.file_path, target), target)
        if file is not None:
            files.append(file)
    if len(files) < len(locations):
        log.error("%d of %d indexed files are missing on storage", len(locations) - len(files), len(locations))
    if not files:
        raise NotFound("the instance files are not on storage")
    return files


@dataclass(frozen=True)
class _StoredFile:
    """A file to send as a complete PS3.10 object.

    Some senders (dicomweb-client among them) omit the preamble; the original is kept as received,
    but an application/dicom body must be a complete PS3.10 file, which pydicom insists on reading,
    so `prefix` is sent first when the file lacks it.
    """

    path: Path
    transfer_syntax: str
    size: int
    prefix: bytes

    @classmethod
    def open(cls, path: Path, transfer_syntax: str) -> _StoredFile | None:
        """None when the file is not there."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            size = os.fstat(fd).st_size
            head = os.pread(fd, len(PART10_PREFIX), 0)
        finally:
            os.close(fd)
        return cls(path, transfer_syntax, size, b"" if head[128:] == b"DICM" else PART10_PREFIX)

    @property
    def length(self) -> int:
        return len(self.prefix) + self.size

    def part_headers(self) -> dict[str, str]:
        return {
            "Content-Type": format_media_type(DICOM, transfer_syntax=self.transfer_syntax),
            "Content-Length": str(self.length),
        }


def _multipart_pieces(files: list[_StoredFile], heads: list[bytes], closing: bytes) -> Iterator[memoryview | bytes]:
    """The multipart body: each instance's head, file and CRLF as one piece when it fits."""
    for head, file in zip(heads, files, strict=True):
        yield from _pieces(file, head + file.prefix, CRLF)
    yield closing


def _pieces(file: _StoredFile, lead: bytes, tail: bytes) -> Iterator[memoryview]:
    """`lead`, the file and `tail` in pieces of at most PIECE_SIZE file bytes.

    Each piece is one read into one fresh buffer that already holds the framing around it, and
    one write to the socket: the response's Content-Length was announced from the sizes, so a
    file that changed size since is an error that aborts the response, never a wrong body.
    """
    with file.path.open("rb", buffering=0) as handle:
        remaining = file.size
        while True:
            take = min(remaining, PIECE_SIZE)
            remaining -= take
            ending = tail if not remaining else b""
            piece = bytearray(len(lead) + take + len(ending))
            piece[: len(lead)] = lead
            view = memoryview(piece)
            filled = len(lead)
            while filled < len(lead) + take:
                read = handle.readinto(view[filled : len(lead) + take])
                if not read:
                    log.error("%s changed size while being sent; response aborted", file.path)
                    raise StorageFailure(f"{file.path.name} changed while being sent")
                filled += read
            view[filled:] = ending
            yield view
            if not remaining:
                return
            lead = b""


# ---------------------------------------------------------------------------------------------
# Metadata


@router.get("/studies/{study}/metadata", summary="Retrieve study metadata")
def study_metadata(request: Request, web: WebContext, study: str) -> Response:
    media_type = json_media_type(request.headers.get("accept"))
    study = path_uid(study, "StudyInstanceUID")
    series_uids = dict.fromkeys(loc.series_instance_uid for loc in _locations(web, study))
    bodies = []
    for series in series_uids:
        doc = web.archive.metadata.document(web.series_key(study, series))
        if doc is not None and doc.instances:
            bodies.append(doc.metadata_body(web.base_url).strip()[1:-1])
    if not bodies:
        raise NotFound(f"no study {study} in this archive")
    return Response(b"[" + b",".join(bodies) + b"]", media_type=media_type)


@router.get("/studies/{study}/series/{series}/metadata", summary="Retrieve series metadata")
def series_metadata(request: Request, web: WebContext, study: str, series: str) -> Response:
    media_type = json_media_type(request.headers.get("accept"))
    study = path_uid(study, "StudyInstanceUID")
    series = path_uid(series, "SeriesInstanceUID")
    doc = web.archive.metadata.document(web.series_key(study, series))
    if doc is None or not doc.instances:
        raise NotFound(f"no series {series} in study {study}")
    return Response(doc.metadata_body(web.base_url), media_type=media_type)


@router.get("/studies/{study}/series/{series}/instances/{instance}/metadata", summary="Retrieve instance metadata")
def instance_metadata(request: Request, web: WebContext, study: str, series: str, instance: str) -> Response:
    media_type = json_media_type(request.headers.get("accept"))
    study = path_uid(study, "StudyInstanceUID")
    series = path_uid(series, "SeriesInstanceUID")
    sop = path_uid(instance, "SOPInstanceUID")
    doc = web.archive.metadata.document(web.series_key(study, series))
    if doc is None:
        raise NotFound(f"no series {series} in study {study}")
    return Response(doc.instance_metadata_body(sop, web.base_url), media_type=media_type)


# ---------------------------------------------------------------------------------------------
# Frames


class _FrameForm(enum.Enum):
    STORED = "stored"  # as read_frames gives them: compressed bitstreams, or native little endian
    UNCOMPRESSED = "uncompressed"  # native little endian, decoded if stored compressed
    ENCODED = "encoded"  # decoded, then encoded in another compressed transfer syntax


# The syntax a frame media type means when no transfer-syntax is named (PS3.18 Table 8.7.3-5's
# defaults), for the media types this archive can encode.
_FRAME_DEFAULT_SYNTAX = {
    "image/dicom-rle": "1.2.840.10008.1.2.5",
    "image/jls": "1.2.840.10008.1.2.4.80",
    "image/jp2": "1.2.840.10008.1.2.4.90",
}


def parse_frame_list(text: str) -> list[int]:
    """`1,3,5` -> [1, 3, 5]; frame numbers are 1-based (PS3.18 10.4.1.1.5)."""
    numbers = []
    for item in text.split(","):
        item = item.strip()
        if not (item.isascii() and item.isdigit()) or int(item) < 1:
            raise InvalidInput(f"invalid frame list {text[:80]!r}: frame numbers are integers from 1")
        numbers.append(int(item))
    if len(numbers) > MAX_FRAMES_PER_REQUEST:
        raise InvalidInput(f"at most {MAX_FRAMES_PER_REQUEST} frames per request")
    return numbers


def _frame_form(part: MediaRange, stored_syntax: str) -> tuple[_FrameForm, str] | None:
    """The form and transfer syntax one acceptable part media range asks for, or None if unmet."""
    requested = part.transfer_syntax
    stored_media = frame_media_type(stored_syntax)
    served_syntax = frame_transfer_syntax(stored_syntax)
    if part.media_type in ("*/*", "*"):
        if requested in (None, "*", served_syntax):
            return _FrameForm.STORED, served_syntax
        return (_FrameForm.UNCOMPRESSED, EXPLICIT_VR_LITTLE_ENDIAN) if requested == EXPLICIT_VR_LITTLE_ENDIAN else None
    if part.matches(OCTET_STREAM):
        if requested == "*":
            return _FrameForm.STORED, served_syntax
        if requested in (None, EXPLICIT_VR_LITTLE_ENDIAN):
            return _FrameForm.UNCOMPRESSED, EXPLICIT_VR_LITTLE_ENDIAN
        return None
    if stored_media != OCTET_STREAM and part.matches(stored_media) and requested in (None, "*", served_syntax):
        return _FrameForm.STORED, served_syntax
    target = _FRAME_DEFAULT_SYNTAX.get(part.media_type) if requested in (None, "*") else requested
    if target is None or target not in TRANSCODE_TARGETS or not part.matches(frame_media_type(target)):
        return None
    try:
        check_transcodable(stored_syntax, target)
    except NotAcceptable:
        return None
    return _FrameForm.ENCODED, target


def _select_frame_form(ranges: list[MediaRange], stored_syntax: str) -> tuple[_FrameForm, str]:
    for media_range in ranges:
        if media_range.is_multipart_related:
            part = media_range.part_range()
        elif media_range.media_type in ("*/*", "multipart/*"):
            part = MediaRange("*/*")
        else:
            continue
        form = _frame_form(part, stored_syntax)
        if form is not None:
            return form
    raise NotAcceptable(f"frames are stored as {stored_syntax}; none of the accepted forms can be made from them")


def _frame_index(web: DicomWeb, location: InstanceLocation, path: Path) -> FrameIndex:
    """From the series document; indexed from the file itself if the document lacks the instance."""
    key = web.series_key(location.study_instance_uid, location.series_instance_uid)
    doc = web.archive.metadata.document(key)
    entry = doc.instances.get(location.sop_instance_uid) if doc is not None else None
    frame_index = entry.frame_index if entry is not None else index_frames(path)
    if frame_index is None:
        raise NotFound(f"instance {location.sop_instance_uid} has no pixel data")
    return frame_index


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}", summary="Retrieve frames")
def retrieve_frames(request: Request, web: WebContext, study: str, series: str, instance: str, frames: str) -> Response:
    location = _instance(web, study, series, instance)
    numbers = parse_frame_list(frames)
    path = web.runtime.storage.path(location.file_path)
    frame_index = _frame_index(web, location, path)
    form, part_syntax = _select_frame_form(parse_accept(request.headers.get("accept")), frame_index.transfer_syntax)
    stored_media = frame_media_type(frame_index.transfer_syntax)
    if form is _FrameForm.UNCOMPRESSED and stored_media == OCTET_STREAM:
        form = _FrameForm.STORED
    part_media = frame_media_type(part_syntax)
    beyond = [n for n in numbers if n > frame_index.number_of_frames]
    if beyond:
        raise NotFound(f"frame {beyond[0]} is out of range 1-{frame_index.number_of_frames}")

    def frame(number: int) -> bytes:
        if form is _FrameForm.ENCODED:
            return encode_frame(path, number, part_syntax)
        if form is _FrameForm.UNCOMPRESSED:
            return decode_frame(path, number)
        return read_frames(path, frame_index, [number])[0]

    # The first frame is read before answering, so an unreadable or undecodable frame is a clean
    # error status rather than a broken stream; the others are read as the client takes them.
    first = frame(numbers[0])
    part_headers = {"Content-Type": format_media_type(part_media, transfer_syntax=part_syntax)}

    def parts() -> Iterator[Part]:
        yield part_headers, [first]
        for number in numbers[1:]:
            yield part_headers, [frame(number)]

    boundary = new_boundary()
    return StreamingResponse(
        write_multipart(parts(), boundary),
        media_type=format_media_type(MULTIPART_RELATED, type=part_media, boundary=boundary),
    )


# ---------------------------------------------------------------------------------------------
# Bulk data


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag_path:path}", summary="Retrieve bulk data"
)
def retrieve_bulkdata(
    request: Request, web: WebContext, study: str, series: str, instance: str, tag_path: str
) -> Response:
    location = _instance(web, study, series, instance)
    parse_tag_path(tag_path)
    _select_bulkdata(parse_accept(request.headers.get("accept")))
    value = read_bulkdata(web.runtime.storage.path(location.file_path), tag_path)
    url = web.instance_url(location.study_instance_uid, location.series_instance_uid, location.sop_instance_uid)
    headers = {
        "Content-Type": OCTET_STREAM,
        "Content-Location": f"{url}/bulkdata/{tag_path}",
        "Content-Length": str(len(value)),
    }
    boundary = new_boundary()
    return StreamingResponse(
        write_multipart([(headers, [value])], boundary),
        media_type=format_media_type(MULTIPART_RELATED, type=OCTET_STREAM, boundary=boundary),
    )


def _select_bulkdata(ranges: list[MediaRange]) -> None:
    """Bulk data is served as its stored little endian value: octet-stream, any transfer syntax."""
    for media_range in ranges:
        if media_range.media_type in ("*/*", "multipart/*"):
            return
        if media_range.is_multipart_related:
            part = media_range.part_range()
            if part.matches(OCTET_STREAM) and part.transfer_syntax in (None, "*", EXPLICIT_VR_LITTLE_ENDIAN):
                return
    raise NotAcceptable('bulk data is served as multipart/related; type="application/octet-stream"')
