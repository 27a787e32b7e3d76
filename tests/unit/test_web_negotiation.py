"""Accept and Content-Type parsing (RFC 9110, PS3.18 8.7)."""

from __future__ import annotations

import pytest

from dicomcloud.errors import InvalidInput
from dicomcloud.web.negotiation import (
    MediaRange,
    format_media_type,
    parse_accept,
    parse_media_type,
)


def test_absent_accept_means_anything() -> None:
    assert parse_accept(None) == [MediaRange("*/*")]
    assert parse_accept("  ") == [MediaRange("*/*")]


def test_accept_is_ordered_by_quality_keeping_client_order_on_ties() -> None:
    ranges = parse_accept("a/x;q=0.5, b/y, c/z;q=0.5, d/w;q=1")
    assert [r.media_type for r in ranges] == ["b/y", "d/w", "a/x", "c/z"]


def test_quality_zero_is_refusal() -> None:
    assert [r.media_type for r in parse_accept("a/x;q=0, b/y")] == ["b/y"]


def test_unknown_types_are_skipped_not_refused() -> None:
    assert [r.media_type for r in parse_accept("toto, application/dicom+json")] == ["application/dicom+json"]
    assert [r.media_type for r in parse_accept('text, "quoted", */*;q=0.1')] == ["*/*"]
    assert parse_accept("toto") == []


@pytest.mark.parametrize("header", ["a/b; noequals", "a/b;q=2", "a/b;q=x", 'multipart/related; type="a/b'])
def test_a_header_that_cannot_be_read_is_invalid_input(header: str) -> None:
    with pytest.raises(InvalidInput):
        parse_accept(header)


def test_a_refused_type_is_not_matched_by_a_wildcard() -> None:
    wildcard, png = parse_accept("image/png;q=0, image/*;q=0.5, text/plain")[1], "image/png"
    assert wildcard.media_type == "image/*"
    assert not wildcard.matches(png) and wildcard.matches("image/jpeg")
    assert MediaRange("image/*").matches(png)


def test_wildcards_rank_by_quality_like_any_range() -> None:
    ranges = parse_accept("*/*;q=0.1, image/*;q=0.5, image/png")
    assert [r.media_type for r in ranges] == ["image/png", "image/*", "*/*"]


def test_quoted_and_token_parameters_are_equivalent() -> None:
    quoted = parse_media_type('multipart/related; type="application/dicom"; transfer-syntax=*')
    token = parse_media_type("Multipart/Related;TYPE=application/dicom;transfer-syntax=*")
    assert quoted == token
    assert quoted.params == {"type": "application/dicom", "transfer-syntax": "*"}


def test_commas_inside_quotes_do_not_split_the_header() -> None:
    ranges = parse_accept('multipart/related; type="a/b, c/d", text/plain')
    assert ranges[0].params["type"] == "a/b, c/d"
    assert ranges[1].media_type == "text/plain"


def test_part_range_takes_type_and_transfer_syntax() -> None:
    outer = parse_media_type('multipart/related; type="application/octet-stream"; transfer-syntax=*')
    assert outer.part_range() == MediaRange("application/octet-stream", {"transfer-syntax": "*"})


def test_part_range_reads_transfer_syntax_inside_quoted_type() -> None:
    outer = parse_media_type('multipart/related; type="application/octet-stream; transfer-syntax=1.2.3"')
    assert outer.part_range().transfer_syntax == "1.2.3"


def test_multipart_without_type_asks_for_anything() -> None:
    assert parse_media_type("multipart/related").part_range().media_type == "*/*"


@pytest.mark.parametrize(
    ("media_range", "concrete", "expected"),
    [
        ("*/*", "image/jpeg", True),
        ("image/*", "image/jpeg", True),
        ("image/*", "application/dicom", False),
        ("application/dicom", "Application/DICOM", True),
        ("application/dicom", "application/dicom+json", False),
    ],
)
def test_wildcards_match(media_range: str, concrete: str, expected: bool) -> None:
    assert parse_media_type(media_range).matches(concrete) is expected


@pytest.mark.parametrize("value", ["", "nonsense", "a/", "/b", "a/b; noequals", "a/b;q=2", "a/b;q=x"])
def test_malformed_media_types_are_invalid_input(value: str) -> None:
    with pytest.raises(InvalidInput):
        parse_media_type(value)


def test_format_quotes_only_when_needed() -> None:
    assert (
        format_media_type("multipart/related", type="application/dicom", boundary="abc123")
        == 'multipart/related; type="application/dicom"; boundary=abc123'
    )
    assert format_media_type("application/dicom", transfer_syntax="1.2.840.10008.1.2.1") == (
        "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    )
