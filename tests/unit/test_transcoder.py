"""Conversion policy: instances outside the viewer's syntaxes are queued by the consumer and converted beside
the original, or their failure recorded with a reason after bounded retries; poison is dead-lettered."""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
import support
from test_codecs import DECODABLE, PIXEL_FILES, TEST_FILES

from dicomcloud.archive.core import Archive
from dicomcloud.archive.keys import derived_key
from dicomcloud.config import CORNERSTONE_SYNTAXES
from dicomcloud.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN
from dicomcloud.errors import DicomCloudError, StorageFailure
from dicomcloud.events import TRANSCODE_QUEUE, StorageEvent, TranscodeFailure, TranscodeRequest
from dicomcloud.ports.bus import Message, Record
from dicomcloud.workers import transcoder
from dicomcloud.workers.consumer import StorageEventConsumer
from dicomcloud.workers.loop import Batching, BusLoop, dead_letter_topic
from dicomcloud.workers.transcoder import Transcoder

NATIVE_ONLY = [EXPLICIT_VR_LITTLE_ENDIAN]


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    archive = support.make_archive(tmp_path / "data", transcode={"viewer_syntaxes": NATIVE_ONLY})
    yield archive
    archive.close()


def _read(source: Path | bytes) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(source) if isinstance(source, bytes) else source, force=True)


def _pixels(ds: pydicom.Dataset) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ds.pixel_array


def store_all(archive: Archive, paths: list[Path]) -> dict[str, StorageEvent]:
    """Store what the store accepts and let the consumer ask for conversions; SOP Instance UID -> event."""
    events = {}
    for path in paths:
        try:
            event = support.store(archive, path)
        except DicomCloudError:
            continue
        events[event.sop_instance_uid] = event
    support.run_pending(archive, StorageEventConsumer(archive))
    return events


def pending_requests(archive: Archive) -> list[Record]:
    consumer = archive.runtime.bus.subscribe(Transcoder.group, [TRANSCODE_QUEUE])
    try:
        return consumer.poll(10_000, 0.1)
    finally:
        consumer.close()


def process(worker: Transcoder, records: list[Record]) -> None:
    """What the transcoder service does with a batch before committing it."""
    BusLoop(worker.archive.runtime.bus, worker, Batching(10_000), 0.05).process(records)


def failures(archive: Archive) -> list[TranscodeFailure]:
    consumer = archive.runtime.bus.subscribe("test-reader", [TranscodeFailure.topic])
    try:
        return [TranscodeFailure.from_bytes(r.value) for r in consumer.poll(10_000, 0.1)]
    finally:
        consumer.close()


def copy_key(event: StorageEvent) -> str:
    return derived_key(event.file_path, EXPLICIT_VR_LITTLE_ENDIAN)


def test_no_pydicom_test_file_is_outside_the_default_viewer_syntaxes() -> None:
    syntaxes = {str(_read(p).file_meta.get("TransferSyntaxUID", "")) for p in PIXEL_FILES}
    assert syntaxes - set(CORNERSTONE_SYNTAXES) <= {""}


def test_only_instances_outside_the_viewer_syntaxes_are_queued(archive: Archive) -> None:
    store_all(archive, [TEST_FILES / "CT_small.dcm", TEST_FILES / "MR_small_RLE.dcm"])
    requests = [TranscodeRequest.from_bytes(r.value) for r in pending_requests(archive)]
    assert [(r.transfer_syntax, r.target_syntax) for r in requests] == [
        ("1.2.840.10008.1.2.5", EXPLICIT_VR_LITTLE_ENDIAN)
    ]


def test_each_test_file_outside_the_viewer_syntaxes_is_converted_or_its_failure_recorded(archive: Archive) -> None:
    storage = archive.runtime.storage
    events = store_all(archive, PIXEL_FILES)
    records = pending_requests(archive)
    requests = {TranscodeRequest.from_bytes(r.value).sop_instance_uid for r in records}
    outside = {sop for sop, e in events.items() if e.transfer_syntax not in NATIVE_ONLY}
    assert requests == outside and len(outside) > 20
    originals = {sop: storage.read(events[sop].file_path) for sop in outside}
    worker = Transcoder(archive)
    process(worker, records)
    failed = {f.sop_instance_uid: f for f in failures(archive)}
    assert worker.converted + worker.failed == len(records) and worker.failed == len(failed)
    for sop in outside:
        event = events[sop]
        original = storage.read(event.file_path)
        assert original == originals[sop]
        if sop in failed:
            assert failed[sop].reason and failed[sop].transfer_syntax == event.transfer_syntax
            assert storage.size(copy_key(event)) is None
        else:
            assert np.array_equal(_pixels(_read(storage.read(copy_key(event)))), _pixels(_read(original)))
    decodable = {str(_read(p).SOPInstanceUID) for p in DECODABLE}
    assert set(failed) <= outside - decodable  # only what pydicom cannot decode fails


def test_storage_failures_are_retried_a_bounded_number_of_times(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_all(archive, [TEST_FILES / "MR_small_RLE.dcm"])
    monkeypatch.setattr(transcoder, "RETRY_DELAY", 0.0)

    def refuse(key: str, data: bytes, *, durable: bool = True) -> None:
        raise StorageFailure("disk full")

    monkeypatch.setattr(archive.runtime.storage, "write", refuse)
    process(Transcoder(archive), pending_requests(archive))
    [failure] = failures(archive)
    assert (failure.attempts, failure.reason) == (archive.settings.transcode.max_attempts, "disk full")


def test_a_request_for_a_replaced_original_is_skipped(archive: Archive, tmp_path: Path) -> None:
    [event] = store_all(archive, [TEST_FILES / "MR_small_RLE.dcm"]).values()
    records = pending_requests(archive)
    replacement = _read(TEST_FILES / "MR_small_RLE.dcm")
    replacement.PatientName = "Replaced^Since"
    replacement.save_as(tmp_path / "replacement.dcm")
    newer = support.store(archive, tmp_path / "replacement.dcm")
    assert (newer.file_path, newer.sha256 != event.sha256) == (event.file_path, True)
    worker = Transcoder(archive)
    process(worker, records)
    assert (worker.converted, worker.failed) == (0, 0)
    assert archive.runtime.storage.size(copy_key(event)) is None


def test_a_malformed_request_is_dead_lettered_and_the_others_converted(archive: Archive) -> None:
    [event] = store_all(archive, [TEST_FILES / "MR_small_RLE.dcm"]).values()
    archive.runtime.bus.publish([Message(TRANSCODE_QUEUE, "k", b"{not a request")])
    records = pending_requests(archive)
    assert len(records) == 2
    worker = Transcoder(archive)
    process(worker, records)
    assert (worker.converted, worker.failed) == (1, 0)
    assert archive.runtime.storage.size(copy_key(event)) is not None
    consumer = archive.runtime.bus.subscribe("test-reader", [dead_letter_topic(Transcoder.group)])
    try:
        [dead] = [json.loads(r.value) for r in consumer.poll(10, 0.1)]
    finally:
        consumer.close()
    assert dead_letter_topic(Transcoder.group) == "wado-transcoder.dlq"
    assert (dead["Group"], dead["Topic"], dead["Offset"]) == (Transcoder.group, TRANSCODE_QUEUE, records[1].offset)
    assert (dead["ErrorType"], dead["Value"]) == ("InvalidInput", "{not a request")
    assert failures(archive) == []
