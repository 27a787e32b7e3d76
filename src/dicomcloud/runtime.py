"""The adapters a process uses, chosen from settings in this one place."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from dicomcloud.archive.keys import KeyLayout, settled_layout
from dicomcloud.config import Settings
from dicomcloud.ports.bus import Bus
from dicomcloud.ports.cache import Cache
from dicomcloud.ports.index import Index
from dicomcloud.ports.storage import Storage
from dicomcloud.ports.warehouse import Warehouse


@dataclass
class Runtime:
    settings: Settings
    storage: Storage
    bus: Bus
    index: Index
    cache: Cache
    # Where new objects go: the setting, once checked against what the storage recorded (archive/keys.py).
    layout: KeyLayout = KeyLayout.UIDS
    _warehouse: Warehouse | None = field(default=None, init=False, repr=False)
    _warehouse_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def warehouse(self) -> Warehouse:
        """Opened on first use: DuckDB lets one process write its file, so only processes that use it open it."""
        with self._warehouse_lock:
            if self._warehouse is None:
                self._warehouse = open_warehouse(self.settings)
            return self._warehouse

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        settings.data_path.mkdir(parents=True, exist_ok=True)
        storage = open_storage(settings)
        return cls(
            settings=settings,
            storage=storage,
            bus=open_bus(settings),
            index=open_index(settings),
            cache=open_cache(settings),
            layout=settled_layout(storage, settings.storage.key_layout),
        )

    def close(self) -> None:
        self.bus.close()
        self.index.close()
        with self._warehouse_lock:
            if self._warehouse is not None:
                self._warehouse.close()
                self._warehouse = None


def open_storage(settings: Settings) -> Storage:
    """The data folder's `storage/`, or the S3 bucket (refused at once when it rejects the credentials or does
    not exist). Either way, incoming objects are staged in the data folder's `tmp/`: on S3, a scratch folder of
    this process only."""
    data = settings.data_path
    if settings.backends.storage == "fs":
        from dicomcloud.adapters.fs_storage import FsStorage

        return FsStorage(root=data / "storage", staging=data / "tmp")
    if settings.backends.storage == "s3":
        from dicomcloud.adapters.s3_storage import S3Storage

        storage = S3Storage(settings.storage.s3, staging=data / "tmp")
        storage.verify()
        return storage
    raise ValueError(f"unknown storage backend {settings.backends.storage!r} (fs or s3)")


def open_bus(settings: Settings) -> Bus:
    backends = settings.backends
    if backends.bus == "sqlite":
        from dicomcloud.adapters.sqlite_bus import SqliteBus

        return SqliteBus(settings.data_path / "bus.sqlite")
    if backends.bus == "kafka":
        from dicomcloud.adapters.kafka_bus import KafkaBus

        return KafkaBus(
            _required(backends.kafka_bootstrap, "backends.kafka_bootstrap", "the kafka bus"),
            partitions=backends.kafka_partitions,
            replication=backends.kafka_replication,
            delivery_timeout=backends.kafka_delivery_timeout,
        )
    raise ValueError(f"unknown bus backend {backends.bus!r} (sqlite or kafka)")


def open_index(settings: Settings) -> Index:
    backends = settings.backends
    if backends.index == "sqlite":
        from dicomcloud.adapters.sqlite_index import SqliteIndex

        return SqliteIndex(settings.data_path / "index.sqlite")
    if backends.index == "postgres":
        from dicomcloud.adapters.postgres_index import PostgresIndex

        return PostgresIndex(_required(backends.postgres_dsn, "backends.postgres_dsn", "the postgres index"))
    raise ValueError(f"unknown index backend {backends.index!r} (sqlite or postgres)")


def open_cache(settings: Settings) -> Cache:
    backends = settings.backends
    if backends.cache == "memory":
        from dicomcloud.adapters.memory_cache import MemoryCache

        return MemoryCache(max_bytes=backends.cache_max_bytes)
    if backends.cache == "redis":
        from dicomcloud.adapters.redis_cache import RedisCache

        return RedisCache(_required(backends.redis_url, "backends.redis_url", "the redis cache"))
    raise ValueError(f"unknown cache backend {backends.cache!r} (memory or redis)")


def _required(value: str, name: str, user: str) -> str:
    if not value:
        raise ValueError(f"{user} needs the setting {name} (env: DICOMCLOUD_{name.upper().replace('.', '__')})")
    return value


def open_warehouse(settings: Settings) -> Warehouse:
    if settings.backends.warehouse == "doris":
        from dicomcloud.adapters.doris_warehouse import DorisWarehouse

        return DorisWarehouse(settings.warehouse.doris)
    from dicomcloud.adapters.duckdb_warehouse import DuckDBWarehouse
    from dicomcloud.service_workers import worker_count

    # Several processes open it when the web app is served by several, or when `up`'s loader runs in a process
    # of its own (service_workers.py), which it does when DIMSE is served by several.
    several = max(worker_count(settings.http.workers), worker_count(settings.dimse.workers)) > 1
    return DuckDBWarehouse(settings.data_path / "warehouse.duckdb", shared=several)
