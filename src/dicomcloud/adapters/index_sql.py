"""The QIDO query builder, the writes and the table shapes shared by the SQL indexes (SQLite, PostgreSQL).

One builder, so both adapters apply the matching rules of `dicomcloud.dicom.query` identically; a
`Dialect` carries what differs: the parameter placeholder, the operator and pattern syntax of
case-sensitive wildcard matching, and how "no limit" is spelled. Values are always bound, never
spliced into the SQL.

The tables' attribute columns are the catalogue's (dicom/attributes.py): `TABLE_COLUMNS` derives them,
the SQLite schema is made from it and a test holds the PostgreSQL migrations to it.
- patient: the latest non-blank patient attributes per Patient ID;
- study: patient and study attributes as that study carries them (the Study Root model), counts and
  ModalitiesInStudy;
- series: series attributes, the count, the metadata version and the version last built;
- instance: the slim registry: instance attributes and where its object is.
A matched person name also has a lower-cased `<column>_lc` and a matched time a comparable `<column>_key`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dicomcloud.dicom.attributes import Attribute, Level, attributes
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
from dicomcloud.errors import InvalidInput
from dicomcloud.ports.index import IndexedInstance, InstanceLocation, UpsertOutcome


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


# Columns that are SQL keywords somewhere, always written quoted.
_QUOTED = frozenset({"rows", "columns"})


def quoted(column: str) -> str:
    return f'"{column}"' if column in _QUOTED else column


# Where each level's attributes live: patient attributes on the study row (and the patient table).
TABLE_LEVELS: dict[str, tuple[Level, ...]] = {
    "patient": ("patient",),
    "study": ("patient", "study"),
    "series": ("series",),
    "instance": ("instance",),
}
KEY_COLUMNS: dict[str, tuple[str, ...]] = {
    "patient": ("tenant_id", "patient_id"),
    "study": ("tenant_id", "study_instance_uid"),
    "series": ("tenant_id", "study_instance_uid", "series_instance_uid"),
    "instance": ("tenant_id", "sop_instance_uid", "study_instance_uid", "series_instance_uid"),
}
# What an instance row keeps besides its attributes.
FILE_COLUMNS = ("file_path", "file_size", "sha256")
STAMP_COLUMNS = ("created_at", "updated_at")


def _stored(table: str) -> Iterator[Attribute]:
    """The catalogue attributes a table stores from an instance (not its keys, not what it computes)."""
    for attribute in attributes(*TABLE_LEVELS[table], index=True, computed=False):
        if attribute.column not in KEY_COLUMNS[table]:
            yield attribute


def _match_columns(table: str) -> dict[str, str]:
    """Derived match column -> the column it is derived from (patient has none: it is never matched)."""
    if table == "patient":
        return {}
    return {a.match_column: a.column for a in _stored(table) if a.has_match_column}


def _computed(table: str) -> list[str]:
    return [a.column for a in attributes(*TABLE_LEVELS[table], index=True, computed=True)] if table != "patient" else []


TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    table: (
        *KEY_COLUMNS[table],
        *(a.column for a in _stored(table)),
        *_match_columns(table),
        *dict.fromkeys(_computed(table)),
        *(("version", "built_version") if table == "series" else ()),
        *(FILE_COLUMNS if table == "instance" else ()),
        *STAMP_COLUMNS,
    )
    for table in TABLE_LEVELS
}
INTEGER_COLUMNS = frozenset(
    {a.column for a in attributes(index=True) if a.integer} | {"file_size", "version", "built_version"}
)


def _outputs(levels: tuple[Level, ...]) -> dict[str, str]:
    """DICOM keyword -> column of what a search returns from these levels' table."""
    out = {a.keyword: quoted(a.column) for a in attributes(*levels, index=True)}
    # The stored syntax is what QIDO-RS offers as AvailableTransferSyntaxUID (0008,3002).
    if "TransferSyntaxUID" in out:
        out["AvailableTransferSyntaxUID"] = out.pop("TransferSyntaxUID")
    return out


# Output columns per table: DICOM keyword -> SQL column.
STUDY_OUT = _outputs(TABLE_LEVELS["study"])
SERIES_OUT = _outputs(TABLE_LEVELS["series"])
INSTANCE_OUT = _outputs(TABLE_LEVELS["instance"])
# Columns matched instead of the output column: normalised person names and comparable times.
MATCH_COLUMN = {k: a.match_column for k, a in MATCHING_KEYS.items() if a.has_match_column}

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


