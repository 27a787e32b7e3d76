"""Series metadata documents: built once per index version, served from memory after that.

Lookup order for `document()`: parsed documents in an in-process LRU (parsing a 500-instance
document per request is too slow), then the shared cache (Redis in production; an in-process
cache is skipped, it would hold a second copy of what the LRU has) by version, then the stored
document if its version is current, else a build. Builds of one series are serialised by a
per-series lock; a request that waited for another's build reuses its result.

A build reads the series version *before* listing the instances, so a document is never older than
the version it is labelled with; an upsert racing the build bumps the version and triggers another.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

from dicomcloud.dicom.seriesdoc import InstanceEntry, SeriesDocument, index_instance
from dicomcloud.errors import InvalidInput
from dicomcloud.ports.index import InstanceLocation, SeriesKey
from dicomcloud.runtime import Runtime

log = logging.getLogger(__name__)

# Instances of the parsed documents kept per process: a parsed CT instance takes ~20 KB of Python
# objects, so this bounds the LRU near 40 MB whatever the series sizes (counting series did not),
# room for the viewer's working set (a few studies) in a server meant to stay under 300 MB. The
# document of one larger series is still kept, alone.
LRU_INSTANCES = 2_000


def document_key(key: SeriesKey) -> str:
    """Where a series' document lives in storage."""
    return f"{key.tenant_id}/{key.study_instance_uid}/{key.series_instance_uid}.json"


def cache_key(key: SeriesKey, version: int) -> str:
    return f"seriesdoc:{key.tenant_id}:{key.study_instance_uid}:{key.series_instance_uid}:{version}"


def _parse(raw: bytes, where: str) -> SeriesDocument | None:
    """A damaged or outdated-format document is as good as none: it gets rebuilt."""
    try:
        return SeriesDocument.from_bytes(raw)
    except InvalidInput as exc:
        log.warning("ignored series document %s: %s", where, exc.message)
        return None


