"""QIDO-RS / C-FIND matching: one parser and one set of rules for both (PS3.4 C.2.2.2, PS3.18 8.3.4).

A request becomes a `Query` of `Condition`s here; the index evaluates them (adapters/index_sql.py turns
them into SQL for SQLite and PostgreSQL alike, with the helpers below for names and times), so there
is exactly one matcher. The matching keys are the catalogue's (dicom/attributes.py).

Decisions (also the conformance statement's matching section):

- Matching keys not supported at the query's level (a DICOM attribute we do not index, or one of a
  lower level, such as `Modality` on /studies) are not applied; they are listed in
  `Query.unsupported` and the server answers with a `Warning: 299` header (web/qido.py),
  as PS3.18 allows. OHIF and dicomweb-client ignore the header, so their searches still succeed.
  An empty value for such a key is a request to return it, not a condition, so it warns nothing.
  A tag outside the DICOM dictionary (a private attribute) is such a key too, named by its tag.
- Names that are neither a PS3.18 parameter nor a DICOM keyword or tag (vendor parameters that clients
  add, `_=1700000000` cache busters) are ignored, listed in `Query.ignored`, and named in a `Warning: 299`;
  an includefield the archive cannot know is ignored without one (PS3.18 8.3.4.3 lets a server leave out
  attributes it does not hold).
- Study keys are accepted at series and instance level, series keys at instance level, whatever
  the scope of the URL (a relational superset of PS3.18 Table 10.6.1-5).
- String matching is case-sensitive, as PS3.4 C.2.2.2.1 requires, except PN: person names match
  case-insensitively, and trailing empty name components (`Doe^John^^`) are ignored.
- fuzzymatching=true (PN only): a name also matches when every word of the query (split on `^`,
  `=`, `,` and spaces, `*` dropped) is a prefix of some word of the name, in any order, so `john do`
  finds `Doe^John`. It widens, never narrows, the literal match.
- Multiple values (backslash, or comma as OHIF sends them) are list matching for UI (uid_list) and
  CS (list, each item single or wildcard) attributes; other VRs reject them.
- DA and TM ranges follow C.2.2.2.5; values must be in DICOM form (`YYYYMMDD`, `HH[MM[SS[.F]]]`).
  A partial TM covers its whole span (`1015` is 10:15:00 to 10:15:59.999999), as a single value or a
  range bound. Empty stored values never match a non-universal condition.
- IS keys (SeriesNumber, InstanceNumber) match by integer value (`+7` and `007` match 7).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from dicomcloud.dicom.attributes import CATALOGUE, Attribute, QueryLevel
from dicomcloud.dicom.uids import validate_uid
from dicomcloud.errors import InvalidInput

Level = QueryLevel
MatchKind = Literal["single", "wildcard", "range", "uid_list", "list"]


@dataclass(frozen=True)
class Condition:
    """One matching key. `value` is the string for single/wildcard, (low, high) for range
    (either may be "" for an open end), a tuple of UIDs for uid_list, a tuple of single or
    wildcard values for list."""

    keyword: str
    kind: MatchKind
    value: str | tuple[str, ...]


@dataclass(frozen=True)
class Query:
    level: Level
    conditions: tuple[Condition, ...] = ()
    # Path parameters: /studies/{study}/series/{series}/instances
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    includefields: frozenset[str] = field(default_factory=frozenset)  # keywords; see include_all
    include_all: bool = False
    limit: int | None = None
    offset: int = 0
    fuzzy: bool = False
    # Matching keys given but not applied (not supported at this level): reported, never dropped silently.
    unsupported: tuple[str, ...] = ()
    # Parameters that are neither a DICOM attribute nor a PS3.18 parameter: ignored, and reported.
    ignored: tuple[str, ...] = ()


LEVEL_DEPTH: dict[Level, int] = {"study": 0, "series": 1, "instance": 2}

# The matching keys, from the one catalogue (dicom/attributes.py).
MATCHING_KEYS: dict[str, Attribute] = {attribute.keyword: attribute for attribute in CATALOGUE if attribute.matching}

# Attributes returned by default (PS3.18 Tables 10.6.3-3 to -5, minus what the server adds itself:
# RetrieveURL, InstanceAvailability, TimezoneOffsetFromUTC).
QIDO_LEVEL_KEYWORDS: dict[Level, tuple[str, ...]] = {
    "study": (
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    "series": (
        "Modality",
        "SeriesDescription",
        "SeriesInstanceUID",
        "SeriesNumber",
        "NumberOfSeriesRelatedInstances",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
    ),
    "instance": (
        "SOPClassUID",
        "SOPInstanceUID",
        "InstanceNumber",
        "Rows",
        "Columns",
        "BitsAllocated",
        "NumberOfFrames",
    ),
}

# Parameters of PS3.18 8.3.3.1 that choose the response's media type; the HTTP layer consumes them.
NEGOTIATION_PARAMS = frozenset({"accept", "charset"})
# limit and offset at most what the index holds in an integer (SQL BIGINT, signed 64-bit).
LARGEST_INTEGER = 2**63 - 1
# Characters that separate the words of a person name for fuzzy matching (besides spaces).
PN_WORD_SEPARATORS = "^=,"

_WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_DATE = re.compile(r"[0-9]{8}")
_TIME = re.compile(r"([01][0-9]|2[0-3])(?:([0-5][0-9])(?:([0-5][0-9])(?:\.([0-9]{1,6}))?)?)?")
_INTEGER = re.compile(r"[+-]?[0-9]{1,12}")


def parse_qido(
    level: Level,
    params: Mapping[str, Sequence[str]],
    *,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
) -> Query:
    """Turn QIDO-RS query parameters into a Query, or raise InvalidInput naming the bad parameter.

    A key given more than once (repeated, or as keyword and tag) is one key with multiple values.
    """
    study_uid, series_uid = _scope(level, study_instance_uid, series_instance_uid)
    values_by_key: dict[str, list[str]] = {}
    includefields: set[str] = set()
    include_all = False
    limit: int | None = None
    offset = 0
    fuzzy = False
    ignored: list[str] = []
    for name, values in params.items():
        special = name.lower()
        if special == "includefield":
            for item in (part.strip() for value in values for part in value.split(",")):
                if item == "all":
                    include_all = True
                elif item and (path := attribute_path(item)) is not None:
                    includefields.add(path)
        elif special == "limit":
            limit = _integer_param(name, values, minimum=1)
        elif special == "offset":
            offset = _integer_param(name, values, minimum=0)
        elif special == "fuzzymatching":
            fuzzy = _boolean_param(name, values)
        elif special not in NEGOTIATION_PARAMS:
            path = attribute_path(name)
            if path is None:
                ignored.append(name[:64])
            else:
                values_by_key.setdefault(path, []).extend(values)

    conditions: list[Condition] = []
    unsupported: list[str] = []
    for path, values in values_by_key.items():
        includefields.add(path)
        raw = "\\".join(value.strip() for value in values if value.strip())
        attr = MATCHING_KEYS.get(path)
        if attr is None or LEVEL_DEPTH[attr.query_level] > LEVEL_DEPTH[level]:
            if raw:
                unsupported.append(path)
            continue
        condition = parse_condition(attr, raw)
        if condition is not None:
            conditions.append(condition)
    return Query(
        level=level,
        conditions=tuple(conditions),
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        includefields=frozenset(includefields),
        include_all=include_all,
        limit=limit,
        offset=offset,
        fuzzy=fuzzy,
        unsupported=tuple(sorted(unsupported)),
        ignored=tuple(sorted(ignored)),
    )


def parse_condition(attr: Attribute, raw: str) -> Condition | None:
    """The condition for one key's value; None for universal matching (empty or `*`)."""
    raw = raw.strip()
    if raw in ("", "*"):
        return None
    keyword = attr.keyword
    if "\\" in raw and attr.vr not in ("UI", "CS"):
        raise InvalidInput(f"{keyword}: multiple values are not supported for VR {attr.vr}")
    if attr.vr == "UI":
        uids = tuple(dict.fromkeys(validate_uid(part, keyword) for part in re.split(r"[\\,]", raw) if part))
        if not uids:
            raise InvalidInput(f"{keyword}: no UID in {raw[:80]!r}")
        return Condition(keyword, "single", uids[0]) if len(uids) == 1 else Condition(keyword, "uid_list", uids)
    if attr.vr in ("DA", "TM"):
        check = _check_date if attr.vr == "DA" else _check_time
        if "-" not in raw:
            check(keyword, raw)
            return Condition(keyword, "single", raw)
        low, high = (part.strip() for part in raw.split("-", 1))
        if not low and not high:
            raise InvalidInput(f"{keyword}: a range needs at least one end, got {raw!r}")
        for end in (low, high):
            if end:
                check(keyword, end)
        if low and high and _bound(attr.vr, low, upper=False) > _bound(attr.vr, high, upper=True):
            raise InvalidInput(f"{keyword}: range {raw!r} ends before it starts")
        return Condition(keyword, "range", (low, high))
    if attr.vr == "IS":
        if not _INTEGER.fullmatch(raw):
            raise InvalidInput(f"{keyword} must be an integer, got {raw[:80]!r}")
        return Condition(keyword, "single", str(int(raw)))
    if attr.vr == "CS" and re.search(r"[\\,]", raw):
        items = tuple(dict.fromkeys(part.strip() for part in re.split(r"[\\,]", raw) if part.strip()))
        return Condition(keyword, "list", items) if len(items) > 1 else _string_condition(keyword, items[0])
    return _string_condition(keyword, raw)