def _sqlite_type(table: str, column: str) -> str:
    if column in KEY_COLUMNS[table] or column in ("file_path", "sha256", *STAMP_COLUMNS):
        return "TEXT NOT NULL"
    if column in ("version", "file_size"):
        return "INTEGER NOT NULL"
    if column in ("built_version", "num_series", "num_instances"):
        return "INTEGER NOT NULL DEFAULT 0"
    return "INTEGER" if column in INTEGER_COLUMNS else "TEXT NOT NULL DEFAULT ''"


def sqlite_tables(instance_key: tuple[str, ...]) -> list[str]:
    """CREATE TABLE statements of the embedded index, from `TABLE_COLUMNS`."""
    statements = []
    for table, columns in TABLE_COLUMNS.items():
        keys = instance_key if table == "instance" else KEY_COLUMNS[table]
        definitions = [f"{quoted(column)} {_sqlite_type(table, column)}" for column in columns]
        definitions.append(f"PRIMARY KEY ({', '.join(keys)})")
        statements.append(f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(definitions)}) WITHOUT ROWID")
    return statements


# -- writes -------------------------------------------------------------------------------------------


def _location_of(instance: IndexedInstance) -> InstanceLocation:
    """The row `write_instance` just wrote, as `current_rows` would read it back."""
    values = instance.attributes
    return InstanceLocation(
        tenant_id=instance.tenant_id,
        study_instance_uid=instance.study_instance_uid,
        series_instance_uid=instance.series_instance_uid,
        sop_instance_uid=instance.sop_instance_uid,
        sop_class_uid=_text(values.get("SOPClassUID")),
        transfer_syntax=_text(values.get("TransferSyntaxUID")),
        instance_number=_integer(values.get("InstanceNumber"), "InstanceNumber"),
        number_of_frames=_integer(values.get("NumberOfFrames"), "NumberOfFrames"),
        file_path=instance.file_path,
        file_size=instance.file_size,
        sha256=instance.sha256,
    )


def current_rows(
    dialect: Dialect, conn: Executor, tenant: str, sop_uids: Sequence[str]
) -> dict[str, InstanceLocation]:
    """The instance rows of these SOP Instance UIDs, by UID."""
    if not sop_uids:
        return {}
    marks = ", ".join([dialect.param] * len(sop_uids))
    rows = conn.execute(
        f"SELECT {LOCATION_COLUMNS} FROM instance i WHERE i.tenant_id = {dialect.param}"
        f" AND i.sop_instance_uid IN ({marks})",
        (tenant, *sop_uids),
    ).fetchall()
    return {found.sop_instance_uid: found for found in map(location, rows)}


class SqlWrite:
    """`IndexWrite` of the SQL indexes: a connection inside a transaction that holds the adapter's locks.

    Rows are upserted as instances come; the counts of the series and studies they touched are recounted once
    each, and patients left without a study removed, in `finish` before the commit: a batch of a series' instances
    (a group commit, an import chunk) recounts it once, not once per instance."""

    def __init__(
        self,
        dialect: Dialect,
        conn: Executor,
        tenant_id: str,
        sop_uids: Sequence[str],
        next_version: Callable[[], int],
        now: Callable[[], object],
    ) -> None:
        self.dialect = dialect
        self.conn = conn
        self.tenant_id = tenant_id
        self.locked = frozenset(sop_uids)
        self.rows = current_rows(dialect, conn, tenant_id, sop_uids)
        self.changed = False
        self._next_version = next_version
        self._now = now
        self._version: int | None = None
        self._places: dict[tuple[str, str], None] = {}  # (study, series) to recount, in the order touched
        self._patients: dict[str, None] = {}  # patients that may be left without a study
        self._studies_seen: set[str] = set()

    def current(self) -> dict[str, InstanceLocation]:
        return dict(self.rows)

    def upsert(self, instance: IndexedInstance) -> UpsertOutcome:
        sop = instance.sop_instance_uid
        if instance.tenant_id != self.tenant_id or sop not in self.locked:
            raise ValueError(f"instance {sop} of {instance.tenant_id} is not locked by this write")
        old = self.rows.get(sop)
        new = (instance.study_instance_uid, instance.series_instance_uid, instance.file_path, instance.sha256)
        if old is not None and (old.study_instance_uid, old.series_instance_uid, old.file_path, old.sha256) == new:
            return UpsertOutcome.UNCHANGED
        if self._version is None:
            self._version = self._next_version()
        study_uid = instance.study_instance_uid
        if study_uid not in self._studies_seen:
            self._studies_seen.add(study_uid)
            before = study_patient(self.dialect, self.conn, self.tenant_id, study_uid)
            if before is not None:
                self._patients[before] = None
        old_place = None if old is None else (old.study_instance_uid, old.series_instance_uid)
        written = write_instance(self.dialect, self.conn, instance, old_place, self._version, self._now())
        self._patients[written] = None
        if old_place is not None and old_place != (study_uid, instance.series_instance_uid):
            self._places[old_place] = None
        self._places[(study_uid, instance.series_instance_uid)] = None
        self.rows[sop] = _location_of(instance)
        self.changed = True
        return UpsertOutcome.CREATED if old is None else UpsertOutcome.REPLACED

    def finish(self) -> None:
        """Recount what the upserts touched and prune the patients they may have emptied (inside the transaction,
        before it commits)."""
        if self._version is None:
            return
        now = self._now()
        for study_uid, series_uid in self._places:
            refresh_series(self.dialect, self.conn, self.tenant_id, study_uid, series_uid, self._version, now)
        for patient_id in self._patients:
            _prune_patient(self.dialect, self.conn, self.tenant_id, patient_id)
        self._places.clear()
        self._patients.clear()


