"""The QIDO query builder and the table shapes shared by the SQL indexes (SQLite, PostgreSQL).

One builder, so both adapters apply the matching rules of `dicomcloud.dicom.query` identically; a
`Dialect` carries what differs: the parameter placeholder, the operator and pattern syntax of
case-sensitive wildcard matching, and how "no limit" is spelled. Values are always bound, never
spliced into the SQL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dicomcloud.dicom.query import (
    MATCHING_KEYS,
    PN_WORD_SEPARATORS,
    Condition,
    Query,
    fuzzy_name_patterns,
    is_wildcard,
    normalize_pn,
    range_bounds,
    time_key,
)
from dicomcloud.events import DicomImageMeta, DicomStateMeta
from dicomcloud.ports.index import InstanceLocation


@dataclass(frozen=True)
class Dialect:
    param: str  # the placeholder of one bound value
    wildcard_operator: str  # case-sensitive matching of a DICOM wildcard pattern (`*`, `?`)
    wildcard_pattern: Callable[[str], str]  # a DICOM pattern in the operator's syntax
    no_limit: int | None  # the LIMIT value that means "all rows"
    greatest: str  # the scalar function returning the larger of two values
    instance_key: tuple[str, ...]  # the instance table's primary key


class Cursor(Protocol):
    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Executor(Protocol):
    """A connection inside a write transaction (sqlite3 and psycopg connections both are)."""

    def execute(self, sql: str, params: Sequence[Any], /) -> Cursor: ...


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


# -- writes -------------------------------------------------------------------------------------------


def write_instance(
    dialect: Dialect,
    conn: Executor,
    state: DicomStateMeta,
    image: DicomImageMeta,
    old_place: tuple[str, str] | None,
    version: int,
    now: object,
) -> None:
    """Upsert patient, study, series and instance, then recount what changed (the caller holds the
    locks its database needs). `old_place` is the (study, series) the instance was in, if stored."""
    p = dialect.param
    tenant, study_uid, series_uid = state.tenant_id, state.study_instance_uid, state.series_instance_uid
    previous_patient = conn.execute(
        f"SELECT patient_id FROM study WHERE tenant_id = {p} AND study_instance_uid = {p}", (tenant, study_uid)
    ).fetchone()
    _upsert(dialect, conn, "patient", ("tenant_id", "patient_id"), _patient_row(state, now), {})
    _upsert(dialect, conn, "study", ("tenant_id", "study_instance_uid"), _study_row(state, now), _STUDY_DERIVED)
    series_key = ("tenant_id", "study_instance_uid", "series_instance_uid")
    _upsert(dialect, conn, "series", series_key, _series_row(state, version, now), _SERIES_DERIVED)
    if old_place is not None and old_place[0] != study_uid:
        conn.execute(
            f"DELETE FROM instance WHERE tenant_id = {p} AND study_instance_uid = {p} AND sop_instance_uid = {p}",
            (tenant, old_place[0], image.sop_instance_uid),
        )
    _upsert_instance(dialect, conn, _instance_row(image, now))
    if old_place is not None and old_place != (study_uid, series_uid):
        refresh_series(dialect, conn, tenant, old_place[0], old_place[1], version, now)
    refresh_series(dialect, conn, tenant, study_uid, series_uid, version, now)
    if previous_patient is not None:
        _prune_patient(dialect, conn, tenant, previous_patient[0])


def refresh_series(
    dialect: Dialect, conn: Executor, tenant: str, study_uid: str, series_uid: str, version: int, now: object
) -> None:
    """Recount a series and its study after their instances changed; remove whatever is left empty.

    Counts are COUNTs inside the writing transaction, never increments, so replays cannot drift them."""
    p = dialect.param
    count = conn.execute(
        f"""SELECT COUNT(*) FROM instance
           WHERE tenant_id = {p} AND study_instance_uid = {p} AND series_instance_uid = {p}""",
        (tenant, study_uid, series_uid),
    ).fetchone()[0]
    if count:
        conn.execute(
            f"""UPDATE series SET num_instances = {p}, version = {dialect.greatest}(version, {p}), updated_at = {p}
               WHERE tenant_id = {p} AND study_instance_uid = {p} AND series_instance_uid = {p}""",
            (count, version, now, tenant, study_uid, series_uid),
        )
    else:
        conn.execute(
            f"DELETE FROM series WHERE tenant_id = {p} AND study_instance_uid = {p} AND series_instance_uid = {p}",
            (tenant, study_uid, series_uid),
        )
    modalities = [
        m
        for (m,) in conn.execute(
            f"""SELECT DISTINCT modality FROM series
               WHERE tenant_id = {p} AND study_instance_uid = {p} AND modality <> '' ORDER BY modality""",
            (tenant, study_uid),
        ).fetchall()
    ]
    series_count = conn.execute(
        f"SELECT COUNT(*) FROM series WHERE tenant_id = {p} AND study_instance_uid = {p}", (tenant, study_uid)
    ).fetchone()[0]
    if series_count:
        conn.execute(
            f"""UPDATE study SET num_series = {p}, modalities = {p}, updated_at = {p},
                 num_instances = (SELECT COUNT(*) FROM instance
                                  WHERE tenant_id = study.tenant_id AND study_instance_uid = study.study_instance_uid)
               WHERE tenant_id = {p} AND study_instance_uid = {p}""",
            (series_count, "\\".join(modalities), now, tenant, study_uid),
        )
        return
    patient = conn.execute(
        f"DELETE FROM study WHERE tenant_id = {p} AND study_instance_uid = {p} RETURNING patient_id",
        (tenant, study_uid),
    ).fetchone()
    if patient is not None:
        _prune_patient(dialect, conn, tenant, patient[0])


def _prune_patient(dialect: Dialect, conn: Executor, tenant: str, patient_id: str) -> None:
    p = dialect.param
    conn.execute(
        f"""DELETE FROM patient WHERE tenant_id = {p} AND patient_id = {p}
           AND NOT EXISTS (SELECT 1 FROM study WHERE tenant_id = {p} AND patient_id = {p})""",
        (tenant, patient_id, tenant, patient_id),
    )


def _upsert(
    dialect: Dialect,
    conn: Executor,
    table: str,
    key: tuple[str, ...],
    values: dict[str, Any],
    derived: dict[str, str],
) -> None:
    """Insert a row or update it: a blank or NULL never replaces a value, and a derived column
    (`derived`: column -> its source column) changes exactly when its source does."""
    columns = list(values)
    updates = []
    for column in columns:
        if column in key or column == "created_at":
            continue
        source = derived.get(column, column)
        if column in ("updated_at", "version"):
            updates.append(f"{column} = excluded.{column}")
        else:
            updates.append(
                f"{column} = CASE WHEN excluded.{source} IS NULL OR CAST(excluded.{source} AS TEXT) = '' "
                f"THEN {table}.{column} ELSE excluded.{column} END"
            )
    conn.execute(
        f"""INSERT INTO {table} ({", ".join(columns)}) VALUES ({", ".join([dialect.param] * len(columns))})
            ON CONFLICT ({", ".join(key)}) DO UPDATE SET {", ".join(updates)}""",
        list(values.values()),
    )


def _upsert_instance(dialect: Dialect, conn: Executor, values: dict[str, Any]) -> None:
    """A new object replaces every fact of the old one (its blanks included)."""
    kept = (*dialect.instance_key, "created_at")
    updates = ", ".join(f"{c} = excluded.{c}" for c in values if c not in kept)
    conn.execute(
        f"""INSERT INTO instance ({", ".join(values)}) VALUES ({", ".join([dialect.param] * len(values))})
            ON CONFLICT ({", ".join(dialect.instance_key)}) DO UPDATE SET {updates}""",
        list(values.values()),
    )


def _text(value: str) -> str:
    return value.strip("\x00 ")


def _patient_row(state: DicomStateMeta, now: object) -> dict[str, Any]:
    return {
        "tenant_id": state.tenant_id,
        "patient_id": _text(state.patient_id),
        "patient_name": _text(state.patient_name),
        "patient_birth_date": _text(state.patient_birth_date),
        "patient_sex": _text(state.patient_sex),
        "created_at": now,
        "updated_at": now,
    }


_STUDY_DERIVED = {
    "patient_name_lc": "patient_name",
    "study_time_key": "study_time",
    "referring_physician_name_lc": "referring_physician_name",
}
_SERIES_DERIVED = {"performed_procedure_step_start_time_key": "performed_procedure_step_start_time"}


def _study_row(state: DicomStateMeta, now: object) -> dict[str, Any]:
    patient_name = _text(state.patient_name)
    referring = _text(state.referring_physician_name)
    return {
        "tenant_id": state.tenant_id,
        "study_instance_uid": state.study_instance_uid,
        "patient_id": _text(state.patient_id),
        "patient_name": patient_name,
        "patient_name_lc": normalize_pn(patient_name),
        "patient_birth_date": _text(state.patient_birth_date),
        "patient_sex": _text(state.patient_sex),
        "study_date": _text(state.study_date),
        "study_time": _text(state.study_time),
        "study_time_key": time_key(state.study_time),
        "accession_number": _text(state.accession_number),
        "study_id": _text(state.study_id),
        "study_description": _text(state.study_description),
        "referring_physician_name": referring,
        "referring_physician_name_lc": normalize_pn(referring),
        "created_at": now,
        "updated_at": now,
    }


def _series_row(state: DicomStateMeta, version: int, now: object) -> dict[str, Any]:
    return {
        "tenant_id": state.tenant_id,
        "study_instance_uid": state.study_instance_uid,
        "series_instance_uid": state.series_instance_uid,
        "modality": _text(state.modality),
        "series_number": state.series_number,
        "series_description": _text(state.series_description),
        "series_date": _text(state.series_date),
        "series_time": _text(state.series_time),
        "body_part_examined": _text(state.body_part_examined),
        "performed_procedure_step_start_date": _text(state.performed_procedure_step_start_date),
        "performed_procedure_step_start_time": _text(state.performed_procedure_step_start_time),
        "performed_procedure_step_start_time_key": time_key(state.performed_procedure_step_start_time),
        "institution_name": _text(state.institution_name),
        "station_name": _text(state.station_name),
        "version": version,
        "created_at": now,
        "updated_at": now,
    }


def _instance_row(image: DicomImageMeta, now: object) -> dict[str, Any]:
    return {
        "tenant_id": image.tenant_id,
        "sop_instance_uid": image.sop_instance_uid,
        "study_instance_uid": image.study_instance_uid,
        "series_instance_uid": image.series_instance_uid,
        "sop_class_uid": image.sop_class_uid,
        "instance_number": image.instance_number,
        "transfer_syntax": image.transfer_syntax,
        '"rows"': image.rows,
        '"columns"': image.columns,
        "bits_allocated": image.bits_allocated,
        "number_of_frames": image.number_of_frames,
        "file_path": image.file_path,
        "file_size": image.file_size,
        "sha256": image.sha256,
        "created_at": now,
        "updated_at": now,
    }


# -- reads --------------------------------------------------------------------------------------------


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


def list_instances_sql(dialect: Dialect, tenant: str, study_uid: str, series_uid: str | None) -> tuple[str, list[Any]]:
    """The SELECT of `Index.list_instances`: series by SeriesNumber, then instances by InstanceNumber."""
    where, params = instance_scope(dialect, tenant, study_uid, series_uid, None)
    sql = f"""SELECT {LOCATION_COLUMNS} FROM instance i
        JOIN series se ON se.tenant_id = i.tenant_id AND se.study_instance_uid = i.study_instance_uid
            AND se.series_instance_uid = i.series_instance_uid
        WHERE {where}
        ORDER BY se.series_number IS NULL, se.series_number, i.series_instance_uid,
            i.instance_number IS NULL, i.instance_number, i.sop_instance_uid"""
    return sql, params


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
