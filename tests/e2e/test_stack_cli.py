"""`dicomcloud stack up/down` as a developer runs it: every server real, every service its own process.

One stack for the module (starting it is the expensive part); the last test stops it.
"""

from __future__ import annotations

import functools
import json
import shutil
import ssl
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka.admin import AdminClient
from pydicom import dcmread
from pydicom.data import get_testdata_file

from dicomcloud.cli import bus_topics
from dicomcloud.stack import LocalStack
from dicomcloud.stack.local import process_exists

from .conftest import wait_until

pytestmark = [pytest.mark.stack, pytest.mark.slow]

SERVICES = ["storescp", "consumer-1", "consumer-2", "webworker", "transcoder", "server-1", "server-2"]
NAMES = ["postgres", "redis", "kafka-1", "kafka-2", "kafka-3", "nginx", *SERVICES]
FILES = ["CT_small.dcm", "MR_small.dcm", "rtdose.dcm"]
DICOM_JSON = {"Accept": "application/dicom+json"}


def dicomcloud(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "dicomcloud", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    """Under root, PostgreSQL runs as an unprivileged user that must reach the stack's folder."""
    path = Path(tempfile.mkdtemp(prefix="dicomcloud-stack-"))
    path.chmod(0o755)
    up = dicomcloud("stack", "up", "--dir", str(path), timeout=900)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield path
    finally:
        dicomcloud("stack", "down", "--dir", str(path), timeout=300)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def described(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "stack.json").read_text())
    return data


def test_stack_json_names_every_endpoint_and_process_and_only_its_owner_reads_it(
    folder: Path, described: dict[str, Any]
) -> None:
    assert stat.S_IMODE((folder / "stack.json").stat().st_mode) == 0o600
    assert described["dicomweb"].startswith("https://127.0.0.1:") and described["dicomweb"].endswith("/dicom-web")
    assert Path(described["ca_file"]).is_file()
    assert described["dimse"]["host"] == "127.0.0.1" and described["dimse"]["ae_title"] == "DICOMCLOUD"
    assert described["postgres"].startswith("postgresql://")
    assert described["redis"].startswith("redis://127.0.0.1:")
    assert len(described["kafka"].split(",")) == 3
    assert list(described["services"]) == NAMES
    for name, service in described["services"].items():
        assert service["pid"] > 0 and service["command"] and service["ports"], name
        assert Path(service["log"]).is_file(), name
        assert service["log"].startswith(str(folder)), name


def test_every_service_answers_ready(described: dict[str, Any]) -> None:
    for name in SERVICES:
        port = described["services"][name]["ports"]["ops"]
        response = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=10)
        assert response.status_code == 200, (name, response.text)


def test_init_created_every_topic_replicated_on_the_three_brokers(described: dict[str, Any]) -> None:
    metadata = AdminClient({"bootstrap.servers": described["kafka"]}).list_topics(timeout=30)
    for topic in bus_topics():
        assert topic in metadata.topics, topic
        for partition in metadata.topics[topic].partitions.values():
            assert len(partition.replicas) == 3, topic


def test_instances_sent_with_storescu_are_queryable_through_nginx_and_through_each_server(
    described: dict[str, Any],
) -> None:
    paths = [str(get_testdata_file(name)) for name in FILES]
    dimse = described["dimse"]
    command = ["storescu", "-aec", dimse["ae_title"], "-to", "60", dimse["host"], str(dimse["port"]), *paths]
    stored = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert stored.returncode == 0, stored.stderr
    wanted = {str(dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in paths}
    ca = ssl.create_default_context(cafile=described["ca_file"])
    through_nginx = httpx.Client(base_url=described["dicomweb"], verify=ca, timeout=30)
    clients = [through_nginx, *(httpx.Client(base_url=url, timeout=30) for url in described["server_urls"])]
    for client in clients:
        with client:
            wait_until(functools.partial(finds_all, client, wanted), 180, f"the instances through {client.base_url}")


def finds_all(client: httpx.Client, wanted: set[str]) -> bool:
    response = client.get("/instances", headers=DICOM_JSON, params={"includefield": "00080018"})
    assert response.status_code in (200, 204), response.text
    found = {item["00080018"]["Value"][0] for item in (response.json() if response.content else [])}
    return wanted <= found


def test_a_second_stack_up_in_a_running_stacks_folder_is_refused(folder: Path) -> None:
    again = dicomcloud("stack", "up", "--dir", str(folder), timeout=120)
    assert again.returncode == 1
    assert "stack down" in again.stderr


def test_a_killed_consumer_is_recorded_stopped_and_starts_again_on_its_ports(folder: Path) -> None:
    stack = LocalStack.load(folder)
    ports = stack.components["consumer-1"].ports
    stack.kill("consumer-1")
    assert stack.pid("consumer-1") is None and not stack.ready("consumer-1")
    assert LocalStack.load(folder).pid("consumer-1") is None
    stack.start("consumer-1")
    assert stack.ready("consumer-1")
    assert LocalStack.load(folder).components["consumer-1"].ports == ports


def test_stack_down_leaves_no_process_alive(folder: Path) -> None:
    stack = LocalStack.load(folder)
    pids = [stack.pid(name) for name in stack.names()]
    assert None not in pids
    down = dicomcloud("stack", "down", "--dir", str(folder), timeout=300)
    assert down.returncode == 0, down.stdout + down.stderr
    assert [pid for pid in pids if process_exists(pid)] == []
    assert processes_naming(folder) == []
    after = json.loads((folder / "stack.json").read_text())
    assert all(service["pid"] is None for service in after["services"].values())




def processes_naming(folder: Path) -> list[str]:
    """Command lines of running processes that mention the stack's folder (PostgreSQL, Kafka, Nginx...)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(folder) in text:
            found.append(text)
    return found
