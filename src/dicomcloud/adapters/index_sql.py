"""The QIDO query builder and the table shapes shared by the SQL indexes (SQLite, PostgreSQL).

One builder, so both adapters apply the matching rules of `dicomcloud.dicom.query` identically; a
`Dialect` carries what differs: the parameter placeholder, the operator and pattern syntax of
case-sensitive wildcard matching, and how "no limit" is spelled. Values are always bound, never
spliced into the SQL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dicomcloud.dicom.query import (
    MATCHING_KEYS,
    PN_WORD_SEPARATORS,
    Condition,
    Query,
    fuzzy_name_patterns,
    is_wildcard,
    normalize_pn,
    range_bounds,
)
from dicomcloud.ports.index import InstanceLocation


@dataclass(frozen=True)
class Dialect:
    param: str  # the placeholder of one bound value
    wildcard_operator: str  # case-sensitive matching of a DICOM wildcard pattern (`*`, `?`)
    wildcard_pattern: Callable[[str], str]  # a DICOM pattern in the operator's syntax
    no_limit: int | None  # the LIMIT value that means "all rows"


# Output columns per table: DICOM keyword -> SQL column.
STUDY_OUT = {
    "PatientName": "patient_name",
    "PatientID": "patient_id",
    "PatientBirthDate": "patient_birth_date",
    "PatientSex": "patient_sex",
    "StudyInstanceUID": "study_instance_uid",
    "StudyDate": "study_date",
    "StudyTime": "study_time",
    "AccessionNumber": "accession_number",
    "StudyID": "study_id",
    "StudyDescription": "study_description",
    "ReferringPhysicianName": "referring_physician_name",
    "ModalitiesInStudy": "modalities",
    "NumberOfStudyRelatedSeries": "num_series",
    "NumberOfStudyRelatedInstances": "num_instances",
}
SERIES_OUT = {
    "SeriesInstanceUID": "series_instance_uid",
    "Modality": "modality",
    "SeriesNumber": "series_number",
    "SeriesDescription": "series_description",
    "SeriesDate": "series_date",
    "SeriesTime": "series_time",
    "BodyPartExamined": "body_part_examined",
    "PerformedProcedureStepStartDate": "performed_procedure_step_start_date",
    "PerformedProcedureStepStartTime": "performed_procedure_step_start_time",
    "InstitutionName": "institution_name",
    "StationName": "station_name",
    "NumberOfSeriesRelatedInstances": "num_instances",
}
INSTANCE_OUT = {
    "SOPInstanceUID": "sop_instance_uid",
    "SOPClassUID": "sop_class_uid",
    "InstanceNumber": "instance_number",
    "Rows": '"rows"',
    "Columns": '"columns"',
    "BitsAllocated": "bits_allocated",
    "NumberOfFrames": "number_of_frames",
    "AvailableTransferSyntaxUID": "transfer_syntax",
}
# Columns matched instead of the output column: normalised person names and comparable times.
MATCH_COLUMN = {
    "PatientName": "patient_name_lc",
    "ReferringPhysicianName": "referring_physician_name_lc",
    "StudyTime": "study_time_key",
    "PerformedProcedureStepStartTime": "performed_procedure_step_start_time_key",
}

FROM = {
    "study": "study st",
    "series": """series se JOIN study st
        ON st.tenant_id = se.tenant_id AND st.study_instance_uid = se.study_instance_uid""",
    "instance": """instance i
        JOIN series se ON se.tenant_id = i.tenant_id AND se.study_instance_uid = i.study_instance_uid
            AND se.series_instance_uid = i.series_instance_uid
        JOIN study st ON st.tenant_id = i.tenant_id AND st.study_instance_uid = i.study_instance_uid""",
}
BASE_ALIAS = {"study": "st", "series": "se", "instance": "i"}
ORDER = {
    "study": "st.study_date DESC, st.study_time_key DESC, st.study_instance_uid DESC",
    "series": "se.series_number IS NULL, se.series_number, se.series_instance_uid",
    "instance": "i.instance_number IS NULL, i.instance_number, i.sop_instance_uid",
}
OUT_BY_LEVEL: dict[str, list[tuple[str, str]]] = {
    "study": [(k, f"st.{c}") for k, c in STUDY_OUT.items()],
    "series": [(k, f"st.{c}") for k, c in STUDY_OUT.items()] + [(k, f"se.{c}") for k, c in SERIES_OUT.items()],
    "instance": [(k, f"st.{c}") for k, c in STUDY_OUT.items()]
    + [(k, f"se.{c}") for k, c in SERIES_OUT.items()]
    + [(k, f"i.{c}") for k, c in INSTANCE_OUT.items()],
}
ALIAS_BY_KEYWORD = {
    **{k: "st" for k in STUDY_OUT},
    **{k: "se" for k in SERIES_OUT},
    **{k: "i" for k in INSTANCE_OUT},
}

LOCATION_COLUMNS = """i.tenant_id, i.study_instance_uid, i.series_instance_uid, i.sop_instance_uid,
    i.sop_class_uid, i.transfer_syntax, i.instance_number, i.number_of_frames, i.file_path, i.file_size,
    i.sha256"""


def instance_scope(
    dialect: Dialect, tenant: str, study_uid: str, series_uid: str | None, sop_uid: str | None
) -> tuple[str, list[Any]]:
    p = dialect.param
    where = [f"i.tenant_id = {p}", f"i.study_instance_uid = {p}"]
    params: list[Any] = [tenant, study_uid]
    if series_uid is not None:
        where.append(f"i.series_instance_uid = {p}")
        params.append(series_uid)
    if sop_uid is not None:
        where.append(f"i.sop_instance_uid = {p}")
        params.append(sop_uid)
    return " AND ".join(where), params


def location(row: tuple[Any, ...]) -> InstanceLocation:
    return InstanceLocation(*row)


def search_sql(dialect: Dialect, tenant: str, query: Query) -> tuple[str, list[Any]]:
    """The SELECT of `Index.search`; turn its rows into results with `result`."""
    where, params = where_sql(dialect, tenant, query)
    columns = ", ".join(expr for _, expr in OUT_BY_LEVEL[query.level])
    sql = f"SELECT {columns} FROM {FROM[query.level]} WHERE {where} ORDER BY {ORDER[query.level]}"
    if query.limit is not None or query.offset:
        sql += f" LIMIT {dialect.param} OFFSET {dialect.param}"
        params += [dialect.no_limit if query.limit is None else query.limit, query.offset]
    return sql, params


def count_sql(dialect: Dialect, tenant: str, query: Query) -> tuple[str, list[Any]]:
    where, params = where_sql(dialect, tenant, query)
    return f"SELECT COUNT(*) FROM {FROM[query.level]} WHERE {where}", params


def result(level: str, row: tuple[Any, ...]) -> dict[str, Any]:
    values = {keyword: value for (keyword, _), value in zip(OUT_BY_LEVEL[level], row, strict=True)}
    modalities = values["ModalitiesInStudy"]
    values["ModalitiesInStudy"] = modalities.split("\\") if modalities else []
    return values


def where_sql(dialect: Dialect, tenant: str, query: Query) -> tuple[str, list[Any]]:
    p = dialect.param
    base = BASE_ALIAS[query.level]
    clauses = [f"{base}.tenant_id = {p}"]
    params: list[Any] = [tenant]
    if query.study_instance_uid is not None:
        clauses.append(f"{base}.study_instance_uid = {p}")
        params.append(query.study_instance_uid)
    if query.series_instance_uid is not None:
        clauses.append(f"{base}.series_instance_uid = {p}")
        params.append(query.series_instance_uid)
    for condition in query.conditions:
        sql, values = _condition(dialect, condition, query.fuzzy)
        clauses.append(sql)
        params.extend(values)
    return " AND ".join(clauses), params


def _condition(dialect: Dialect, condition: Condition, fuzzy: bool) -> tuple[str, list[Any]]:
    p = dialect.param
    keyword = condition.keyword
    if keyword == "ModalitiesInStudy":
        inner, params = _string_match(dialect, "m.modality", condition)
        return (
            f"""EXISTS (SELECT 1 FROM series m WHERE m.tenant_id = st.tenant_id
                AND m.study_instance_uid = st.study_instance_uid AND {inner})""",
            params,
        )
    vr = MATCHING_KEYS[keyword].vr
    column = f"{ALIAS_BY_KEYWORD[keyword]}.{MATCH_COLUMN.get(keyword, _column_of(keyword))}"
    if vr == "IS":
        return f"{column} = {p}", [int(str(condition.value))]
    if vr in ("DA", "TM"):
        low, high = range_bounds(condition)
        clauses, params = [f"{column} <> ''"], []
        if low:
            clauses.append(f"{column} >= {p}")
            params.append(low)
        if high:
            clauses.append(f"{column} <= {p}")
            params.append(high)
        return "(" + " AND ".join(clauses) + ")", params
    if condition.kind == "uid_list":
        return f"{column} IN ({', '.join([p] * len(condition.value))})", list(condition.value)
    if vr != "PN":
        return _string_match(dialect, column, condition)
    literal_sql, literal_params = _string_match(dialect, column, condition, normalize_pn)
    patterns = fuzzy_name_patterns(str(condition.value)) if fuzzy else []
    if not patterns:
        return literal_sql, literal_params
    words = column
    for separator in PN_WORD_SEPARATORS:
        words = f"replace({words}, '{separator}', ' ')"
    fuzzy_sql = " AND ".join(f"(' ' || {words}) {dialect.wildcard_operator} {p}" for _ in patterns)
    return f"({literal_sql} OR ({fuzzy_sql}))", literal_params + [dialect.wildcard_pattern(x) for x in patterns]


def _string_match(
    dialect: Dialect, column: str, condition: Condition, normalize: Callable[[str], str] | None = None
) -> tuple[str, list[Any]]:
    """Single, wildcard or list matching of a string column (values normalised like the column)."""
    values = condition.value if condition.kind == "list" else (str(condition.value),)
    clauses, params = [], []
    for value in values:
        value = normalize(value) if normalize is not None else value
        if is_wildcard(value):
            clauses.append(f"{column} {dialect.wildcard_operator} {dialect.param}")
            params.append(dialect.wildcard_pattern(value))
        else:
            clauses.append(f"{column} = {dialect.param}")
            params.append(value)
    return "(" + " OR ".join(clauses) + ")", params


def _column_of(keyword: str) -> str:
    for table in (STUDY_OUT, SERIES_OUT, INSTANCE_OUT):
        if keyword in table:
            return table[keyword]
    raise KeyError(keyword)
