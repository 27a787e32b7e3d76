"""Limits the HTTP server applies before the application sees a request: a client that holds
connections or sends endless headers is refused before authentication could even run.

uvicorn's httptools protocol, with zero-copy sends (web/zero_copy.py) and
- the request line and headers bounded to `http.max_header_bytes` as they arrive (431): a 50 MB
  Authorization header is refused after the bound, never buffered whole;
- the request line and headers due within `http.header_timeout` seconds of the connection, or of the
  previous response on a kept-alive one (408, or a plain close when nothing was sent): a client dripping
  header bytes (slowloris) cannot hold a connection;
- at most `http.max_connections_per_client` open connections per client address (429), counted over every
  process of the service (web/connection_counts.py); trusted proxies (`http.trusted_proxies`, whose
  connections carry many clients) are not counted.
Request bodies have their own deadline where they are read (web/stow.py).
"""

from __future__ import annotations

import asyncio
import http
import logging
from typing import Any

from dicomcloud.config import HttpSettings
from dicomcloud.logs import ThrottledWarnings
from dicomcloud.networks import AddressSet
from dicomcloud.run_folder import CONNECTIONS, run_folder
from dicomcloud.web.connection_counts import ConnectionCounts, ProcessConnectionCounts, SharedConnectionCounts
from dicomcloud.web.zero_copy import ZeroCopyHttpProtocol

log = logging.getLogger(__name__)


def refusal(status: int, reason: str, retry_after: int | None = None) -> bytes:
    """A complete HTTP/1.1 response that closes the connection."""
    body = reason.encode()
    lines = [
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}",
        "content-type: text/plain; charset=utf-8",
        f"content-length: {len(body)}",
        "connection: close",
        *([f"retry-after: {retry_after}"] if retry_after is not None else []),
    ]
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + body


def guarded_protocol(settings: HttpSettings) -> type[ZeroCopyHttpProtocol]:
    """The protocol class for `uvicorn.Config(http=…)`, with `settings`' limits and one count of open
    connections per client address shared by all its connections (and the service's other processes)."""
    trusted = AddressSet(settings.trusted_proxies)
    open_connections = connection_counts()
    warnings = ThrottledWarnings(log)

    class GuardedHttpProtocol(ZeroCopyHttpProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._in_head = True
            self._head_bytes = 0
            self._head_timer: asyncio.TimerHandle | None = None
            self._counted: str | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            address = self.client[0] if self.client else ""
            if address not in trusted:
                limit = settings.max_connections_per_client
                if not open_connections.admit(address, limit):
                    self._refuse(429, f"more than {limit} open connections from {address}", retry_after=1)
                    return
                self._counted = address
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_head_timer()
            if self._counted is not None:
                open_connections.release(self._counted)
                self._counted = None
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._in_head:
                room = settings.max_header_bytes - self._head_bytes
                if len(data) > room:
                    head, data = data[:room], data[room:]
                    self._head_bytes += len(head)
                    if head:
                        super().data_received(head)
                    if self._in_head:
                        limit = settings.max_header_bytes
                        self._refuse(431, f"the request line and headers exceed {limit} bytes")
                        return
                else:
                    self._head_bytes += len(data)
            if data and not self.transport.is_closing():
                super().data_received(data)

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._disarm_head_timer()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head, self._head_bytes = True, 0  # what follows is the next request's head

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_head_timer()

        def _arm_head_timer(self) -> None:
            self._disarm_head_timer()
            self._head_timer = self.loop.call_later(settings.header_timeout, self._head_timed_out)

        def _disarm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if not self._in_head or self.transport.is_closing():
                return
            if self._head_bytes == 0:
                self.transport.close()  # an idle connection: nothing to answer
                return
            self._refuse(408, f"the request line and headers did not arrive within {settings.header_timeout:.0f} s")

        def _refuse(self, status: int, reason: str, retry_after: int | None = None) -> None:
            address = self.client[0] if self.client else "?"
            warnings.warning(str(status), "HTTP %d to %s: %s", status, address, reason)
            self.transport.write(refusal(status, reason, retry_after))
            self.transport.close()

    return GuardedHttpProtocol


def connection_counts() -> ConnectionCounts:
    """This process's counts, or the service's when it runs several processes."""
    folder = run_folder()
    return SharedConnectionCounts(folder / CONNECTIONS) if folder else ProcessConnectionCounts()
