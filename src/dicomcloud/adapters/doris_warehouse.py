"""The production warehouse: Apache Doris, loaded by Stream Load over HTTP and queried over the MySQL protocol.

A load is `PUT /api/{db}/{table}/_stream_load` with the rows as one JSON array (`format: json`,
`strip_outer_array: true`), HTTP basic auth and the batch's label. The request goes to the FE with
`Expect: 100-continue`: the FE answers 307 with a BE's address before any body is sent, and the
request is repeated there with the same credentials (curl's `--location-trusted`); only a 100
Continue releases the body. The BE's JSON answer decides:
- `Success`: loaded. `Publish Timeout`: committed, visible shortly: loaded too.
- `Label Already Exists` with `ExistingJobStatus` FINISHED: loaded before, nothing done (False);
  RUNNING: the earlier attempt is still in flight, a transient failure.
- `Fail`: rows were filtered (a NOT NULL or type violation, the ErrorURL's log says which) is
  InvalidInput; anything else is StorageFailure.
After the rows, the batch goes into `loaded_batch` (its own Stream Load, label `rec-…`), which is what
`loaded_until` reads.
"""

from __future__ import annotations

import base64
import json
import select
import socket
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, BinaryIO
from urllib.parse import urljoin, urlsplit

import pymysql

from dicomcloud.adapters.warehouse_sql import statistics_sql
from dicomcloud.config import DorisSettings
from dicomcloud.errors import InvalidInput, StorageFailure
from dicomcloud.ports.warehouse import LOADED_BATCH, TABLES, Batch, Table

MAX_REDIRECTS = 3
# How long to wait for 100 Continue before sending the body anyway (RFC 9110 §10.1.1).
CONTINUE_WAIT = 5.0
ERROR_LOG_BYTES = 4096
REDIRECTS = frozenset({301, 302, 303, 307, 308})


