"""WADO-RS retrieve (PS3.18 10.4): instances, metadata, frames and bulk data.

Negotiation (PS3.18 8.7), in the client's order of preference:
- Instances: `multipart/related; type="application/dicom"` with no transfer-syntax or `*` gets
  the files as stored, as do `*/*` and `multipart/*`; a bare `application/dicom` is accepted for a
  single instance (one body, not multipart); `application/zip` gets them as stored in one ZIP
  (PS3.18 Supplement 211, web/zip_payload.py). A named transfer syntax gets, per instance, the stored
  file if it has that syntax, else its derived copy, made now (archive/retrieve.py `derived`) if
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

Instances, and frames asked for as stored, leave local files as byte ranges of them (by sendfile where the
server offers it, web/zero_copy.py); from an object store, or decoded or encoded, they are read and copied.

The handlers translate requests and responses; what is read, and from where, is archive/retrieve.py's.
"""

from __future__ import annotations

import enum
import functools
import io
import logging
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from dicomcloud.archive.retrieve import FrameSource, StoredInstance
from dicomcloud.dicom.codecs import TRANSCODE_TARGETS, check_transcodable
from dicomcloud.dicom.dicomjson import parse_tag_path
from dicomcloud.dicom.seriesdoc import with_base
from dicomcloud.dicom.uids import DEFAULT_FRAME_SYNTAX, EXPLICIT_VR_LITTLE_ENDIAN, OCTET_STREAM, TransferSyntax
from dicomcloud.errors import CannotConvert, InvalidInput, NotAcceptable, NotFound, StorageFailure
from dicomcloud.ports.index import InstanceLocation, SeriesKey
from dicomcloud.ports.storage import Storage
from dicomcloud.web.context import RequestScope, Scope, path_uid
from dicomcloud.web.multipart import (
    CRLF,
    Part,
    close_delimiter,
    new_boundary,
    part_head,
    ranges_multipart,
    write_multipart,
)
from dicomcloud.web.negotiation import (
    MULTIPART_RELATED,
    MediaRange,
    accept_of,
    format_media_type,
    negotiate_json,
    parse_accept,
)
from dicomcloud.web.zero_copy import BodyPiece, FileRange, FileRangesResponse
from dicomcloud.web.zip_payload import ZIP, zip_pieces

log = logging.getLogger(__name__)

# Object bytes per socket write: a typical instance is one piece, framing included.
PIECE_SIZE = 4 * 1024 * 1024
# Instances of a multi-instance answer read ahead of the one being sent from an object store (one piece each
# at most): SeaweedFS here served 155 MB/s to one GET at a time, 260 MB/s to 4 and 350 MB/s to 8.
READ_AHEAD = 8
# Threads reading ahead, shared by every response of the process.
READ_AHEAD_THREADS = 16
DICOM = "application/dicom"
MAX_FRAMES_PER_REQUEST = 100_000

router = APIRouter(tags=["WADO-RS"])
_READERS = ThreadPoolExecutor(READ_AHEAD_THREADS, thread_name_prefix="wado-read-ahead")


def series_instances(scope: RequestScope, study: str, series: str | None = None) -> list[InstanceLocation]:
    """The instances a study or series path names (its UIDs checked), in order; NotFound when none."""
    study = path_uid(study, "StudyInstanceUID")
    series = path_uid(series, "SeriesInstanceUID") if series is not None else None
    return scope.archive.retrieve.instances(scope.tenant, study, series)


def instance_at(scope: RequestScope, study: str, series: str, instance: str) -> InstanceLocation:
    """The instance an instance path names (its UIDs checked); NotFound when it is not there."""
    return scope.archive.retrieve.instance(
        scope.tenant,
        path_uid(study, "StudyInstanceUID"),
        path_uid(series, "SeriesInstanceUID"),
        path_uid(instance, "SOPInstanceUID"),
    )


# ---------------------------------------------------------------------------------------------
# Instances


@router.get("/studies/{study}", summary="Retrieve a study")
def retrieve_study(request: Request, scope: Scope, study: str) -> Response:
    return _dicom_response(scope, request, series_instances(scope, study), single=False)


@router.get("/studies/{study}/series/{series}", summary="Retrieve a series")
def retrieve_series(request: Request, scope: Scope, study: str, series: str) -> Response:
    return _dicom_response(scope, request, series_instances(scope, study, series), single=False)


