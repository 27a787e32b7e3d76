"""STOW-RS (PS3.18 10.5): statuses, the response module, and bodies that are cut, wrong or too big."""

from __future__ import annotations

import re
from pathlib import Path

import pydicom
import pytest
import support
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file
from test_web_app import DICOM_MULTIPART, make_archive, part10, staged_files, stow, stow_body

from bench.synthetic import ct_series
from dicomcloud.archive.core import Archive
from dicomcloud.archive.keys import original_key
from dicomcloud.web.app import create_app
from dicomcloud.web.stow import MAX_WARNINGS

FAILED = "00081198"
REFERENCED = "00081199"
RETRIEVE_URL = "00081190"
FAILURE_REASON = "00081197"
ERROR_COMMENT = "00000902"
REFERENCED_SOP_INSTANCE = "00081155"
REFERENCED_SOP_CLASS = "00081150"

pytest_plugins = ["test_web_app"]


def test_all_stored_is_200_with_referenced_sops_and_urls(client: TestClient, tmp_path: Path) -> None:
    datasets = list(ct_series(2, rows=8, columns=8))
    response = stow(client, [part10(ds, tmp_path) for ds in datasets])
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+json"
    body = response.json()
    study = datasets[0].StudyInstanceUID
    assert body[RETRIEVE_URL] == {"vr": "UR", "Value": [f"http://archive.test/dicom-web/studies/{study}"]}
    items = body[REFERENCED]["Value"]
    assert [i[REFERENCED_SOP_INSTANCE]["Value"][0] for i in items] == [ds.SOPInstanceUID for ds in datasets]
    assert items[0][REFERENCED_SOP_CLASS]["Value"] == [datasets[0].SOPClassUID]
    assert items[0][RETRIEVE_URL]["Value"][0].endswith(
        f"/studies/{study}/series/{datasets[0].SeriesInstanceUID}/instances/{datasets[0].SOPInstanceUID}"
    )
    assert FAILED not in body


