"""The adapters a process uses, chosen from settings in this one place."""

from __future__ import annotations

from dataclasses import dataclass

from dicomcloud.config import Settings
from dicomcloud.ports.bus import Bus
from dicomcloud.ports.cache import Cache
from dicomcloud.ports.index import Index
from dicomcloud.ports.storage import Storage


@dataclass
class Runtime:
    settings: Settings
    storage: Storage
    bus: Bus
    index: Index
    cache: Cache

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        from dicomcloud.adapters.fs_storage import FsStorage
        from dicomcloud.adapters.memory_cache import MemoryCache
        from dicomcloud.adapters.sqlite_bus import SqliteBus
        from dicomcloud.adapters.sqlite_index import SqliteIndex

        data = settings.data_path
        data.mkdir(parents=True, exist_ok=True)
        return cls(
            settings=settings,
            storage=FsStorage(root=data / "storage", metadata_root=data / "metadata", temp_dir=data / "tmp"),
            bus=SqliteBus(data / "bus.sqlite"),
            index=SqliteIndex(data / "index.sqlite"),
            cache=MemoryCache(max_bytes=settings.backends.cache_max_bytes),
        )

    def close(self) -> None:
        self.bus.close()
        self.index.close()
