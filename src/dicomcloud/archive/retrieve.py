"""Retrieve: where WADO-RS, WADO rendered and C-GET / C-MOVE find instances and read what they serve.

One selection of instances for every protocol (`instances`, `instance`, `matching`), one place where a
frame is read (`frames`: one ranged read per frame through the frame index in the instance's metadata
entry), and one rule for an instance the index names but storage lacks: it is logged as an error and
left out of a multi-instance answer, and a request for it alone is NotFound.

Copies in another transfer syntax are derived objects beside the original (archive/keys.py), made on
first request and kept (`derived`); the transcoder worker makes the viewer's copy ahead of time.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID

from dicomcloud.archive.keys import derived_key
from dicomcloud.archive.metadata import SeriesMetadata
from dicomcloud.dicom.codecs import decode_frame, encode_frame, transcode
from dicomcloud.dicom.frames import FrameIndex, check_frame_numbers, read_bulkdata, unindexed_frames
from dicomcloud.dicom.query import Query
from dicomcloud.dicom.render import RenderOptions, number_of_frames, render_frame
from dicomcloud.dicom.seriesdoc import InstanceEntry, SeriesDocument
from dicomcloud.errors import NotFound, StorageFailure
from dicomcloud.ports.index import InstanceLocation, SeriesKey
from dicomcloud.ports.storage import ObjectMissing
from dicomcloud.runtime import Runtime

log = logging.getLogger(__name__)

PART10_PREFIX = b"\0" * 128 + b"DICM"
# Instances whose place and frame index a process keeps for frame requests (a few KB each; the frame index
# itself is shared with the series document).
FRAME_SOURCES = 4096


@dataclass(frozen=True)
class StoredInstance:
    """An object to send as a complete PS3.10 file.

    Some senders (dicomweb-client among them) omit the preamble; the original is kept as received, but
    an application/dicom body must be a complete PS3.10 file, which pydicom insists on reading, so
    `prefix` is sent first when the object lacks it.
    """

    key: str
    transfer_syntax: str
    size: int
    prefix: bytes

    @property
    def length(self) -> int:
        return len(self.prefix) + self.size


@dataclass(frozen=True)
class FrameSource:
    """Where an instance's frames are read from: its place and its frame index."""

    location: InstanceLocation
    frame_index: FrameIndex


