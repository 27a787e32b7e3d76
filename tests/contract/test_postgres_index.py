"""What only the PostgreSQL index must get right: an object it cannot store is not an outage; it outlives a restart."""

from __future__ import annotations

import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_index import put, q, uids

from dicomcloud.adapters.postgres_index import PostgresIndex
from dicomcloud.errors import InvalidInput
from dicomcloud.stack.servers import Server, start_postgres, stop_pid

pytestmark = pytest.mark.stack


def test_a_value_postgresql_cannot_store_is_invalid_input_so_the_store_refuses_that_object_only(
    postgres_scratch_dsn: str,
) -> None:
    index = PostgresIndex(postgres_scratch_dsn, pool_size=2)
    try:
        with pytest.raises(InvalidInput):
            put(index, "1.2.3", "1.2.3.1", "1.2.3.1.1", PatientName="Doe\x00John")
        put(index, "1.2.3", "1.2.3.1", "1.2.3.1.2")
        assert uids(index, q("instance")) == ["1.2.3.1.2"]
    finally:
        index.close()


@pytest.fixture
def own_postgres() -> Iterator[Server]:
    # Under the system temp folder, not pytest's private tree: PostgreSQL may run as another user.
    folder = Path(tempfile.mkdtemp(prefix="dicomcloud-pg-restart-"))
    folder.chmod(0o755)
    server = start_postgres(folder)
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


def test_the_index_answers_again_after_postgresql_restarts_without_being_reopened(own_postgres: Server) -> None:
    index = PostgresIndex(own_postgres.url, pool_size=2)
    try:
        put(index, "1.2.4", "1.2.4.1", "1.2.4.1.1")
        stop_pid(own_postgres.pid, signal.SIGINT, process=own_postgres.process)
        restarted = start_postgres(own_postgres.folder, own_postgres.port)
        own_postgres.pid, own_postgres.process = restarted.pid, restarted.process
        put(index, "1.2.4", "1.2.4.1", "1.2.4.1.2")
        assert uids(index, q("instance")) == ["1.2.4.1.1", "1.2.4.1.2"]
    finally:
        index.close()
