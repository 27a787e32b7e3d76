"""archive/migrate.py with a peer held in memory: what a run counts, verifies and reports when a peer fails."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import BinaryIO

import support

from dicomcloud.archive.migrate import Migration, Tally, human_size
from dicomcloud.errors import StorageFailure
from dicomcloud.ports.peer import RemoteInstance

STUDY, SERIES = "1.2.826.0.7.1", "1.2.826.0.7.1.1"


class MemoryPeer:
    """Files by SOP Instance UID; lists its one study twice, as Orthanc does for a study under two patients."""

    def __init__(self, files: dict[str, bytes], broken: set[str]) -> None:
        self.files, self.broken = files, broken

    @property
    def name(self) -> str:
        return "memory"

    def studies(self) -> list[str]:
        return [STUDY, STUDY]

    def instances(self, study_instance_uid: str) -> list[RemoteInstance]:
        return [RemoteInstance(study_instance_uid, SERIES, sop) for sop in self.files]

    def fetch(self, instance: RemoteInstance, into: BinaryIO) -> None:
        if instance.sop_instance_uid in self.broken:
            raise StorageFailure("the peer answered 500")
        into.write(self.files[instance.sop_instance_uid])

    def close(self) -> None:
        pass


def test_a_run_counts_each_instance_once_and_reports_what_it_could_not_fetch(tmp_path: Path) -> None:
    sops = [f"{SERIES}.{n}" for n in range(4)]
    files = {sop: support.write_ct(tmp_path / f"{sop}.dcm", STUDY, SERIES, sop).read_bytes() for sop in sops}
    archive = support.make_archive(tmp_path / "data")
    tallies: list[str] = []
    try:
        peer = MemoryPeer(files, broken={sops[3]})
        outcome = Migration(archive, peer, "default", 2, lambda t: tallies.append(t.line()), threading.Event()).run()
        assert (outcome.tally.studies, outcome.tally.instances, outcome.tally.fetched) == (1, 4, 3)
        assert not outcome.complete
        assert [(c.there, c.here) for c in outcome.checks] == [(4, 3)]
        assert f"not imported: {sops[3]}: the peer answered 500" in outcome.summary("memory")

        again = Migration(archive, MemoryPeer(files, set()), "default", 2, lambda t: None, threading.Event()).run()
        assert (again.tally.fetched, again.tally.present) == (1, 3)
        assert again.complete
        assert "import from memory: 1 study, 4 instances: 1 fetched" in again.summary("memory")
        assert "verified: 1 of 1 study holds here every instance the peer has" in again.summary("memory")
    finally:
        archive.close()
    assert any("instances/s" in line and "ETA" in line for line in tallies)


def test_a_stopped_run_fetches_nothing_more_and_says_it_was_interrupted(tmp_path: Path) -> None:
    files = {f"{SERIES}.1": support.write_ct(tmp_path / "a.dcm", STUDY, SERIES, f"{SERIES}.1").read_bytes()}
    archive = support.make_archive(tmp_path / "data")
    stop = threading.Event()
    stop.set()
    try:
        outcome = Migration(archive, MemoryPeer(files, set()), "default", 1, lambda t: None, stop).run()
    finally:
        archive.close()
    assert outcome.interrupted and outcome.tally.fetched == 0
    assert outcome.summary("memory").startswith("interrupted: import from memory")


def test_sizes_are_in_decimal_units() -> None:
    assert [human_size(n) for n in (999, 1000, 12_345_678, 2_500_000_000)] == ["999 B", "1 KB", "12.3 MB", "2.5 GB"]
    assert Tally().line().startswith("studies 0/0, instances 0/0 (0 fetched, 0 already here, 0 failed)")
