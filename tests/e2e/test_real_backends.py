"""`dicomcloud up` on the production index and cache: PostgreSQL and Redis, real servers.

The archive runs on a database of its own in the session's PostgreSQL and on a Redis of its own,
which the test stops halfway: from then on every answer must still be right (the cache is only
ever a shortcut), including for an instance stored while Redis is down.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from dicomcloud.stack.servers import Server, start_redis

from .conftest import Archive

pytestmark = [pytest.mark.e2e, pytest.mark.stack]


@pytest.fixture
def archive_database(postgres_server: Server) -> Iterator[str]:
    name = f"e2e{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield f"{postgres_server.url.rsplit('/', 1)[0]}/{name}"
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Server]:
    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()


def ct_slice(sop_suffix: str = "") -> Dataset:
    """pydicom's CT_small, as another instance of its series when `sop_suffix` is given."""
    dataset = dcmread(get_testdata_file("CT_small.dcm"))
    dataset.SOPInstanceUID += sop_suffix
    return dataset


def sop_uids_of_series_metadata(archive: Archive, study: str, series: str) -> list[str]:
    return sorted(item["00080018"]["Value"][0] for item in archive.client().retrieve_series_metadata(study, series))


def test_stow_qido_and_metadata_on_postgres_and_redis_still_answer_with_redis_stopped(
    archive_factory: Callable[..., Archive], archive_database: str, own_redis: Server
) -> None:
    archive = archive_factory(
        f"real-backends-{uuid.uuid4().hex[:6]}",
        {
            "DICOMCLOUD_BACKENDS__INDEX": "postgres",
            "DICOMCLOUD_BACKENDS__POSTGRES_DSN": archive_database,
            "DICOMCLOUD_BACKENDS__CACHE": "redis",
            "DICOMCLOUD_BACKENDS__REDIS_URL": own_redis.url,
        },
    )
    try:
        ct, second = ct_slice(), ct_slice(".2")
        study, series = str(ct.StudyInstanceUID), str(ct.SeriesInstanceUID)
        archive.client().store_instances([ct, second])
        archive.wait_indexed(2, StudyInstanceUID=study)

        def answers() -> tuple[list[str], int, list[str]]:
            (found,) = archive.client().search_for_studies(search_filters={"StudyInstanceUID": study})
            return (
                found["0020000D"]["Value"],
                found["00201208"]["Value"][0],
                sop_uids_of_series_metadata(archive, study, series),
            )

        before = answers()
        assert before == ([study], 2, sorted([ct.SOPInstanceUID, second.SOPInstanceUID]))
        with psycopg.connect(archive_database) as conn:
            assert conn.execute("SELECT num_instances FROM study").fetchall() == [(2,)]
        assert redis.Redis.from_url(own_redis.url).keys("dicomcloud:*"), "nothing was cached in Redis"

        own_redis.stop()
        assert answers() == before
        third = ct_slice(".3")
        archive.client().store_instances([third])
        archive.wait_indexed(3, StudyInstanceUID=study)
        uids, count, metadata = answers()
        assert (uids, count) == ([study], 3)
        assert metadata == sorted([ct.SOPInstanceUID, second.SOPInstanceUID, third.SOPInstanceUID])
    finally:
        archive.stop()
