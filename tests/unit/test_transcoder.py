"""Conversion policy: instances outside the viewer's syntaxes are queued at ingest and converted beside
the original, or their failure recorded with a reason after bounded retries."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
import support
from test_codecs import DECODABLE, PIXEL_FILES, TEST_FILES

from dicomcloud.config import CORNERSTONE_SYNTAXES
from dicomcloud.dicom.codecs import EXPLICIT_VR_LITTLE_ENDIAN
from dicomcloud.errors import DicomCloudError, StorageFailure
from dicomcloud.events import TRANSCODE_QUEUE, StorageEvent, TranscodeFailure, TranscodeRequest
from dicomcloud.ports.bus import Record
from dicomcloud.runtime import Runtime
from dicomcloud.workers import transcoder
from dicomcloud.workers.transcoder import GROUP, Transcoder

NATIVE_ONLY = [EXPLICIT_VR_LITTLE_ENDIAN]


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    rt = support.make_runtime(tmp_path / "data", transcode={"viewer_syntaxes": NATIVE_ONLY})
    yield rt
    rt.close()


def _read(path: Path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, force=True)


def _pixels(ds: pydicom.Dataset) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ds.pixel_array


def store_all(runtime: Runtime, paths: list[Path]) -> dict[str, StorageEvent]:
    """Ingest what Ingest accepts and index it; SOP Instance UID -> event."""
    events = {}
    for path in paths:
        try:
            event = support.ingest(runtime, path)
        except DicomCloudError:
            continue
        events[event.sop_instance_uid] = event
    support.index_pending(runtime)
    return events


def pending_requests(runtime: Runtime) -> list[Record]:
    consumer = runtime.bus.subscribe(GROUP, [TRANSCODE_QUEUE])
    try:
        return consumer.poll(10_000, 0.1)
    finally:
        consumer.close()


def failures(runtime: Runtime) -> list[TranscodeFailure]:
    consumer = runtime.bus.subscribe("test-reader", [TranscodeFailure.topic])
    try:
        return [TranscodeFailure.from_bytes(r.value) for r in consumer.poll(10_000, 0.1)]
    finally:
        consumer.close()


def test_no_pydicom_test_file_is_outside_the_default_viewer_syntaxes() -> None:
    syntaxes = {str(_read(p).file_meta.get("TransferSyntaxUID", "")) for p in PIXEL_FILES}
    assert syntaxes - set(CORNERSTONE_SYNTAXES) <= {""}


def test_ingest_queues_only_instances_outside_the_viewer_syntaxes(runtime: Runtime) -> None:
    store_all(runtime, [TEST_FILES / "CT_small.dcm", TEST_FILES / "MR_small_RLE.dcm"])
    requests = [TranscodeRequest.from_bytes(r.value) for r in pending_requests(runtime)]
    assert [(r.transfer_syntax, r.target_syntax) for r in requests] == [
        ("1.2.840.10008.1.2.5", EXPLICIT_VR_LITTLE_ENDIAN)
    ]


def test_each_test_file_outside_the_viewer_syntaxes_is_converted_or_its_failure_recorded(runtime: Runtime) -> None:
    events = store_all(runtime, PIXEL_FILES)
    records = pending_requests(runtime)
    requests = {TranscodeRequest.from_bytes(r.value).sop_instance_uid for r in records}
    outside = {sop for sop, e in events.items() if e.transfer_syntax not in NATIVE_ONLY}
    assert requests == outside and len(outside) > 20
    originals = {sop: runtime.storage.path(events[sop].file_path).read_bytes() for sop in outside}
    worker = Transcoder(runtime)
    worker.process(records)
    failed = {f.sop_instance_uid: f for f in failures(runtime)}
    assert worker.converted + worker.failed == len(records) and worker.failed == len(failed)
    for sop in outside:
        event = events[sop]
        original = runtime.storage.path(event.file_path)
        assert original.read_bytes() == originals[sop]
        derived = runtime.storage.path(runtime.storage.derived_relpath(event.file_path, EXPLICIT_VR_LITTLE_ENDIAN))
        if sop in failed:
            assert failed[sop].reason and failed[sop].transfer_syntax == event.transfer_syntax
            assert not derived.exists()
        else:
            assert np.array_equal(_pixels(_read(derived)), _pixels(_read(original)))
    decodable = {str(_read(p).SOPInstanceUID) for p in DECODABLE}
    assert set(failed) <= outside - decodable  # only what pydicom cannot decode fails


def test_storage_failures_are_retried_a_bounded_number_of_times(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_all(runtime, [TEST_FILES / "MR_small_RLE.dcm"])
    monkeypatch.setattr(transcoder, "RETRY_DELAY", 0.0)

    def refuse(temp: Path, relpath: str) -> None:
        raise StorageFailure("disk full")

    monkeypatch.setattr(runtime.storage, "commit_instance", refuse)
    Transcoder(runtime).process(pending_requests(runtime))
    [failure] = failures(runtime)
    assert (failure.attempts, failure.reason) == (runtime.settings.transcode.max_attempts, "disk full")


def test_a_request_for_a_replaced_original_is_skipped(runtime: Runtime) -> None:
    events = store_all(runtime, [TEST_FILES / "MR_small_RLE.dcm"])
    [event] = events.values()
    records = pending_requests(runtime)
    path = runtime.storage.path(event.file_path)
    path.write_bytes(path.read_bytes() + b"\0\0")
    worker = Transcoder(runtime)
    worker.process(records)
    assert (worker.converted, worker.failed) == (0, 0)
    assert not runtime.storage.path(
        runtime.storage.derived_relpath(event.file_path, EXPLICIT_VR_LITTLE_ENDIAN)
    ).exists()
