"""The shipped Citus DDL, executed on the real schema against a stand-in for Citus' function.

Citus is not installed here, so `create_distributed_table` is a PL/pgSQL stub in its own schema,
first on the search path. PostgreSQL parses and runs every statement of the file, and the stub
enforces the rules Citus would: the table and column exist, every unique index of the table contains
the distribution column, and a co-located table is distributed on a column of the same type and
collation as an already distributed one.
"""

from __future__ import annotations

from pathlib import Path

import psycopg

DDL = Path(__file__).resolve().parents[2] / "deploy" / "citus" / "distribute.sql"

CITUS_STUB = """
CREATE SCHEMA citus_stub;
CREATE TABLE citus_stub.distributed (
    relation regclass PRIMARY KEY, column_name text NOT NULL, type oid NOT NULL, coll oid NOT NULL);
CREATE FUNCTION citus_stub.create_distributed_table(
    table_name regclass, distribution_column text, distribution_type text DEFAULT 'hash',
    colocate_with text DEFAULT 'default', shard_count integer DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    col record;
    other record;
BEGIN
    SELECT attnum, atttypid, attcollation INTO col FROM pg_attribute
        WHERE attrelid = table_name AND attname = distribution_column AND NOT attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION '% has no column %', table_name, distribution_column;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_index WHERE indrelid = table_name AND indisunique
               AND NOT col.attnum = ANY (indkey)) THEN
        RAISE EXCEPTION 'a unique index of % lacks its distribution column %', table_name, distribution_column;
    END IF;
    IF colocate_with NOT IN ('default', 'none') THEN
        SELECT * INTO other FROM citus_stub.distributed WHERE relation = colocate_with::regclass;
        IF NOT FOUND THEN
            RAISE EXCEPTION '% is co-located with %, which is not distributed yet', table_name, colocate_with;
        END IF;
        IF other.type <> col.atttypid OR other.coll <> col.attcollation THEN
            RAISE EXCEPTION '% and % are distributed on columns of different types', table_name, colocate_with;
        END IF;
    END IF;
    INSERT INTO citus_stub.distributed VALUES (table_name, distribution_column, col.atttypid, col.attcollation);
END $$;
"""


def test_citus_ddl_distributes_every_index_table_by_the_rules_citus_enforces(postgres_scratch_dsn: str) -> None:
    with psycopg.connect(postgres_scratch_dsn) as conn:
        conn.execute(CITUS_STUB)
        conn.execute("SET search_path = citus_stub, public")
        conn.execute(DDL.read_text())
        rows = conn.execute("SELECT relation::text, column_name FROM citus_stub.distributed ORDER BY 1").fetchall()
    assert rows == [
        ("instance", "study_instance_uid"),
        ("patient", "patient_id"),
        ("series", "study_instance_uid"),
        ("study", "study_instance_uid"),
    ]
