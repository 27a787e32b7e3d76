"""An acknowledgement means "there": right after a STOW-RS 200 or a C-STORE success, with no sleep and no
retry, the instance is retrieved by WADO-RS, listed in its series metadata and in QIDO-RS instances of
its series, counted by QIDO-RS of its study, and found by C-FIND; right after a DELETE, it is gone from
every one of those answers. Shown on the embedded archive (`dicomcloud up`), with one worker process and with
two serving HTTP and DIMSE (each request on a new connection, so the two workers share the requests), on the
distributed stack (two wado-servers of two HTTP workers each behind Nginx, a wado-storescp of two DIMSE workers,
three Kafka brokers), there through Nginx and on
each wado-server alike, and on the stack with its objects in SeaweedFS (`stack up --storage s3`), where no
two services share a folder.

Real clients: dicomweb-client for DICOMweb, pynetdicom for C-STORE and C-FIND.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pynetdicom import AE, Association
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from bench.synthetic import ct_series, new_uid

from .conftest import Archive
from .stack_support import full_stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

PER_PROTOCOL = 30
STUDY_RELATED_INSTANCES = "00201208"
SOP_INSTANCE_UID = "00080018"


@dataclass
class Target:
    """Where to send (DICOMweb root, DIMSE) and every DICOMweb root to read back from."""

    send: str
    reads: list[str]
    dimse: tuple[str, int, str]
    ca_file: Path | None = None
    # Each request on a connection of its own, which any of several HTTP workers may accept.
    fresh_connections: bool = False
    clients: dict[str, DICOMwebClient] = field(default_factory=dict)

    def client(self, url: str) -> DICOMwebClient:
        if url not in self.clients:
            session = requests.Session()
            if self.fresh_connections:
                session.headers["Connection"] = "close"
            if self.ca_file is not None and url.startswith("https:"):
                # Or REQUESTS_CA_BUNDLE, where the environment sets it, would win over the session's CA.
                session.trust_env = False
                session.verify = str(self.ca_file)
            self.clients[url] = DICOMwebClient(url=url, session=session)
        return self.clients[url]


@pytest.fixture(scope="module")
def embedded(archive_factory: Callable[..., Archive]) -> Target:
    archive = archive_factory("read-your-writes")
    url = archive.dicomweb_url()
    return Target(send=url, reads=[url], dimse=("127.0.0.1", archive.dimse_port, "DICOMCLOUD"))


@pytest.fixture(scope="module")
def embedded_workers(archive_factory: Callable[..., Archive]) -> Target:
    archive = archive_factory(
        "read-your-writes-workers", {"DICOMCLOUD_HTTP__WORKERS": "2", "DICOMCLOUD_DIMSE__WORKERS": "2"}
    )
    url = archive.dicomweb_url()
    return Target(
        send=url, reads=[url], dimse=("127.0.0.1", archive.dimse_port, "DICOMCLOUD"), fresh_connections=True
    )


@pytest.fixture(scope="module")
def stack() -> Iterator[Target]:
    """Each wado-server with two HTTP workers, whose QIDO-RS answers are cached in Redis; the wado-storescp with
    two DIMSE workers."""
    with full_stack("read-your-writes", workers=2) as local:
        assert len(local.server_urls) == 2
        yield Target(
            send=local.dicomweb,
            reads=[local.dicomweb, *local.server_urls],
            dimse=local.dimse,
            ca_file=local.ca_file,
            fresh_connections=True,
        )


@pytest.fixture(scope="module")
def s3_stack() -> Iterator[Target]:
    """The stack with `--storage s3`: objects in SeaweedFS, each service with a private scratch folder."""
    with full_stack("read-your-writes-s3", storage="s3", brokers=1) as local:
        yield Target(
            send=local.dicomweb,
            reads=[local.dicomweb, *local.server_urls],
            dimse=local.dimse,
            ca_file=local.ca_file,
        )


@pytest.fixture(params=["embedded", "embedded workers", "stack", "s3 stack"])
def target(request: pytest.FixtureRequest) -> Target:
    if "stack" in request.param:
        request.applymarker(pytest.mark.stack)
    return request.getfixturevalue(request.param.replace(" ", "_"))  # type: ignore[no-any-return]


@pytest.fixture
def association(target: Target) -> Iterator[Association]:
    host, port, called = target.dimse
    ae = AE(ae_title="RYWSCU")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(host, port, ae_title=called)
    assert assoc.is_established
    yield assoc
    assoc.release()


def c_find(assoc: Association, study: str, sop: str) -> list[str]:
    """The SOP Instance UIDs an IMAGE-level C-FIND for `sop` in `study` answers with."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.StudyInstanceUID = study
    identifier.SeriesInstanceUID = ""
    identifier.SOPInstanceUID = sop
    found = []
    for status, answer in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
        assert status is not None and "Status" in status, "C-FIND got no response"
        if status.Status in (0xFF00, 0xFF01) and answer is not None:
            found.append(str(answer.SOPInstanceUID))
        else:
            assert status.Status == 0x0000, f"C-FIND failed with 0x{status.Status:04X}"
    return found


