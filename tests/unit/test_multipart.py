"""The streaming multipart/related writer and parser (RFC 2046 5.1)."""

from __future__ import annotations

import os

import pytest

from dicomcloud.errors import InvalidInput
from dicomcloud.web.multipart import (
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    new_boundary,
    validate_boundary,
    write_multipart,
)

BOUNDARY = "b0undary-42"


def parse(chunks: list[bytes], boundary: str = BOUNDARY) -> list[tuple[dict[str, str], bytes]]:
    """Feed chunks and collect (headers, body) per part; raises what the parser raises."""
    parser = MultipartParser(boundary)
    parts: list[tuple[dict[str, str], bytes]] = []
    body = bytearray()
    headers: dict[str, str] = {}
    for chunk in chunks:
        for event in parser.feed(chunk):
            if isinstance(event, PartStart):
                headers, body = event.headers, bytearray()
            elif isinstance(event, PartData):
                assert event.data, "empty data events are noise"
                body += event.data
            else:
                assert isinstance(event, PartEnd)
                parts.append((headers, bytes(body)))
    parser.finish()
    return parts


def sample_parts() -> list[tuple[dict[str, str], bytes]]:
    return [
        ({"Content-Type": "application/dicom"}, b"DICM" + bytes(range(256)) + b"\r\n--b0undary-4"),
        ({"Content-Type": "application/dicom", "Content-Location": "x/1"}, b""),
        ({"Content-Type": "application/octet-stream"}, b"\r\n\r\n--\r\n"),
    ]


def encoded(parts: list[tuple[dict[str, str], bytes]], boundary: str = BOUNDARY) -> bytes:
    return b"".join(write_multipart(((h, [b]) for h, b in parts), boundary))


def expected(parts: list[tuple[dict[str, str], bytes]]) -> list[tuple[dict[str, str], bytes]]:
    return [({k.lower(): v for k, v in h.items()}, b) for h, b in parts]


def test_writer_output_round_trips_through_parser() -> None:
    parts = sample_parts()
    assert parse([encoded(parts)]) == expected(parts)


def test_writer_emits_rfc2046_layout() -> None:
    body = encoded([({"Content-Type": "application/dicom"}, b"abc")], "xyz")
    assert body == b"--xyz\r\nContent-Type: application/dicom\r\n\r\nabc\r\n--xyz--\r\n"


def test_writer_starts_each_body_lazily() -> None:
    opened: list[int] = []

    def body(n: int) -> list[bytes]:
        opened.append(n)
        return [b"x" * n]

    stream = write_multipart((({"Content-Type": "a/b"}, body(n)) for n in (1, 2)), "q")
    next(stream)
    assert opened == [1]


def test_boundary_split_at_every_position_is_found() -> None:
    parts = sample_parts()
    raw = encoded(parts)
    for cut in range(1, len(raw)):
        assert parse([raw[:cut], raw[cut:]]) == expected(parts), cut


def test_one_byte_chunks_parse_like_one_chunk() -> None:
    parts = sample_parts()
    raw = encoded(parts)
    assert parse([raw[i : i + 1] for i in range(len(raw))]) == expected(parts)


def test_big_part_fed_in_tiny_chunks_keeps_buffer_small() -> None:
    payload = os.urandom(300_000)
    raw = encoded([({"Content-Type": "application/dicom"}, payload)])
    parser = MultipartParser(BOUNDARY)
    received = bytearray()
    for i in range(0, len(raw), 7):
        for event in parser.feed(raw[i : i + 7]):
            if isinstance(event, PartData):
                received += event.data
        assert len(parser._buffer) < 64
    parser.finish()
    assert bytes(received) == payload


def test_preamble_and_epilogue_are_ignored() -> None:
    raw = (
        b"This is a preamble.\r\n--" + BOUNDARY.encode() + b"\r\nContent-Type: a/b\r\n\r\nbody"
        b"\r\n--" + BOUNDARY.encode() + b"--\r\nepilogue text\r\n--" + BOUNDARY.encode() + b"\r\n"
    )
    assert parse([raw]) == [({"content-type": "a/b"}, b"body")]


def test_transport_padding_after_boundary_is_allowed() -> None:
    raw = b"--" + BOUNDARY.encode() + b" \t\r\nContent-Type: a/b\r\n\r\nbody\r\n--" + BOUNDARY.encode() + b"--"
    assert parse([raw]) == [({"content-type": "a/b"}, b"body")]


def test_part_without_headers_has_empty_headers() -> None:
    raw = b"--" + BOUNDARY.encode() + b"\r\n\r\nbody\r\n--" + BOUNDARY.encode() + b"--"
    assert parse([raw]) == [({}, b"body")]


def test_folded_header_is_unfolded() -> None:
    raw = (
        b"--" + BOUNDARY.encode() + b"\r\nContent-Type: multipart/x;\r\n type=a\r\n\r\nbody"
        b"\r\n--" + BOUNDARY.encode() + b"--"
    )
    assert parse([raw]) == [({"content-type": "multipart/x; type=a"}, b"body")]


