"""multipart/related (RFC 2387, RFC 2046 5.1) written and read as streams, for WADO and STOW alike.

Neither side ever holds a whole body or a whole part: the writer yields headers and the chunks
it is given; the parser is fed chunks and hands back part headers and body pieces as they become
certain, keeping only a delimiter's length of lookahead.

The writer sends strict RFC 2046 framing. The parser takes what real senders write (Postel): a
boundary of any length (RFC 2046's 70 characters bind senders; Orthanc's DICOMweb client sends 73),
lines ended by LF alone as well as CRLF, a preamble and an epilogue, transport padding, and no line
end after the close delimiter. What is really broken stays refused: a body without the close
delimiter, a delimiter followed by something else, a malformed or oversized part header.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from dicomcloud.errors import InvalidInput
from dicomcloud.ports.storage import ByteRange
from dicomcloud.web.zero_copy import BodyPiece, FileRange

CRLF = b"\r\n"
LF = b"\n"
MAX_HEADER_BYTES = 16 * 1024
# A boundary is read as sent, of any length the request's headers can carry; it must be printable ASCII,
# since a control character or a line end inside it could never be matched on a line of the body.
_BOUNDARY_CHARS = frozenset(chr(code) for code in range(0x20, 0x7F))

Part = tuple[Mapping[str, str], Iterable[bytes]]
# A part whose body is byte ranges of a file.
RangesPart = tuple[Mapping[str, str], Sequence[ByteRange]]


def new_boundary() -> str:
    """A random boundary: 32 hex digits cannot plausibly occur inside a DICOM object."""
    return secrets.token_hex(16)


def validate_boundary(boundary: str) -> str:
    if not boundary or not set(boundary) <= _BOUNDARY_CHARS:
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


def ranges_multipart(file: BinaryIO, parts: Sequence[RangesPart], boundary: str) -> tuple[Iterator[BodyPiece], int]:
    """A multipart/related body whose part bodies are byte ranges of one open file, and its length; the file is
    closed once the body is sent (or abandoned)."""
    heads = [part_head(boundary, headers) for headers, _ in parts]
    closing = close_delimiter(boundary)
    length = sum(len(head) + len(CRLF) for head in heads) + sum(count for _, ranges in parts for _, count in ranges)

    def pieces() -> Iterator[BodyPiece]:
        with file:
            lead = b""
            for head, (_, ranges) in zip(heads, parts, strict=True):
                yield lead + head
                for offset, count in ranges:
                    yield FileRange(file, offset, count)
                lead = CRLF
            yield lead + closing

    return pieces(), length + len(closing)


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

    The delimiter is LF "--" boundary, and a CR just before it belongs to it too (RFC 2046 writes
    CRLF; some senders write LF alone). The body is read as if it began with CRLF so that a
    boundary on the very first line (no preamble) is found the same way as every later one.
    """

    def __init__(self, boundary: str, *, max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        self._delimiter = LF + b"--" + validate_boundary(boundary).encode("ascii")
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
            # Kept back: a delimiter's start, and the CR that may precede it.
            keep = len(self._delimiter)
            if len(self._buffer) > keep:
                cut = len(self._buffer) - keep
                if in_body:
                    events.append(PartData(bytes(self._buffer[:cut])))
                del self._buffer[:cut]
            return False
        if in_body:
            end = index - 1 if index and self._buffer[index - 1] == CRLF[0] else index
            if end:
                events.append(PartData(bytes(self._buffer[:end])))
            events.append(PartEnd())
            self._in_part = False
        del self._buffer[: index + len(self._delimiter)]
        self._state = _State.AFTER_DELIMITER
        return True

    def _after_delimiter(self) -> bool:
        """After a delimiter: "--" closes; otherwise optional padding then a line end opens a part."""
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
        line_end = _line_end(rest)
        if line_end is None:
            return False
        if not line_end:
            raise InvalidInput("multipart boundary is followed by neither a line end nor '--'")
        del self._buffer[: padding + line_end]
        self._state = _State.HEADERS
        return True

    def _headers(self, events: list[PartEvent]) -> bool:
        """The header block ends at the first empty line (CRLF CRLF, LF LF, or a mix)."""
        blank = _line_end(self._buffer)
        if blank:
            end, skip = 0, blank
        else:
            ends = [(found, len(mark)) for mark in (b"\n\r\n", b"\n\n") if (found := self._buffer.find(mark)) >= 0]
            end, skip = min(ends) if ends else (-1, 0)
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


def _line_end(data: bytes | bytearray) -> int | None:
    """The length of the line end `data` starts with (2 for CRLF, 1 for LF), 0 if none, None if too short to tell."""
    if data.startswith(CRLF):
        return 2
    if data.startswith(LF):
        return 1
    return None if data in (b"", b"\r") else 0


def _parse_headers(block: bytes) -> dict[str, str]:
    """Header fields of one part; folded lines (obsolete but legal in MIME) are unfolded."""
    headers: dict[str, str] = {}
    text = block.decode("latin-1").replace("\r\n", "\n").replace("\n ", " ").replace("\n\t", " ")
    for line in text.split("\n"):
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise InvalidInput(f"malformed multipart part header: {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return headers
