"""STOW-RS store (PS3.18 10.5): a streamed multipart body, each part spooled to a temp file.

The body is read chunk by chunk; each application/dicom part goes to its own staged storage file
as it arrives, so memory stays flat whatever the body's size. Parts are stored together
(archive/store.py `store_many`: parse each once, place all in one storage commit and one index
transaction, one bus publish) only once the closing delimiter has arrived: a body that is cut,
stalls past `http.body_timeout`, grows past `http.max_stow_bytes` or is malformed stores nothing and
leaves no staged file, so a client can simply send it again. So does a body that, after
`http.body_rate_grace` seconds, has averaged less than `http.body_min_rate` bytes a second. A 200
means every part is there: a retrieve, search or C-FIND sent after it finds them, on any server.

Status (PS3.18 Table 10.5.3-1): 200 all stored; 202 some stored, some failed; none stored -> 409,
or 400 when every failure is a malformed object, 503 when every failure is the archive's own.
A part whose media type is not application/dicom fails like an unreadable object (0xC000).

Why an instance failed, in words a person can act on ("truncated file: element (7FE0,0010) at offset
1500 has length 8192, only 8130 bytes left"), is in the response twice: in each Failed SOP Sequence item
as Error Comment (0000,0902) beside its Failure Reason code (the Store Instances Response Module has no
text attribute of its own; this is the field DIMSE gives the same text), and as a `Warning` header
(RFC 7234 5.5, warn-code 299 "miscellaneous persistent warning", as PS3.18 uses it), one per failed
instance up to MAX_WARNINGS, for clients that show headers but not the body.

Metadata and bulk data bodies (`type="application/dicom+json"`, PS3.18 10.5.1.2.2): each application/dicom+json
part holds an instance or an array of them; every other part is bulk data, application/octet-stream, named by its
Content-Location, which a BulkDataURI of the metadata gives. Each instance becomes an Explicit VR Little Endian
Part 10 file with every value exactly as sent (dicom/dicomjson.py `write_part10_from_json`) and is stored as a
received file is; one that cannot be (a BulkDataURI with no part, compressed bulk data) fails alone, named.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, BinaryIO

import anyio
from anyio import to_thread
from fastapi import APIRouter, Request, Response
from starlette.requests import ClientDisconnect

from dicomcloud.archive.store import Refused
from dicomcloud.config import HttpSettings
from dicomcloud.dicom.dicomjson import dumps, json_identity, keyword_values_to_json, write_part10_from_json
from dicomcloud.errors import DicomCloudError, InvalidInput, PayloadTooLarge, UnsupportedMediaType
from dicomcloud.events import StorageEvent
from dicomcloud.ports.storage import Storage
from dicomcloud.web.context import RequestScope, Scope, path_uid
from dicomcloud.web.multipart import MultipartParser, PartData, PartEvent, PartStart
from dicomcloud.web.negotiation import parse_media_type

log = logging.getLogger(__name__)

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
OCTET_STREAM = "application/octet-stream"
# Body bytes gathered per hop to the thread that writes them: a hop per 64 KB chunk cost more than the writes.
SPOOL_BATCH = 2 * 1024 * 1024
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
WARN_AGENT = "dicomcloud"
# Warning headers per response at most (one per failed instance); the body lists every failure.
MAX_WARNINGS = 10

router = APIRouter(tags=["STOW-RS"])


class RequestTimeout(InvalidInput):
    """The request body stalled longer than `http.body_timeout`, or came slower than `http.body_min_rate`."""

    http_status = 408


@router.post("/studies", summary="Store instances")
async def store_instances(request: Request, scope: Scope) -> Response:
    return await store(scope, request, None)


@router.post("/studies/{study}", summary="Store instances of one study")
async def store_study_instances(request: Request, scope: Scope, study: str) -> Response:
    return await store(scope, request, path_uid(study, "StudyInstanceUID"))


@dataclass(frozen=True)
class Failure:
    """A part that was not stored, with the UIDs when its header could be read."""

    error: DicomCloudError
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None


async def store(scope: RequestScope, request: Request, study: str | None) -> Response:
    boundary, part_type = _boundary(request.headers.get("content-type"))
    settings = scope.archive.settings.http
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > settings.max_stow_bytes:
        raise PayloadTooLarge(f"the body declares {declared} bytes; the limit is {settings.max_stow_bytes}")
    storage = scope.archive.runtime.storage
    spool: _Spool | _JsonSpool = _Spool(storage) if part_type == DICOM else _JsonSpool(storage)
    try:
        await _receive(request, MultipartParser(boundary), spool, settings)
        if isinstance(spool, _JsonSpool):
            await to_thread.run_sync(spool.write_instances)
    except BaseException:
        await to_thread.run_sync(spool.discard)
        raise
    if not spool.parts:
        raise InvalidInput("the request holds no parts" if part_type == DICOM else "the request holds no metadata")
    try:
        outcomes = await to_thread.run_sync(_store_parts, scope, spool.parts, study)
    finally:
        await to_thread.run_sync(spool.discard)
    stored = [outcome for outcome in outcomes if isinstance(outcome, StorageEvent)]
    failed = [outcome for outcome in outcomes if isinstance(outcome, Failure)]
    for failure in failed:
        log.warning(
            "STOW %s: instance %s not stored (0x%04X): %s",
            scope.tenant,
            failure.sop_instance_uid or "?",
            failure.error.failure_reason,
            failure.error.message,
        )
    log.info("STOW %s: %d stored, %d failed", scope.tenant, len(stored), len(failed))
    body = dumps(_response_dataset(scope, study, stored, failed))
    response = Response(body, status_code=_status(stored, failed), media_type="application/dicom+json")
    for text in _warnings(outcomes):
        response.headers.append("Warning", f'299 {WARN_AGENT} "{_quoted(text)}"')
    return response


def _warnings(outcomes: list[StorageEvent | Failure]) -> list[str]:
    """One text per failed part, naming its instance when its header could be read (else its place in the
    body, counted from 1); past MAX_WARNINGS, the rest counted."""
    texts = [
        f"{outcome.sop_instance_uid or f'part {number}'} not stored: {outcome.error.reason}"
        for number, outcome in enumerate(outcomes, 1)
        if isinstance(outcome, Failure)
    ]
    if len(texts) > MAX_WARNINGS:
        more = len(texts) - MAX_WARNINGS + 1
        texts = [*texts[: MAX_WARNINGS - 1], f"{more} more not stored; the Failed SOP Sequence lists every reason"]
    return texts


def _quoted(text: str) -> str:
    """The inside of an RFC 7230 quoted-string."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _boundary(content_type: str | None) -> tuple[str, str]:
    """The body's boundary and the type of its parts: application/dicom, or application/dicom+json (metadata and
    bulk data)."""
    if not content_type:
        raise UnsupportedMediaType('STOW-RS needs Content-Type: multipart/related; type="application/dicom"')
    try:
        media = parse_media_type(content_type)
    except InvalidInput as exc:
        raise UnsupportedMediaType(exc.message) from exc
    if not media.is_multipart_related:
        raise UnsupportedMediaType(f'STOW-RS takes multipart/related; type="application/dicom", not {media.media_type}')
    declared_type = media.params.get("type")
    part_type = DICOM if declared_type is None else parse_media_type(declared_type).media_type
    if part_type not in (DICOM, DICOM_JSON):
        raise UnsupportedMediaType(
            f"STOW-RS parts of type {declared_type} are not supported; send application/dicom or application/dicom+json"
        )
    boundary = media.params.get("boundary")
    if not boundary:
        raise InvalidInput("multipart/related Content-Type without a boundary")
    return boundary, part_type


