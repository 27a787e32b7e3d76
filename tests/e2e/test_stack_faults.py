"""Issue 3's "Done when" on the distributed stack: real PostgreSQL, Redis, a 3-broker Kafka cluster,
Nginx, the SCP, two consumers in one group, the webworker and two wado-servers, each its own process.

One stack serves the module (starting it is the expensive part). Each test breaks one thing during an
ingest, puts it back, and checks with real clients that nothing acknowledged was lost or doubled:
SQL on PostgreSQL, QIDO-RS through Nginx and through each wado-server. Every test leaves the stack
whole again (the `whole_stack` fixture restarts whatever a failed test left stopped).
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest
import redis

from bench.synthetic import ct_series, write_part10
from dicomcloud.stack import LocalStack

from .conftest import wait_until
from .dicom_clients import multipart_parts, stow_body
from .stack_support import (
    STORED,
    Batch,
    Sender,
    assert_indexed_exactly_once,
    full_stack,
    generate,
    http_client,
    store_statuses,
)

pytestmark = [pytest.mark.e2e, pytest.mark.stack, pytest.mark.timeout(1800)]

BROKERS = ("kafka-1", "kafka-2", "kafka-3")


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with full_stack("faults") as local:
        yield local


def start_together(stack: LocalStack, names: list[str]) -> None:
    """Start services at once: a KRaft quorum is not ready until a majority of its nodes runs. Each
    thread is let go once the previous one has its process (LocalStack records a start in one file)."""
    errors: list[BaseException] = []

    def start(name: str) -> None:
        try:
            stack.start(name)
        except BaseException as exc:
            # Re-raised in the test's own thread below.
            errors.append(exc)

    threads = []
    for name in names:
        thread = threading.Thread(target=start, args=(name,))
        thread.start()
        threads.append(thread)
        wait_until(partial(spawned, stack, name, thread), 120, f"{name} to be spawned")
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def spawned(stack: LocalStack, name: str, starter: threading.Thread) -> bool:
    return stack.pid(name) is not None or not starter.is_alive()


@pytest.fixture(autouse=True)
def whole_stack(stack: LocalStack) -> Iterator[None]:
    """After each test every service runs again, even when the test failed halfway."""
    yield
    stopped = [name for name in stack.names() if stack.pid(name) is None]
    start_together(stack, [name for name in stopped if name in BROKERS])
    for name in stopped:
        if name not in BROKERS:
            stack.start(name)


@pytest.fixture(scope="module")
def client(stack: LocalStack) -> Iterator[httpx.Client]:
    with http_client(stack.ca_file) as http:
        yield http


def roots(stack: LocalStack) -> list[str]:
    """Nginx's DICOMweb root and each wado-server's own."""
    return [stack.dicomweb, *stack.server_urls]


def check(stack: LocalStack, client: httpx.Client, batch: Batch, acknowledged: set[str]) -> None:
    assert_indexed_exactly_once(stack.postgres_dsn, roots(stack), client, batch, acknowledged)


def test_1000_instances_sent_by_storescu_are_queryable_through_nginx_and_each_server_with_correct_counts(
    stack: LocalStack, client: httpx.Client, tmp_path: Path
) -> None:
    batch = generate(tmp_path, studies=4, series=5, instances=50)
    assert len(batch.files) == 1000
    host, port, ae_title = stack.dimse
    result = subprocess.run(
        ["storescu", "-aet", "FAULTSCU", "-aec", ae_title, "-xe", host, str(port), *map(str, batch.files)],
        capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Store Failed" not in result.stdout + result.stderr
    check(stack, client, batch, batch.sop_uids)


def mid_ingest(stack: LocalStack, tmp_path: Path) -> tuple[Batch, Sender]:
    """A pynetdicom sender of 300 instances, returned once a third of them is acknowledged: the moment to break
    something."""
    batch = generate(tmp_path, studies=3, series=2, instances=50)
    sender = Sender(stack.dimse, batch.files).start()
    sender.wait_acknowledged(len(batch.files) // 3)
    return batch, sender


def test_kill_9_of_a_consumer_during_ingest_leaves_every_acknowledged_instance_indexed_exactly_once(
    stack: LocalStack, client: httpx.Client, tmp_path: Path
) -> None:
    batch, sender = mid_ingest(stack, tmp_path)
    stack.kill("consumer-1", signal.SIGKILL)
    statuses = sender.join()
    check(stack, client, batch, sender.acknowledged)
    assert set(statuses.values()) <= STORED, "the SCP needs no consumer to acknowledge"
    stack.start("consumer-1")
    assert stack.ready("consumer-1")


def test_a_kafka_broker_killed_during_ingest_loses_nothing_and_ingest_continues_on_the_others(
    stack: LocalStack, client: httpx.Client, tmp_path: Path
) -> None:
    batch, sender = mid_ingest(stack, tmp_path)
    stack.kill("kafka-2", signal.SIGKILL)
    sender.join()
    last = sender.order[-1]
    assert sender.statuses[last] in STORED, "the C-STOREs after the broker's death were refused"
    check(stack, client, batch, sender.acknowledged)
    stack.start("kafka-2")


def test_with_all_kafka_brokers_down_c_store_fails_and_after_their_restart_it_succeeds(
    stack: LocalStack, client: httpx.Client, tmp_path: Path
) -> None:
    before = generate(tmp_path / "before", studies=1, series=1, instances=5)
    assert set(store_statuses(stack.dimse, before.files)) <= STORED
    for name in BROKERS:
        stack.kill(name, signal.SIGKILL)
    during = generate(tmp_path / "during", studies=1, series=1, instances=1)
    (status,) = store_statuses(stack.dimse, during.files)
    assert status >= 0, "the SCP must answer with a failure status, not drop the association"
    assert status not in STORED, hex(status)
    start_together(stack, list(BROKERS))
    assert set(store_statuses(stack.dimse, during.files)) <= STORED
    check(stack, client, before, before.sop_uids)
    check(stack, client, during, during.sop_uids)


def test_postgresql_restarted_during_ingest_consumers_retry_and_catch_up_losing_nothing(
    stack: LocalStack, client: httpx.Client, tmp_path: Path
) -> None:
    batch, sender = mid_ingest(stack, tmp_path)
    # PostgreSQL's fast shutdown (SIGINT), then a start on the same data.
    stack.kill("postgres", signal.SIGINT)
    stack.start("postgres")
    sender.join()
    assert sender.acknowledged, "nothing was acknowledged"
    check(stack, client, batch, sender.acknowledged)


# -- Redis stopped -------------------------------------------------------------------------------


def endpoint_answers(client: httpx.Client, root: str, batch: Batch) -> dict[str, tuple[int, str, bytes]]:
    """Every read endpoint on one instance of `batch`: status, media type and body (JSON as sorted text)."""
    study = next(iter(batch.studies))
    series = next(iter(batch.studies[study]))
    sop = sorted(batch.studies[study][series])[0]
    base = f"{root}/studies/{study}"
    requests = {
        "qido studies": (f"{root}/studies?StudyInstanceUID={study}", "application/dicom+json"),
        "qido series": (f"{root}/series?StudyInstanceUID={study}", "application/dicom+json"),
        "qido instances": (f"{root}/instances?StudyInstanceUID={study}&includefield=all", "application/dicom+json"),
        "qido study's series": (f"{base}/series", "application/dicom+json"),
        "qido study's instances": (f"{base}/instances", "application/dicom+json"),
        "qido series' instances": (f"{base}/series/{series}/instances", "application/dicom+json"),
        "study metadata": (f"{base}/metadata", "application/dicom+json"),
        "series metadata": (f"{base}/series/{series}/metadata", "application/dicom+json"),
        "instance metadata": (f"{base}/series/{series}/instances/{sop}/metadata", "application/dicom+json"),
        "instance": (
            f"{base}/series/{series}/instances/{sop}",
            'multipart/related; type="application/dicom"; transfer-syntax=*',
        ),
        "frame": (
            f"{base}/series/{series}/instances/{sop}/frames/1",
            'multipart/related; type="application/octet-stream"; transfer-syntax=*',
        ),
        "rendered": (f"{base}/series/{series}/instances/{sop}/rendered", "image/png"),
    }
    answers = {}
    for name, (url, accept) in requests.items():
        response = client.get(url, headers={"Accept": accept})
        body = response.content
        if response.headers.get("content-type", "").startswith("application/dicom+json"):
            body = _canonical_json(response)
        elif response.headers.get("content-type", "").startswith("multipart/related"):
            body = b"".join(multipart_parts(response))
        answers[name] = (response.status_code, response.headers.get("content-type", "").split(";")[0], body)
    return answers


def _canonical_json(response: httpx.Response) -> bytes:
    """DICOM JSON with its list order and key order fixed, so equal content compares equal."""
    return "\n".join(sorted(json.dumps(item, sort_keys=True) for item in response.json())).encode()


def test_with_redis_stopped_every_endpoint_still_answers_correctly(
    stack: LocalStack, client: httpx.Client, tmp_path: Path
) -> None:
    batch = generate(tmp_path, studies=1, series=1, instances=3)
    assert set(store_statuses(stack.dimse, batch.files)) <= STORED
    check(stack, client, batch, batch.sop_uids)
    wait_documents(stack, client, batch)
    # With Redis up, and asked twice, so the second answers come from the cache where there is one.
    expected = {root: endpoint_answers(client, root, batch) for root in roots(stack)}
    for root in roots(stack):
        assert all(status == 200 for status, _, _ in expected[root].values()), (root, expected[root])
        assert endpoint_answers(client, root, batch) == expected[root]
    stack.kill("redis", signal.SIGTERM)
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(stack.redis_url, socket_connect_timeout=2).ping()
    try:
        for root in roots(stack):
            assert endpoint_answers(client, root, batch) == expected[root], root
        both = stow_into(stack, client, batch, tmp_path)
        check(stack, client, both, both.sop_uids)
        wait_documents(stack, client, both)
    finally:
        stack.start("redis")
    check(stack, client, both, both.sop_uids)


def stow_into(stack: LocalStack, client: httpx.Client, batch: Batch, folder: Path) -> Batch:
    """One new instance in a new series of the batch's one study, stored through Nginx with STOW-RS;
    the batch with it."""
    ((study, tree),) = batch.studies.items()
    (ds,) = ct_series(1, rows=64, columns=64, study_uid=study, patient_id=f"FAULTS-{study[-8:]}")
    path = folder / "stowed.dcm"
    write_part10(ds, path)
    body, content_type = stow_body([path.read_bytes()])
    response = client.post(
        f"{stack.dicomweb}/studies",
        content=body,
        headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
    )
    assert response.status_code == 200, response.text[:500]
    sop, series = str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID)
    return Batch([*batch.files, path], {study: {**tree, series: {sop}}}, {**batch.sop_of, path: sop})


def wait_documents(stack: LocalStack, client: httpx.Client, batch: Batch) -> None:
    """Until WADO-RS series metadata lists every instance of the batch, at every root (the webworker built them)."""

    def built() -> bool:
        for root in roots(stack):
            for study, tree in batch.studies.items():
                for series, sops in tree.items():
                    response = client.get(
                        f"{root}/studies/{study}/series/{series}/metadata", headers={"Accept": "application/dicom+json"}
                    )
                    if response.status_code != 200 or len(response.json()) != len(sops):
                        return False
        return True

    wait_until(built, 300, "the series metadata documents")
