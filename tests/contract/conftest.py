"""Fixtures that run each port's contract suite against every adapter of that port."""

from __future__ import annotations

import dataclasses
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from doris_server import DorisTestServer

from dicomcloud.adapters.doris_warehouse import DorisWarehouse
from dicomcloud.adapters.duckdb_warehouse import DuckDBWarehouse
from dicomcloud.adapters.fs_storage import FsStorage
from dicomcloud.adapters.kafka_bus import KafkaBus
from dicomcloud.adapters.memory_cache import MemoryCache
from dicomcloud.adapters.postgres_index import PostgresIndex, migrate
from dicomcloud.adapters.redis_cache import RedisCache
from dicomcloud.adapters.s3_storage import S3Storage, create_bucket
from dicomcloud.adapters.sqlite_bus import SqliteBus
from dicomcloud.adapters.sqlite_index import SqliteIndex
from dicomcloud.config import DorisSettings
from dicomcloud.ports.bus import Bus
from dicomcloud.ports.cache import Cache
from dicomcloud.ports.index import Index
from dicomcloud.ports.storage import Storage
from dicomcloud.ports.warehouse import Warehouse
from dicomcloud.stack.kafka import KafkaCluster
from dicomcloud.stack.seaweedfs import SeaweedFS
from dicomcloud.stack.servers import Server

SRC = Path(__file__).resolve().parents[2] / "src"

# ---------------------------------------------------------------------------------------------------
# bus, cache, storage (embedded adapters; Kafka and Redis add their params to these fixtures)
# ---------------------------------------------------------------------------------------------------


@dataclass
class BusTarget:
    """A bus under test that can be opened again (a restart) and from a child process (crash tests)."""

    opener: Callable[[], Bus]
    # Python source of an expression that builds a Bus on the same log in a fresh interpreter.
    child_expression: str
    check_integrity: Callable[[], None]
    # Whether a publish call's messages are one unit (all or none in the log); Kafka only promises
    # that the messages of a publish that returned are all there.
    atomic_batches: bool
    child_pythonpath: str = str(SRC)
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}-")
    opened: list[Bus] = field(default_factory=list)

    def open(self) -> Bus:
        bus = self.opener()
        self.opened.append(bus)
        return bus

    def name(self, base: str) -> str:
        """A topic or group name no other test uses (brokers are shared between tests)."""
        return self.prefix + base


def _sqlite_integrity(path: Path) -> Callable[[], None]:
    def check() -> None:
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    return check


# Contract tests use one partition per topic: the embedded bus's model, and the one in which Kafka
# keeps a topic's whole order and hands a group's topic to one consumer at a time.
KAFKA_TEST_OPTIONS = {"partitions": 1, "replication": 1, "delivery_timeout": 10.0}


@pytest.fixture(params=["sqlite", "kafka"])
def bus_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BusTarget]:
    if request.param == "sqlite":
        path = tmp_path / "bus.sqlite"
        target = BusTarget(
            opener=lambda: SqliteBus(path),
            child_expression=(
                f"__import__('dicomcloud.adapters.sqlite_bus', fromlist=['SqliteBus']).SqliteBus({str(path)!r})"
            ),
            check_integrity=_sqlite_integrity(path),
            atomic_batches=True,
        )
    else:
        cluster: KafkaCluster = request.getfixturevalue("kafka_cluster")
        bootstrap = cluster.bootstrap
        target = BusTarget(
            opener=lambda: KafkaBus(bootstrap, **KAFKA_TEST_OPTIONS),
            child_expression=(
                "__import__('dicomcloud.adapters.kafka_bus', fromlist=['KafkaBus'])"
                f".KafkaBus({bootstrap!r}, **{KAFKA_TEST_OPTIONS!r})"
            ),
            check_integrity=lambda: None,
            atomic_batches=False,
        )
    yield target
    for bus in target.opened:
        bus.close()


@pytest.fixture
def bus(bus_target: BusTarget) -> Bus:
    return bus_target.open()


@pytest.fixture(params=["memory", "redis"])
def cache(request: pytest.FixtureRequest) -> Iterator[Cache]:
    if request.param == "memory":
        yield MemoryCache(max_bytes=16 * 1024**2)
        return
    server: Server = request.getfixturevalue("redis_server")
    redis_cache = RedisCache(server.url, key_prefix=f"t{uuid.uuid4().hex[:8]}:")
    yield redis_cache
    redis_cache.close()


@pytest.fixture(params=["memory"])
def bounded_cache_factory(request: pytest.FixtureRequest) -> Callable[[int], Cache]:
    """Caches whose byte bound is exact; Redis' approximate LRU does not join these tests."""
    return lambda max_bytes: MemoryCache(max_bytes=max_bytes)


@dataclass
class StorageTarget:
    """A storage under test, and a look at its scratch files (what a failed or finished write must not leave)."""

    storage: Storage
    # The scratch files the adapter holds right now (staged, or left behind), by name.
    scratch_files: Callable[[], list[str]]


