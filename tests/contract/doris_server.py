"""A protocol-level stand-in for Apache Doris, written from its documentation, for the Doris adapter's tests.

- FE (HTTP): `PUT /api/{db}/{table}/_stream_load` checks basic auth (401), then answers 307 with a BE's
  address. With `Expect: 100-continue` it answers before the body is sent and never reads it;
  `fe_body_bytes` counts body bytes that reached the FE anyway.
- BE (HTTP): checks auth again, sends 100 Continue, reads the body, and answers Doris' JSON: `Success`,
  `Label Already Exists` (+ `ExistingJobStatus`), `Publish Timeout` (for labels in `publish_timeout`:
  committed all the same), or `Fail` with `ErrorURL`, whose log it serves. Labels are per database; a
  failed load frees its label. Rows are checked against the DDL shipped in `deploy/doris/tables.sql`:
  `format: json` with `strip_outer_array: true`, objects only, every NOT NULL column present, values of
  the column's type (VARCHAR(n) at most n bytes, DATETIME parsed); any filtered row fails the load
  (`max_filter_ratio` 0). UNIQUE KEY tables keep one row per key, the higher sequence column winning.
- MySQL protocol: handshake v10 with mysql_native_password, COM_QUERY answered with text result sets
  (EOF-terminated), COM_PING, COM_INIT_DB, COM_QUIT. Queries run on an in-memory DuckDB holding the
  loaded rows, so this checks the wire protocol and the adapter's SQL in DuckDB's dialect, not Doris'.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import re
import socket
import socketserver
import struct
import threading
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import duckdb

DDL = Path(__file__).resolve().parents[2] / "deploy" / "doris" / "tables.sql"
STREAM_LOAD = re.compile(r"^/api/(?P<db>[^/]+)/(?P<table>[^/]+)/_stream_load$")


@dataclass(frozen=True)
class DorisColumn:
    name: str
    type: str
    nullable: bool


@dataclass(frozen=True)
class DorisTable:
    name: str
    columns: tuple[DorisColumn, ...]
    key: tuple[str, ...]
    unique: bool
    sequence: str | None


def parse_ddl(text: str) -> dict[str, DorisTable]:
    """The CREATE TABLE statements of a Doris DDL file: columns, NULL rules, key model and sequence column."""
    tables: dict[str, DorisTable] = {}
    statements = re.finditer(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*?)\n\)\n(.*?);", text, re.S)
    for match in statements:
        name, body, tail = match.groups()
        columns = []
        for line in body.strip().splitlines():
            words = re.match(r"\s*`?(\w+)`?\s+(\S+)\s+(NOT NULL|NULL)", line)
            assert words, f"cannot parse column line {line!r} of {name}"
            columns.append(DorisColumn(words[1], words[2], words[3] == "NULL"))
        model = re.search(r"(UNIQUE|DUPLICATE) KEY \(([^)]*)\)", tail)
        assert model, f"no key model for {name}"
        sequence = re.search(r'"function_column.sequence_col" = "(\w+)"', tail)
        tables[name] = DorisTable(
            name, tuple(columns), tuple(k.strip() for k in model[2].split(",")), model[1] == "UNIQUE",
            sequence[1] if sequence else None,
        )
    return tables


class RowError(ValueError):
    """Why a row was filtered, as the error log says it."""


def _check(column: DorisColumn, value: Any) -> Any:
    if value is None:
        if not column.nullable:
            raise RowError(f"column {column.name} is NULL, but it is NOT NULL")
        return None
    kind = column.type.upper()
    if kind in ("INT", "BIGINT"):
        if isinstance(value, bool) or not isinstance(value, (int, str)) or not re.fullmatch(r"-?\d+", str(value)):
            raise RowError(f"column {column.name}: {value!r} is not an integer")
        number = int(value)
        if kind == "INT" and not -(2**31) <= number < 2**31:
            raise RowError(f"column {column.name}: {value!r} out of range for INT")
        return number
    if kind == "DOUBLE":
        try:
            return float(value)
        except (TypeError, ValueError) as exc:
            raise RowError(f"column {column.name}: {value!r} is not a number") from exc
    if kind.startswith("DATETIME"):
        try:
            return datetime.fromisoformat(str(value))
        except ValueError as exc:
            raise RowError(f"column {column.name}: {value!r} is not a DATETIME") from exc
    text = value if isinstance(value, str) else json.dumps(value)
    limit = re.fullmatch(r"VARCHAR\((\d+)\)", kind)
    if limit and len(text.encode()) > int(limit[1]):
        raise RowError(f"column {column.name}: {len(text.encode())} bytes exceed {kind}")
    return text


def _duck_type(doris_type: str) -> str:
    kind = doris_type.upper()
    if kind.startswith("DATETIME"):
        return "TIMESTAMP"
    return {"INT": "INTEGER", "BIGINT": "BIGINT", "DOUBLE": "DOUBLE"}.get(kind, "VARCHAR")


@dataclass
class DorisTestServer:
    user: str = "root"
    password: str = "doris-test-password"
    database: str = "dicomcloud"
    tables: dict[str, DorisTable] = field(default_factory=lambda: parse_ddl(DDL.read_text(encoding="utf-8")))
    publish_timeout: set[str] = field(default_factory=set)  # labels answered `Publish Timeout`
    running: set[str] = field(default_factory=set)  # labels answered `Label Already Exists`, RUNNING
    fe_body_bytes: int = 0
    loads: list[str] = field(default_factory=list)  # labels of the loads the BE committed, in order

    def __post_init__(self) -> None:
        self.db = duckdb.connect()
        self.lock = threading.Lock()
        self.labels: set[str] = set()
        self.error_logs: dict[str, str] = {}
        self._txn = itertools.count(1000)
        for table in self.tables.values():
            cols = [
                f'"{c.name}" {_duck_type(c.type)}{"" if c.nullable else " NOT NULL"}' for c in table.columns
            ]
            if table.unique:
                cols.append("PRIMARY KEY (" + ", ".join(f'"{k}"' for k in table.key) + ")")
            self.db.execute(f"CREATE TABLE {table.name} ({', '.join(cols)})")
        self.be = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, fe=False))
        self.fe = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, fe=True))
        self.mysql = _MySQLServer(("127.0.0.1", 0), _MySQLHandler)
        self.mysql.doris = self
        self._threads = [
            threading.Thread(target=s.serve_forever, args=(0.05,), daemon=True) for s in (self.be, self.fe, self.mysql)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def fe_url(self) -> str:
        return f"http://127.0.0.1:{self.fe.server_address[1]}"

    @property
    def be_url(self) -> str:
        return f"http://127.0.0.1:{self.be.server_address[1]}"

    @property
    def mysql_port(self) -> int:
        return int(self.mysql.server_address[1])

    def authorized(self, header: str | None) -> bool:
        expected = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return header == f"Basic {expected}"

    def stream_load(self, db: str, table_name: str, label: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
        """The BE's work for one load, and its JSON answer."""
        answer: dict[str, Any] = {"TxnId": next(self._txn), "Label": label, "TwoPhaseCommit": "false"}
        counts = {"NumberTotalRows": 0, "NumberLoadedRows": 0, "NumberFilteredRows": 0, "NumberUnselectedRows": 0}
        answer.update(counts, LoadBytes=len(body), LoadTimeMs=1)
        with self.lock:
            if label in self.running:
                return {**answer, "Status": "Label Already Exists", "ExistingJobStatus": "RUNNING",
                        "Message": f"Label [{label}] has already been used."}
            if label in self.labels:
                return {**answer, "Status": "Label Already Exists", "ExistingJobStatus": "FINISHED",
                        "Message": f"Label [{label}] has already been used."}
            table = self.tables.get(table_name) if db == self.database else None
            if table is None:
                return {**answer, "Status": "Fail", "Message": f"unknown table, tableName={table_name}"}
            if headers.get("format", "").lower() != "json":
                return {**answer, "Status": "Fail", "Message": "this test server reads format=json only"}
            try:
                data = json.loads(body)
            except ValueError as exc:
                return {**answer, "Status": "Fail", "Message": f"[DATA_QUALITY_ERROR]invalid JSON: {exc}"}
            if isinstance(data, list) and headers.get("strip_outer_array", "").lower() != "true":
                return {**answer, "Status": "Fail",
                        "Message": "[DATA_QUALITY_ERROR]JSON data is array-object, `strip_outer_array` must be TRUE."}
            objects = data if isinstance(data, list) else [data]
            rows, errors = [], []
            for number, obj in enumerate(objects):
                try:
                    if not isinstance(obj, dict):
                        raise RowError("JSON data is not an object")
                    rows.append(tuple(_check(c, obj.get(c.name)) for c in table.columns))
                except RowError as exc:
                    errors.append(f"Reason: {exc}. src line [{json.dumps(obj)[:300]}]; row {number}")
            answer.update(NumberTotalRows=len(objects), NumberLoadedRows=len(rows), NumberFilteredRows=len(errors))
            if errors:
                name = f"error_log_{label}_{answer['TxnId']}"
                self.error_logs[name] = "\n".join(errors)
                return {**answer, "NumberLoadedRows": 0, "Status": "Fail",
                        "Message": "[DATA_QUALITY_ERROR]too many filtered rows",
                        "ErrorURL": f"{self.be_url}/api/_load_error_log?file=__shard_0/{name}"}
            self._apply(table, rows)
            self.labels.add(label)
            self.loads.append(label)
            if label in self.publish_timeout:
                return {**answer, "Status": "Publish Timeout", "Message": "transaction commit successfully, "
                        "BUT data will be visible later"}
            return {**answer, "Status": "Success", "Message": "OK"}

    def _apply(self, table: DorisTable, rows: list[tuple[Any, ...]]) -> None:
        names = [c.name for c in table.columns]
        insert = f"INSERT INTO {table.name} VALUES ({', '.join('?' for _ in names)})"
        if not table.unique:
            if rows:
                self.db.executemany(insert, rows)
            return
        key_at = [names.index(k) for k in table.key]
        seq_at = names.index(table.sequence) if table.sequence else None
        where = " AND ".join(f'"{k}" = ?' for k in table.key)
        for row in rows:
            key = [row[i] for i in key_at]
            sequence = f'"{table.sequence}"' if table.sequence else "1"
            found = self.db.execute(f"SELECT {sequence} FROM {table.name} WHERE {where}", key).fetchone()
            if found is not None:
                old = found[0]
                if seq_at is not None and old is not None and (row[seq_at] is None or row[seq_at] < old):
                    continue
                self.db.execute(f"DELETE FROM {table.name} WHERE {where}", key)
            self.db.execute(insert, row)

    def query(self, sql: str) -> tuple[list[tuple[str, str]], list[tuple[Any, ...]]] | None:
        """Columns (name, DuckDB type) and rows of a query; None for statements with no result (SET …)."""
        if re.match(r"\s*(SET|USE)\b", sql, re.I):
            return None
        with self.lock:
            cursor = self.db.execute(sql)
            description = cursor.description or []
            return [(d[0], str(d[1])) for d in description], cursor.fetchall()

    def close(self) -> None:
        for server in (self.fe, self.be, self.mysql):
            server.shutdown()
            server.server_close()
        self.db.close()