def _string_condition(keyword: str, value: str) -> Condition:
    return Condition(keyword, "wildcard" if is_wildcard(value) else "single", value)


def is_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def _scope(level: Level, study_uid: str | None, series_uid: str | None) -> tuple[str | None, str | None]:
    if study_uid is not None and level == "study":
        raise InvalidInput("a study search cannot be scoped to a study")
    if series_uid is not None and (level != "instance" or study_uid is None):
        raise InvalidInput("only an instance search within a study can be scoped to a series")
    return (
        validate_uid(study_uid, "StudyInstanceUID") if study_uid is not None else None,
        validate_uid(series_uid, "SeriesInstanceUID") if series_uid is not None else None,
    )


def attribute_path(name: str) -> str | None:
    """A keyword, tag or dotted sequence path (`RequestAttributesSequence.RequestedProcedureID`) as keywords;
    a tag outside the dictionary stays its 8 hex digits (upper case). None when `name` names no attribute."""
    parts = []
    for index, part in enumerate(name.split(".")):
        keyword = _keyword(part)
        if keyword is None:
            return None
        # A sequence path goes through sequences (a private one cannot be told from its tag).
        if index < name.count(".") and keyword != part.upper() and dictionary_VR(keyword) != "SQ":
            return None
        parts.append(keyword)
    return ".".join(parts)


