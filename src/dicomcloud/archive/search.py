"""Search: where a QIDO-RS request and a C-FIND identifier are matched, and their answers filled.

Both arrive as a `dicomcloud.dicom.query.Query` (parsed by `parse_qido` or `find_query`), so one
matcher answers them: the index (adapters/index_sql.py evaluates the conditions in SQL). One fill,
too: at instance level, attributes asked for that the index does not keep (a QIDO includefield or
`includefield=all`, a C-FIND return key) come from the instance's metadata entry in its series
document, without bulk data (PS3.18 10.6.3.3.1; a C-FIND response carries none either).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import tag_for_keyword

from dicomcloud.archive.metadata import SeriesMetadata
from dicomcloud.dicom.query import Query
from dicomcloud.ports.index import SeriesKey
from dicomcloud.runtime import Runtime

# An attribute the dictionary does not name, as dicom/query.py keeps it: its tag's 8 hex digits.
_PRIVATE_TAG = re.compile(r"[0-9A-F]{8}")


@dataclass(frozen=True)
class Match:
    """One match: the index's values by keyword, and DICOM JSON attributes (by tag) from the metadata entry."""

    values: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


def has_bulkdata(value: Any) -> bool:
    """Bulk data anywhere in a DICOM JSON attribute, sequences included."""
    if not isinstance(value, dict):
        return False
    if "BulkDataURI" in value or "InlineBinary" in value:
        return True
    return value.get("vr") == "SQ" and any(
        has_bulkdata(attribute) for item in value.get("Value", []) for attribute in item.values()
    )


class Search:
    def __init__(self, runtime: Runtime, metadata: SeriesMetadata) -> None:
        self.runtime = runtime
        self.metadata = metadata

    def find(self, tenant_id: str, query: Query, wanted: Collection[str] | None) -> list[Match]:
        """The matches of `query`; `wanted` names the keywords asked for (None: every attribute held)."""
        rows = self.runtime.index.search(tenant_id, query)
        if query.level != "instance" or not rows:
            return [Match(row) for row in rows]
        missing = None if wanted is None else {_tag(k) for k in wanted if k not in rows[0]} - {None}
        if missing is not None and not missing:
            return [Match(row) for row in rows]
        entries: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        matches = []
        for row in rows:
            study, series = str(row["StudyInstanceUID"]), str(row["SeriesInstanceUID"])
            if (study, series) not in entries:
                doc = self.metadata.document(SeriesKey(tenant_id, study, series))
                entries[(study, series)] = (
                    {sop: entry.metadata for sop, entry in doc.instances.items()} if doc is not None else {}
                )
            metadata = entries[(study, series)].get(str(row["SOPInstanceUID"]), {})
            extra = {
                tag: value
                for tag, value in metadata.items()
                if (missing is None or tag in missing) and not has_bulkdata(value)
            }
            matches.append(Match(row, extra))
        return matches


def _tag(keyword: str) -> str | None:
    """The DICOM JSON key of a keyword or of a private tag (kept as its hex digits); None for a sequence path."""
    if _PRIVATE_TAG.fullmatch(keyword):
        return keyword
    tag = tag_for_keyword(keyword)
    return None if tag is None else f"{tag:08X}"