@router.get("/studies/{study}/series/{series}/instances/{instance}", summary="Retrieve an instance")
def retrieve_instance(request: Request, scope: Scope, study: str, series: str, instance: str) -> Response:
    return _dicom_response(scope, request, [instance_at(scope, study, series, instance)], single=True)


class _Packaging(enum.Enum):
    MULTIPART = "multipart"
    SINGLE = "single"
    ZIP = "zip"


def servable_syntax(stored: set[str], transfer_syntax: str | None) -> tuple[bool, str | None]:
    """Whether instances stored in `stored` syntaxes can be served in `transfer_syntax` (None or `*`: as
    stored), and the syntax to make them in (None: as stored)."""
    if transfer_syntax in (None, "*") or stored == {transfer_syntax}:
        return True, None
    if transfer_syntax not in TRANSCODE_TARGETS:
        return False, None
    try:
        for syntax in stored - {transfer_syntax}:
            check_transcodable(syntax, transfer_syntax)
    except CannotConvert:
        return False, None
    return True, transfer_syntax


def _dicom_packaging(ranges: list[MediaRange], stored: set[str], single: bool) -> tuple[_Packaging, str | None]:
    """How to package the instances, and the transfer syntax to serve them in (None: as stored)."""
    for media_range in ranges:
        if media_range.media_type in ("*/*", "multipart/*"):
            return _Packaging.MULTIPART, None
        if media_range.media_type == ZIP:
            return _Packaging.ZIP, None
        if media_range.is_multipart_related:
            part = media_range.part_range()
            fits, syntax = servable_syntax(stored, part.transfer_syntax)
            if part.matches(DICOM) and fits:
                return _Packaging.MULTIPART, syntax
        elif single and media_range.matches(DICOM):
            fits, syntax = servable_syntax(stored, media_range.transfer_syntax)
            if fits:
                return _Packaging.SINGLE, syntax
    raise NotAcceptable(f"stored as {', '.join(sorted(stored))}; no acceptable transfer syntax can be made from it")


def _dicom_response(scope: RequestScope, request: Request, locations: list[InstanceLocation], single: bool) -> Response:
    ranges = parse_accept(accept_of(request))
    packaging, target = _dicom_packaging(ranges, {loc.transfer_syntax for loc in locations}, single)
    if packaging is _Packaging.SINGLE:
        return single_instance_response(scope, locations[0], target)
    stored = scope.archive.retrieve.stored(locations, target)
    storage = scope.archive.runtime.storage
    if packaging is _Packaging.ZIP:
        disposition = f'attachment; filename="{locations[0].study_instance_uid}.zip"'
        return StreamingResponse(
            zip_pieces(storage, stored), media_type=ZIP, headers={"Content-Disposition": disposition}
        )
    boundary = new_boundary()
    heads = [part_head(boundary, _part_headers(instance)) for instance in stored]
    closing = close_delimiter(boundary)
    length = sum(len(head) + instance.length + len(CRLF) for head, instance in zip(heads, stored, strict=True))
    media_type = format_media_type(MULTIPART_RELATED, type=DICOM, boundary=boundary)
    if not storage.remote:
        return FileRangesResponse(_file_pieces(storage, stored, heads, closing), length + len(closing), media_type)
    return StreamingResponse(
        _multipart_pieces(storage, stored, heads, closing),
        media_type=media_type,
        headers={"Content-Length": str(length + len(closing))},
    )


def single_instance_response(
    scope: RequestScope, location: InstanceLocation, target: str | None, *, media_type_params: bool = True
) -> Response:
    """One instance as an application/dicom body, in `target` syntax (None: as stored). WADO-URI leaves the
    transfer-syntax parameter out of its Content-Type (`media_type_params`; PS3.18 forbids it there)."""
    (instance,) = scope.archive.retrieve.stored([location], target)
    media_type = format_media_type(DICOM, transfer_syntax=instance.transfer_syntax) if media_type_params else DICOM
    storage = scope.archive.runtime.storage
    if not storage.remote:
        return FileRangesResponse(_file_pieces(storage, [instance], [b""], b""), instance.length, media_type)
    return StreamingResponse(
        _pieces(storage, instance, instance.prefix, b""),
        media_type=media_type,
        headers={"Content-Length": str(instance.length)},
    )


def _part_headers(instance: StoredInstance) -> dict[str, str]:
    return {
        "Content-Type": format_media_type(DICOM, transfer_syntax=instance.transfer_syntax),
        "Content-Length": str(instance.length),
    }


