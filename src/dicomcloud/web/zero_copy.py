"""ASGI's zero-copy send extension, both sides: a response hands the server an open file and a byte range
(`{"type": "http.response.zerocopysend", "file": …, "offset": …, "count": …, "more_body": …}`) and the kernel
moves those bytes from the page cache to the socket (`os.sendfile`), never through Python.

Offered (`scope["extensions"]["http.response.zerocopysend"]`) on plain connections; a TLS transport must
encrypt in user space, so it gets none and responses copy as before. The transport writes whatever it is
given at once (a high-water mark of 0), so an empty write buffer means every byte before is with the kernel
and a range can follow it on the socket in order. When the socket is full, the range waits until it is
writable again, with reading paused meanwhile: a pipelined request is read once the response is complete
(uvicorn then starts it), and nothing the server might write about it can land inside the range.

`FileRangesResponse` is the application's side: a body of bytes and file ranges, the ranges sent by zero-copy
where the server offers it and read in pieces by a worker thread where it does not (a test client).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import anyio.to_thread
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from dicomcloud.errors import StorageFailure

log = logging.getLogger(__name__)

ZERO_COPY_SEND = "http.response.zerocopysend"
# The most file bytes one read holds when a range is copied.
COPY_PIECE = 4 * 1024 * 1024


@dataclass(frozen=True)
class FileRange:
    """`count` bytes of an open file from `offset`, to send as they lie."""

    file: BinaryIO
    offset: int
    count: int


BodyPiece = bytes | FileRange


class FileRangesResponse(Response):
    """A response whose body is `pieces` (bytes, and ranges of open files) of `length` bytes in all.

    `pieces` is taken one at a time as the previous is sent, so a generator can open each file when its turn
    comes and close it after; it is closed when the response ends or fails. A file that ends before its range
    aborts the response: its Content-Length was announced.
    """

    def __init__(
        self, pieces: Iterator[BodyPiece], length: int, media_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.pieces = pieces
        self.length = length
        super().__init__(media_type=media_type, headers={**(headers or {}), "Content-Length": str(length)})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        zero_copy = ZERO_COPY_SEND in scope.get("extensions", {})
        remaining = self.length  # the piece that brings it to 0 ends the body: no empty message after it
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            for piece in self.pieces:
                if isinstance(piece, bytes):
                    if not piece:
                        continue
                    remaining -= len(piece)
                    await send({"type": "http.response.body", "body": piece, "more_body": remaining > 0})
                elif zero_copy:
                    remaining -= piece.count
                    await send({"type": ZERO_COPY_SEND, "file": piece.file, "offset": piece.offset,
                                "count": piece.count, "more_body": remaining > 0})  # fmt: skip
                else:
                    for start in range(piece.offset, piece.offset + piece.count, COPY_PIECE):
                        body = await anyio.to_thread.run_sync(
                            _read, piece.file, start, min(COPY_PIECE, piece.offset + piece.count - start)
                        )
                        remaining -= len(body)
                        await send({"type": "http.response.body", "body": body, "more_body": remaining > 0})
            if remaining or not self.length:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            close = getattr(self.pieces, "close", None)
            if close is not None:
                close()


def _read(file: BinaryIO, offset: int, count: int) -> bytes:
    file.seek(offset)
    data = file.read(count)
    if len(data) != count:
        name = getattr(file, "name", "an object")
        log.error("%s changed size while being sent; response aborted", name)
        raise StorageFailure(f"{name} ended before bytes {offset}-{offset + count} while being sent")
    return data


class ZeroCopyHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the zero-copy send extension."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._zero_copy = False
        self._writable: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._zero_copy = transport.get_extra_info("sslcontext") is None and self._socket_fd() is not None
        if self._zero_copy:
            transport.set_write_buffer_limits(high=0)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._zero_copy:
            self.scope["extensions"] = {ZERO_COPY_SEND: {}}

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        if not self._zero_copy:
            super()._start_asgi_task(cycle, app)
            return

        async def app_sending_files(scope: Any, receive: Any, send: Any) -> None:
            async def send_or_send_file(message: Any) -> None:
                if message["type"] == ZERO_COPY_SEND:
                    await self._send_file(cycle, message)
                else:
                    await send(message)

            await app(scope, receive, send_or_send_file)

        super()._start_asgi_task(cycle, app_sending_files)

    def _socket_fd(self) -> int | None:
        sock = self.transport.get_extra_info("socket")
        return sock.fileno() if sock is not None else None

    async def _send_file(self, cycle: RequestResponseCycle, message: dict[str, Any]) -> None:
        """One zero-copy send within `cycle`'s response, counted against its Content-Length like a body."""
        offset, count = int(message.get("offset", 0)), int(message["count"])
        more_body = bool(message.get("more_body", False))
        if cycle.disconnected:
            return
        if not cycle.response_started or cycle.response_complete:
            raise RuntimeError(f"{ZERO_COPY_SEND} outside a response body")
        if cycle.chunked_encoding:
            raise RuntimeError(f"{ZERO_COPY_SEND} needs a response with a Content-Length")
        if count > cycle.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        if cycle.scope["method"] != "HEAD" and count:
            await self._sendfile(message["file"].fileno(), offset, count)
            if cycle.disconnected:
                return
        cycle.expected_content_length -= count
        if not more_body:
            await cycle.send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _sendfile(self, file_fd: int, offset: int, count: int) -> None:
        socket_fd = self._socket_fd()
        if socket_fd is None:
            return
        while count:
            if self.transport.is_closing():
                return
            if self.transport.get_write_buffer_size() == 0:
                try:
                    sent = os.sendfile(socket_fd, file_fd, offset, count)
                except BlockingIOError:
                    sent = -1
                except (BrokenPipeError, ConnectionResetError):
                    return  # the client left; connection_lost follows
                if sent == 0:
                    raise StorageFailure(f"a file ended {count} bytes before its range: it changed while being sent")
                if sent > 0:
                    offset, count = offset + sent, count - sent
                    continue
            await self._until_writable(socket_fd)

    async def _until_writable(self, socket_fd: int) -> None:
        """Wait until the socket takes bytes again (or the connection is lost), reading paused meanwhile.

        The wait watches a duplicate of the socket's descriptor: the event loop refuses to watch the
        transport's own."""
        paused_here = not self.flow.read_paused
        self.flow.pause_reading()
        watched = os.dup(socket_fd)
        self._writable = self.loop.create_future()
        writable = self._writable

        def wake() -> None:
            if not writable.done():
                writable.set_result(None)

        self.loop.add_writer(watched, wake)
        try:
            await writable
        finally:
            self.loop.remove_writer(watched)
            os.close(watched)
            self._writable = None
            if paused_here and not self.transport.is_closing():
                self.flow.resume_reading()