def test_files_are_durable_when_200_is_sent(client: TestClient, archive: Archive, tmp_path: Path) -> None:
    ds = next(ct_series(1, rows=8, columns=8))
    raw = part10(ds, tmp_path)
    assert stow(client, [raw]).status_code == 200
    key = original_key("default", ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert archive.runtime.storage.read(key) == raw
    assert staged_files(archive) == []


def test_some_failed_is_202_with_both_sequences(client: TestClient, tmp_path: Path) -> None:
    good = part10(next(ct_series(1, rows=8, columns=8)), tmp_path)
    response = stow(client, [good, b"not dicom"])
    assert response.status_code == 202
    body = response.json()
    assert len(body[REFERENCED]["Value"]) == 1
    assert body[FAILED]["Value"] == [
        {
            ERROR_COMMENT: {"vr": "LO", "Value": ["not a DICOM Part 10 file"]},
            FAILURE_REASON: {"vr": "US", "Value": [0xC000]},
        }
    ]
    assert response.headers.get_list("Warning") == ['299 dicomcloud "part 2 not stored: not a DICOM Part 10 file"']


def test_a_truncated_file_fails_with_its_reason_in_the_body_and_a_warning(
    client: TestClient, tmp_path: Path
) -> None:
    broken = support.truncated_ct(tmp_path / "broken.dcm", "1.2.826.0.5.1", "1.2.826.0.5.1.1", "1.2.826.0.5.1.1.1")
    response = stow(client, [broken.read_bytes()])
    assert response.status_code == 400
    (item,) = response.json()[FAILED]["Value"]
    reason = item[ERROR_COMMENT]["Value"][0]
    expected = r"truncated file: element \(7FE0,0010\) at offset \d+ has length 32768, only 32706 bytes left"
    assert re.fullmatch(expected, reason)
    assert item[REFERENCED_SOP_INSTANCE]["Value"] == ["1.2.826.0.5.1.1.1"]
    assert response.headers["Warning"] == f'299 dicomcloud "1.2.826.0.5.1.1.1 not stored: {reason}"'


def test_warnings_are_bounded_and_the_body_lists_every_failure(client: TestClient) -> None:
    response = stow(client, [b"garbage"] * (MAX_WARNINGS + 5))
    assert response.status_code == 400
    assert len(response.json()[FAILED]["Value"]) == MAX_WARNINGS + 5
    warnings = response.headers.get_list("Warning")
    assert len(warnings) == MAX_WARNINGS
    assert warnings[-1] == '299 dicomcloud "6 more not stored; the Failed SOP Sequence lists every reason"'


def test_none_stored_for_bad_objects_is_400(client: TestClient) -> None:
    truncated = Path(get_testdata_file("MR_truncated.dcm")).read_bytes()
    response = stow(client, [truncated, b"garbage"])
    assert response.status_code == 400
    reasons = [item[FAILURE_REASON]["Value"] for item in response.json()[FAILED]["Value"]]
    assert reasons == [[0xC000], [0xC000]]


def test_study_mismatch_fails_that_instance_with_its_uids_and_409(
    client: TestClient, archive: Archive, tmp_path: Path
) -> None:
    ds = next(ct_series(1, rows=8, columns=8))
    response = stow(client, [part10(ds, tmp_path)], "/dicom-web/studies/1.2.3.4")
    assert response.status_code == 409
    body = response.json()
    assert body[RETRIEVE_URL]["Value"] == ["http://archive.test/dicom-web/studies/1.2.3.4"]
    failed = body[FAILED]["Value"][0]
    assert failed[REFERENCED_SOP_INSTANCE]["Value"] == [ds.SOPInstanceUID]
    assert failed[REFERENCED_SOP_CLASS]["Value"] == [ds.SOPClassUID]
    assert failed[FAILURE_REASON]["Value"] == [0xA900]
    assert staged_files(archive) == []


def test_study_in_path_accepts_matching_instances(client: TestClient, tmp_path: Path) -> None:
    ds = next(ct_series(1, rows=8, columns=8))
    assert stow(client, [part10(ds, tmp_path)], f"/dicom-web/studies/{ds.StudyInstanceUID}").status_code == 200


@pytest.mark.parametrize("workers", [1, 2], ids=["1 worker", "2 workers"])
def test_duplicate_under_reject_policy_is_409_with_0111(tmp_path: Path, workers: int) -> None:
    """With two HTTP workers, the second STOW-RS reaches the other one: the index decides, not a process."""
    archives = support.make_workers(tmp_path / "data", workers, storage={"duplicate_policy": "reject"})
    try:
        with TestClient(create_app(archives[0])) as first_worker, TestClient(create_app(archives[-1])) as last_worker:
            ds = next(ct_series(1, rows=8, columns=8))
            first = part10(ds, tmp_path)
            assert stow(first_worker, [first]).status_code == 200
            ds.PatientName = "Changed^Name"
            response = stow(last_worker, [part10(ds, tmp_path)])
            assert response.status_code == 409
            assert response.json()[FAILED]["Value"][0][FAILURE_REASON]["Value"] == [0x0111]
            key = original_key("default", ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
            assert archives[-1].runtime.storage.read(key) == first, "the stored instance is unchanged"
    finally:
        for archive in archives:
            archive.close()


def test_a_part_of_another_media_type_fails_that_part(client: TestClient, tmp_path: Path) -> None:
    good = part10(next(ct_series(1, rows=8, columns=8)), tmp_path)
    body = (
        b"--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        b"--b1\r\nContent-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1\r\n\r\n" + good + b"\r\n--b1--"
    )
    response = client.post(
        "/dicom-web/studies", content=body, headers={"Content-Type": f"{DICOM_MULTIPART}; boundary=b1"}
    )
    assert response.status_code == 202
    assert response.json()[FAILED]["Value"][0][FAILURE_REASON]["Value"] == [0xC000]


def test_a_part_without_content_type_is_taken_as_dicom(client: TestClient, tmp_path: Path) -> None:
    good = part10(next(ct_series(1, rows=8, columns=8)), tmp_path)
    body = b"--b1\r\n\r\n" + good + b"\r\n--b1--\r\n"
    response = client.post(
        "/dicom-web/studies", content=body, headers={"Content-Type": f"{DICOM_MULTIPART}; boundary=b1"}
    )
    assert response.status_code == 200


ORTHANC_BOUNDARY = "-" * 20 + "9f3b" * 13 + "x"  # 73 characters, as Orthanc 1.10's STOW client sends


@pytest.mark.parametrize(
    ("content_type", "part_type"),
    [
        (f'multipart/related; type="application/dicom"; boundary={ORTHANC_BOUNDARY}', "application/dicom"),
        (f'multipart/related; type=application/dicom; boundary="{ORTHANC_BOUNDARY}"', "application/dicom"),
        (f"multipart/related; boundary={ORTHANC_BOUNDARY}", "application/dicom"),
        (
            f'Multipart/Related; Boundary="{ORTHANC_BOUNDARY}"; Type="application/dicom; transfer-syntax=*"',
            'application/dicom; transfer-syntax="1.2.840.10008.1.2.1"',
        ),
        (f"multipart/related; type=application/dicom; boundary={ORTHANC_BOUNDARY}", "Application/DICOM; charset=x"),
    ],
)
def test_content_types_as_real_senders_write_them_are_stored(
    client: TestClient, tmp_path: Path, content_type: str, part_type: str
) -> None:
    good = part10(next(ct_series(1, rows=8, columns=8)), tmp_path)
    delimiter = f"--{ORTHANC_BOUNDARY}".encode()
    body = b"preamble\r\n" + delimiter + f"\r\nContent-Type: {part_type}\r\n\r\n".encode() + good
    body += b"\r\n" + delimiter + b"--"
    response = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text


def test_a_body_with_lf_only_framing_is_stored_byte_exact(client: TestClient, archive: Archive, tmp_path: Path) -> None:
    datasets = list(ct_series(2, rows=8, columns=8))
    parts = [part10(ds, tmp_path) for ds in datasets]
    body = b"".join(b"--b1\nContent-Type: application/dicom\n\n" + part + b"\n" for part in parts) + b"--b1--"
    response = client.post(
        "/dicom-web/studies", content=body, headers={"Content-Type": f"{DICOM_MULTIPART}; boundary=b1"}
    )
    assert response.status_code == 200, response.text
    for ds, part in zip(datasets, parts, strict=True):
        key = original_key("default", ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        assert archive.runtime.storage.read(key) == part


def test_a_body_without_the_close_delimiter_stores_nothing(
    client: TestClient, archive: Archive, tmp_path: Path
) -> None:
    good = part10(next(ct_series(1, rows=8, columns=8)), tmp_path)
    body = b"--b1\r\nContent-Type: application/dicom\r\n\r\n" + good + b"\r\n--b1\r\n"
    response = client.post(
        "/dicom-web/studies", content=body, headers={"Content-Type": f"{DICOM_MULTIPART}; boundary=b1"}
    )
    assert response.status_code == 400
    assert "without the closing delimiter" in response.json()["error"]
    assert support.stored_keys(archive) == []


@pytest.mark.parametrize(
    "content_type",
    [None, "application/dicom", "application/json", 'multipart/related; type="application/dicom+xml"; boundary=x'],
)
def test_a_body_that_is_not_multipart_dicom_is_415(client: TestClient, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/dicom-web/studies", content=b"{}", headers=headers)
    assert response.status_code == 415
    assert response.json()["error"]


def test_multipart_without_boundary_is_400(client: TestClient) -> None:
    response = client.post("/dicom-web/studies", content=b"x", headers={"Content-Type": DICOM_MULTIPART})
    assert response.status_code == 400


def test_a_body_cut_mid_part_stores_nothing(client: TestClient, archive: Archive, tmp_path: Path) -> None:
    first, second = (part10(ds, tmp_path) for ds in ct_series(2, rows=8, columns=8))
    body, content_type = stow_body([first, second])
    response = client.post(
        "/dicom-web/studies", content=body[: len(body) - len(second) // 2], headers={"Content-Type": content_type}
    )
    assert response.status_code == 400
    assert "truncated" in response.json()["error"]
    assert support.stored_keys(archive) == []
    assert staged_files(archive) == []


def test_an_empty_multipart_is_400(client: TestClient) -> None:
    response = client.post(
        "/dicom-web/studies", content=b"--b1--\r\n", headers={"Content-Type": f"{DICOM_MULTIPART}; boundary=b1"}
    )
    assert response.status_code == 400


def test_a_body_over_the_limit_is_413_and_stores_nothing(tmp_path: Path) -> None:
    archive = make_archive(tmp_path / "data", max_stow_bytes=10_000)
    try:
        with TestClient(create_app(archive)) as client:
            small = part10(next(ct_series(1, rows=8, columns=8)), tmp_path)
            big = part10(next(ct_series(1, rows=128, columns=128)), tmp_path)
            body, content_type = stow_body([small, big])
            declared = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
            assert declared.status_code == 413

            def chunked() -> bytes:
                yield body

            streamed = client.post("/dicom-web/studies", content=chunked(), headers={"Content-Type": content_type})
            assert streamed.status_code == 413
            assert support.stored_keys(archive) == []
            assert staged_files(archive) == []
    finally:
        archive.close()


def test_stow_to_a_tenant_stores_under_that_tenant(client: TestClient, archive: Archive, tmp_path: Path) -> None:
    ds = next(ct_series(1, rows=8, columns=8))
    response = stow(client, [part10(ds, tmp_path)], "/radiology/dicom-web/studies")
    assert response.status_code == 200
    assert response.json()[RETRIEVE_URL]["Value"][0].startswith("http://archive.test/radiology/dicom-web/")
    key = original_key("radiology", ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    with archive.runtime.storage.open(key) as stored:
        assert pydicom.dcmread(stored).SOPInstanceUID == ds.SOPInstanceUID
    elsewhere = original_key("default", ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert archive.runtime.storage.size(elsewhere) is None


def test_public_url_is_used_for_retrieve_urls(tmp_path: Path) -> None:
    archive = make_archive(tmp_path / "data", public_url="https://pacs.example.org/")
    try:
        with TestClient(create_app(archive)) as client:
            response = stow(client, [part10(next(ct_series(1, rows=8, columns=8)), tmp_path)])
            assert response.json()[RETRIEVE_URL]["Value"][0].startswith("https://pacs.example.org/dicom-web/studies/")
    finally:
        archive.close()