async def _receive(
    request: Request, parser: MultipartParser, spool: _Spool | _JsonSpool, settings: HttpSettings
) -> None:
    """Feed the body to the parser and the spool, chunk by chunk, until the closing delimiter."""
    received = 0
    pending: list[PartEvent] = []
    pending_bytes = 0
    limit = settings.max_stow_bytes
    try:
        async with aclosing(_chunks(request, settings)) as chunks:
            async for chunk in chunks:
                received += len(chunk)
                if received > limit:
                    raise PayloadTooLarge(f"the body is larger than {limit} bytes")
                pending += parser.feed(chunk)
                pending_bytes += len(chunk)
                if pending_bytes >= SPOOL_BATCH:
                    await to_thread.run_sync(spool.apply, pending)
                    pending, pending_bytes = [], 0
        if pending:
            await to_thread.run_sync(spool.apply, pending)
    except ClientDisconnect:
        raise InvalidInput(f"the client disconnected after {received} bytes; nothing stored") from None
    except RequestTimeout as exc:
        log.warning("STOW body: %s; nothing stored", exc.message)
        raise
    try:
        parser.finish()
    except InvalidInput as exc:
        log.warning("STOW body truncated after %d bytes: %s", received, exc.message)
        raise InvalidInput(f"truncated request: {exc.message}") from exc


