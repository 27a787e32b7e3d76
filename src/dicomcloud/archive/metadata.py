"""Series metadata documents, composed from the metadata entries ingest stored; always current.

`document(key)` answers for the series' current index version, so an instance is in its series'
metadata the moment its store is acknowledged. It lists the series' instances in the index and takes
each one's entry from the newest document at hand (this process's LRU, else the stored document),
reading the stored entry (`<SOPUID>.json`, archive/keys.py) only for instances added or replaced since:
a series written one instance at a time is never re-read whole per instance. A document composed on
request is kept in the LRU, not written back; the webworker writes a series' document (`consolidate`)
at most every few seconds while the series changes, and puts it in the shared cache (Redis) by version.

An entry that is missing or damaged (a crash between placing an object and writing its entry) is made
again from the original: the only time the archive reads an original to learn its metadata.

Parsed documents are kept per process in an LRU bounded by instance count; composing or consolidating
one series is serialised by a per-series lock, and a request that waited for another's reuses its
result. Both belong to this object, one per archive (archive/core.py).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

from dicomcloud.archive.keys import entry_key
from dicomcloud.dicom.parse import parse_instance
from dicomcloud.dicom.seriesdoc import InstanceEntry, SeriesDocument, metadata_of_stored
from dicomcloud.errors import InvalidInput
from dicomcloud.ports.index import InstanceLocation, SeriesKey
from dicomcloud.ports.storage import ObjectMissing
from dicomcloud.runtime import Runtime

log = logging.getLogger(__name__)

# Instances of the parsed documents kept per process: a parsed CT instance takes ~20 KB of Python
# objects, so this bounds the LRU near 20 MB whatever the series sizes, room for the viewer's working
# set (a study or two) in a process meant to stay under 200 MB; the full garbage collections that walk
# these objects grow with it too. The document of one larger series is still kept, alone. Metadata
# responses do not need it: they are sent from the stored response (`metadata_array`).
LRU_INSTANCES = 1_000
# Seconds a stored metadata response stays in the cache: the key names its version, so this only lets the
# responses of versions nobody asks for again leave a shared cache (Redis) that nothing else evicts.
METADATA_CACHE_TTL = 3600.0


def cache_key(key: SeriesKey, version: int) -> str:
    return f"seriesdoc:{key.tenant_id}:{key.study_instance_uid}:{key.series_instance_uid}:{version}"


def metadata_cache_key(key: SeriesKey, version: int) -> str:
    """The cache's key of a series' stored metadata response (`SeriesMetadata.metadata_array`)."""
    return f"seriesmeta:{key.tenant_id}:{key.study_instance_uid}:{key.series_instance_uid}:{version}"


def _parse(raw: bytes, where: str) -> SeriesDocument | None:
    """A damaged or outdated-format document is as good as none: it gets composed again."""
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


class _ParsedDocuments:
    """Least recently used parsed documents, bounded by their instance count."""

    def __init__(self, max_instances: int) -> None:
        self.max_instances = max_instances
        self._documents: OrderedDict[SeriesKey, SeriesDocument] = OrderedDict()
        self._instances = 0
        self._guard = threading.Lock()

    def get(self, key: SeriesKey) -> SeriesDocument | None:
        with self._guard:
            doc = self._documents.get(key)
            if doc is not None:
                self._documents.move_to_end(key)
            return doc

    def put(self, key: SeriesKey, doc: SeriesDocument) -> None:
        with self._guard:
            self._drop(key)
            self._documents[key] = doc
            self._instances += len(doc.instances)
            while self._instances > self.max_instances and len(self._documents) > 1:
                self._drop(next(iter(self._documents)))

    def refresh(self, key: SeriesKey, doc: SeriesDocument) -> None:
        """Replace a document that is kept, without keeping one that is not."""
        with self._guard:
            if key in self._documents:
                self._instances -= len(self._documents[key].instances)
                self._documents[key] = doc
                self._instances += len(doc.instances)

    def forget(self, key: SeriesKey) -> None:
        with self._guard:
            self._drop(key)

    def _drop(self, key: SeriesKey) -> None:
        doc = self._documents.pop(key, None)
        if doc is not None:
            self._instances -= len(doc.instances)


class SeriesMetadata:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._parsed = _ParsedDocuments(LRU_INSTANCES)
        self._locks = _KeyedLocks()

    def document(self, key: SeriesKey) -> SeriesDocument | None:
        """The document of the series' current version; None if the series is not in the index."""
        version = self.runtime.index.series_version(key)
        if version is None:
            return None
        kept = self._parsed.get(key)
        if kept is not None and kept.version == version:
            return kept
        with self._locks.hold(key):
            kept = self._parsed.get(key)
            if kept is not None and kept.version == version:
                return kept
            doc = self._shared(key, version)
            if doc is None:
                base = kept or self._stored(key)
                # A written document of the current version is served as it is (a cold server's first request).
                doc = base if base is not None and base.version == version else self._compose(key, version, base)
            if doc is None:
                return None
            self._parsed.put(key, doc)
            return doc

    def metadata_array(self, key: SeriesKey) -> bytes | None:
        """The series metadata response of the series' current version, before the server's base is put in
        (seriesdoc.with_base); None if the series is not in the index or lists no instance.

        A process that holds no parsed document of that version sends the one the webworker stored beside the
        document when it is of that version: the first request after a start reads a file, not a parse of the
        document and a serialization of every instance (two thirds of its time). The cache keeps what was read,
        by version (a few times smaller than the parsed document), for the requests after it."""
        version = self.runtime.index.series_version(key)
        if version is None:
            return None
        kept = self._parsed.get(key)
        if kept is not None and kept.version == version:
            return kept.metadata_array() if kept.instances else None
        cache = self.runtime.cache
        stored = cache.get(metadata_cache_key(key, version))
        if stored is None:
            stored = self._stored_metadata(key, version)
            if stored is not None:
                cache.set(metadata_cache_key(key, version), stored, METADATA_CACHE_TTL)
        if stored is not None:
            return stored if stored != b"[]" else None
        doc = self.document(key)
        return doc.metadata_array() if doc is not None and doc.instances else None

    def consolidate(self, key: SeriesKey) -> SeriesDocument | None:
        """Write the document of the series' current version to storage and the shared cache, and record it
        built; a series gone from the index loses its document. The webworker's job."""
        with self._locks.hold(key):
            version = self.runtime.index.series_version(key)
            if version is None:
                self.forget(key)
                return None
            kept = self._parsed.get(key)
            base = kept if kept is not None else self._stored(key)
            doc = kept if kept is not None and kept.version == version else self._compose(key, version, base)
            if doc is None:
                self.forget(key)
                return None
            raw = doc.to_bytes()
            self.runtime.storage.write(self.runtime.layout.document_key(key), raw)
            self.runtime.storage.write(self.runtime.layout.metadata_key(key), doc.stored_metadata())
            cache = self.runtime.cache
            if cache.shared:
                # For the other processes; this one keeps the parsed document.
                cache.set(cache_key(key, version), raw)
                if base is not None and base.version != version:
                    # Nobody asks for an older version again; while a series grows, they would fill the cache.
                    cache.delete(cache_key(key, base.version))
            self.runtime.index.mark_built(key, version)
            self._parsed.refresh(key, doc)
            return doc

    def forget(self, key: SeriesKey) -> None:
        """Drop a series' document everywhere (its series is gone)."""
        self._parsed.forget(key)
        layout = self.runtime.layout
        self.runtime.storage.delete([layout.document_key(key), layout.metadata_key(key)])

    def _shared(self, key: SeriesKey, version: int) -> SeriesDocument | None:
        """The document of exactly `version` another process put in the shared cache."""
        if not self.runtime.cache.shared:
            return None
        raw = self.runtime.cache.get(cache_key(key, version))
        doc = _parse(raw, cache_key(key, version)) if raw is not None else None
        return doc if doc is not None and doc.version == version else None

    def _stored(self, key: SeriesKey) -> SeriesDocument | None:
        where = self.runtime.layout.document_key(key)
        raw = self._read(where)
        return _parse(raw, where) if raw is not None else None

    def _stored_metadata(self, key: SeriesKey, version: int) -> bytes | None:
        raw = self._read(self.runtime.layout.metadata_key(key))
        return metadata_of_stored(raw, version) if raw is not None else None

    def _read(self, where: str) -> bytes | None:
        """A stored object of this series, or None when there is none."""
        try:
            return self.runtime.storage.read(where)
        except ObjectMissing:
            return None

    def _compose(self, key: SeriesKey, version: int, base: SeriesDocument | None) -> SeriesDocument | None:
        """The document of `version`: the index's instances, each with its entry from `base` when unchanged.

        The version is read before the instances are listed, so a document is never older than its label.
        """
        locations = self.runtime.index.list_instances(key.tenant_id, key.study_instance_uid, key.series_instance_uid)
        if not locations:
            return None
        reusable = base.instances if base is not None else {}
        entries: dict[str, InstanceEntry] = {}
        read = 0
        for location in locations:
            entry = reusable.get(location.sop_instance_uid)
            if entry is None or entry.sha256 != location.sha256:
                entry = self.entry(location)
                read += 1
            if entry is not None:
                entries[location.sop_instance_uid] = entry
        where = self.runtime.layout.document_key(key)
        log.debug("composed %s v%d: %d instances, %d entries read", where, version, len(entries), read)
        return SeriesDocument(key.tenant_id, key.study_instance_uid, key.series_instance_uid, version, entries)

    def entry(self, location: InstanceLocation) -> InstanceEntry | None:
        """The stored metadata entry of an instance; made again from its original when it is missing or
        does not belong to the original the index names. None when the original is gone too."""
        storage = self.runtime.storage
        key = entry_key(location.file_path)
        try:
            entry = InstanceEntry.from_bytes(storage.read(key))
            if entry.sha256 == location.sha256:
                return entry
        except (ObjectMissing, InvalidInput):
            pass
        try:
            with storage.open(location.file_path) as stream:
                parsed = parse_instance(stream, bulkdata_threshold=self.runtime.settings.storage.bulkdata_threshold)
        except ObjectMissing:
            log.error("instance %s is indexed but its object %s is missing", location.sop_instance_uid, key)
            return None
        storage.write(key, parsed.entry.to_bytes(), durable=False)
        log.warning("made the metadata entry of %s again from its original", location.sop_instance_uid)
        return parsed.entry