class _FrameSources:
    """The frame sources a process found, each with the series version it was found at; least recently used
    go first."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[SeriesKey, str], tuple[int, FrameSource]] = OrderedDict()
        self._guard = threading.Lock()

    def get(self, key: SeriesKey, sop: str, version: int) -> FrameSource | None:
        with self._guard:
            found = self._entries.get((key, sop))
            if found is None or found[0] != version:
                return None
            self._entries.move_to_end((key, sop))
            return found[1]

    def put(self, key: SeriesKey, sop: str, version: int, source: FrameSource) -> None:
        with self._guard:
            self._entries[(key, sop)] = (version, source)
            self._entries.move_to_end((key, sop))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


class Retrieve:
    def __init__(self, runtime: Runtime, metadata: SeriesMetadata) -> None:
        self.runtime = runtime
        self.metadata = metadata
        self._max_decoded_bytes = runtime.settings.limits.max_decoded_frame_bytes
        self._frame_sources = _FrameSources(FRAME_SOURCES)

    # -- which instances -----------------------------------------------------------------------------

    def instances(self, tenant_id: str, study: str, series: str | None = None) -> list[InstanceLocation]:
        """A study's or a series' instances in order; NotFound when there are none."""
        locations = self.runtime.index.list_instances(tenant_id, study, series)
        if not locations:
            raise NotFound(f"no {'series ' + series if series else 'study ' + study} in this archive")
        return locations

    def instance(self, tenant_id: str, study: str, series: str, sop: str) -> InstanceLocation:
        location = self.runtime.index.get_instance(tenant_id, sop)
        if location is None or (location.study_instance_uid, location.series_instance_uid) != (study, series):
            raise NotFound(f"no instance {sop} in series {series} of study {study}")
        return location

    def matching(self, tenant_id: str, query: Query) -> list[InstanceLocation]:
        """The instances an instance-level query (a C-GET or C-MOVE identifier) selects, series by series."""
        rows = self.runtime.index.search(tenant_id, query)
        wanted = {str(row["SOPInstanceUID"]) for row in rows}
        series = dict.fromkeys((str(row["StudyInstanceUID"]), str(row["SeriesInstanceUID"])) for row in rows)
        return [
            location
            for study, series_uid in series
            for location in self.runtime.index.list_instances(tenant_id, study, series_uid)
            if location.sop_instance_uid in wanted
        ]

    # -- whole instances -----------------------------------------------------------------------------

    def stored(self, locations: Sequence[InstanceLocation], target_syntax: str | None) -> list[StoredInstance]:
        """Each instance's object, or its copy in `target_syntax` (made now if missing); NotFound if none is there.

        Whether an original has its preamble: on an object store, from its metadata entry (in the series
        document), so no object is read before the answer starts (only an entry older than that fact sends a
        read); on local files, from the 4 bytes that tell, cheaper than bringing a large series' document in.
        """
        documents: dict[SeriesKey, SeriesDocument | None] = {}
        found = []
        for location in locations:
            if location.series_key not in documents:
                remote = self.runtime.storage.remote
                documents[location.series_key] = self.metadata.document(location.series_key) if remote else None
            doc = documents[location.series_key]
            entry = doc.instances.get(location.sop_instance_uid) if doc is not None else None
            try:
                found.append(self._stored(location, target_syntax, entry))
            except ObjectMissing:
                log.error("instance %s is indexed but its object is missing", location.sop_instance_uid)
        if not found:
            raise NotFound("the instances' objects are not in storage")
        return found

    def _stored(
        self, location: InstanceLocation, target_syntax: str | None, entry: InstanceEntry | None
    ) -> StoredInstance:
        key, syntax, size = location.file_path, location.transfer_syntax, location.file_size
        if target_syntax is not None and target_syntax != syntax:
            # A copy is the transcoder's complete PS3.10 file (dicom/codecs.py writes the preamble).
            key = self.derived(location, target_syntax)
            copy_size = self.runtime.storage.size(key)
            if copy_size is None:
                raise ObjectMissing(f"no object {key}")
            return StoredInstance(key, target_syntax, copy_size, b"")
        if entry is not None and entry.sha256 == location.sha256 and entry.has_preamble is not None:
            has_preamble = entry.has_preamble
        else:
            head = self.runtime.storage.read_ranges(key, [(128, 4)])[0] if size >= len(PART10_PREFIX) else b""
            has_preamble = head == b"DICM"
        return StoredInstance(key, syntax, size, b"" if has_preamble else PART10_PREFIX)

    def derived(self, location: InstanceLocation, target_syntax: str) -> str:
        """The key of the instance's copy in `target_syntax`, made now when there is none.

        A copy made from an original that was replaced meanwhile is dropped again (StorageFailure: ask
        again), so no copy of older bytes outlives their replacement.
        """
        storage = self.runtime.storage
        key = derived_key(location.file_path, target_syntax)
        if storage.size(key) is not None:
            return key
        with storage.open(location.file_path) as stream:
            data = transcode(stream, target_syntax)
        storage.write(key, data)
        current = self.runtime.index.get_instance(location.tenant_id, location.sop_instance_uid)
        if current is None or current.sha256 != location.sha256:
            storage.delete([key])
            raise StorageFailure(f"{location.file_path} was replaced while it was being transcoded; ask again")
        return key

    def dataset(self, location: InstanceLocation) -> Dataset:
        """The stored dataset, undecoded (pixel data stays as stored), with its transfer syntax."""
        with self.runtime.storage.open(location.file_path) as stream:
            dataset = dcmread(stream, force=True)
        if "TransferSyntaxUID" not in dataset.file_meta:
            dataset.file_meta.TransferSyntaxUID = UID(location.transfer_syntax)
        return dataset

    # -- frames and bulk data ------------------------------------------------------------------------

    def frame_source(self, tenant_id: str, study: str, series: str, sop: str) -> FrameSource:
        """The instance's place and frame index; NotFound when it is not there or has no pixel data.

        Kept per process with the series' index version they were found at, so a viewer's frame requests cost
        one index query each (the version): any store, replacement or deletion in the series gives it a new
        version (versions are never reused), and the next request finds both again. The version is read
        first, so what is found is at least as new as the version it is kept with."""
        key = SeriesKey(tenant_id, study, series)
        version = self._series_version(key, sop)
        source = self._frame_sources.get(key, sop, version)
        if source is None:
            location = self.instance(tenant_id, study, series, sop)
            source = FrameSource(location, self.frame_index(location))
            self._frame_sources.put(key, sop, version, source)
        return source

    def kept_frame_source(self, tenant_id: str, study: str, series: str, sop: str) -> FrameSource | None:
        """The frame source `frame_source` keeps for the series' current version, if it keeps one, found without
        waiting on a network: None also when the index is remote (asking it for the version is a round trip).
        A local index's version is one read of a SQLite file in WAL mode, which no writer holds up."""
        if self.runtime.index.remote:
            return None
        key = SeriesKey(tenant_id, study, series)
        return self._frame_sources.get(key, sop, self._series_version(key, sop))

    def _series_version(self, key: SeriesKey, sop: str) -> int:
        version = self.runtime.index.series_version(key)
        if version is None:
            raise NotFound(f"no instance {sop} in series {key.series_instance_uid} of study {key.study_instance_uid}")
        return version

    def frame_index(self, location: InstanceLocation) -> FrameIndex:
        """The instance's frame index, from its series document."""
        doc = self.metadata.document(location.series_key)
        entry = doc.instances.get(location.sop_instance_uid) if doc is not None else None
        if entry is None:
            entry = self.metadata.entry(location)
        if entry is None or entry.frame_index is None:
            raise NotFound(f"instance {location.sop_instance_uid} has no pixel data")
        return entry.frame_index

    def frames(self, location: InstanceLocation, index: FrameIndex, numbers: Sequence[int]) -> list[bytes]:
        """Frames (1-based) as stored: compressed bitstreams, or native little endian bytes."""
        check_frame_numbers(index, numbers)
        if not index.frames:
            with self.runtime.storage.open(location.file_path) as stream:
                return unindexed_frames(stream, index, numbers)
        ranges = [byte_range for number in numbers for byte_range in index.frames[number - 1]]
        pieces = iter(self.runtime.storage.read_ranges(location.file_path, ranges))
        return [b"".join(next(pieces) for _ in index.frames[number - 1]) for number in numbers]

    def open_frames(self, location: InstanceLocation, index: FrameIndex, numbers: Sequence[int]) -> BinaryIO:
        """The instance's object, open, to send indexed frames' byte ranges from; StorageFailure before anything
        is sent when they do not lie within it (it changed since its frame index was made)."""
        check_frame_numbers(index, numbers)
        end = max(offset + length for number in numbers for offset, length in index.frames[number - 1])
        handle = self.runtime.storage.open(location.file_path)
        if handle.seek(0, io.SEEK_END) < end:
            handle.close()
            raise StorageFailure(f"{location.file_path} is shorter than its frame index says")
        return handle

    def decoded_frame(self, location: InstanceLocation, number: int) -> bytes:
        with self.runtime.storage.open(location.file_path) as stream:
            return decode_frame(stream, number, max_decoded_bytes=self._max_decoded_bytes)

    def encoded_frame(self, location: InstanceLocation, number: int, target_syntax: str) -> bytes:
        with self.runtime.storage.open(location.file_path) as stream:
            return encode_frame(stream, number, target_syntax, max_decoded_bytes=self._max_decoded_bytes)

    def bulkdata(self, location: InstanceLocation, tag_path: str) -> bytes:
        with self.runtime.storage.open(location.file_path) as stream:
            return read_bulkdata(stream, tag_path)

    # -- rendered ------------------------------------------------------------------------------------

    def image_frames(self, location: InstanceLocation) -> int:
        """How many frames the instance's image has; 0 when it is not an image."""
        with self.runtime.storage.open(location.file_path) as stream:
            return number_of_frames(stream)

    def image_size(self, location: InstanceLocation) -> tuple[int, int]:
        """(Columns, Rows) of the instance's image, from its header; (0, 0) when it is not an image."""
        with self.runtime.storage.open(location.file_path) as stream:
            header = dcmread(stream, stop_before_pixels=True, force=True, specific_tags=["Rows", "Columns"])
        return int(header.get("Columns", 0) or 0), int(header.get("Rows", 0) or 0)

    def rendered_frames(self, locations: Sequence[InstanceLocation]) -> Iterator[tuple[InstanceLocation, int]]:
        """(instance, frame number) for every frame of the image instances among `locations`."""
        for location in locations:
            try:
                count = self.image_frames(location)
            except ObjectMissing:
                log.error("instance %s is indexed but its object is missing", location.sop_instance_uid)
                continue
            for frame in range(1, count + 1):
                yield location, frame

    def representative(self, locations: Sequence[InstanceLocation]) -> tuple[InstanceLocation, int]:
        """The middle frame of the middle image instance of the first series that has images.

        Only headers are read, the middle instance's first, so a large series costs one read.
        """
        by_series: dict[str, list[InstanceLocation]] = {}
        for location in locations:
            by_series.setdefault(location.series_instance_uid, []).append(location)
        for members in by_series.values():
            middle = len(members) // 2
            for location in [members[middle], *members[:middle], *members[middle + 1 :]]:
                try:
                    count = self.image_frames(location)
                except ObjectMissing:
                    continue
                if count:
                    return location, (count + 1) // 2
        raise NotFound("nothing to show: no image instances")

    def render(self, location: InstanceLocation, frame: int, options: RenderOptions) -> bytes:
        with self.runtime.storage.open(location.file_path) as stream:
            return render_frame(stream, frame, options, max_decoded_bytes=self._max_decoded_bytes)