def test_missing_close_delimiter_is_truncation() -> None:
    raw = encoded(sample_parts())
    without_close = raw[: raw.rindex(b"--" + BOUNDARY.encode() + b"--")]
    with pytest.raises(InvalidInput, match="without the closing delimiter"):
        parse([without_close])


def test_body_cut_inside_a_part_reports_in_part() -> None:
    raw = encoded(sample_parts())
    parser = MultipartParser(BOUNDARY)
    events = parser.feed(raw[:100])
    assert isinstance(events[0], PartStart)
    assert not any(isinstance(e, PartEnd) for e in events)
    assert parser.in_part
    with pytest.raises(InvalidInput, match="inside a part"):
        parser.finish()


def test_body_without_any_boundary_is_truncation() -> None:
    with pytest.raises(InvalidInput, match="preamble"):
        parse([b"just some bytes, no multipart here"])


def test_close_delimiter_right_away_is_zero_parts() -> None:
    assert parse([b"--" + BOUNDARY.encode() + b"--\r\n"]) == []


def test_boundary_followed_by_garbage_is_rejected() -> None:
    raw = b"--" + BOUNDARY.encode() + b"X\r\n\r\nbody"
    with pytest.raises(InvalidInput, match="neither a line end"):
        parse([raw])


def test_oversized_part_headers_are_rejected() -> None:
    raw = b"--" + BOUNDARY.encode() + b"\r\nX-Big: " + b"a" * 20_000
    with pytest.raises(InvalidInput, match="headers longer"):
        parse([raw])


def test_malformed_part_header_is_rejected() -> None:
    raw = b"--" + BOUNDARY.encode() + b"\r\nno colon here\r\n\r\nbody\r\n--" + BOUNDARY.encode() + b"--"
    with pytest.raises(InvalidInput, match="malformed multipart part header"):
        parse([raw])


def test_data_after_completion_is_ignored() -> None:
    parser = MultipartParser(BOUNDARY)
    parser.feed(b"--" + BOUNDARY.encode() + b"--")
    assert parser.complete
    assert parser.feed(b"--" + BOUNDARY.encode() + b"\r\n\r\nx") == []


def test_new_boundaries_are_valid_and_distinct() -> None:
    boundaries = {validate_boundary(new_boundary()) for _ in range(100)}
    assert len(boundaries) == 100


@pytest.mark.parametrize("boundary", ["", "bad\x00char", "line\r\nend", "caf\u00e9"])
def test_invalid_boundaries_are_rejected(boundary: str) -> None:
    with pytest.raises(InvalidInput):
        MultipartParser(boundary)


# What real senders write beyond RFC 2046's letter, read as they mean it.

ORTHANC_BOUNDARY = "x" * 73  # Orthanc 1.10's DICOMweb client sends 73 characters


@pytest.mark.parametrize("boundary", [ORTHANC_BOUNDARY, "b" * 200, "trailing ", "with;semicolon\"quote", "a"])
def test_a_boundary_of_any_length_or_printable_characters_is_read(boundary: str) -> None:
    parts = sample_parts()
    assert parse([encoded(parts, boundary)], boundary) == expected(parts)


def test_lf_only_line_ends_are_read() -> None:
    parts = sample_parts()
    delimiter = b"--" + BOUNDARY.encode()
    raw = b"".join(
        delimiter + b"\n" + b"".join(f"{k}: {v}\n".encode() for k, v in headers.items()) + b"\n" + body + b"\n"
        for headers, body in parts
    ) + delimiter + b"--\n"
    # Only the framing changed: a part's own bytes (CRLFs inside it included) arrive as sent.
    assert parse([raw]) == expected(parts)
    assert parse([raw[i : i + 1] for i in range(len(raw))]) == expected(parts)


def test_lf_only_headers_and_mixed_line_ends_are_read() -> None:
    raw = (
        b"--" + BOUNDARY.encode() + b"\nContent-Type: a/b\nContent-Location: x\r\n\nbody\n--" + BOUNDARY.encode()
        + b"\r\nContent-Type: c/d\r\n\r\nsecond\r\n--" + BOUNDARY.encode() + b"--"
    )
    first = ({"content-type": "a/b", "content-location": "x"}, b"body")
    assert parse([raw]) == [first, ({"content-type": "c/d"}, b"second")]


def test_lf_only_part_without_headers_has_empty_headers() -> None:
    raw = b"--" + BOUNDARY.encode() + b"\n\nbody\n--" + BOUNDARY.encode() + b"--\n"
    assert parse([raw]) == [({}, b"body")]


def test_missing_final_line_end_is_complete() -> None:
    raw = encoded(sample_parts()).removesuffix(b"\r\n")
    assert raw.endswith(b"--")
    assert parse([raw]) == expected(sample_parts())


def test_a_body_whose_last_delimiter_is_not_closed_is_truncation() -> None:
    raw = encoded(sample_parts()).removesuffix(b"--\r\n")
    with pytest.raises(InvalidInput, match="without the closing delimiter"):
        parse([raw])


def test_a_preamble_with_lf_only_lines_is_skipped() -> None:
    raw = b"preamble line\nanother\n--" + BOUNDARY.encode() + b"\n\nbody\n--" + BOUNDARY.encode() + b"--\nepilogue"
    assert parse([raw]) == [({}, b"body")]