def study_count(client: DICOMwebClient, study: str) -> int:
    found = client.search_for_studies(
        search_filters={"StudyInstanceUID": study}, fields=["NumberOfStudyRelatedInstances"]
    )
    return int(found[0][STUDY_RELATED_INSTANCES]["Value"][0]) if found else 0


def listed(client: DICOMwebClient, study: str, series: str) -> set[str]:
    return {i[SOP_INSTANCE_UID]["Value"][0] for i in client.search_for_instances(study, series)}


def there(target: Target, assoc: Association, ds: Dataset, count: int) -> list[str]:
    """Every answer that does not show `ds` (and `count` instances in its study), from every read root."""
    study, series, sop = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    wrong = []
    for url in target.reads:
        client = target.client(url)
        retrieved = client.retrieve_instance(study, series, sop)
        if str(retrieved.SOPInstanceUID) != sop or retrieved.PixelData != ds.PixelData:
            wrong.append(f"{url}: WADO-RS retrieve of {sop}")
        if sop not in {m[SOP_INSTANCE_UID]["Value"][0] for m in client.retrieve_series_metadata(study, series)}:
            wrong.append(f"{url}: series metadata without {sop}")
        if sop not in listed(client, study, series):
            wrong.append(f"{url}: QIDO-RS instances of the series without {sop}")
        if study_count(client, study) != count:
            wrong.append(f"{url}: NumberOfStudyRelatedInstances {study_count(client, study)}, not {count}")
    if c_find(assoc, study, sop) != [sop]:
        wrong.append(f"C-FIND did not find {sop}")
    return wrong


def gone(target: Target, assoc: Association, ds: Dataset, count: int) -> list[str]:
    """Every answer that still shows `ds` (or does not count `count` left in its study)."""
    study, series, sop = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    wrong = []
    for url in target.reads:
        client = target.client(url)
        with pytest.raises(requests.HTTPError) as refused:
            client.retrieve_instance(study, series, sop)
        if refused.value.response.status_code != 404:
            wrong.append(f"{url}: WADO-RS retrieve of a deleted {sop}: {refused.value.response.status_code}")
        try:
            metadata = client.retrieve_series_metadata(study, series)
        except requests.HTTPError as exc:
            metadata = [] if exc.response.status_code == 404 else [{"error": exc.response.status_code}]
        if any(m.get(SOP_INSTANCE_UID, {}).get("Value") == [sop] for m in metadata):
            wrong.append(f"{url}: series metadata still lists {sop}")
        if sop in listed(client, study, series):
            wrong.append(f"{url}: QIDO-RS instances still list {sop}")
        if study_count(client, study) != count:
            wrong.append(f"{url}: NumberOfStudyRelatedInstances {study_count(client, study)}, not {count}")
    if c_find(assoc, study, sop):
        wrong.append(f"C-FIND still finds {sop}")
    return wrong


def test_an_acknowledged_instance_is_there_at_once_and_a_deleted_one_gone_at_once(
    target: Target, association: Association
) -> None:
    study = new_uid()
    by_stow = list(ct_series(PER_PROTOCOL, rows=32, columns=32, patient_id="RYW", study_uid=study, seed=1))
    by_c_store = list(ct_series(PER_PROTOCOL, rows=32, columns=32, patient_id="RYW", study_uid=study, seed=2))
    sender = target.client(target.send)
    wrong: list[str] = []
    count = 0
    for stowed, stored in zip(by_stow, by_c_store, strict=True):
        sender.store_instances([stowed])
        count += 1
        wrong += there(target, association, stowed, count)
        status = association.send_c_store(stored)
        assert status.Status == 0x0000, f"C-STORE failed with 0x{status.Status:04X}"
        count += 1
        wrong += there(target, association, stored, count)
    assert wrong == [], f"{len(wrong)} answers missed an acknowledged instance:\n" + "\n".join(wrong[:20])

    for ds in [*by_stow, *by_c_store]:
        sender.delete_instance(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
        count -= 1
        wrong += gone(target, association, ds, count)
    assert wrong == [], f"{len(wrong)} answers still showed a deleted instance:\n" + "\n".join(wrong[:20])
