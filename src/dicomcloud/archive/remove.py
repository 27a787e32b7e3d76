"""Remove: DELETE of a study, series or instance (not in PS3.18; the shape common archives offer).

The index forgets first, in one transaction, so from that moment no search, retrieve or metadata
request finds the instances, on any server; then the QIDO-RS results that covered them are dropped,
then their objects go (originals, metadata entries, derived copies), then the documents of series left
empty. A crash in between leaves at worst orphan objects, never an indexed instance without its object.
A series that keeps instances gets a newer index version, so its metadata is composed afresh.
"""

from __future__ import annotations

import logging

from dicomcloud.archive.keys import copy_prefix_of, derived_prefix, entry_key
from dicomcloud.archive.metadata import SeriesMetadata
from dicomcloud.archive.qido_cache import QidoCache
from dicomcloud.errors import NotFound
from dicomcloud.ports.index import InstanceLocation, SeriesKey
from dicomcloud.runtime import Runtime

log = logging.getLogger(__name__)


class Remove:
    def __init__(self, runtime: Runtime, qido_cache: QidoCache, metadata: SeriesMetadata) -> None:
        self.runtime = runtime
        self.qido_cache = qido_cache
        self.metadata = metadata

    def delete(
        self, tenant_id: str, study: str, series: str | None = None, sop: str | None = None
    ) -> list[InstanceLocation]:
        """Remove what the UIDs name; NotFound when they name nothing."""
        removed = self.runtime.index.delete(tenant_id, study, series, sop)
        if not removed:
            raise NotFound(f"nothing to delete at study {study}" + (f" series {series}" if series else ""))
        self.qido_cache.changed(tenant_id, {location.study_instance_uid for location in removed})
        by_series: dict[SeriesKey, list[InstanceLocation]] = {}
        for location in removed:
            by_series.setdefault(location.series_key, []).append(location)
        storage = self.runtime.storage
        for key, locations in by_series.items():
            # One listing per folder of originals (a series' one, in either layout, unless its study date
            # changed) finds the derived copies of every removed instance in it.
            folders = dict.fromkeys(location.file_path.rpartition("/")[0] + "/" for location in locations)
            listed = [name for folder in folders for name in storage.list(folder)]
            copies = {derived_prefix(location.file_path) for location in locations}
            keys = [key for location in locations for key in (location.file_path, entry_key(location.file_path))]
            keys += [name for name in listed if copy_prefix_of(name) in copies]
            storage.delete(keys)
            if self.runtime.index.series_version(key) is None:
                self.metadata.forget(key)
        log.info("DELETE %s: %d instances of %d series removed", tenant_id, len(removed), len(by_series))
        return removed
