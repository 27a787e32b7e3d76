"""wado-storescp in-process, driven by pynetdicom as the SCU: success only for what is durable."""

from __future__ import annotations

import dataclasses
import io
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import support
from pydicom.dataset import Dataset
from pynetdicom import AE, _config
from pynetdicom.association import Association
from support import FailingBus, stored_keys

from dicomcloud.adapters import fs_storage
from dicomcloud.archive.core import Archive
from dicomcloud.archive.keys import LAYOUT_MARKER
from dicomcloud.config import DimseSettings, load_settings
from dicomcloud.dimse.scp import TRANSFER_SYNTAXES, StoreSCP, dimse_socket, requestor_preferred
from dicomcloud.errors import StorageFailure
from dicomcloud.events import STORAGE_QUEUE, StorageEvent
from dicomcloud.service_workers import receive_into_staging

AE_TITLE = "DICOMCLOUD"
STUDY, SERIES, SOP = "1.2.826.0.4.1", "1.2.826.0.4.1.1", "1.2.826.0.4.1.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def ct_dataset(sop: str = SOP, pixel: int = 0) -> pydicom.Dataset:
    return support.ct_dataset(STUDY, SERIES, sop, pixel)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., StoreSCP]]:
    """Start an SCP on a free loopback port with the given settings overlay (and optionally another bus)."""
    started: list[tuple[StoreSCP, Archive]] = []

    def make(overrides: dict[str, Any] | None = None, bus: Any = None, sock: socket.socket | None = None) -> StoreSCP:
        settings = load_settings(
            overrides={
                "storage": {"data_dir": str(tmp_path / "data")},
                "dimse": {"host": "127.0.0.1", "port": 0, "ae_title": AE_TITLE, **(overrides or {})},
            },
            environ={},
        )
        archive = Archive.from_settings(settings)
        if bus is not None:
            archive = Archive(dataclasses.replace(archive.runtime, bus=bus(archive)))
        scp = StoreSCP(archive)
        scp.start(sock)
        started.append((scp, archive))
        return scp

    yield make
    for scp, archive in started:
        scp.stop()
        archive.close()


def associate(scp: StoreSCP, called: str = AE_TITLE) -> Association:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CT_IMAGE_STORAGE, EXPLICIT_LE)
    ae.add_requested_context(VERIFICATION)
    ae.add_requested_context(STUDY_ROOT_FIND)
    return ae.associate("127.0.0.1", scp.port, ae_title=called)


def c_store(scp: StoreSCP, ds: pydicom.Dataset, called: str = AE_TITLE) -> int:
    assoc = associate(scp, called)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    return int(status.Status)


def storage_events(archive: Archive) -> list[StorageEvent]:
    consumer = archive.runtime.bus.subscribe("test-reader", [STORAGE_QUEUE])
    try:
        return [StorageEvent.from_bytes(r.value) for r in consumer.poll(100, 0.2)]
    finally:
        consumer.close()


def test_c_echo_succeeds(start: Callable[..., StoreSCP]) -> None:
    assoc = associate(start())
    assert assoc.is_established
    try:
        assert int(assoc.send_c_echo().Status) == 0x0000
    finally:
        assoc.release()


def test_c_store_succeeds_with_the_object_durable_and_announced(start: Callable[..., StoreSCP]) -> None:
    scp = start()
    ds = ct_dataset()
    assert c_store(scp, ds) == 0x0000
    [event] = storage_events(scp.archive)
    stored = pydicom.dcmread(io.BytesIO(scp.archive.runtime.storage.read(event.file_path)))
    assert stored.SOPInstanceUID == SOP and stored.PixelData == ds.PixelData
    assert stored.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert (event.source, event.calling_ae, event.called_ae, event.tenant_id) == (
        "dimse",
        "TESTSCU",
        AE_TITLE,
        "default",
    )
    assert list((scp.archive.settings.data_path / "tmp").iterdir()) == []


def test_a_mapped_called_ae_title_stores_into_its_tenant(start: Callable[..., StoreSCP]) -> None:
    scp = start({"ae_tenants": {"CT_ROOM1": "radiology"}, "reject_unknown_called_ae": True})
    assert c_store(scp, ct_dataset(), called="CT_ROOM1") == 0x0000
    [event] = storage_events(scp.archive)
    assert event.tenant_id == "radiology" and event.file_path.startswith("radiology/")


def test_an_unknown_called_ae_title_is_rejected_when_strict(start: Callable[..., StoreSCP]) -> None:
    scp = start({"reject_unknown_called_ae": True})
    assoc = associate(scp, called="NOBODY")
    assert assoc.is_rejected
    known = associate(scp)
    assert known.is_established
    known.release()


def test_an_unknown_called_ae_title_maps_to_the_default_tenant_when_lenient(start: Callable[..., StoreSCP]) -> None:
    scp = start()
    assert c_store(scp, ct_dataset(), called="ANYONE") == 0x0000
    assert [e.tenant_id for e in storage_events(scp.archive)] == ["default"]


