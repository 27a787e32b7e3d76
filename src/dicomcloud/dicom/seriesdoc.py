"""The series metadata document: every instance's metadata entry of a series in one object.

An instance's entry is what ingest learnt from it once (dicom/parse.py `parse_instance`): its DICOM
JSON, with BulkDataURIs written against BASE_PLACEHOLDER so one stored entry serves every host name and
tenant prefix, and its frame index (dicom/frames.py). Ingest stores each entry beside its instance; a
series document gathers them, so WADO-RS `/metadata` is one read and a frame one ranged read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from dicomcloud.dicom.dicomjson import dumps
from dicomcloud.dicom.frames import FrameIndex
from dicomcloud.errors import InvalidInput, NotFound

BASE_PLACEHOLDER = "{{DICOMCLOUD_BASE}}"
# Format 2: entries no longer carry a file path (their key follows from the UIDs).
DOCUMENT_FORMAT = 2


@dataclass(frozen=True)
class InstanceEntry:
    sop_instance_uid: str
    instance_number: int | None
    file_size: int
    sha256: str  # of the original the entry was made from
    metadata: dict[str, Any]  # DICOM JSON with BulkDataURIs under BASE_PLACEHOLDER
    frame_index: FrameIndex | None  # None when the instance has no pixel data
    # Whether the original starts with the 128-byte preamble and "DICM" (WADO-RS then sends it as it is, else
    # behind a made-up preamble); None in entries written before ingest recorded it: the original tells.
    has_preamble: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "sop_instance_uid": self.sop_instance_uid,
            "instance_number": self.instance_number,
            "file_size": self.file_size,
            "sha256": self.sha256,
            "has_preamble": self.has_preamble,
            "frame_index": None if self.frame_index is None else self.frame_index.to_dict(),
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InstanceEntry:
        frame_index = data["frame_index"]
        number = data["instance_number"]
        has_preamble = data.get("has_preamble")
        return cls(
            sop_instance_uid=str(data["sop_instance_uid"]),
            instance_number=None if number is None else int(number),
            file_size=int(data["file_size"]),
            sha256=str(data["sha256"]),
            metadata=dict(data["metadata"]),
            frame_index=None if frame_index is None else FrameIndex.from_dict(frame_index),
            has_preamble=None if has_preamble is None else bool(has_preamble),
        )

    def to_bytes(self) -> bytes:
        return dumps({"format": DOCUMENT_FORMAT, **self.to_dict()})

    @classmethod
    def from_bytes(cls, raw: bytes) -> InstanceEntry:
        """A stored entry; InvalidInput when it is damaged or of another format (it is made again)."""
        try:
            data = json.loads(raw)
            if data["format"] != DOCUMENT_FORMAT:
                raise InvalidInput(f"metadata entry format {data['format']!r} is not {DOCUMENT_FORMAT}")
            return cls.from_dict(data)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidInput(f"malformed metadata entry: {exc}") from exc

    @cached_property
    def metadata_json(self) -> bytes:
        """The DICOM JSON object, serialized once per entry (a document made from another reuses it)."""
        return dumps(self.metadata)


def bulkdata_base(study_uid: str, series_uid: str, sop_uid: str) -> str:
    """The BulkDataURI prefix of an instance, before the server puts its own base in front."""
    return f"{BASE_PLACEHOLDER}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/bulkdata"


@dataclass
class SeriesDocument:
    """Everything WADO-RS needs about a series without opening its instances.

    Treat a document as immutable once served: the serialized metadata is computed on first use
    and kept on the object; a changed series gets a new document with a new version.
    """

    tenant_id: str
    study_instance_uid: str
    series_instance_uid: str
    version: int
    instances: dict[str, InstanceEntry]  # by SOP Instance UID
    _serialized: dict[str, bytes] | None = field(default=None, init=False, repr=False, compare=False)

    def to_bytes(self) -> bytes:
        return dumps(
            {
                "format": DOCUMENT_FORMAT,
                "tenant_id": self.tenant_id,
                "study_instance_uid": self.study_instance_uid,
                "series_instance_uid": self.series_instance_uid,
                "version": self.version,
                "instances": [entry.to_dict() for entry in self.ordered_instances()],
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> SeriesDocument:
        try:
            data = json.loads(raw)
            if data["format"] != DOCUMENT_FORMAT:
                raise InvalidInput(f"series document format {data['format']!r} is not {DOCUMENT_FORMAT}")
            entries = [InstanceEntry.from_dict(item) for item in data["instances"]]
            return cls(
                tenant_id=str(data["tenant_id"]),
                study_instance_uid=str(data["study_instance_uid"]),
                series_instance_uid=str(data["series_instance_uid"]),
                version=int(data["version"]),
                instances={entry.sop_instance_uid: entry for entry in entries},
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidInput(f"malformed series document: {exc}") from exc

    def ordered_instances(self) -> list[InstanceEntry]:
        """By Instance Number (instances without one last), then SOP Instance UID."""
        return sorted(
            self.instances.values(),
            key=lambda e: (e.instance_number is None, e.instance_number or 0, e.sop_instance_uid),
        )

    def metadata_array(self) -> bytes:
        """The WADO-RS series metadata response, a JSON array of the instances' DICOM JSON, before the server's
        base is put in (`with_base`)."""
        return self._serialized_metadata()[""]

    def stored_metadata(self) -> bytes:
        """`metadata_array` as stored beside the document, labelled with its version (`metadata_of_stored`)."""
        return b"%d\n" % self.version + self.metadata_array()

    def instance_metadata_body(self, sop_uid: str, base_url: str) -> bytes:
        """The WADO-RS instance metadata response: a JSON array with one object."""
        serialized = self._serialized_metadata()
        if sop_uid not in serialized:
            raise NotFound(f"instance {sop_uid} is not in series {self.series_instance_uid}")
        return with_base(serialized[sop_uid], base_url)

    def _serialized_metadata(self) -> dict[str, bytes]:
        """Serialized arrays keyed by SOP Instance UID, and the whole series under ""."""
        if self._serialized is None:
            objects = [(entry.sop_instance_uid, entry.metadata_json) for entry in self.ordered_instances()]
            serialized = {sop: b"[" + body + b"]" for sop, body in objects}
            serialized[""] = b"[" + b",".join(body for _, body in objects) + b"]"
            self._serialized = serialized
        return self._serialized


def metadata_of_stored(raw: bytes, version: int) -> bytes | None:
    """The metadata array a `stored_metadata` holds if it is of `version`, else None (an older one, or damaged)."""
    label, newline, array = raw.partition(b"\n")
    return array if newline and label == b"%d" % version and array.startswith(b"[") else None


def with_base(body: bytes, base_url: str) -> bytes:
    """`body` with BASE_PLACEHOLDER replaced by the server's DICOMweb root (escaped as a JSON string body,
    so a quote or backslash in the base cannot break the document)."""
    escaped = json.dumps(base_url.rstrip("/"), ensure_ascii=False)[1:-1].encode()
    return body.replace(BASE_PLACEHOLDER.encode(), escaped)
