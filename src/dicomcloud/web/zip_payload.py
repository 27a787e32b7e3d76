"""The `application/zip` payload of a study or series retrieve (PS3.18 Supplement 211): the PS3.10 files
as stored, one ZIP entry each, named `<StudyUID>/<SeriesUID>/<SOPUID>.dcm` (the storage key without the
tenant).

Entries are stored, not deflated (ISO 21320-1 allows both; DICOM pixel data is mostly compressed already),
so every entry is byte-equal to the stored file. The body is written as it is sent, one read of
`PIECE_SIZE` at a time: sizes and checksums follow each entry in a data descriptor, so no study is held in
memory or read twice, and ZIP64 takes over past 4 GiB.
"""

from __future__ import annotations

import time
import zipfile
from collections.abc import Iterator

from dicomcloud.archive.retrieve import StoredInstance
from dicomcloud.ports.storage import Storage

ZIP = "application/zip"
PIECE_SIZE = 1024 * 1024


class _Sink:
    """A write-only, unseekable file for zipfile: what it wrote is taken out piece by piece."""

    def __init__(self) -> None:
        self._pieces: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._pieces.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None

    def take(self) -> bytes:
        taken = b"".join(self._pieces)
        self._pieces.clear()
        return taken


def entry_name(instance: StoredInstance) -> str:
    return instance.key.partition("/")[2]


def zip_pieces(storage: Storage, stored: list[StoredInstance]) -> Iterator[bytes]:
    sink = _Sink()
    written = time.localtime()[:6]
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as archive:
        for instance in stored:
            info = zipfile.ZipInfo(entry_name(instance), date_time=written)
            info.file_size = instance.length
            with archive.open(info, "w") as entry, storage.open(instance.key) as handle:
                entry.write(instance.prefix)
                while data := handle.read(PIECE_SIZE):
                    entry.write(data)
                    if piece := sink.take():
                        yield piece
            if piece := sink.take():
                yield piece
    yield sink.take()
