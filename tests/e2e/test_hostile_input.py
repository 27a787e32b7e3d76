"""Bad input gets a precise error and disturbs nothing that is stored."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage

from bench.synthetic import ct_series, write_part10

from .conftest import AE_TITLE, Archive
from .dicom_clients import multipart_parts, storescu, stow, stow_body

pytestmark = pytest.mark.e2e

HOSTILE_UIDS = ["1.2.3/../../../etc", "../1.2.3", "1.2.3\\..\\x", "1.2.abc", "1." + "2" * 70]


@pytest.fixture(scope="module")
def guarded(archive_factory: Callable[..., Archive], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    """An archive holding one reference instance that every test checks is still intact."""
    archive = archive_factory("hostile", {"DICOMCLOUD_HTTP__BODY_TIMEOUT": "2"})
    reference = tmp_path_factory.mktemp("ref") / "reference.dcm"
    write_part10(next(ct_series(1, rows=32, columns=32, patient_id="REFERENCE")), reference)
    assert stow(archive.dicomweb_url(), [reference.read_bytes()]).status_code == 200
    archive.wait_indexed(1, PatientID="REFERENCE")
    archive.reference = reference  # type: ignore[attr-defined]
    yield archive
    assert_reference_intact(archive, reference)


def assert_reference_intact(archive: Archive, reference: Path) -> None:
    ds = pydicom.dcmread(reference, stop_before_pixels=True)
    assert archive.count_instances() == 1, "a hostile request left something stored"
    url = (
        f"{archive.dicomweb_url()}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    response = httpx.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'}, timeout=30)
    assert multipart_parts(response) == [reference.read_bytes()]
    assert not any((archive.data / "tmp").iterdir()), "a temp file was left behind"


def hostile_dataset(uid: str, where: str) -> pydicom.Dataset:
    ds = next(ct_series(1, rows=8, columns=8, patient_id="HOSTILE"))
    setattr(ds, where, uid)
    return ds


def c_store_cases() -> list[tuple[str, str]]:
    """Every hostile UID in every UID attribute, except where the SOP Instance UID also goes into the
    C-STORE command itself and no DIMSE client can encode it (multi-valued or over 64 characters);
    STOW-RS carries those."""
    return [
        (uid, where)
        for where in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
        for uid in HOSTILE_UIDS
        if not (where == "SOPInstanceUID" and ("\\" in uid or len(uid) > 64))
    ]


@pytest.mark.parametrize(("uid", "where"), c_store_cases())
def test_c_store_of_a_hostile_uid_fails_with_a_dimse_failure_status(guarded: Archive, uid: str, where: str) -> None:
    ds = hostile_dataset(uid, where)
    ae = AE(ae_title="HOSTILE")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", guarded.dimse_port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert status and int(status.Status) in (0xA900, 0xC000), f"status {status}"


@pytest.mark.parametrize("uid", HOSTILE_UIDS)
def test_stow_of_a_hostile_uid_fails_that_instance(guarded: Archive, tmp_path: Path, uid: str) -> None:
    path = tmp_path / "hostile.dcm"
    write_part10(hostile_dataset(uid, "SOPInstanceUID"), path)
    response = stow(guarded.dicomweb_url(), [path.read_bytes()])
    assert response.status_code in (400, 409)
    body = response.json()
    assert "00081198" in body, "FailedSOPSequence expected"
    assert body["00081198"]["Value"][0]["00081197"]["Value"][0] in (0xA900, 0xC000)


ROUTES = ("studies/{uid}", "studies/1.2.3/series/{uid}/metadata", "studies/1.2.3/series/4.5/instances/{uid}/frames/1")


@pytest.mark.parametrize("path_uid", ["1.2.3..4", "1.2.x", "%2e%2e", "1.2.3%00", "1" * 65])
def test_wado_with_a_hostile_uid_in_the_path_is_a_bad_request(guarded: Archive, path_uid: str) -> None:
    for route in ROUTES:
        response = httpx.get(f"{guarded.dicomweb_url()}/{route.format(uid=path_uid)}", timeout=10)
        assert response.status_code == 400, route


def test_a_uid_with_encoded_slashes_never_reaches_a_file(guarded: Archive) -> None:
    for route in ROUTES:
        response = httpx.get(f"{guarded.dicomweb_url()}/{route.format(uid='..%2F..%2F..%2Fetc')}", timeout=10)
        assert response.status_code in (400, 404), route


def test_a_truncated_part10_file_is_refused(guarded: Archive) -> None:
    response = stow(guarded.dicomweb_url(), [Path(get_testdata_file("MR_truncated.dcm")).read_bytes()])
    assert response.status_code in (400, 409)
    failed = response.json()["00081198"]["Value"][0]
    assert failed["00081197"]["Value"] == [0xC000]


def cut_ct(path: Path, missing: int = 62) -> Path:
    """A 32x32 CT (Pixel Data last, 2,048 bytes) with its last `missing` bytes cut off."""
    write_part10(next(ct_series(1, rows=32, columns=32, patient_id="HOSTILE")), path)
    path.write_bytes(path.read_bytes()[:-missing])
    return path


CUT_REASON = r"truncated file: element \(7FE0,0010\) at offset \d+ has length 2048, only 1986 bytes left"


def test_stow_of_a_truncated_file_says_why_in_the_body_and_a_warning_header(guarded: Archive, tmp_path: Path) -> None:
    response = stow(guarded.dicomweb_url(), [cut_ct(tmp_path / "cut.dcm").read_bytes()])
    assert response.status_code == 400
    (failed,) = response.json()["00081198"]["Value"]
    reason = failed["00000902"]["Value"][0]
    assert re.fullmatch(CUT_REASON, reason), reason
    sop_uid = failed["00081155"]["Value"][0]
    assert response.headers["Warning"] == f'299 dicomcloud "{sop_uid} not stored: {reason}"'


def test_c_store_of_a_truncated_file_says_why_in_its_error_comment(
    guarded: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pynetdicom sends the file's bytes as they are, not a decoded and re-encoded whole.
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title="HOSTILE")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", guarded.dimse_port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(cut_ct(tmp_path / "cut.dcm"))
    finally:
        assoc.release()
    assert int(status.Status) == 0xC000
    assert status.ErrorComment.startswith("truncated file: element (7FE0,0010) at offset ")


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_storescu_shows_the_error_comment_of_a_refused_c_store(guarded: Archive, tmp_path: Path) -> None:
    path = tmp_path / "hostile.dcm"
    write_part10(hostile_dataset("1.2.abc", "SeriesInstanceUID"), path)
    result = storescu(guarded.dimse_port, AE_TITLE, [path], "1.2.840.10008.1.2.1", calling_ae="HOSTILE", debug=True)
    comment = r"\(0000,0902\) LO \[invalid SeriesInstanceUID: '1\.2\.abc'\] .*ErrorComment"
    assert re.search(comment, result.stderr), result.stderr


def test_a_non_dicom_part_is_refused(guarded: Archive) -> None:
    response = stow(guarded.dicomweb_url(), [b"this is not DICOM at all"])
    assert response.status_code in (400, 409)
    assert "00081198" in response.json()


def test_a_part_of_another_media_type_is_refused(guarded: Archive) -> None:
    body = (b"--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b1--\r\n")
    response = httpx.post(
        f"{guarded.dicomweb_url()}/studies", content=body,
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b1'}, timeout=10,
    )
    assert 400 <= response.status_code < 500


def test_a_body_that_is_not_multipart_related_is_unsupported(guarded: Archive) -> None:
    response = httpx.post(
        f"{guarded.dicomweb_url()}/studies", content=b"{}", headers={"Content-Type": "application/json"}, timeout=10
    )
    assert response.status_code == 415


def test_a_multipart_body_cut_mid_part_is_a_bad_request(guarded: Archive) -> None:
    reference = guarded.reference  # type: ignore[attr-defined]
    body, content_type = stow_body([reference.read_bytes(), reference.read_bytes()])
    cut = body[: len(body) - len(reference.read_bytes()) // 2]
    response = httpx.post(
        f"{guarded.dicomweb_url()}/studies", content=cut, headers={"Content-Type": content_type}, timeout=30
    )
    assert response.status_code == 400
    assert "truncated" in response.text.lower() or "closing" in response.text.lower()


def raw_request(port: int, head: bytes, body: bytes, read_timeout: float) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(head + body)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)


def test_a_huge_declared_length_with_ten_bytes_sent_times_out_with_a_reason(guarded: Archive) -> None:
    head = (
        b"POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b'Content-Type: multipart/related; type="application/dicom"; boundary=b1\r\n'
        b"Content-Length: 2147483648\r\n\r\n"
    )
    reply = raw_request(guarded.http_port, head, b"--b1\r\n\r\nAB", read_timeout=30)
    status_line = reply.split(b"\r\n", 1)[0]
    assert status_line.split()[1] in (b"400", b"408", b"413"), reply[:300]


def test_the_archive_still_serves_after_all_of_it(guarded: Archive) -> None:
    assert httpx.get(f"{guarded.base_url}/health", timeout=5).status_code == 200