class GZipAroundZeroCopy:
    """Starlette's GZipMiddleware, except that a zero-copy send goes around it: it drops message types it does not
    know. Only multipart bodies, which it never compresses, are sent so, and it has passed their start already.

    Both GZipMiddlewares are built once; the one around the zero-copy send finds the request's own send in a
    context variable (each request runs in its own task, with its own context)."""

    def __init__(self, app: ASGIApp, minimum_size: int, exclude_content_types: tuple[str, ...]) -> None:
        self.app = app
        self.gzip = GZipMiddleware(app, minimum_size=minimum_size, exclude_content_types=exclude_content_types)
        self.gzip_around_zero_copy = GZipMiddleware(
            self._zero_copy_around_gzip, minimum_size=minimum_size, exclude_content_types=exclude_content_types
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if ZERO_COPY_SEND not in scope.get("extensions", {}):
            await self.gzip(scope, receive, send)
            return
        _server_send.set(send)
        await self.gzip_around_zero_copy(scope, receive, send)

    async def _zero_copy_around_gzip(self, scope: Scope, receive: Receive, gzip_send: Send) -> None:
        send = _server_send.get()

        async def send_around_gzip(message: Message) -> None:
            await (send if message["type"] == ZERO_COPY_SEND else gzip_send)(message)

        await self.app(scope, receive, send_around_gzip)


_server_send: contextvars.ContextVar[Send] = contextvars.ContextVar("server_send")