def _keyword(part: str) -> str | None:
    if not part:
        return None
    if _TAG.fullmatch(part):
        return str(keyword_for_tag(int(part, 16))) or part.upper()
    return part if tag_for_keyword(part) is not None else None


def _single_param(name: str, values: Sequence[str]) -> str:
    if len(values) != 1:
        raise InvalidInput(f"{name} must be given once, got {len(values)} values")
    return values[0].strip()


def _integer_param(name: str, values: Sequence[str], minimum: int) -> int:
    """An integer from `minimum` to the largest an index holds (a signed 64-bit integer)."""
    value = _single_param(name, values)
    digits = value.isascii() and value.isdigit() and len(value) <= len(str(LARGEST_INTEGER))
    if not digits or not minimum <= int(value) <= LARGEST_INTEGER:
        raise InvalidInput(f"{name} must be an integer from {minimum} to {LARGEST_INTEGER}, got {value[:80]!r}")
    return int(value)


def _boolean_param(name: str, values: Sequence[str]) -> bool:
    value = _single_param(name, values).lower()
    if value not in ("true", "false"):
        raise InvalidInput(f"{name} must be true or false, got {value[:80]!r}")
    return value == "true"


def _check_date(keyword: str, value: str) -> None:
    try:
        if not _DATE.fullmatch(value):
            raise ValueError(value)
        datetime.strptime(value, "%Y%m%d")
    except ValueError:
        raise InvalidInput(f"{keyword} must be a DICOM date YYYYMMDD, got {value[:80]!r}") from None


def _check_time(keyword: str, value: str) -> None:
    if not _TIME.fullmatch(value):
        raise InvalidInput(f"{keyword} must be a DICOM time HH[MM[SS[.FFFFFF]]], got {value[:80]!r}")


def time_key(value: str, *, upper: bool = False) -> str:
    """A TM value as a comparable `HHMMSS.FFFFFF`, missing parts filled to the start (or end) of
    the span it names; "" if it is not a time. Stored values may use the old `HH:MM:SS` form."""
    match = _TIME.fullmatch(value.strip().replace(":", ""))
    if match is None:
        return ""
    hours, minutes, seconds, fraction = match.groups()
    fill = "9" if upper else "0"
    return "{}{}{}.{}".format(
        hours,
        minutes or ("59" if upper else "00"),
        seconds or ("59" if upper else "00"),
        (fraction or "").ljust(6, fill),
    )


def _bound(vr: str, value: str, *, upper: bool) -> str:
    return time_key(value, upper=upper) if vr == "TM" else value


def range_bounds(condition: Condition) -> tuple[str, str]:
    """(low, high) to compare stored values against, "" for an open end; TM bounds as `time_key`s.

    Applies to range conditions and to single DA/TM values (a single TM covers its span).
    """
    vr = MATCHING_KEYS[condition.keyword].vr
    if condition.kind == "range":
        low, high = condition.value[0], condition.value[1]
    else:
        low = high = str(condition.value)
    return (_bound(vr, low, upper=False) if low else "", _bound(vr, high, upper=True) if high else "")


def normalize_pn(value: str) -> str:
    """The form person names are compared in: lower case, without trailing empty components."""
    return value.strip().rstrip("^= ").lower()


def fuzzy_name_patterns(value: str) -> list[str]:
    """Wildcard patterns, one per query word, each to match against `" " + pn_words(name)`."""
    words = re.split(r"[\^=,\s]+", normalize_pn(value).replace("*", ""))
    return [f"* {word}*" for word in words if word]
