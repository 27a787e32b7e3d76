"""Helpers the service tests share: a CT object with chosen UIDs, a runtime on a temp folder,
storing through Ingest, running the indexing consumer, and a bus that is down."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydicom.data import get_testdata_file

from dicomcloud.archive.store import Ingest
from dicomcloud.config import load_settings
from dicomcloud.errors import StorageFailure
from dicomcloud.events import STORAGE_QUEUE, StorageEvent
from dicomcloud.ports.bus import BusConsumer, Message
from dicomcloud.runtime import Runtime
from dicomcloud.workers.consumer import GROUP, IndexConsumer


def ct_dataset(study: str, series: str, sop: str, pixel: int = 0) -> pydicom.Dataset:
    """pydicom's CT_small with our UIDs; `pixel` changes the content (and so the sha256), not the UIDs."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.PixelData = bytes([pixel]) * len(ds.PixelData)
    return ds


def write_ct(path: Path, study: str, series: str, sop: str, pixel: int = 0) -> Path:
    ct_dataset(study, series, sop, pixel).save_as(path, enforce_file_format=True)
    return path


def make_runtime(data: Path, **sections: dict[str, Any]) -> Runtime:
    """A runtime on `data`, with settings sections overlaid, e.g. `storage={"duplicate_policy": "reject"}`."""
    storage = {"data_dir": str(data), **sections.pop("storage", {})}
    return Runtime.from_settings(load_settings(overrides={"storage": storage, **sections}, environ={}))


def as_temp(runtime: Runtime, source: Path) -> Path:
    handle, temp = runtime.storage.new_temp()
    with handle:
        handle.write(source.read_bytes())
    return temp


def ingest(runtime: Runtime, source: Path, source_name: str = "import", **options: str) -> StorageEvent:
    return Ingest(runtime).store(as_temp(runtime, source), tenant_id="default", source=source_name, **options)


def index_pending(runtime: Runtime) -> None:
    """Run the indexing consumer over what is on the bus, as wado-consumer would."""
    consumer = runtime.bus.subscribe(GROUP, [STORAGE_QUEUE])
    try:
        records = consumer.poll(10_000, 0.1)
        IndexConsumer(runtime).process(records)
        consumer.commit(records)
    finally:
        consumer.close()


class FailingBus:
    """Accepts subscriptions, refuses every publish: the bus is down."""

    def __init__(self, runtime: Runtime) -> None:
        self.inner = runtime.bus

    def publish(self, messages: Sequence[Message]) -> None:
        raise StorageFailure("bus unavailable")

    def subscribe(self, group: str, topics: Sequence[str]) -> BusConsumer:
        return self.inner.subscribe(group, topics)

    def close(self) -> None:
        self.inner.close()