async def _chunks(request: Request, settings: HttpSettings) -> AsyncGenerator[bytes, None]:
    """The request body; RequestTimeout when no data arrives for `http.body_timeout` seconds, or when, after
    `http.body_rate_grace` seconds, it has averaged less than `http.body_min_rate` bytes a second (a body
    dripping a byte at a time would otherwise hold the request for ever)."""
    start = anyio.current_time()
    received = 0
    async with aclosing(request.stream()) as stream:
        while True:
            now = anyio.current_time()
            stall_at = now + settings.body_timeout
            slow_at = start + settings.body_rate_grace + received / settings.body_min_rate
            with anyio.move_on_after(max(0.0, min(stall_at, slow_at) - now)) as waited:
                try:
                    chunk = await anext(stream)
                except StopAsyncIteration:
                    return
            if waited.cancelled_caught:
                if stall_at <= slow_at:
                    stalled = f"{settings.body_timeout:.0f} s after {received} bytes"
                    raise RequestTimeout(f"the request body stalled for {stalled}")
                elapsed = anyio.current_time() - start
                raise RequestTimeout(
                    f"the request body arrived at {received / elapsed:.0f} bytes/s (the least is "
                    f"{settings.body_min_rate}) after {received} bytes"
                )
            received += len(chunk)
            yield chunk


class _Spool:
    """Writes each part to its own staged file; runs in a worker thread (file writes block)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.parts: list[BinaryIO | Failure] = []
        self._file: BinaryIO | None = None

    def apply(self, events: list[PartEvent]) -> None:
        for event in events:
            if isinstance(event, PartStart):
                self._start(event.headers.get("content-type"))
            elif isinstance(event, PartData):
                if self._file is not None:
                    self._file.write(event.data)
            elif self._file is not None:
                self._file.flush()
                self._file = None

    def _start(self, content_type: str | None) -> None:
        """A part without Content-Type is taken as the multipart's declared type (RFC 2387)."""
        media_type = DICOM
        if content_type:
            try:
                media_type = parse_media_type(content_type).media_type
            except InvalidInput:
                media_type = content_type
        if media_type != DICOM:
            self.parts.append(Failure(InvalidInput(f"part of media type {media_type[:80]!r} is not application/dicom")))
            return
        self._file = self.storage.stage()
        self.parts.append(self._file)

    def discard(self) -> None:
        """Drop every staged file the store did not consume (all of them if the body failed)."""
        self._file = None
        for part in self.parts:
            if not isinstance(part, Failure):
                self.storage.discard(part)
        self.parts.clear()