def _handler(doris: DorisTestServer, *, fe: bool) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the tests read answers, not logs."""

        def _json(self, status: int, body: dict[str, Any], extra: dict[str, str] | None = None) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **(extra or {})}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(raw)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(raw)
            self.close_connection = True

        def _refuse_or_redirect(self) -> bool:
            """FE: 401 for bad credentials, else 307 to the BE; True when answered."""
            if not STREAM_LOAD.match(urlsplit(self.path).path):
                self._json(404, {"msg": "Not Found", "code": 404})
            elif not doris.authorized(self.headers.get("Authorization")):
                self._json(401, {"msg": "Unauthorized", "code": 401, "data": "Access denied"})
            else:
                self._json(307, {}, {"Location": doris.be_url + self.path})
            return True

        def handle_expect_100(self) -> bool:
            if fe:
                self._refuse_or_redirect()
                return False  # answered before the body: the client must not send it
            if not doris.authorized(self.headers.get("Authorization")):
                self._json(401, {"msg": "Unauthorized", "code": 401})
                return False
            return super().handle_expect_100()

        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if fe:
                doris.fe_body_bytes += len(body)
                self._refuse_or_redirect()
                return
            if not doris.authorized(self.headers.get("Authorization")):
                self._json(401, {"msg": "Unauthorized", "code": 401})
                return
            match = STREAM_LOAD.match(urlsplit(self.path).path)
            if match is None:
                self._json(404, {"msg": "Not Found"})
                return
            headers = {k.lower(): v for k, v in self.headers.items()}
            label = headers.get("label") or f"auto_{os.urandom(8).hex()}"
            self._json(200, doris.stream_load(match["db"], match["table"], label, headers, body))

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            name = parse_qs(parts.query).get("file", [""])[0].rpartition("/")[2]
            if fe or parts.path != "/api/_load_error_log" or name not in doris.error_logs:
                self._json(404, {"msg": "Not Found"})
                return
            raw = doris.error_logs[name].encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

    return Handler


# --------------------------------------------------------------------------------------- MySQL protocol

CLIENT_LONG_PASSWORD = 0x1
CLIENT_CONNECT_WITH_DB = 0x8
CLIENT_PROTOCOL_41 = 0x200
CLIENT_TRANSACTIONS = 0x2000
CLIENT_SECURE_CONNECTION = 0x8000
CLIENT_PLUGIN_AUTH = 0x80000
CLIENT_CONNECT_ATTRS = 0x100000
CLIENT_PLUGIN_AUTH_LENENC = 0x200000
SERVER_CAPABILITIES = (
    CLIENT_LONG_PASSWORD | CLIENT_CONNECT_WITH_DB | CLIENT_PROTOCOL_41 | CLIENT_TRANSACTIONS
    | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH | CLIENT_CONNECT_ATTRS | CLIENT_PLUGIN_AUTH_LENENC
)
SERVER_STATUS_AUTOCOMMIT = 0x2
COM_QUIT, COM_INIT_DB, COM_QUERY, COM_PING = 0x01, 0x02, 0x03, 0x0E
TYPE_DOUBLE, TYPE_LONGLONG, TYPE_DATE, TYPE_DATETIME, TYPE_NEWDECIMAL, TYPE_VAR_STRING = 5, 8, 10, 12, 246, 253


def _lenenc_int(n: int) -> bytes:
    if n < 251:
        return bytes([n])
    if n < 2**16:
        return b"\xfc" + struct.pack("<H", n)
    if n < 2**24:
        return b"\xfd" + struct.pack("<I", n)[:3]
    return b"\xfe" + struct.pack("<Q", n)


def _lenenc_str(data: bytes) -> bytes:
    return _lenenc_int(len(data)) + data


def _read_lenenc_int(data: bytes, at: int) -> tuple[int, int]:
    first = data[at]
    if first < 251:
        return first, at + 1
    width = {0xFC: 2, 0xFD: 3, 0xFE: 8}[first]
    return int.from_bytes(data[at + 1 : at + 1 + width], "little"), at + 1 + width


def native_password_token(password: str, scramble: bytes) -> bytes:
    """mysql_native_password: SHA1(password) XOR SHA1(scramble + SHA1(SHA1(password)))."""
    if not password:
        return b""
    stage1 = hashlib.sha1(password.encode()).digest()
    stage2 = hashlib.sha1(stage1).digest()
    mask = hashlib.sha1(scramble + stage2).digest()
    return bytes(a ^ b for a, b in zip(stage1, mask, strict=True))


def _mysql_type(duck_type: str) -> int:
    upper = duck_type.upper()
    if upper == "DATE":
        return TYPE_DATE
    if upper.startswith("TIMESTAMP"):
        return TYPE_DATETIME
    if upper.startswith("DECIMAL"):
        return TYPE_NEWDECIMAL
    if upper in ("DOUBLE", "FLOAT", "REAL"):
        return TYPE_DOUBLE
    if "INT" in upper:
        return TYPE_LONGLONG
    return TYPE_VAR_STRING


def _text(value: Any) -> bytes:
    if isinstance(value, datetime):
        return value.isoformat(sep=" ").encode()
    if isinstance(value, (date, Decimal, int, float)):
        return str(value).encode() if not isinstance(value, date) else value.isoformat().encode()
    return str(value).encode()


class _MySQLServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    doris: DorisTestServer


class _MySQLHandler(socketserver.BaseRequestHandler):
    server: _MySQLServer

    def setup(self) -> None:
        self.seq = 0
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send(self, payload: bytes) -> None:
        self.request.sendall(struct.pack("<I", len(payload))[:3] + bytes([self.seq]) + payload)
        self.seq = (self.seq + 1) % 256

    def _recv(self) -> bytes | None:
        head = self._exactly(4)
        if head is None:
            return None
        self.seq = (head[3] + 1) % 256
        return self._exactly(int.from_bytes(head[:3], "little"))

    def _exactly(self, n: int) -> bytes | None:
        chunks, left = [], n
        while left:
            chunk = self.request.recv(left)
            if not chunk:
                return None
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _ok(self) -> None:
        self._send(b"\x00" + _lenenc_int(0) + _lenenc_int(0) + struct.pack("<HH", SERVER_STATUS_AUTOCOMMIT, 0))

    def _eof(self) -> None:
        self._send(b"\xfe" + struct.pack("<HH", 0, SERVER_STATUS_AUTOCOMMIT))

    def _error(self, code: int, state: str, message: str) -> None:
        self._send(b"\xff" + struct.pack("<H", code) + b"#" + state.encode() + message.encode()[:500])

    def handle(self) -> None:
        doris = self.server.doris
        scramble = os.urandom(20).replace(b"\x00", b"\x01")
        self._send(
            b"\x0a" + b"5.7.99-doris-test\x00" + struct.pack("<I", 1) + scramble[:8] + b"\x00"
            + struct.pack("<H", SERVER_CAPABILITIES & 0xFFFF) + bytes([33])
            + struct.pack("<H", SERVER_STATUS_AUTOCOMMIT) + struct.pack("<H", SERVER_CAPABILITIES >> 16)
            + bytes([21]) + b"\x00" * 10 + scramble[8:] + b"\x00" + b"mysql_native_password\x00"
        )
        response = self._recv()
        if response is None:
            return
        capabilities = struct.unpack("<I", response[:4])[0]
        at = 32
        end = response.index(b"\x00", at)
        user = response[at:end].decode()
        at = end + 1
        if capabilities & CLIENT_PLUGIN_AUTH_LENENC:
            length, at = _read_lenenc_int(response, at)
        else:
            length, at = response[at], at + 1
        token = response[at : at + length]
        if user != doris.user or token != native_password_token(doris.password, scramble):
            self._error(1045, "28000", f"Access denied for user '{user}'")
            return
        self._ok()
        while (packet := self._recv()) is not None:
            command, argument = packet[0], packet[1:]
            if command == COM_QUIT:
                return
            if command in (COM_PING, COM_INIT_DB):
                self._ok()
            elif command == COM_QUERY:
                self._query(argument.decode())
            else:
                self._error(1047, "08S01", f"unknown command {command}")

    def _query(self, sql: str) -> None:
        try:
            result = self.server.doris.query(sql)
        except duckdb.Error as exc:
            self._error(1105, "HY000", f"errCode = 2, detailMessage = {exc}")
            return
        if result is None:
            self._ok()
            return
        columns, rows = result
        self._send(_lenenc_int(len(columns)))
        for name, duck_type in columns:
            kind = _mysql_type(duck_type)
            charset = 33 if kind == TYPE_VAR_STRING else 63
            self._send(
                _lenenc_str(b"def") + _lenenc_str(self.server.doris.database.encode()) + _lenenc_str(b"")
                + _lenenc_str(b"") + _lenenc_str(name.encode()) + _lenenc_str(name.encode())
                + b"\x0c" + struct.pack("<HIBHB", charset, 1 << 20, kind, 0, 0) + b"\x00\x00"
            )
        self._eof()
        for row in rows:
            self._send(b"".join(b"\xfb" if v is None else _lenenc_str(_text(v)) for v in row))
        self._eof()
