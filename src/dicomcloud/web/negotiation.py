"""Media types and Accept headers (RFC 9110 12.5.1, PS3.18 8.7): the one negotiation module of every route.

DICOMweb puts the interesting facts in parameters (`type`, `transfer-syntax`, `charset`, `boundary`),
so a media type here is always its lowercased `type/subtype` plus its unquoted parameters.

How an Accept list is read (each route then takes the first range, in this order, that its resource
can be served in; 406 only when there is none):
- ranges are ordered by q-value, the client's order kept on ties; a q=0 range is a refusal: dropped, and
  the media type it names (`*/*, image/png;q=0`) no longer matched by the wildcards (RFC 9110 12.5.1);
- an entry that is no media type at all (`toto`) is an unknown type and skipped, like a media type
  the resource does not have; 400 is only for a header that cannot be read (a parameter without a
  value, a q-value that is no number from 0 to 1, an unclosed quote);
- the `accept` query parameter (PS3.18 8.3.3.1), when given, is read instead of the header;
- `*/*` and `type/*` are wildcards; each resource says what `*/*` means (its default);
- a `charset` other than UTF-8 (the only one served) makes a range unmet.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from starlette.requests import Request

from dicomcloud.errors import InvalidInput, NotAcceptable

MULTIPART_RELATED = "multipart/related"
DICOM_JSON = "application/dicom+json"
# Character sets a text response is served in (PS3.18 8.8): UTF-8 only.
SERVED_CHARSETS = frozenset({"utf-8", "utf8", "iso-ir-192", "*"})


@dataclass(frozen=True)
class MediaRange:
    """One Accept entry, or one Content-Type, with parameter names lowercased."""

    media_type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0
    # Concrete media types the client refused (q=0), which this range, a wildcard, does not cover.
    excluded: frozenset[str] = frozenset()

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")

    @property
    def charset_served(self) -> bool:
        """No charset named, or one the archive serves text in."""
        return self.params.get("charset", "*").lower() in SERVED_CHARSETS

    @property
    def is_multipart_related(self) -> bool:
        return self.media_type == MULTIPART_RELATED

    def part_range(self) -> MediaRange:
        """What a multipart range asks for in each part: its `type` and `transfer-syntax`.

        Some clients put the transfer syntax inside the quoted type
        (`type="application/octet-stream; transfer-syntax=*"`); both spellings mean the same.
        """
        raw_type = self.params.get("type", "*/*")
        inner = parse_media_type(raw_type)
        params = dict(inner.params)
        if self.transfer_syntax is not None:
            params["transfer-syntax"] = self.transfer_syntax
        return MediaRange(inner.media_type, params, self.q)

    def matches(self, media_type: str) -> bool:
        """Whether this range (possibly `*/*` or `type/*`) covers a concrete media type."""
        concrete = media_type.lower()
        if concrete in self.excluded:
            return False
        if self.media_type in ("*/*", "*"):
            return True
        major, _, minor = self.media_type.partition("/")
        concrete_major, _, concrete_minor = concrete.partition("/")
        return major == concrete_major and minor in ("*", concrete_minor)


def _split_outside_quotes(text: str, separator: str) -> Iterator[str]:
    start = 0
    quoted = False
    escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            yield text[start:index]
            start = index + 1
    if quoted:
        raise InvalidInput(f"unclosed quote in {text[:120]!r}")
    yield text[start:]


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        inner = value[1:-1]
        out: list[str] = []
        escaped = False
        for char in inner:
            if escaped or char != "\\":
                out.append(char)
                escaped = False
            else:
                escaped = True
        return "".join(out)
    return value


def _is_media_type(media_type: str) -> bool:
    major, slash, minor = media_type.partition("/")
    return media_type == "*" or bool(slash and major and minor and "/" not in minor and " " not in media_type)


def parse_media_type(value: str) -> MediaRange:
    """Parse `type/subtype; name=value; …` (quoted or token values). Raises InvalidInput."""
    pieces = list(_split_outside_quotes(value, ";"))
    media_type = pieces[0].strip().lower()
    if not _is_media_type(media_type):
        raise InvalidInput(f"malformed media type: {value[:120]!r}")
    params: dict[str, str] = {}
    q = 1.0
    for piece in pieces[1:]:
        if not piece.strip():
            continue
        name, sep, raw = piece.partition("=")
        if not sep:
            raise InvalidInput(f"malformed media type parameter: {piece.strip()[:80]!r}")
        name = name.strip().lower()
        if name == "q":
            try:
                q = float(raw.strip())
            except ValueError:
                raise InvalidInput(f"malformed quality value: {raw.strip()[:20]!r}") from None
            if not 0.0 <= q <= 1.0:
                raise InvalidInput(f"quality value out of range: {raw.strip()[:20]!r}")
        else:
            params[name] = _unquote(raw)
    return MediaRange(media_type, params, q)


def parse_accept(header: str | None) -> list[MediaRange]:
    """Acceptable media ranges, most preferred first (see the module docstring). No header means `*/*`."""
    if header is None or not header.strip():
        return [MediaRange("*/*")]
    items = [item for item in _split_outside_quotes(header, ",") if item.strip()]
    known = [item for item in items if _is_media_type(next(_split_outside_quotes(item, ";")).strip().lower())]
    ranges = [parse_media_type(item) for item in known]
    refused = frozenset(r.media_type for r in ranges if r.q == 0 and "*" not in r.media_type)
    accepted = [replace(r, excluded=refused) if "*" in r.media_type else r for r in ranges if r.q > 0]
    return sorted(accepted, key=lambda r: -r.q)


def accept_of(request: Request) -> str | None:
    """What the client accepts: the `accept` query parameter(s) when given (PS3.18 8.3.3.1), else the header."""
    from_query = request.query_params.getlist("accept")
    return ", ".join(from_query) if from_query else request.headers.get("accept")


def negotiate_json(request: Request) -> str:
    """DICOM JSON (`*/*`, `application/*`, `application/dicom+json`, and `application/json`, which names the
    same document) in UTF-8; else 406."""
    accept = accept_of(request)
    for media_range in parse_accept(accept):
        if media_range.charset_served and (
            media_range.matches(DICOM_JSON) or media_range.media_type == "application/json"
        ):
            return DICOM_JSON
    raise NotAcceptable(f"this resource is {DICOM_JSON} in UTF-8; Accept was {accept!r}")


def format_media_type(media_type: str, **params: str) -> str:
    """`multipart/related; type="application/dicom"; boundary=…`: values quoted when needed."""
    out = [media_type]
    for name, value in params.items():
        name = name.replace("_", "-")
        needs_quotes = not value or any(c in value for c in ' ;,/"=()<>@:\\[]?{}')
        shown = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"' if needs_quotes else value
        out.append(f"{name}={shown}")
    return "; ".join(out)
