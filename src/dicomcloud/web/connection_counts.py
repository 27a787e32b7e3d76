"""How many connections each client address holds open, for the per-client limit of web/http_guard.py.

One HTTP process counts in a Counter of its own, exactly. The several processes of one service
(service_workers.py) count in one table, a file in the service's run folder (run_folder.py) that each maps,
so the limit holds for the service and not per process.

The table is a count-min sketch: each address adds to one cell in each of two hash rows, chosen by a keyed
hash (the key is drawn when the service starts, so a client cannot pick addresses that collide with
another's), and its count is the smaller of its two cells. Two addresses that share both cells are counted
together, so a count can be too high, never too low: a collision can refuse a client early, it never lets
one past the limit.

Each process owns a slice of the table (one cell per hash row and address, for its own connections) and
writes only there, so no lock is needed; a read sums the slices. A process holds its slice by an flock
on a file of its own, which the kernel releases when the process dies however it dies: a worker killed
with -9 leaves its counts behind until its replacement takes the free slice and zeroes it. Without a
lock, a process counts a connection first and then reads the sum, so two processes accepting the same
client's last allowed connections at one instant see each other's and may both refuse (the client retries
after the 429's Retry-After). Only if the processor delays one's store past the other's read, a window of
nanoseconds, can both admit, one connection over the limit.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import secrets
import struct
from collections import Counter
from pathlib import Path
from typing import Final, Protocol

MAGIC = b"dcconn1\0"
KEY_BYTES = 16
HEADER = struct.Struct(f"<8s{KEY_BYTES}sII")  # magic, key, processes, width
HEADER_BYTES = mmap.PAGESIZE
HASH_ROWS = 2
# Cells per hash row. With C addresses connected at once, an address shares both its cells with
# another's with probability about (C / WIDTH)**2: 0.1% at 1,000 addresses.
WIDTH = 1 << 15
CELL: Final = "I"  # unsigned 32-bit: one process never holds 2**32 connections
CELL_BYTES = struct.calcsize(CELL)


class ConnectionCounts(Protocol):
    def admit(self, address: str, limit: int) -> bool:
        """Count a new connection from `address` unless that makes more than `limit`; whether it counted."""

    def release(self, address: str) -> None:
        """An admitted connection from `address` closed."""


class ProcessConnectionCounts:
    """The open connections of this process alone, by address (one HTTP process)."""

    def __init__(self) -> None:
        self._open: Counter[str] = Counter()

    def admit(self, address: str, limit: int) -> bool:
        if self._open[address] >= limit:
            return False
        self._open[address] += 1
        return True

    def release(self, address: str) -> None:
        self._open[address] -= 1
        if self._open[address] <= 0:
            del self._open[address]


def create_table(path: Path, processes: int, width: int = WIDTH) -> None:
    """A zeroed table at `path` for `processes` processes, with a fresh hash key (the service's process,
    before it starts the others)."""
    with path.open("xb") as table:
        table.write(HEADER.pack(MAGIC, secrets.token_bytes(KEY_BYTES), processes, width))
        table.truncate(HEADER_BYTES + processes * HASH_ROWS * width * CELL_BYTES)


class SharedConnectionCounts:
    """The open connections of every process of the service, by address, in the table at `path`."""

    def __init__(self, path: Path) -> None:
        with path.open("r+b") as table:
            self._map = mmap.mmap(table.fileno(), 0)
        magic, self._key, processes, self._width = HEADER.unpack_from(self._map)
        if magic != MAGIC:
            raise ValueError(f"{path} is no connection table")
        self._cells = memoryview(self._map)[HEADER_BYTES:].cast(CELL)
        slice_cells = HASH_ROWS * self._width
        self._slices = range(0, processes * slice_cells, slice_cells)
        # Held open while the process lives: the kernel drops the lock only when the process is gone.
        self._slice_lock, number = _claim_slice(path, processes)
        self._own = self._slices[number]
        left = self._cells[self._own : self._own + slice_cells]
        if any(left):  # what a dead process still counted
            left[:] = memoryview(bytes(slice_cells * CELL_BYTES)).cast(CELL)

    def admit(self, address: str, limit: int) -> bool:
        cells = self._cells_of(address)
        for cell in cells:
            self._cells[self._own + cell] += 1
        if self._count(cells) <= limit:
            return True
        for cell in cells:
            self._cells[self._own + cell] -= 1
        return False

    def release(self, address: str) -> None:
        for cell in self._cells_of(address):
            self._cells[self._own + cell] -= 1

    def count(self, address: str) -> int:
        """The connections `address` holds open in every process (or more, on a collision)."""
        return self._count(self._cells_of(address))

    def _cells_of(self, address: str) -> tuple[int, int]:
        """The address's cell in each hash row, as offsets into a slice."""
        digest = hashlib.blake2b(address.encode(), digest_size=8, key=self._key).digest()
        first, second = struct.unpack("<II", digest)
        return first % self._width, self._width + second % self._width

    def _count(self, cells: tuple[int, int]) -> int:
        return min(sum(self._cells[start + cell] for start in self._slices) for cell in cells)


def _claim_slice(path: Path, processes: int) -> tuple[int, int]:
    """The first slice no live process holds: its lock file's descriptor (held open for the process's life)
    and its number."""
    for number in range(processes):
        descriptor = os.open(f"{path}.{number}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            continue
        return descriptor, number
    raise RuntimeError(f"all {processes} slices of {path} are held: more HTTP processes than the service started")
