"""Issue 17's "Done when" on the distributed stack with its objects in SeaweedFS (`stack up --storage s3`): a
master, two volume servers with replication 001, a filer and the S3 gateway, each its own process; every
service has a private scratch folder and there is no shared data folder, so no node can read another's disk.

One stack serves the module. Instances go in over DIMSE (to wado-storescp) and STOW-RS (through Nginx to two
wado-servers) and come back byte-exact through Nginx and from each wado-server; then the store breaks during an
ingest (its S3 gateway down, a volume server killed with kill -9) and nothing acknowledged may be missing.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import httpx
import pydicom
import pytest

from dicomcloud.adapters.s3_storage import S3Storage
from dicomcloud.config import S3Settings
from dicomcloud.stack import LocalStack
from dicomcloud.stack.local import INFRASTRUCTURE

from .conftest import wait_until
from .dicom_clients import dataset_bytes, multipart_parts, stow_body
from .stack_support import DIMSE_TIMEOUT, STORED, Batch, Sender, full_stack, generate, http_client, store_statuses

pytestmark = [pytest.mark.e2e, pytest.mark.stack, pytest.mark.timeout(1800)]

DICOM = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
STOW_BATCH = 20
# A C-STORE whose object the store did not take: PS3.4's "Refused: Out of Resources" (0xA7xx).
OUT_OF_RESOURCES = 0xA700
FAILED_SOP_SEQUENCE = "00081198"


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with full_stack("s3", storage="s3", brokers=1) as local:
        yield local


@pytest.fixture(scope="module")
def client(stack: LocalStack) -> Iterator[httpx.Client]:
    with http_client(stack.ca_file) as http:
        yield http


@pytest.fixture(autouse=True)
def whole_stack(stack: LocalStack) -> Iterator[None]:
    """After each test every process runs again, even when the test failed halfway."""
    yield
    for name in stack.names():
        if stack.pid(name) is None:
            stack.start(name)


def bucket(stack: LocalStack) -> S3Storage:
    """The stack's bucket, opened with the settings its services read."""
    settings = json.loads((stack.folder / "config" / "application.stack.json").read_text())
    return S3Storage(S3Settings(**settings["storage"]["s3"]), stack.folder / "test-scratch")


def stow(client: httpx.Client, root: str, files: list[Path]) -> list[httpx.Response]:
    responses = []
    for start in range(0, len(files), STOW_BATCH):
        body, content_type = stow_body([path.read_bytes() for path in files[start : start + STOW_BATCH]])
        responses.append(client.post(f"{root}/studies", content=body, headers={"Content-Type": content_type}))
    return responses


def sent(batch: Batch) -> dict[str, bytes]:
    """SOP Instance UID -> the dataset bytes that were sent."""
    return {batch.sop_of[path]: dataset_bytes(path.read_bytes()) for path in batch.files}


def retrieved_series(client: httpx.Client, root: str, batch: Batch) -> dict[str, bytes]:
    """Every instance of the batch's series as WADO-RS at `root` returns it: SOP Instance UID -> dataset bytes."""
    found: dict[str, bytes] = {}
    for study, series in batch.studies.items():
        for series_uid in series:
            response = client.get(f"{root}/studies/{study}/series/{series_uid}", headers=DICOM)
            assert response.status_code == 200, f"{root}: {response.status_code} {response.text[:300]}"
            for part in multipart_parts(response):
                found[_sop_uid(part)] = dataset_bytes(part)
    return found


def retrieved_instances(client: httpx.Client, root: str, batch: Batch, sops: set[str]) -> dict[str, bytes]:
    """Each of `sops` retrieved alone at `root`, as WADO-RS returns it (missing ones left out)."""
    found: dict[str, bytes] = {}
    for study, series in batch.studies.items():
        for series_uid, members in series.items():
            for sop in members & sops:
                response = client.get(f"{root}/studies/{study}/series/{series_uid}/instances/{sop}", headers=DICOM)
                if response.status_code == 200:
                    (part,) = multipart_parts(response)
                    found[sop] = dataset_bytes(part)
    return found


def _sop_uid(part10: bytes) -> str:
    return str(pydicom.dcmread(BytesIO(part10), stop_before_pixels=True).SOPInstanceUID)


def test_every_service_has_a_private_scratch_folder_and_no_data_folder_is_shared(stack: LocalStack) -> None:
    settings = json.loads((stack.folder / "config" / "application.stack.json").read_text())
    assert settings["backends"]["storage"] == "s3" and "data_dir" not in settings["storage"]
    assert not (stack.folder / "data").exists()
    services = {name: c for name, c in stack.components.items() if c.kind not in INFRASTRUCTURE}
    folders = [Path(c.env["DICOMCLOUD_STORAGE__DATA_DIR"]) for c in services.values()]
    assert len(set(folders)) == len(services) == 7
    assert all(folder.parent == stack.folder / "scratch" for folder in folders)
    kinds = [c.kind for c in stack.components.values()]
    assert kinds.count("seaweedfs") == 5, "master, two volume servers, filer and S3 gateway"