def _file_pieces(
    storage: Storage, stored: list[StoredInstance], heads: list[bytes], closing: bytes
) -> Iterator[BodyPiece]:
    """Local files as they lie, each behind its head and prefix (the CRLF that ends a part goes with the next
    head), `closing` last: each file is opened when its turn comes and closed once sent."""
    lead = b""
    for head, instance in zip(heads, stored, strict=True):
        with storage.open(instance.key) as handle:
            yield lead + head + instance.prefix
            yield FileRange(handle, 0, instance.size)
        lead = CRLF if closing else b""
    if lead + closing:
        yield lead + closing


def _multipart_pieces(
    storage: Storage, stored: list[StoredInstance], heads: list[bytes], closing: bytes
) -> Iterator[memoryview | bytes]:
    """The multipart body from an object store: each instance's head, object and CRLF as one piece when it fits.

    The next READ_AHEAD instances are opened and their first pieces read while one is sent, so its latency is
    paid for several at once; what waits is at most READ_AHEAD first pieces (and their streams' buffers),
    whatever the instances' sizes: the rest of a big instance is read as it is sent.
    """
    upcoming = zip(heads, stored, strict=True)
    pending: deque[Future[_Opened]] = deque()

    def read_ahead() -> None:
        for head, instance in islice(upcoming, READ_AHEAD + 1 - len(pending)):
            pending.append(_READERS.submit(_open_first_piece, storage, instance, head + instance.prefix, CRLF))

    try:
        read_ahead()
        while pending:
            opened = pending.popleft().result()
            read_ahead()
            with opened.handle:
                yield opened.first
                yield from opened.rest
        yield closing
    finally:
        for future in pending:  # a response abandoned part way: nothing read ahead stays open
            future.cancel()
            future.add_done_callback(_close_opened)


@dataclass
class _Opened:
    """An instance being sent: its open stream, its first piece read, the generator of the others."""

    handle: io.BufferedReader
    first: memoryview
    rest: Iterator[memoryview]


def _open_first_piece(storage: Storage, instance: StoredInstance, lead: bytes, tail: bytes) -> _Opened:
    handle = storage.open(instance.key)
    try:
        pieces = _read_pieces(handle, instance, lead, tail)
        return _Opened(handle, next(pieces), pieces)
    except BaseException:
        handle.close()
        raise


