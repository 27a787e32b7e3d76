"""The query/retrieve handlers against a real index and storage, driven by stand-in pynetdicom events."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import support
from pydicom.dataset import Dataset

from dicomcloud.archive.core import Archive
from dicomcloud.config import DIMSE_OPERATIONS
from dicomcloud.dimse.access import Admission
from dicomcloud.dimse.query_retrieve import QueryRetrieveSCP, needs_decompression
from dicomcloud.ports.index import InstanceLocation

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
RADIOLOGY_STUDY, DEFAULT_STUDY = "1.2.826.0.7.1", "1.2.826.0.7.2"


@dataclass
class FakeEvent:
    """The parts of a pynetdicom event the handlers read; the test sets `is_cancelled`."""

    called: str
    sop_class: str
    identifier: Dataset
    move_destination: str = ""
    accepted: list[Any] = field(default_factory=list)
    is_cancelled: bool = False

    @property
    def assoc(self) -> Any:
        primitive = SimpleNamespace(called_ae_title=self.called)
        return SimpleNamespace(requestor=SimpleNamespace(primitive=primitive), accepted_contexts=self.accepted)

    @property
    def request(self) -> Any:
        return SimpleNamespace(AffectedSOPClassUID=self.sop_class)


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    """Three instances in each tenant, stored as C-STORE stores them (no worker runs afterwards)."""
    archive = support.make_archive(tmp_path / "data")
    for tenant, study in (("radiology", RADIOLOGY_STUDY), ("default", DEFAULT_STUDY)):
        for n in (1, 2, 3):
            path = support.write_ct(tmp_path / f"{tenant}{n}.dcm", study, f"{study}.1", f"{study}.1.{n}", pixel=n)
            archive.store.store(support.staged(archive, path), tenant_id=tenant, source="import")
    yield archive
    archive.close()


class CalledAETenants:
    """The gate without access control, as the SCP's: the called AE title picks the tenant."""

    def operation(self, event: FakeEvent, operation: str) -> Admission:
        return Admission("radiology" if event.called == "RAD" else "default", frozenset(DIMSE_OPERATIONS), None)


@pytest.fixture
def scp(archive: Archive) -> QueryRetrieveSCP:
    return QueryRetrieveSCP(archive, CalledAETenants())  # type: ignore[arg-type]


def identifier(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def test_c_find_searches_the_tenant_of_the_called_ae_title(scp: QueryRetrieveSCP) -> None:
    for called, study in (("RAD", RADIOLOGY_STUDY), ("DICOMCLOUD", DEFAULT_STUDY)):
        event = FakeEvent(called, STUDY_ROOT_FIND, identifier("STUDY", StudyInstanceUID=""))
        results = list(scp._on_find(event))  # type: ignore[arg-type]
        assert [(status, ds.StudyInstanceUID if ds else None) for status, ds in results] == [
            (0xFF00, study),
            (0x0000, None),
        ]
        assert results[0][1] is not None and results[0][1].RetrieveAETitle == called


def test_c_find_stops_with_cancel_when_the_peer_sends_c_cancel(scp: QueryRetrieveSCP) -> None:
    event = FakeEvent("RAD", STUDY_ROOT_FIND, identifier("IMAGE", StudyInstanceUID=RADIOLOGY_STUDY, SOPInstanceUID=""))
    responses = scp._on_find(event)  # type: ignore[arg-type]
    assert next(responses)[0] == 0xFF00
    event.is_cancelled = True
    assert list(responses) == [(0xFE00, None)]


def test_c_get_sends_the_stored_datasets_in_their_stored_syntax(scp: QueryRetrieveSCP) -> None:
    event = FakeEvent("RAD", STUDY_ROOT_GET, identifier("STUDY", StudyInstanceUID=RADIOLOGY_STUDY))
    results = list(scp._on_get(event))  # type: ignore[arg-type]
    assert results[0] == 3
    sent = [item[1] for item in results[1:] if isinstance(item, tuple) and item[1] is not None]
    assert [ds.SOPInstanceUID for ds in sent] == [f"{RADIOLOGY_STUDY}.1.{n}" for n in (1, 2, 3)]
    assert {ds.file_meta.TransferSyntaxUID for ds in sent} == {EXPLICIT_LE}


def test_c_get_stops_with_cancel_between_sub_operations(scp: QueryRetrieveSCP) -> None:
    event = FakeEvent("RAD", STUDY_ROOT_GET, identifier("STUDY", StudyInstanceUID=RADIOLOGY_STUDY))
    results = scp._on_get(event)  # type: ignore[arg-type]
    assert next(results) == 3
    assert next(results)[0] == 0xFF00  # type: ignore[index]
    event.is_cancelled = True
    assert list(results) == [(0xFE00, None)]


def test_c_get_never_reaches_another_tenants_study(scp: QueryRetrieveSCP) -> None:
    event = FakeEvent("RAD", STUDY_ROOT_GET, identifier("STUDY", StudyInstanceUID=DEFAULT_STUDY))
    assert list(scp._on_get(event)) == [0]  # type: ignore[arg-type]


def test_c_get_without_the_level_unique_key_fails_with_a900(scp: QueryRetrieveSCP) -> None:
    event = FakeEvent("RAD", STUDY_ROOT_GET, identifier("SERIES", StudyInstanceUID=RADIOLOGY_STUDY))
    count, (status, found) = list(scp._on_get(event))  # type: ignore[arg-type]
    assert (count, status.Status, found) == (1, 0xA900, None)
    assert "SeriesInstanceUID" in status.ErrorComment


def test_c_move_to_an_unknown_destination_yields_no_address(scp: QueryRetrieveSCP) -> None:
    event = FakeEvent("RAD", STUDY_ROOT_MOVE, identifier("STUDY", StudyInstanceUID=RADIOLOGY_STUDY), "NOWHERE")
    assert list(scp._on_move(event)) == [(None, None)]  # type: ignore[arg-type]


def location(syntax: str) -> InstanceLocation:
    return InstanceLocation("t", "1.2", "1.2.3", "1.2.3.4", CT, syntax, 1, None, "x.dcm", 1, "0")


@pytest.mark.parametrize(
    ("stored", "accepted", "expected"),
    [
        (JPEG2000_LOSSLESS, {(CT, EXPLICIT_LE)}, True),
        (JPEG2000_LOSSLESS, {(CT, JPEG2000_LOSSLESS), (CT, EXPLICIT_LE)}, False),
        (JPEG2000_LOSSLESS, {("1.2.840.10008.5.1.4.1.1.4", EXPLICIT_LE)}, False),
        (EXPLICIT_LE, {(CT, "1.2.840.10008.1.2")}, False),
    ],
    ids=["only-native-accepted", "stored-syntax-accepted", "nothing-for-this-class", "stored-native"],
)
def test_c_get_decompresses_only_what_the_peer_cannot_take_as_stored(
    stored: str, accepted: set[tuple[str, str]], expected: bool
) -> None:
    assert needs_decompression(location(stored), accepted) is expected