def test_c_store_answers_a_failure_status_when_the_store_fails(start: Callable[..., StoreSCP]) -> None:
    scp = start(bus=FailingBus)
    assert c_store(scp, ct_dataset()) == StorageFailure.dimse_status
    assert stored_keys(scp.archive) == []
    assert scp.archive.runtime.index.get_instance("default", SOP) is None


def test_a_duplicate_refused_by_policy_gets_0111(start: Callable[..., StoreSCP]) -> None:
    scp = start()
    scp.archive.settings.storage.duplicate_policy = "reject"
    assert c_store(scp, ct_dataset(pixel=1)) == 0x0000
    assert c_store(scp, ct_dataset(pixel=2)) == 0x0111
    assert c_store(scp, ct_dataset(pixel=1)) == 0x0000


def test_a_refused_c_store_says_why_in_its_error_comment(
    start: Callable[..., StoreSCP], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The file's bytes as they are (pynetdicom would otherwise decode it and send a re-encoded whole).
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    scp = start()
    broken = support.truncated_ct(tmp_path / "broken.dcm", STUDY, SERIES, SOP)
    assoc = associate(scp)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(broken)
    finally:
        assoc.release()
    assert int(status.Status) == 0xC000
    assert status.ErrorComment.startswith("truncated file: element (7FE0,0010) at offset ")
    assert len(status.ErrorComment) <= 64
    assert scp.archive.runtime.index.get_instance("default", SOP) is None


def test_once_stopping_a_c_store_on_an_open_association_is_refused_untouched_and_the_association_aborted(
    start: Callable[..., StoreSCP],
) -> None:
    scp = start()
    assoc = associate(scp)
    assert assoc.is_established
    assert int(assoc.send_c_store(ct_dataset(sop=SOP + ".1")).Status) == 0x0000
    scp.stop_accepting()
    status = assoc.send_c_store(ct_dataset(sop=SOP + ".2"))
    assert int(status.Status) == 0xA700
    assert "shutting down" in status.ErrorComment
    scp.stop()
    assoc.join(10)  # the requestor's thread ends once the A-ABORT arrived
    assert assoc.is_aborted
    assert scp.archive.runtime.index.get_instance("default", SOP + ".1") is not None
    assert scp.archive.runtime.index.get_instance("default", SOP + ".2") is None


def test_two_scps_on_one_listening_socket_each_answer_on_blocking_sockets_and_stop_alone(
    start: Callable[..., StoreSCP],
) -> None:
    """As worker processes share the DIMSE socket (service_workers.py): each SCP gets its own descriptor of one
    socket bound before them. Every association is served by one of them, on a blocking socket (pynetdicom's
    reads time out by their own select); one that stops returns though the other may take every connection,
    and leaves the port served by the other."""
    listening = dimse_socket(DimseSettings(host="127.0.0.1", port=0))
    first, second = start(sock=listening), start(sock=listening.dup())
    assert first.port == second.port == listening.getsockname()[1]
    held = [associate(first) for _ in range(6)]
    try:
        assert all(assoc.is_established for assoc in held)
        assert all(int(assoc.send_c_echo().Status) == 0x0000 for assoc in held)
        served = [*first._server.active_associations, *second._server.active_associations]
        assert len(served) == len(held)
        assert all(assoc.dul.socket.socket.getblocking() for assoc in served)
    finally:
        for assoc in held:
            assoc.release()
    first.stop()
    assert c_store(second, ct_dataset()) == 0x0000
    assert second.archive.runtime.index.get_instance("default", SOP) is not None


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_a_hostile_uid_gets_a_failure_status(start: Callable[..., StoreSCP]) -> None:
    scp = start()
    ds = ct_dataset()
    ds.SeriesInstanceUID = "1.2.3/../../../etc"
    assert c_store(scp, ds) in (0xA900, 0xC000)
    root = scp.archive.settings.data_path / "storage"
    assert [p for p in root.rglob("*") if p.is_file() and p != root / LAYOUT_MARKER] == []


def c_find(scp: StoreSCP, identifier: Dataset) -> list[tuple[int, Dataset | None]]:
    assoc = associate(scp)
    assert assoc.is_established
    try:
        return [(int(status.Status), found) for status, found in assoc.send_c_find(identifier, STUDY_ROOT_FIND)]
    finally:
        assoc.release()


def test_c_find_finds_an_instance_as_soon_as_its_c_store_succeeded(start: Callable[..., StoreSCP]) -> None:
    """No worker runs in between: the success status means indexed."""
    scp = start()
    assert c_store(scp, ct_dataset()) == 0x0000
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID, query.SeriesInstanceUID, query.SOPInstanceUID = STUDY, SERIES, ""
    responses = c_find(scp, query)
    assert [status for status, _ in responses] == [0xFF00, 0x0000]
    found = responses[0][1]
    assert found is not None and found.SOPInstanceUID == SOP


def test_a_received_dataset_is_renamed_into_place_when_the_process_receives_into_staging(
    start: Callable[..., StoreSCP], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As `dicomcloud up` and `wado-storescp` run it: pynetdicom writes the dataset into the storage's staging
    folder, and storing it moves that file to its key, no second copy of the bytes."""
    scp = start()
    monkeypatch.setattr(tempfile, "tempdir", None)
    receive_into_staging(scp.archive)
    copies: list[object] = []
    monkeypatch.setattr(fs_storage.shutil, "copyfileobj", lambda *args, **kwargs: copies.append(args))
    assert c_store(scp, ct_dataset()) == 0x0000
    assert copies == []
    stored = pydicom.dcmread(io.BytesIO(scp.archive.runtime.storage.read(f"default/{STUDY}/{SERIES}/{SOP}.dcm")))
    assert stored.SOPInstanceUID == SOP


JPEG_LS = "1.2.840.10008.1.2.4.80"
RLE = "1.2.840.10008.1.2.5"
DEFLATED = "1.2.840.10008.1.2.1.99"
IMPLICIT_LE, EXPLICIT_BE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"


def test_each_context_accepts_the_requestors_first_syntax_that_the_archive_supports(
    start: Callable[..., StoreSCP],
) -> None:
    """As dcmsend proposes: one context per SOP class and file syntax, the file's syntax first, native fallbacks
    after; the archive takes the file's own, so the sender need not decompress it (and a syntax the archive does
    not support is passed over)."""
    proposals = [
        [EXPLICIT_LE, EXPLICIT_BE, IMPLICIT_LE],
        [DEFLATED, EXPLICIT_LE, EXPLICIT_BE, IMPLICIT_LE],
        [JPEG_LS, EXPLICIT_LE, EXPLICIT_BE, IMPLICIT_LE],
        ["1.2.3.4.5.6", RLE, EXPLICIT_LE],
        [EXPLICIT_BE, IMPLICIT_LE],
    ]
    ae = AE(ae_title="DCMSEND")
    for syntaxes in proposals:
        ae.add_requested_context(CT_IMAGE_STORAGE, syntaxes)
    assoc = ae.associate("127.0.0.1", start().port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        accepted = [cx.transfer_syntax[0] for cx in sorted(assoc.accepted_contexts, key=lambda cx: cx.context_id)]
    finally:
        assoc.release()
    assert accepted == [EXPLICIT_LE, DEFLATED, JPEG_LS, RLE, EXPLICIT_BE]


@pytest.mark.parametrize(
    ("proposals", "first_choices"),
    [
        ([[JPEG_LS, EXPLICIT_LE]], [JPEG_LS]),
        ([[EXPLICIT_LE, JPEG_LS]], [EXPLICIT_LE]),
        # Proposals that disagree: the archive's own order decides between them, each still gets one it offered.
        ([[JPEG_LS, EXPLICIT_LE], [EXPLICIT_LE, JPEG_LS]], [EXPLICIT_LE, EXPLICIT_LE]),
        ([["1.2.3.4"]], []),
    ],
)
def test_requestor_preferred_orders_the_supported_syntaxes(
    proposals: list[list[str]], first_choices: list[str]
) -> None:
    order = requestor_preferred(TRANSFER_SYNTAXES, proposals)
    assert sorted(order) == sorted(TRANSFER_SYNTAXES)
    ours = [[syntax for syntax in order if syntax in proposal] for proposal in proposals]
    assert [found[0] for found in ours if found] == first_choices


@pytest.mark.parametrize("operation", ["C-FIND", "C-GET", "C-MOVE"])
def test_a_refused_query_or_retrieve_says_why_in_its_error_comment(
    start: Callable[..., StoreSCP], operation: str
) -> None:
    # A C-MOVE is answered only once its destination is associated with (pynetdicom), so there is one.
    destination = AE(ae_title="DEST")
    destination.add_supported_context(VERIFICATION)
    server = destination.start_server(("127.0.0.1", 0), block=False)
    scp = start({"move_destinations": {"DEST": {"host": "127.0.0.1", "port": server.server_address[1]}}})
    no_level = Dataset()
    no_level.StudyInstanceUID = STUDY
    ae = AE(ae_title="TESTSCU")
    for model in (STUDY_ROOT_FIND, STUDY_ROOT_GET, STUDY_ROOT_MOVE):
        ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        responses = {
            "C-FIND": lambda: assoc.send_c_find(no_level, STUDY_ROOT_FIND),
            "C-GET": lambda: assoc.send_c_get(no_level, STUDY_ROOT_GET),
            "C-MOVE": lambda: assoc.send_c_move(no_level, "DEST", STUDY_ROOT_MOVE),
        }[operation]()
        statuses = [status for status, _ in responses]
    finally:
        assoc.release()
        server.shutdown()
    assert len(statuses) == 1
    assert int(statuses[0].Status) == 0xA900
    assert statuses[0].ErrorComment.startswith("Query/Retrieve Level '(missing)' is not one of")
