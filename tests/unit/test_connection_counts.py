"""The per-client connection counts every HTTP process of a service shares (web/connection_counts.py): what one
process counts, another sees; a process killed with -9 stops counting once its slice is taken again; a
collision of addresses can only count too many, never too few."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
from collections import Counter
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from dicomcloud.web.connection_counts import SharedConnectionCounts, create_table

CLIENT, OTHER = "192.0.2.1", "2001:db8::7"


def serve_counts(path: Path, commands: Connection) -> None:
    """A process that counts in the table at `path`: ("admit", address, limit), ("release", address) and
    ("count", address) answered in turn."""
    counts = SharedConnectionCounts(path)
    commands.send("ready")
    while True:
        name, *args = commands.recv()
        commands.send(getattr(counts, name)(*args))


class CountingProcess:
    """Another process counting in the same table, driven from the test."""

    def __init__(self, path: Path) -> None:
        context = multiprocessing.get_context("spawn")
        self._commands, theirs = context.Pipe()
        self.process = context.Process(target=serve_counts, args=(path, theirs), daemon=True)
        self.process.start()
        assert self._commands.recv() == "ready"

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any) -> Any:
            self._commands.send((name, *args))
            return self._commands.recv()

        return call

    def kill9(self) -> None:
        assert self.process.pid is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.join()


@pytest.fixture
def table(tmp_path: Path) -> Path:
    path = tmp_path / "connections"
    create_table(path, processes=2)
    return path


@pytest.fixture
def other_process(table: Path) -> Iterator[CountingProcess]:
    other = CountingProcess(table)
    yield other
    if other.process.is_alive():
        other.kill9()


def test_what_one_process_counts_the_other_sees_and_refuses_past_the_limit(
    table: Path, other_process: CountingProcess
) -> None:
    here = SharedConnectionCounts(table)
    assert [other_process.admit(CLIENT, 5) for _ in range(3)] == [True, True, True]
    assert here.count(CLIENT) == 3
    assert [here.admit(CLIENT, 5) for _ in range(3)] == [True, True, False]
    assert other_process.admit(CLIENT, 5) is False
    assert other_process.count(CLIENT) == 5
    assert here.admit(OTHER, 5), "another address has its own count"

    other_process.release(CLIENT)
    other_process.release(CLIENT)
    assert here.count(CLIENT) == 3
    assert here.admit(CLIENT, 5)
    here.release(CLIENT)
    here.release(CLIENT)
    assert other_process.count(CLIENT) == 2


def test_a_process_killed_with_minus_9_stops_counting_once_its_slice_is_taken_again(
    table: Path, other_process: CountingProcess
) -> None:
    here = SharedConnectionCounts(table)
    assert [other_process.admit(CLIENT, 3) for _ in range(3)] == [True, True, True]
    other_process.kill9()
    assert here.count(CLIENT) == 3, "until it is replaced, a dead process's connections still count"
    replacement = CountingProcess(table)
    try:
        assert replacement.count(CLIENT) == 0
        assert here.admit(CLIENT, 3)
    finally:
        replacement.kill9()


def test_each_slice_is_held_by_one_process_at_a_time(table: Path) -> None:
    SharedConnectionCounts(table)
    SharedConnectionCounts(table)
    with pytest.raises(RuntimeError, match="all 2 slices"):
        SharedConnectionCounts(table)


@pytest.mark.parametrize("width", [1, 4, 64])
def test_colliding_addresses_are_counted_too_many_never_too_few(tmp_path: Path, width: int) -> None:
    path = tmp_path / "connections"
    create_table(path, processes=2, width=width)
    processes = [SharedConnectionCounts(path), SharedConnectionCounts(path)]
    addresses = [f"198.51.100.{number}" for number in range(40)]
    held: list[Counter[str]] = [Counter(), Counter()]  # what each process admitted and has not released
    choices = random.Random(width)
    for _ in range(2_000):
        address, number = choices.choice(addresses), choices.randrange(2)
        if held[number][address] and choices.random() < 0.4:
            processes[number].release(address)
            held[number][address] -= 1
        elif processes[number].admit(address, 1_000_000):
            held[number][address] += 1
        assert all(processes[0].count(each) >= held[0][each] + held[1][each] for each in addresses)
    total = held[0].total() + held[1].total()
    if width == 1:
        assert processes[1].count(addresses[0]) == total, "one cell per row: every address counts all"


def test_without_collisions_each_address_is_counted_exactly(table: Path) -> None:
    first, second = SharedConnectionCounts(table), SharedConnectionCounts(table)
    for number in range(100):
        for _ in range(number % 4):
            assert (first if number % 2 else second).admit(f"203.0.113.{number}", 3)
    assert [first.count(f"203.0.113.{number}") for number in range(100)] == [number % 4 for number in range(100)]
