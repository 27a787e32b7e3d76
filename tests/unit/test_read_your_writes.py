"""Read your writes through the DICOMweb app: the request after a STOW-RS 200 or a DELETE 204 sees it, with no
wait and nothing run in between, in every read: WADO-RS retrieve, series metadata, QIDO-RS instances of the
series, and the study's NumberOfStudyRelatedInstances.

Each read is also made before the write, so an answer kept from then (the QIDO-RS result cache, the parsed
series documents) must not outlive the write. Each test runs on one HTTP worker and on two (`http.workers`),
where every write is answered by one worker and every read by the other, which kept its own answers from
before. The end-to-end version, with real clients on the distributed stack, is in tests/e2e.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
import support
from fastapi.testclient import TestClient
from test_web_app import DICOM_MULTIPART, multipart_bodies, part10, stow

from bench.synthetic import ct_series, new_uid
from dicomcloud.archive.core import Archive

pytest_plugins = ["test_web_app"]

SOP_UID, INSTANCE_NUMBER, NUMBER_OF_STUDY_RELATED_INSTANCES = "00080018", "00200013", "00201208"
RLE = "1.2.840.10008.1.2.5"
FAILED, FAILURE_REASON = "00081198", "00081197"


@pytest.fixture(params=[1, 2], ids=["1 worker", "2 workers"])
def workers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[Archive]]:
    archives = support.make_workers(tmp_path / "data", request.param)
    yield archives
    for archive in archives:
        archive.close()


@pytest.fixture
def archive(workers: list[Archive]) -> Archive:
    """The archive of the worker that answers the writes."""
    return workers[0]


@pytest.fixture
def client(workers: list[Archive]) -> Iterator[TestClient]:
    with support.WorkerClient(workers) as test_client:
        yield test_client


def prefix(tenant: str) -> str:
    return f"/{tenant}/dicom-web" if tenant else "/dicom-web"


def instance_url(ds: pydicom.Dataset, tenant: str) -> str:
    series = f"{prefix(tenant)}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    return f"{series}/instances/{ds.SOPInstanceUID}"


@dataclass(frozen=True)
class Seen:
    """What each read answers about one instance and its series and study."""

    retrieved: bytes | None  # the instance's body from WADO-RS; None when 404
    metadata: dict[str, int] | None  # SOP Instance UID -> InstanceNumber in the series metadata; None when 404
    listed: dict[str, int]  # SOP Instance UID -> InstanceNumber in QIDO-RS instances of the series
    study_instances: int | None  # NumberOfStudyRelatedInstances; None when QIDO-RS finds no study


def seen(client: TestClient, ds: pydicom.Dataset, tenant: str = "") -> Seen:
    study, series = ds.StudyInstanceUID, ds.SeriesInstanceUID
    series_url = f"{prefix(tenant)}/studies/{study}/series/{series}"

    retrieve = client.get(instance_url(ds, tenant), headers={"Accept": DICOM_MULTIPART})
    assert retrieve.status_code in (200, 404), retrieve.text
    retrieved = multipart_bodies(retrieve)[0][1] if retrieve.status_code == 200 else None

    metadata_response = client.get(f"{series_url}/metadata")
    assert metadata_response.status_code in (200, 404), metadata_response.text
    metadata = (
        {d[SOP_UID]["Value"][0]: d[INSTANCE_NUMBER]["Value"][0] for d in metadata_response.json()}
        if metadata_response.status_code == 200
        else None
    )

    instances = client.get(f"{series_url}/instances")
    assert instances.status_code == 200, instances.text
    listed = {d[SOP_UID]["Value"][0]: d[INSTANCE_NUMBER]["Value"][0] for d in instances.json()}

    studies = client.get(f"{prefix(tenant)}/studies", params={"StudyInstanceUID": study})
    assert studies.status_code == 200, studies.text
    counts = [d[NUMBER_OF_STUDY_RELATED_INSTANCES]["Value"][0] for d in studies.json()]
    assert len(counts) <= 1
    return Seen(retrieved, metadata, listed, counts[0] if counts else None)


def stow_ok(client: TestClient, ds: pydicom.Dataset, tmp_path: Path, tenant: str = "") -> bytes:
    raw = part10(ds, tmp_path)
    response = stow(client, [raw], f"{prefix(tenant)}/studies")
    assert response.status_code == 200, response.text
    return raw


@pytest.mark.parametrize("tenant", ["", "radiology"])
def test_a_stored_instance_is_retrieved_in_its_metadata_listed_and_counted_the_moment_stow_answers(
    client: TestClient, tmp_path: Path, tenant: str
) -> None:
    first, second = ct_series(2, rows=8, columns=8)
    stow_ok(client, first, tmp_path, tenant)
    before = seen(client, second, tenant)
    assert before == Seen(None, {first.SOPInstanceUID: 1}, {first.SOPInstanceUID: 1}, 1)

    raw = stow_ok(client, second, tmp_path, tenant)

    after = seen(client, second, tenant)
    assert after.retrieved == raw
    both = {first.SOPInstanceUID: 1, second.SOPInstanceUID: 2}
    assert (after.metadata, after.listed, after.study_instances) == (both, both, 2)


def test_the_first_instance_of_a_study_is_seen_at_once_by_a_client_that_asked_before_it_existed(
    client: TestClient, tmp_path: Path
) -> None:
    (ds,) = ct_series(1, rows=8, columns=8)
    assert seen(client, ds) == Seen(None, None, {}, None)
    assert client.get(prefix("") + "/studies").json() == []

    raw = stow_ok(client, ds, tmp_path)

    assert seen(client, ds) == Seen(raw, {ds.SOPInstanceUID: 1}, {ds.SOPInstanceUID: 1}, 1)
    assert len(client.get(prefix("") + "/studies").json()) == 1


def test_a_replaced_instance_is_served_in_its_new_content_the_moment_stow_answers(
    client: TestClient, tmp_path: Path
) -> None:
    (ds,) = ct_series(1, rows=8, columns=8)
    original = stow_ok(client, ds, tmp_path)
    assert seen(client, ds) == Seen(original, {ds.SOPInstanceUID: 1}, {ds.SOPInstanceUID: 1}, 1)

    ds.InstanceNumber = 7
    replacement = stow_ok(client, ds, tmp_path)  # the default duplicate policy replaces

    assert replacement != original
    assert seen(client, ds) == Seen(replacement, {ds.SOPInstanceUID: 7}, {ds.SOPInstanceUID: 7}, 1)
    assert pydicom.dcmread(BytesIO(seen(client, ds).retrieved or b"")).InstanceNumber == 7


def test_a_replaced_instance_is_transcoded_from_its_new_content_the_moment_stow_answers(
    client: TestClient, tmp_path: Path
) -> None:
    """A copy in another transfer syntax made from the old content is not served for the new one."""
    (ds,) = ct_series(1, rows=32, columns=32)
    stow_ok(client, ds, tmp_path)
    accept = {"Accept": f"application/dicom; transfer-syntax={RLE}"}
    old = client.get(instance_url(ds, ""), headers=accept)
    assert old.status_code == 200
    assert pydicom.dcmread(BytesIO(old.content)).InstanceNumber == 1

    ds.InstanceNumber = 7
    stow_ok(client, ds, tmp_path)

    new = client.get(instance_url(ds, ""), headers=accept)
    assert new.status_code == 200
    served = pydicom.dcmread(BytesIO(new.content))
    assert (served.file_meta.TransferSyntaxUID, served.InstanceNumber) == (RLE, 7)


@pytest.mark.parametrize("moved_to", ["SeriesInstanceUID", "StudyInstanceUID"])
def test_an_instance_moved_to_another_series_or_study_is_read_only_there_the_moment_stow_answers(
    client: TestClient, tmp_path: Path, moved_to: str
) -> None:
    (ds,) = ct_series(1, rows=8, columns=8)
    stow_ok(client, ds, tmp_path)
    moved = pydicom.dcmread(BytesIO(part10(ds, tmp_path)))
    setattr(moved, moved_to, new_uid())
    same_study = moved_to == "SeriesInstanceUID"
    assert seen(client, moved) == Seen(None, None, {}, 1 if same_study else None)
    assert len(client.get(prefix("") + "/studies").json()) == 1

    raw = stow_ok(client, moved, tmp_path)

    assert seen(client, ds) == Seen(None, None, {}, 1 if same_study else None)
    assert seen(client, moved) == Seen(raw, {ds.SOPInstanceUID: 1}, {ds.SOPInstanceUID: 1}, 1)
    assert len(client.get(prefix("") + "/studies").json()) == 1


def test_an_instance_whose_stow_failed_is_in_no_read(client: TestClient, archive: Archive, tmp_path: Path) -> None:
    """The bus refuses the events: the STOW-RS is a 503 and the instance, indexed meanwhile, is withdrawn."""
    first, second = ct_series(2, rows=8, columns=8)
    stow_ok(client, first, tmp_path)
    only_first = Seen(None, {first.SOPInstanceUID: 1}, {first.SOPInstanceUID: 1}, 1)
    assert seen(client, second) == only_first
    working = archive.runtime.bus
    archive.runtime.bus = support.FailingBus(archive)
    try:
        response = stow(client, [part10(second, tmp_path)])
    finally:
        archive.runtime.bus = working
    assert response.status_code == 503
    assert response.json()[FAILED]["Value"][0][FAILURE_REASON]["Value"] == [0xA700]

    assert seen(client, second) == only_first
    assert [key for key in archive.runtime.storage.list("") if second.SOPInstanceUID in key] == []


def test_a_deleted_instance_is_gone_from_every_read_the_moment_delete_answers(
    client: TestClient, tmp_path: Path
) -> None:
    first, second = ct_series(2, rows=8, columns=8)
    stow_ok(client, first, tmp_path)
    raw = stow_ok(client, second, tmp_path)
    both = {first.SOPInstanceUID: 1, second.SOPInstanceUID: 2}
    assert seen(client, second) == Seen(raw, both, both, 2)

    assert client.delete(instance_url(second, "")).status_code == 204

    remaining = {first.SOPInstanceUID: 1}
    assert seen(client, second) == Seen(None, remaining, remaining, 1)
    assert client.get(f"{instance_url(second, '')}/metadata").status_code == 404


def test_a_deleted_study_is_gone_from_every_read_the_moment_delete_answers(client: TestClient, tmp_path: Path) -> None:
    first, second = ct_series(2, rows=8, columns=8)
    stow_ok(client, first, tmp_path)
    raw = stow_ok(client, second, tmp_path)
    both = {first.SOPInstanceUID: 1, second.SOPInstanceUID: 2}
    assert seen(client, second) == Seen(raw, both, both, 2)
    assert len(client.get(prefix("") + "/studies").json()) == 1

    assert client.delete(f"{prefix('')}/studies/{second.StudyInstanceUID}").status_code == 204

    assert seen(client, first) == seen(client, second) == Seen(None, None, {}, None)
    assert client.get(prefix("") + "/studies").json() == []
    assert client.get(f"{prefix('')}/studies/{second.StudyInstanceUID}/metadata").status_code == 404