class _KeyedLocks:
    """One lock per key while someone holds or waits for it; forgotten when nobody does."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[SeriesKey, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, key: SeriesKey) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


# Per process, shared by every SeriesMetadata (the web app's and the webworker's in `dicomcloud up`).
_BUILD_LOCKS = _KeyedLocks()


# A series in one archive: its data folder, then the series (tests run several archives in one process).
_Scoped = tuple[str, SeriesKey]


class _ParsedDocuments:
    """Least recently used parsed documents, bounded by their instance count."""

    def __init__(self, max_instances: int) -> None:
        self.max_instances = max_instances
        self._documents: OrderedDict[_Scoped, SeriesDocument] = OrderedDict()
        self._instances = 0
        self._guard = threading.Lock()

    def get(self, key: _Scoped) -> SeriesDocument | None:
        with self._guard:
            doc = self._documents.get(key)
            if doc is not None:
                self._documents.move_to_end(key)
            return doc

    def put(self, key: _Scoped, doc: SeriesDocument) -> None:
        with self._guard:
            self._drop(key)
            self._documents[key] = doc
            self._instances += len(doc.instances)
            while self._instances > self.max_instances and len(self._documents) > 1:
                self._drop(next(iter(self._documents)))

    def refresh(self, key: _Scoped, doc: SeriesDocument) -> None:
        """Replace a document that is kept, without keeping one that is not."""
        with self._guard:
            if key in self._documents:
                self._instances -= len(self._documents[key].instances)
                self._documents[key] = doc
                self._instances += len(doc.instances)

    def forget(self, key: _Scoped) -> None:
        with self._guard:
            self._drop(key)

    def _drop(self, key: _Scoped) -> None:
        doc = self._documents.pop(key, None)
        if doc is not None:
            self._instances -= len(doc.instances)


# Per process like the build locks: in `dicomcloud up` the web app and the webworker share one copy.
_PARSED = _ParsedDocuments(LRU_INSTANCES)


class SeriesMetadata:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._scope = str(runtime.settings.data_path)

    def document(self, key: SeriesKey) -> SeriesDocument | None:
        """The current document of a series; None if the series is not in the index."""
        version = self.runtime.index.series_version(key)
        if version is None:
            return None
        found = self._current(key, version)
        if found is not None:
            return found
        with _BUILD_LOCKS.hold(key):
            found = self._current(key, version)
            if found is not None:
                return found
            return self._build_locked(key, keep=True)

    def build(self, key: SeriesKey) -> SeriesDocument | None:
        """Rebuild the document for the current version, reusing unchanged instances' entries.

        The parsed result replaces a copy this process keeps but is not kept otherwise: the LRU
        holds what requests read, not every series a background build touched.
        """
        with _BUILD_LOCKS.hold(key):
            return self._build_locked(key, keep=False)

    def _current(self, key: SeriesKey, version: int) -> SeriesDocument | None:
        """The document built for exactly `version`, from memory, the shared cache or storage."""
        doc = _PARSED.get((self._scope, key))
        if doc is not None and doc.version == version:
            return doc
        raw = self.runtime.cache.get(cache_key(key, version)) if self.runtime.cache.shared else None
        stored = _parse(raw, cache_key(key, version)) if raw is not None else self._stored(key)
        if stored is None or stored.version != version:
            return None
        self._remember(key, stored)
        return stored

    def _stored(self, key: SeriesKey) -> SeriesDocument | None:
        raw = self.runtime.storage.read_document(document_key(key))
        return _parse(raw, document_key(key)) if raw is not None else None

    def _previous(self, key: SeriesKey) -> SeriesDocument | None:
        doc = _PARSED.get((self._scope, key))
        return doc if doc is not None else self._stored(key)

    def _build_locked(self, key: SeriesKey, keep: bool) -> SeriesDocument | None:
        index = self.runtime.index
        version = index.series_version(key)
        if version is None:
            self._forget(key)
            return None
        previous = self._previous(key)
        reusable = previous.instances if previous is not None else {}
        instances: dict[str, InstanceEntry] = {}
        rebuilt = 0
        for location in index.list_instances(key.tenant_id, key.study_instance_uid, key.series_instance_uid):
            entry = reusable.get(location.sop_instance_uid)
            if entry is None or entry.sha256 != location.sha256 or entry.file_path != location.file_path:
                entry = self._entry(key, location)
                rebuilt += 1
            if entry is not None:
                instances[location.sop_instance_uid] = entry
        doc = SeriesDocument(
            tenant_id=key.tenant_id,
            study_instance_uid=key.study_instance_uid,
            series_instance_uid=key.series_instance_uid,
            version=version,
            instances=instances,
        )
        raw = doc.to_bytes()
        self.runtime.storage.write_document(document_key(key), raw)
        if self.runtime.cache.shared:
            # For the other processes; this one keeps the parsed document.
            self.runtime.cache.set(cache_key(key, version), raw)
            if previous is not None and previous.version != version:
                # Nobody asks for an older version again; while a series grows, they would fill the cache.
                self.runtime.cache.delete(cache_key(key, previous.version))
        index.mark_built(key, version)
        if keep:
            self._remember(key, doc)
        else:
            _PARSED.refresh((self._scope, key), doc)
        log.debug("built %s v%d: %d instances, %d read", document_key(key), version, len(instances), rebuilt)
        return doc

    def _entry(self, key: SeriesKey, location: InstanceLocation) -> InstanceEntry | None:
        """Index one instance's file; None if it is gone (deleted or moved since the index said so)."""
        path = self.runtime.storage.path(location.file_path)
        try:
            return index_instance(
                path,
                file_path=location.file_path,
                file_size=location.file_size,
                sha256=location.sha256,
                study_uid=key.study_instance_uid,
                series_uid=key.series_instance_uid,
                threshold=self.runtime.settings.storage.bulkdata_threshold,
            )
        except FileNotFoundError:
            log.warning("%s is indexed but its file is gone; left out of the document", location.file_path)
            return None

    def _remember(self, key: SeriesKey, doc: SeriesDocument) -> None:
        _PARSED.put((self._scope, key), doc)

    def _forget(self, key: SeriesKey) -> None:
        _PARSED.forget((self._scope, key))
        self.runtime.storage.delete_document(document_key(key))