def _close_opened(future: Future[_Opened]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().handle.close()


def _pieces(storage: Storage, instance: StoredInstance, lead: bytes, tail: bytes) -> Iterator[memoryview]:
    with storage.open(instance.key) as handle:
        yield from _read_pieces(handle, instance, lead, tail)


def _read_pieces(handle: io.BufferedReader, instance: StoredInstance, lead: bytes, tail: bytes) -> Iterator[memoryview]:
    """`lead`, the object and `tail` in pieces of at most PIECE_SIZE object bytes.

    Each piece is one read into one fresh buffer that already holds the framing around it, and
    one write to the socket: the response's Content-Length was announced from the sizes, so an
    object that changed since is an error that aborts the response, never a wrong body.
    """
    remaining = instance.size
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
                log.error("%s changed size while being sent; response aborted", instance.key)
                raise StorageFailure(f"{instance.key} changed while being sent")
            filled += read
        view[filled:] = ending
        yield view
        if not remaining:
            return
        lead = b""


# ---------------------------------------------------------------------------------------------
# Metadata


@router.get("/studies/{study}/metadata", summary="Retrieve study metadata")
def study_metadata(request: Request, scope: Scope, study: str) -> Response:
    media_type = negotiate_json(request)
    locations = series_instances(scope, study)
    bodies = []
    for study_uid, series in dict.fromkeys((loc.study_instance_uid, loc.series_instance_uid) for loc in locations):
        array = scope.archive.metadata.metadata_array(SeriesKey(scope.tenant, study_uid, series))
        if array is not None:
            bodies.append(array.strip()[1:-1])
    if not bodies:
        raise NotFound(f"no study {study} in this archive")
    return Response(with_base(b"[" + b",".join(bodies) + b"]", scope.base_url), media_type=media_type)


@router.get("/studies/{study}/series/{series}/metadata", summary="Retrieve series metadata")
def series_metadata(request: Request, scope: Scope, study: str, series: str) -> Response:
    media_type = negotiate_json(request)
    study = path_uid(study, "StudyInstanceUID")
    series = path_uid(series, "SeriesInstanceUID")
    array = scope.archive.metadata.metadata_array(SeriesKey(scope.tenant, study, series))
    if array is None:
        raise NotFound(f"no series {series} in study {study}")
    return Response(with_base(array, scope.base_url), media_type=media_type)


@router.get("/studies/{study}/series/{series}/instances/{instance}/metadata", summary="Retrieve instance metadata")
def instance_metadata(request: Request, scope: Scope, study: str, series: str, instance: str) -> Response:
    media_type = negotiate_json(request)
    study = path_uid(study, "StudyInstanceUID")
    series = path_uid(series, "SeriesInstanceUID")
    sop = path_uid(instance, "SOPInstanceUID")
    doc = scope.archive.metadata.document(SeriesKey(scope.tenant, study, series))
    if doc is None:
        raise NotFound(f"no series {series} in study {study}")
    return Response(doc.instance_metadata_body(sop, scope.base_url), media_type=media_type)


# ---------------------------------------------------------------------------------------------
# Frames


class _FrameForm(enum.Enum):
    STORED = "stored"  # as stored: compressed bitstreams, or native little endian
    UNCOMPRESSED = "uncompressed"  # native little endian, decoded if stored compressed
    ENCODED = "encoded"  # decoded, then encoded in another compressed transfer syntax


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


def check_frame_list(numbers: list[int], count: int) -> None:
    """A frame list names frames of the instance (404 otherwise), and no more of them than it has (400): a
    list repeating one frame 20,000 times would make a response 20,000 frames long."""
    beyond = [n for n in numbers if n > count]
    if beyond:
        raise NotFound(f"frame {beyond[0]} is out of range 1-{count}")
    if len(numbers) > count:
        raise InvalidInput(f"the frame list names {len(numbers)} frames; the instance has {count}")


def _frame_form(part: MediaRange, stored: TransferSyntax) -> tuple[_FrameForm, str] | None:
    """The form and transfer syntax one acceptable part media range asks for, or None if unmet."""
    requested = part.transfer_syntax
    stored_media = stored.frame_media_type
    served_syntax = stored.frame_syntax
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
    compressed = stored_media not in (None, OCTET_STREAM)
    if compressed and part.matches(str(stored_media)) and requested in (None, "*", served_syntax):
        return _FrameForm.STORED, served_syntax
    target = DEFAULT_FRAME_SYNTAX.get(part.media_type) if requested in (None, "*") else requested
    if target is None or target not in TRANSCODE_TARGETS:
        return None
    target_media = TransferSyntax(target).frame_media_type
    if target_media is None or not part.matches(target_media):
        return None
    try:
        check_transcodable(stored, target)
    except CannotConvert:
        return None
    return _FrameForm.ENCODED, target


def _select_frame_form(ranges: list[MediaRange], stored: TransferSyntax) -> tuple[_FrameForm, str]:
    for media_range in ranges:
        if media_range.is_multipart_related:
            part = media_range.part_range()
        elif media_range.media_type in ("*/*", "multipart/*"):
            part = MediaRange("*/*")
        else:
            continue
        form = _frame_form(part, stored)
        if form is not None:
            return form
    raise NotAcceptable(f"frames are stored as {stored}; none of the accepted forms can be made from them")


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}", summary="Retrieve frames")
async def retrieve_frames(
    request: Request, scope: Scope, study: str, series: str, instance: str, frames: str
) -> Response:
    return await frames_response(request, scope, study, series, instance, frames)


async def frames_response(
    request: Request, scope: RequestScope, study: str, series: str, instance: str, frames: str
) -> Response:
    """The frames route's answer, for FastAPI's route and web/frame_path.py's alike.

    A viewer asks for frames by the hundred in parallel. When the instance's frame source is kept and its frames
    leave a local file as they lie, nothing before the sendfile can wait, and the event loop answers at once;
    otherwise one worker thread does what may (the index, storage, decoding) and the event loop sends the answer."""
    uids = (
        path_uid(study, "StudyInstanceUID"),
        path_uid(series, "SeriesInstanceUID"),
        path_uid(instance, "SOPInstanceUID"),
    )
    retrieve = scope.archive.retrieve
    source = retrieve.kept_frame_source(scope.tenant, *uids)
    if source is None:
        return await run_in_threadpool(_frames_found_response, request, scope, uids, frames)
    plan = _frame_plan(request, source, frames)
    if plan.sent_from_file(scope.archive.runtime.storage):
        return _file_frames_response(scope, plan)
    return await run_in_threadpool(_read_frames_response, scope, plan)