def test_400_instances_over_dimse_and_stow_come_back_byte_exact_through_nginx_and_from_each_server(
    stack: LocalStack, client: httpx.Client, tmp_path: Path
) -> None:
    batch = generate(tmp_path, studies=2, series=2, instances=100)
    by_dimse, by_stow = batch.files[::2], batch.files[1::2]
    host, port, ae_title = stack.dimse
    result = subprocess.run(
        ["storescu", "-aet", "S3SCU", "-aec", ae_title, host, str(port), *map(str, by_dimse)],
        capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    assert result.returncode == 0 and "Store Failed" not in result.stdout + result.stderr, result.stderr[-2000:]
    statuses = [response.status_code for response in stow(client, stack.dicomweb, by_stow)]
    assert statuses == [200] * len(statuses)

    expected = sent(batch)
    assert len(expected) == 400
    through_nginx = retrieved_instances(client, stack.dicomweb, batch, set(expected))
    assert sorted(sop for sop in expected if through_nginx.get(sop) != expected[sop]) == []
    for root in stack.server_urls:
        assert retrieved_series(client, root, batch) == expected, f"series retrieve from {root}"

    stored = bucket(stack)
    keys = [key for study in batch.studies for key in stored.list(f"default/{study}/") if key.endswith(".dcm")]
    assert len(keys) == 400
    leftovers = [p for p in (stack.folder / "scratch").glob("*/tmp/*") if p.is_file()]
    assert leftovers == [], "a scratch file outlived its upload"


def test_with_the_object_store_down_nothing_is_acknowledged_and_service_resumes_by_itself(
    stack: LocalStack, client: httpx.Client, tmp_path: Path
) -> None:
    batch = generate(tmp_path, studies=1, series=1, instances=2)
    by_dimse, by_stow = batch.files[:1], batch.files[1:]
    storescp, servers = stack.pid("storescp"), [stack.pid(f"server-{n}") for n in (1, 2)]
    stack.kill("seaweedfs-s3", signal.SIGKILL)

    (status,) = store_statuses(stack.dimse, by_dimse)
    assert status & 0xFF00 == OUT_OF_RESOURCES, f"C-STORE answered 0x{status:04X}"
    (response,) = stow(client, stack.dicomweb, by_stow)
    assert response.status_code == 503 and FAILED_SOP_SEQUENCE in response.json(), response.text[:300]
    assert retrieved_instances(client, stack.dicomweb, batch, batch.sop_uids) == {}
    found = client.get(f"{stack.dicomweb}/instances", params={"StudyInstanceUID": next(iter(batch.studies))})
    assert found.status_code in (200, 204) and not (found.content and found.json()), "indexed without its object"

    stack.start("seaweedfs-s3")
    assert store_statuses(stack.dimse, by_dimse) == [0x0000]
    assert [r.status_code for r in stow(client, stack.dicomweb, by_stow)] == [200]
    assert retrieved_instances(client, stack.dicomweb, batch, batch.sop_uids) == sent(batch)
    assert (stack.pid("storescp"), [stack.pid(f"server-{n}") for n in (1, 2)]) == (storescp, servers)


def test_a_volume_server_killed_during_ingest_loses_nothing_that_was_acknowledged(
    stack: LocalStack, client: httpx.Client, tmp_path: Path
) -> None:
    """With replication 001 on two volume servers, a write needs both: while one is dead the store takes no write
    (C-STOREs fail, each after the filer's 30 s wait for a writable volume) but every acknowledged object is read
    from its other copy; once the server is back, ingest goes on."""
    batch = generate(tmp_path, studies=2, series=2, instances=30)
    sender = Sender(stack.dimse, batch.files).start()
    sender.wait_acknowledged(len(batch.files) // 3)
    stack.kill("seaweedfs-volume-2", signal.SIGKILL)
    before = sender.acknowledged
    expected = sent(batch)
    assert retrieved_instances(client, stack.dicomweb, batch, before) == {sop: expected[sop] for sop in before}
    wait_until(lambda: len(sender.statuses) > len(before) + 1, DIMSE_TIMEOUT, "a C-STORE answered during the outage")
    stack.start("seaweedfs-volume-2")
    statuses = sender.join()
    assert all(status >= 0 for status in statuses.values()), "an association dropped instead of a failure status"
    assert {status & 0xFF00 for status in statuses.values() if status not in STORED} <= {OUT_OF_RESOURCES}
    assert statuses[sender.order[-1]] in STORED, "ingest did not go on once the volume server was back"
    acknowledged = sender.acknowledged
    assert before < acknowledged
    retrieved = retrieved_instances(client, stack.dicomweb, batch, acknowledged)
    assert retrieved == {sop: expected[sop] for sop in acknowledged}, "an acknowledged instance was lost"
