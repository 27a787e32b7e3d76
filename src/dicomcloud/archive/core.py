"""The archive: one object per process, built once and handed to the web app, the DIMSE SCP and the
workers, so every protocol reaches each operation through the same instance and shares its state
(the parsed-document LRU, the per-series build locks) with nothing else.

Nothing another process or node must see lives only here: whether an instance is stored, where, and
what a search finds are the index's; the objects are the storage's; the QIDO-RS result generations
are the cache's (Redis when several processes serve).
"""

from __future__ import annotations

from dicomcloud.archive.metadata import SeriesMetadata
from dicomcloud.archive.qido_cache import QidoCache
from dicomcloud.archive.remove import Remove
from dicomcloud.archive.retrieve import Retrieve
from dicomcloud.archive.search import Search
from dicomcloud.archive.store import Store
from dicomcloud.config import Settings
from dicomcloud.runtime import Runtime


class Archive:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.qido_cache = QidoCache(
            runtime.cache, runtime.settings.backends.qido_cache_ttl, runtime.index.change_marker
        )
        self.metadata = SeriesMetadata(runtime)
        self.store = Store(runtime, self.qido_cache, self.metadata)
        self.search = Search(runtime, self.metadata)
        self.retrieve = Retrieve(runtime, self.metadata)
        self.remove = Remove(runtime, self.qido_cache, self.metadata)

    @classmethod
    def from_settings(cls, settings: Settings) -> Archive:
        return cls(Runtime.from_settings(settings))

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    def close(self) -> None:
        self.runtime.close()
