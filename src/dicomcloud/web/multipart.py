"""multipart/related (RFC 2387, RFC 2046 5.1) written and read as streams, for WADO and STOW alike.

Neither side ever holds a whole body or a whole part: the writer yields headers and the chunks
it is given; the parser is fed chunks and hands back part headers and body pieces as they become
certain, keeping only a delimiter's length of lookahead.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from dicomcloud.errors import InvalidInput

CRLF = b"\r\n"
MAX_HEADER_BYTES = 16 * 1024
# RFC 2046: a boundary is 1 to 70 characters from a restricted set.
_BOUNDARY_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? ")

Part = tuple[Mapping[str, str], Iterable[bytes]]


def new_boundary() -> str:
    """A random boundary: 32 hex digits cannot plausibly occur inside a DICOM object."""
    return secrets.token_hex(16)


def validate_boundary(boundary: str) -> str:
    if not 1 <= len(boundary) <= 70 or not set(boundary) <= _BOUNDARY_CHARS or boundary.endswith(" "):
        raise InvalidInput(f"invalid multipart boundary: {boundary[:80]!r}")
    return boundary


def part_head(boundary: str, headers: Mapping[str, str]) -> bytes:
    """A part's delimiter line and header block, up to the blank line that starts its body."""
    lines = [f"--{boundary}", *(f"{name}: {value}" for name, value in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def close_delimiter(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode("ascii")


def write_multipart(parts: Iterable[Part], boundary: str) -> Iterator[bytes]:
    """The body of a multipart/related message, part by part.

    `parts` may be lazy, and each body iterable is only started when its part is reached, so a
    study is streamed one open file at a time.
    """
    for headers, body in parts:
        yield part_head(boundary, headers)
        for chunk in body:
            if chunk:
                yield chunk
        yield CRLF
    yield close_delimiter(boundary)


@dataclass(frozen=True)
class PartStart:
    """A part begins; header names are lowercased, values stripped."""

    headers: dict[str, str]


@dataclass(frozen=True)
class PartData:
    data: bytes


@dataclass(frozen=True)
class PartEnd:
    pass


PartEvent = PartStart | PartData | PartEnd


class _State(enum.Enum):
    PREAMBLE = "preamble"
    AFTER_DELIMITER = "after delimiter"
    HEADERS = "headers"
    BODY = "body"
    EPILOGUE = "epilogue"


class MultipartParser:
    """Incremental parser: `feed` chunks, act on the events, then `finish` to detect truncation.

    The delimiter is CRLF "--" boundary; the body is read as if it began with CRLF so that a
    boundary on the very first line (no preamble) is found the same way as every later one.
    """

    def __init__(self, boundary: str, *, max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        self._delimiter = CRLF + b"--" + validate_boundary(boundary).encode("ascii")
        self._buffer = bytearray(CRLF)
        self._state = _State.PREAMBLE
        self._max_header_bytes = max_header_bytes
        self._in_part = False

    @property
    def complete(self) -> bool:
        """The close delimiter has been seen."""
        return self._state is _State.EPILOGUE

    @property
    def in_part(self) -> bool:
        """A part has started and not yet ended (its body may be cut if the stream ends now)."""
        return self._in_part

    def feed(self, data: bytes) -> list[PartEvent]:
        if self._state is _State.EPILOGUE:
            return []
        self._buffer += data
        events: list[PartEvent] = []
        while self._step(events):
            pass
        return events

    def finish(self) -> None:
        """Raise InvalidInput unless the close delimiter arrived."""
        if self._state is not _State.EPILOGUE:
            where = "inside a part" if self._in_part else f"in the {self._state.value}"
            raise InvalidInput(f"multipart body ended {where} without the closing delimiter")

    def _step(self, events: list[PartEvent]) -> bool:
        """Advance one state transition if the buffer allows; False when more input is needed."""
        if self._state in (_State.PREAMBLE, _State.BODY):
            return self._scan_for_delimiter(events)
        if self._state is _State.AFTER_DELIMITER:
            return self._after_delimiter()
        if self._state is _State.HEADERS:
            return self._headers(events)
        self._buffer.clear()
        return False

    def _scan_for_delimiter(self, events: list[PartEvent]) -> bool:
        in_body = self._state is _State.BODY
        index = self._buffer.find(self._delimiter)
        if index < 0:
            keep = len(self._delimiter) - 1
            if len(self._buffer) > keep:
                cut = len(self._buffer) - keep
                if in_body:
                    events.append(PartData(bytes(self._buffer[:cut])))
                del self._buffer[:cut]
            return False
        if in_body:
            if index:
                events.append(PartData(bytes(self._buffer[:index])))
            events.append(PartEnd())
            self._in_part = False
        del self._buffer[: index + len(self._delimiter)]
        self._state = _State.AFTER_DELIMITER
        return True

    def _after_delimiter(self) -> bool:
        """After a delimiter: "--" closes; otherwise optional padding then CRLF opens a part."""
        if len(self._buffer) < 2:
            return False
        if self._buffer.startswith(b"--"):
            self._state = _State.EPILOGUE
            self._buffer.clear()
            return False
        padding = 0
        while padding < len(self._buffer) and self._buffer[padding] in b" \t":
            padding += 1
        rest = self._buffer[padding:]
        if len(rest) < 2:
            return False
        if not rest.startswith(CRLF):
            raise InvalidInput("multipart boundary is followed by neither CRLF nor '--'")
        del self._buffer[: padding + 2]
        self._state = _State.HEADERS
        return True

    def _headers(self, events: list[PartEvent]) -> bool:
        if self._buffer.startswith(CRLF):
            end, skip = 0, 2
        else:
            end = self._buffer.find(CRLF + CRLF)
            skip = 4
        if end < 0:
            if len(self._buffer) > self._max_header_bytes:
                raise InvalidInput(f"multipart part headers longer than {self._max_header_bytes} bytes")
            return False
        if end > self._max_header_bytes:
            raise InvalidInput(f"multipart part headers longer than {self._max_header_bytes} bytes")
        headers = _parse_headers(bytes(self._buffer[:end]))
        del self._buffer[: end + skip]
        events.append(PartStart(headers))
        self._in_part = True
        self._state = _State.BODY
        return True


def _parse_headers(block: bytes) -> dict[str, str]:
    """Header fields of one part; folded lines (obsolete but legal in MIME) are unfolded."""
    headers: dict[str, str] = {}
    text = block.decode("latin-1").replace("\r\n ", " ").replace("\r\n\t", " ")
    for line in text.split("\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise InvalidInput(f"malformed multipart part header: {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return headers