class _JsonSpool:
    """Gathers the metadata parts of a JSON+bulk data body in memory (the body's size is bounded) and writes each
    bulk data part to its own staged file; then writes each described instance as a staged Part 10 file."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.parts: list[BinaryIO | Failure] = []
        self._metadata: list[bytearray] = []
        self._bulk: dict[str, tuple[BinaryIO, str]] = {}  # Content-Location -> staged bytes, media type
        self._current: bytearray | BinaryIO | None = None

    def apply(self, events: list[PartEvent]) -> None:
        for event in events:
            if isinstance(event, PartStart):
                self._start(event.headers)
            elif isinstance(event, PartData):
                if isinstance(self._current, bytearray):
                    self._current.extend(event.data)
                elif self._current is not None:
                    self._current.write(event.data)
            else:
                self._current = None

    def _start(self, headers: dict[str, str]) -> None:
        content_type = headers.get("content-type") or DICOM_JSON
        try:
            media_type = parse_media_type(content_type).media_type
        except InvalidInput:
            media_type = content_type
        if media_type == DICOM_JSON:
            self._current = bytearray()
            self._metadata.append(self._current)
            return
        location = headers.get("content-location")
        if not location:
            raise InvalidInput(f"a bulk data part ({media_type[:80]}) without Content-Location")
        staged = self.storage.stage()
        self._bulk[location] = (staged, media_type)
        self._current = staged

    def write_instances(self) -> None:
        """Each instance of the metadata as a staged Part 10 file, or the Failure of the one that cannot be."""
        for raw in self._metadata:
            try:
                document = json.loads(bytes(raw))
            except (ValueError, UnicodeDecodeError) as exc:
                self.parts.append(Failure(InvalidInput(f"a metadata part is not JSON: {exc}")))
                continue
            for instance in document if isinstance(document, list) else [document]:
                self.parts.append(self._instance(instance))

    def _instance(self, instance: Any) -> BinaryIO | Failure:
        staged = self.storage.stage()
        try:
            write_part10_from_json(instance, self._bulk_value, staged)
        except DicomCloudError as exc:
            self.storage.discard(staged)
            return Failure(exc, *json_identity(instance))
        return staged

    def _bulk_value(self, uri: str) -> bytes:
        found = self._bulk.get(uri)
        if found is None:
            raise InvalidInput(f"no bulk data part has Content-Location {uri[:200]}")
        staged, media_type = found
        if media_type != OCTET_STREAM:
            raise InvalidInput(f"bulk data of type {media_type[:80]} is not taken; send it as {OCTET_STREAM}")
        staged.flush()
        staged.seek(0)
        return staged.read()

    def discard(self) -> None:
        """Drop every staged file the store did not consume: bulk data always, instances when not stored."""
        self._current = None
        for staged, _ in self._bulk.values():
            self.storage.discard(staged)
        self._bulk.clear()
        for part in self.parts:
            if not isinstance(part, Failure):
                self.storage.discard(part)
        self.parts.clear()


def _store_parts(
    scope: RequestScope, parts: list[BinaryIO | Failure], study: str | None
) -> list[StorageEvent | Failure]:
    """Store the spooled parts as one batch; outcomes in the order of the parts."""
    files = [part for part in parts if not isinstance(part, Failure)]
    store = scope.archive.store
    stored = iter(store.store_many(files, tenant_id=scope.tenant, source="stow", expected_study_uid=study))
    outcomes: list[StorageEvent | Failure] = []
    for part in parts:
        outcome: StorageEvent | Refused | Failure = part if isinstance(part, Failure) else next(stored)
        if isinstance(outcome, Refused):
            outcome = Failure(outcome.error, outcome.identity.sop_class_uid, outcome.identity.sop_instance_uid)
        outcomes.append(outcome)
    return outcomes


def _status(stored: list[StorageEvent], failed: list[Failure]) -> int:
    if not failed:
        return 200
    if stored:
        return 202
    statuses = {failure.error.http_status for failure in failed}
    if statuses == {400} or statuses == {503}:
        return statuses.pop()
    return 409


def _response_dataset(
    scope: RequestScope, study: str | None, stored: list[StorageEvent], failed: list[Failure]
) -> dict[str, Any]:
    """The Store Instances Response Module (PS3.18 Annex I) as DICOM JSON."""
    dataset: dict[str, Any] = {}
    studies = {event.study_instance_uid for event in stored}
    if study is not None or len(studies) == 1:
        dataset.update(keyword_values_to_json({"RetrieveURL": scope.study_url(study or studies.pop())}))
    if failed:
        items = []
        for failure in failed:
            values: dict[str, Any] = {}
            if failure.sop_class_uid:
                values["ReferencedSOPClassUID"] = failure.sop_class_uid
            if failure.sop_instance_uid:
                values["ReferencedSOPInstanceUID"] = failure.sop_instance_uid
            values["FailureReason"] = failure.error.failure_reason
            values["ErrorComment"] = failure.error.reason
            items.append(keyword_values_to_json(values))
        dataset[FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": items}
    if stored:
        items = [
            keyword_values_to_json(
                {
                    "ReferencedSOPClassUID": event.sop_class_uid,
                    "ReferencedSOPInstanceUID": event.sop_instance_uid,
                    "RetrieveURL": scope.instance_url(
                        event.study_instance_uid, event.series_instance_uid, event.sop_instance_uid
                    ),
                }
            )
            for event in stored
        ]
        dataset[REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": items}
    return dict(sorted(dataset.items()))
