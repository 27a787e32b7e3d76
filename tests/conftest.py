"""Real servers and test certificates shared by the whole session: started (or written) once, stopped at the end."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomcloud.certs import write_pki
from dicomcloud.stack.kafka import KafkaCluster, start_kafka
from dicomcloud.stack.seaweedfs import SeaweedFS, start_seaweedfs
from dicomcloud.stack.servers import Server, start_postgres, start_redis


def server_folder(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder for a server's data. Under root, PostgreSQL runs as an unprivileged user that cannot
    enter pytest's private temp tree, so its folder is made directly under the system temp dir."""
    if os.geteuid() == 0:
        return Path(tempfile.mkdtemp(prefix=f"dicomcloud-{name}-"))
    return tmp_path_factory.mktemp(name)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = server_folder(tmp_path_factory, "postgres")
    server = start_postgres(folder)
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """One KRaft broker (also its controller): the contract tests need no replication."""
    cluster = start_kafka(tmp_path_factory.mktemp("kafka"), brokers=1)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One `weed server` process (master, volume server, filer and S3 gateway): an S3 endpoint for contract tests."""
    weed = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    yield weed
    weed.stop()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA with a server certificate for localhost/127.0.0.1 and a client certificate `STORESCU`."""
    out = tmp_path_factory.mktemp("pki")
    write_pki(out, hosts=["localhost", "127.0.0.1"], clients=["STORESCU"])
    return out