class DorisWarehouse:
    def __init__(self, settings: DorisSettings) -> None:
        self.settings = settings
        token = base64.b64encode(f"{settings.user}:{settings.password}".encode()).decode("ascii")
        self._authorization = f"Basic {token}"

    # ------------------------------------------------------------------------------------ loading

    def load(self, batch: Batch, rows: Sequence[Mapping[str, Any]]) -> bool:
        table = TABLES.get(batch.table)
        if table is None:
            raise InvalidInput(f"unknown warehouse table {batch.table[:64]!r}")
        loaded = self._load_rows(table, batch.label, rows)
        record = {
            "label": batch.label,
            "topic": batch.topic,
            "bus_partition": batch.partition,
            "first_offset": batch.first_offset,
            "last_offset": batch.last_offset,
            "table_name": batch.table,
            "row_count": len(rows),
            "loaded_at": datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds"),
        }
        self._load_rows(LOADED_BATCH, "rec-" + batch.label, [record])
        return loaded

    def _load_rows(self, table: Table, label: str, rows: Sequence[Mapping[str, Any]]) -> bool:
        body = json.dumps([{c: row.get(c) for c in table.column_names} for row in rows], ensure_ascii=False)
        result = self.stream_load(table.name, label, body.encode())
        status = result.get("Status")
        if status in ("Success", "Publish Timeout"):
            return True
        if status == "Label Already Exists":
            if result.get("ExistingJobStatus") == "FINISHED":
                return False
            raise StorageFailure(f"Stream Load {label}: an earlier load of this label is still {status}")
        message = str(result.get("Message") or result.get("msg") or result)
        if result.get("NumberFilteredRows") or "filtered rows" in message.lower():
            error_url = str(result.get("ErrorURL") or "")
            raise InvalidInput(f"{table.name} refused rows of {label}: {message} {self._error_log(error_url)}".strip())
        raise StorageFailure(f"Stream Load {label} into {table.name} failed: {message}")

    def stream_load(self, table: str, label: str, body: bytes) -> dict[str, Any]:
        """One Stream Load, following the FE's redirect; the BE's JSON answer."""
        url = f"{self.settings.http_url.rstrip('/')}/api/{self.settings.database}/{table}/_stream_load"
        headers = {
            "Authorization": self._authorization,
            "Expect": "100-continue",
            "label": label,
            "format": "json",
            "strip_outer_array": "true",
            "Content-Type": "application/json; charset=UTF-8",
            "Content-Length": str(len(body)),
        }
        for _ in range(MAX_REDIRECTS + 1):
            status, response_headers, response = _put(url, headers, body, self.settings.timeout)
            if status in REDIRECTS and "location" in response_headers:
                url = urljoin(url, response_headers["location"])
                continue
            if status in (401, 403):
                raise StorageFailure(f"Doris refused the credentials of user {self.settings.user!r} (HTTP {status})")
            if status != 200:
                raise StorageFailure(f"Stream Load answered HTTP {status}: {response[:200]!r}")
            try:
                answer: dict[str, Any] = json.loads(response)
            except ValueError as exc:
                raise StorageFailure(f"Stream Load answered with no JSON: {response[:200]!r}") from exc
            return answer
        raise StorageFailure(f"Stream Load redirected more than {MAX_REDIRECTS} times")

    def _error_log(self, url: str) -> str:
        """The first lines of the BE's error log for a failed load (it names the rows and the reasons)."""
        if not url:
            return ""
        try:
            with urllib.request.urlopen(url, timeout=self.settings.timeout) as response:
                text: str = response.read(ERROR_LOG_BYTES).decode("utf-8", "replace")
        except OSError as exc:
            return f"(error log at {url}: {exc})"
        return f"(error log: {text.strip()})"

    # ------------------------------------------------------------------------------------ queries

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        settings = self.settings
        try:
            conn = pymysql.connect(
                host=settings.mysql_host,
                port=settings.mysql_port,
                user=settings.user,
                password=settings.password,
                database=settings.database,
                autocommit=True,
                connect_timeout=int(settings.timeout),
                read_timeout=int(settings.timeout),
                charset="utf8mb4",
            )
        except pymysql.MySQLError as exc:
            raise StorageFailure(f"cannot query Doris at {settings.mysql_host}:{settings.mysql_port}: {exc}") from exc
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql, tuple(params))
                names = [d[0] for d in cursor.description or ()]
                return [dict(zip(names, map(_plain, row), strict=True)) for row in cursor.fetchall()]
        except pymysql.MySQLError as exc:
            raise StorageFailure(f"Doris query failed: {exc}") from exc
        finally:
            conn.close()

    def loaded_until(self, topic: str, partition: int) -> int:
        rows = self._query(
            "SELECT MAX(last_offset) AS last_offset FROM loaded_batch WHERE topic = %s AND bus_partition = %s",
            (topic, partition),
        )
        value = rows[0]["last_offset"] if rows else None
        return -1 if value is None else int(value)

    def statistics(self, name: str, limit: int = 20, since: datetime | None = None) -> list[dict[str, Any]]:
        # The statistics hold no parameters; doubling % keeps PyMySQL's formatting out of them.
        return self._query(statistics_sql(name, limit, since).replace("%", "%%"))

    def count(self, table: str) -> int:
        if table not in TABLES:
            raise InvalidInput(f"unknown warehouse table {table[:64]!r}")
        return int(self._query(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"])

    def close(self) -> None:
        """Nothing is held open: each load and query has its own connection."""


def _plain(value: Any) -> Any:
    """JSON-ready values: dates as ISO text, whole decimals (Doris' SUM) as ints."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def _put(url: str, headers: Mapping[str, str], body: bytes, timeout: float) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 PUT that honours `Expect: 100-continue`: the body is sent only after 100 Continue
    (or after CONTINUE_WAIT with no answer); a final answer first (a redirect, 401) means it is not sent."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise StorageFailure(f"Stream Load needs an http:// URL, not {url!r}")
    port = parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    head = f"PUT {target} HTTP/1.1\r\nHost: {parts.hostname}:{port}\r\nConnection: close\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout) as sock, sock.makefile("rb") as reader:
            sock.sendall(head.encode("latin-1"))
            answered, _, _ = select.select([sock], [], [], CONTINUE_WAIT)
            status, response_headers = _read_head(reader) if answered else (100, {})
            if status == 100:
                sock.sendall(body)
                status, response_headers = _read_head(reader)
            while 100 <= status < 200:
                status, response_headers = _read_head(reader)
            return status, response_headers, _read_body(reader, response_headers)
    except OSError as exc:
        raise StorageFailure(f"Stream Load to {parts.hostname}:{port} failed: {exc}") from exc


def _read_head(reader: BinaryIO) -> tuple[int, dict[str, str]]:
    line = reader.readline(65537).decode("latin-1")
    words = line.split(None, 2)
    if len(words) < 2 or not words[0].startswith("HTTP/") or not words[1].isdigit():
        raise StorageFailure(f"not an HTTP response: {line[:100]!r}")
    headers: dict[str, str] = {}
    while (field := reader.readline(65537).decode("latin-1").strip()) != "":
        name, _, value = field.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(words[1]), headers


def _read_body(reader: BinaryIO, headers: Mapping[str, str]) -> bytes:
    if "content-length" in headers:
        return reader.read(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while size := int(reader.readline(1024).split(b";")[0].strip() or b"0", 16):
            chunks.append(reader.read(size))
            reader.readline(1024)
        return b"".join(chunks)
    return reader.read()