@dataclass(frozen=True)
class _FramePlan:
    """What a frames request asks for, checked against the instance: which frames, in which form and framing."""

    source: FrameSource
    numbers: list[int]
    form: _FrameForm
    part_syntax: str
    part_headers: dict[str, str]
    boundary: str
    media_type: str

    def sent_from_file(self, storage: Storage) -> bool:
        """Whether the frames' bytes are sent as they lie in a local file (by sendfile where the server can)."""
        return self.form is _FrameForm.STORED and bool(self.source.frame_index.frames) and not storage.remote


def _frame_plan(request: Request, source: FrameSource, frames: str) -> _FramePlan:
    frame_index = source.frame_index
    numbers = parse_frame_list(frames)
    form, part_syntax, part_media = _negotiated_frames(accept_of(request), frame_index.transfer_syntax)
    check_frame_list(numbers, frame_index.number_of_frames)
    part_headers = {"Content-Type": format_media_type(part_media, transfer_syntax=part_syntax)}
    boundary = new_boundary()
    media_type = format_media_type(MULTIPART_RELATED, type=part_media, boundary=boundary)
    return _FramePlan(source, numbers, form, part_syntax, part_headers, boundary, media_type)


@functools.lru_cache(maxsize=256)
def _negotiated_frames(accept: str | None, stored: TransferSyntax) -> tuple[_FrameForm, str, str]:
    """The form, transfer syntax and part media type that frames stored in `stored` are served in for an Accept
    value; remembered per value, since a viewer sends the same one with each of its hundreds of frame requests."""
    if stored.frame_media_type is None:
        raise NotAcceptable(f"no frame media type for transfer syntax {stored}")
    form, part_syntax = _select_frame_form(parse_accept(accept), stored)
    if form is _FrameForm.UNCOMPRESSED and stored.has_uncompressed_frames:
        form = _FrameForm.STORED
    return form, part_syntax, TransferSyntax(part_syntax).frame_media_type or OCTET_STREAM


def _frames_found_response(request: Request, scope: RequestScope, uids: tuple[str, str, str], frames: str) -> Response:
    """The answer when the frame source is not kept: found (the index, the series document), then answered."""
    plan = _frame_plan(request, scope.archive.retrieve.frame_source(scope.tenant, *uids), frames)
    if plan.sent_from_file(scope.archive.runtime.storage):
        return _file_frames_response(scope, plan)
    return _read_frames_response(scope, plan)


def _file_frames_response(scope: RequestScope, plan: _FramePlan) -> Response:
    """The frames' byte ranges of the local file, inside the multipart framing."""
    location, frame_index = plan.source.location, plan.source.frame_index
    file = scope.archive.retrieve.open_frames(location, frame_index, plan.numbers)
    parts = [(plan.part_headers, frame_index.frames[n - 1]) for n in plan.numbers]
    pieces, length = ranges_multipart(file, parts, plan.boundary)
    return FileRangesResponse(pieces, length, plan.media_type)


def _read_frames_response(scope: RequestScope, plan: _FramePlan) -> Response:
    """Frames read (from an object store) or decoded or encoded, one at a time as the client takes them."""
    retrieve = scope.archive.retrieve
    location, frame_index = plan.source.location, plan.source.frame_index

    def frame(number: int) -> bytes:
        if plan.form is _FrameForm.ENCODED:
            return retrieve.encoded_frame(location, number, plan.part_syntax)
        if plan.form is _FrameForm.UNCOMPRESSED:
            return retrieve.decoded_frame(location, number)
        return retrieve.frames(location, frame_index, [number])[0]

    # The first frame is read before answering, so an unreadable or undecodable frame is a clean
    # error status rather than a broken stream; the others are read as the client takes them.
    first = frame(plan.numbers[0])

    def parts_read() -> Iterator[Part]:
        yield plan.part_headers, [first]
        for number in plan.numbers[1:]:
            yield plan.part_headers, [frame(number)]

    return StreamingResponse(write_multipart(parts_read(), plan.boundary), media_type=plan.media_type)


# ---------------------------------------------------------------------------------------------
# Bulk data


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag_path:path}", summary="Retrieve bulk data"
)
def retrieve_bulkdata(
    request: Request, scope: Scope, study: str, series: str, instance: str, tag_path: str
) -> Response:
    location = instance_at(scope, study, series, instance)
    parse_tag_path(tag_path)
    _select_bulkdata(parse_accept(accept_of(request)))
    value = scope.archive.retrieve.bulkdata(location, tag_path)
    url = scope.instance_url(location.study_instance_uid, location.series_instance_uid, location.sop_instance_uid)
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