def study_patient(dialect: Dialect, conn: Executor, tenant: str, study_uid: str) -> str | None:
    """The Patient ID a study row holds now (None for a new study)."""
    p = dialect.param
    row = conn.execute(
        f"SELECT patient_id FROM study WHERE tenant_id = {p} AND study_instance_uid = {p}", (tenant, study_uid)
    ).fetchone()
    return None if row is None else str(row[0])


def write_instance(
    dialect: Dialect,
    conn: Executor,
    instance: IndexedInstance,
    old_place: tuple[str, str] | None,
    version: int,
    now: object,
) -> str:
    """Upsert patient, study, series and instance (the caller holds the locks its database needs, and recounts
    the old and new places after); the Patient ID written. `old_place` is the (study, series) the instance was
    in, if stored."""
    p = dialect.param
    tenant, study_uid = instance.tenant_id, instance.study_instance_uid
    patient_id = ""
    for table in ("patient", "study", "series"):
        row = _row(table, instance, now)
        if table == "series":
            row["version"] = version
        elif table == "patient":
            patient_id = row["patient_id"]
        _upsert(dialect, conn, table, KEY_COLUMNS[table], row, _MATCH_COLUMNS[table])
    if old_place is not None and old_place[0] != study_uid:
        conn.execute(
            f"DELETE FROM instance WHERE tenant_id = {p} AND study_instance_uid = {p} AND sop_instance_uid = {p}",
            (tenant, old_place[0], instance.sop_instance_uid),
        )
    _upsert_instance(dialect, conn, _row("instance", instance, now))
    return str(patient_id)


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
    # Deduplicated and sorted here, not by DISTINCT ... ORDER BY modality: that invites a planner without
    # statistics (SQLite's, until its first ANALYZE over the rows) to walk the tenant's whole series_by_modality
    # index for every instance written, which made a bulk load quadratic.
    modalities = sorted(
        {
            m
            for (m,) in conn.execute(
                f"SELECT modality FROM series WHERE tenant_id = {p} AND study_instance_uid = {p}", (tenant, study_uid)
            ).fetchall()
            if m
        }
    )
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


def _text(value: object) -> str:
    return "" if value is None else str(value).strip("\x00 ")


_MATCH_COLUMNS: dict[str, dict[str, str]] = {table: _match_columns(table) for table in TABLE_LEVELS}
# Per table, what its rows store from an instance (worked out once; ingest writes rows per instance).
_STORED: dict[str, tuple[Attribute, ...]] = {table: tuple(_stored(table)) for table in TABLE_LEVELS}


def _row(table: str, instance: IndexedInstance, now: object) -> dict[str, Any]:
    """A table's row from an instance: keys, the catalogue's values (text stripped), derived match
    columns, and for the instance table where its object is."""
    values = instance.attributes
    row: dict[str, Any] = {"tenant_id": instance.tenant_id}
    for column in KEY_COLUMNS[table][1:]:
        row[column] = _text(values.get(_KEY_KEYWORDS[column]))
    for attribute in _STORED[table]:
        value = values.get(attribute.keyword)
        row[quoted(attribute.column)] = _integer(value, attribute.keyword) if attribute.integer else _text(value)
        if table != "patient" and attribute.has_match_column:
            text = _text(value)
            row[attribute.match_column] = normalize_pn(text) if attribute.vr == "PN" else time_key(text)
    if table == "instance":
        row.update(file_path=instance.file_path, file_size=instance.file_size, sha256=instance.sha256)
    row.update(created_at=now, updated_at=now)
    return row


_KEY_KEYWORDS = {
    "patient_id": "PatientID",
    "study_instance_uid": "StudyInstanceUID",
    "series_instance_uid": "SeriesInstanceUID",
    "sop_instance_uid": "SOPInstanceUID",
}


def _integer(value: object, keyword: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(str(value))
    except ValueError:
        raise InvalidInput(f"{keyword} is not an integer: {str(value)[:40]!r}") from None


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
