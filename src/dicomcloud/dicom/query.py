"""QIDO-RS / C-FIND matching: one parser and one set of rules for both (PS3.4 C.2.2.2, PS3.18 8.3.4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Level = Literal["study", "series", "instance"]
MatchKind = Literal["single", "wildcard", "range", "uid_list"]


@dataclass(frozen=True)
class Condition:
    """One matching key. `value` is the string for single/wildcard, (low, high) for range
    (either may be "" for an open end), a tuple of UIDs for uid_list."""

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