def _files_in(folder: Path) -> Callable[[], list[str]]:
    return lambda: sorted(entry.name for entry in folder.iterdir())


# The bucket the S3 contract tests share; each test keeps its objects under a key prefix of its own.
CONTRACT_BUCKET = "contract"


@pytest.fixture(params=["fs", "s3"])
def storage_target(request: pytest.FixtureRequest, tmp_path: Path) -> StorageTarget:
    data = tmp_path / "data"
    if request.param == "s3":
        return StorageTarget(s3_storage(request, data / "tmp"), _files_in(data / "tmp"))
    return StorageTarget(FsStorage(root=data / "storage", staging=data / "tmp"), _files_in(data / "tmp"))


def s3_storage(request: pytest.FixtureRequest, staging: Path, **changes: Any) -> S3Storage:
    """An S3Storage on the session's SeaweedFS, under a key prefix no other test uses."""
    weed: SeaweedFS = request.getfixturevalue("seaweedfs")
    settings = weed.settings(CONTRACT_BUCKET, key_prefix=f"t{uuid.uuid4().hex[:12]}")
    create_bucket(settings)
    return S3Storage(dataclasses.replace(settings, **changes), staging)


@pytest.fixture
def storage(storage_target: StorageTarget) -> Storage:
    return storage_target.storage


# --------------------------------------------------------------------------------- end bus/cache/storage


# ---------------------------------------------------------------------------------------------------
# index (embedded SQLite; PostgreSQL adds its param here)
# ---------------------------------------------------------------------------------------------------


INDEX_TEMPLATE = "index_template"


@pytest.fixture(scope="session")
def postgres_index_template(postgres_server: Server) -> str:
    """A database at the newest schema revision that each test's database is copied from."""
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {INDEX_TEMPLATE}")
    migrate(database_dsn(postgres_server, INDEX_TEMPLATE))
    return INDEX_TEMPLATE


def database_dsn(server: Server, database: str) -> str:
    return f"{server.url.rsplit('/', 1)[0]}/{database}"


@contextmanager
def scratch_database(server: Server, template: str) -> Iterator[str]:
    """A database of the test's own (copied from `template`), dropped afterwards; yields its DSN."""
    name = f"t{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    try:
        yield database_dsn(server, name)
    finally:
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def postgres_scratch_dsn(postgres_server: Server, postgres_index_template: str) -> Iterator[str]:
    """The DSN of a migrated database of the test's own."""
    with scratch_database(postgres_server, postgres_index_template) as dsn:
        yield dsn


@pytest.fixture(params=["sqlite", "postgres"])
def index_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Index]]:
    """Opens the index on one store, as often as a test needs (a restart, another worker)."""
    opened: list[Index] = []
    with ExitStack() as stack:
        if request.param == "sqlite":
            path = tmp_path / "index.sqlite"
            opener: Callable[[], Index] = lambda: SqliteIndex(path)  # noqa: E731
        else:
            server: Server = request.getfixturevalue("postgres_server")
            dsn = stack.enter_context(scratch_database(server, request.getfixturevalue("postgres_index_template")))
            opener = lambda: PostgresIndex(dsn, pool_size=10)  # noqa: E731

        def open_index() -> Index:
            index = opener()
            opened.append(index)
            return index

        yield open_index
        for index in opened:
            index.close()


@pytest.fixture
def index(index_factory: Callable[[], Index]) -> Index:
    return index_factory()


# ------------------------------------------------------------------------------------------- end index


# ---------------------------------------------------------------------------------------------------
# warehouse (embedded DuckDB; Doris against the protocol-level test server in tests/doris_server.py)
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def doris() -> Iterator[DorisTestServer]:
    server = DorisTestServer()
    yield server
    server.close()


def doris_settings(server: DorisTestServer, **changes: Any) -> DorisSettings:
    settings = DorisSettings(
        http_url=server.fe_url, mysql_port=server.mysql_port, user=server.user, password=server.password, timeout=10
    )
    return dataclasses.replace(settings, **changes)


@pytest.fixture(params=["duckdb", "duckdb shared", "doris"])
def warehouse_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Warehouse]]:
    """Opens the warehouse on one store, as often as a test needs (a restart after a crash). "duckdb shared" is
    the file several HTTP workers use, opened per call under a file lock."""
    opened: list[Warehouse] = []
    server = request.getfixturevalue("doris") if request.param == "doris" else None

    def open_warehouse() -> Warehouse:
        if opened:
            opened.pop().close()
        warehouse: Warehouse = (
            DorisWarehouse(doris_settings(server))
            if server
            else DuckDBWarehouse(tmp_path / "warehouse.duckdb", shared=request.param == "duckdb shared")
        )
        opened.append(warehouse)
        return warehouse

    yield open_warehouse
    for warehouse in opened:
        warehouse.close()


@pytest.fixture
def warehouse(warehouse_factory: Callable[[], Warehouse]) -> Warehouse:
    return warehouse_factory()


# --------------------------------------------------------------------------------------- end warehouse
