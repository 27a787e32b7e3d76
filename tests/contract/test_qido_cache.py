"""QIDO-RS results cached in the cache port never outlive a change to what they cover (each cache adapter)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset

from bench.synthetic import ct_series
from dicomcloud.adapters.memory_cache import MemoryCache
from dicomcloud.adapters.redis_cache import RedisCache
from dicomcloud.adapters.sqlite_index import SqliteIndex
from dicomcloud.archive.core import Archive
from dicomcloud.config import load_settings
from dicomcloud.dicom.query import Query
from dicomcloud.ports.cache import Cache
from dicomcloud.ports.index import Index
from dicomcloud.runtime import Runtime
from dicomcloud.web.app import create_app

PATIENT = "QIDO-CACHE"
BOUNDARY = "qido-cache-test"
SOP_UID, COUNT = "00080018", "00201208"  # SOPInstanceUID, NumberOfStudyRelatedInstances


@dataclass
class Served:
    """An archive and a DICOMweb client of it."""

    archive: Archive
    client: TestClient

    @property
    def index(self) -> Index:
        return self.archive.runtime.index

    def store(self, *datasets: Dataset) -> None:
        """STOW-RS: the archive indexes what it stores before it answers."""
        body = b""
        for ds in datasets:
            part = io.BytesIO()
            ds.save_as(part, enforce_file_format=True)
            body += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part.getvalue() + b"\r\n"
        body += f"--{BOUNDARY}--\r\n".encode()
        content_type = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'
        response = self.client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
        assert response.status_code == 200, response.text

    def instances(self, study: str) -> list[str]:
        response = self.client.get(f"/dicom-web/studies/{study}/instances")
        assert response.status_code == 200, response.text
        return sorted(found[SOP_UID]["Value"][0] for found in response.json())

    def study_counts(self) -> list[int]:
        response = self.client.get("/dicom-web/studies", params={"PatientID": PATIENT})
        assert response.status_code == 200, response.text
        return [found[COUNT]["Value"][0] for found in response.json()]


def open_archive(data: Path, cache: Cache) -> Iterator[Served]:
    runtime = Runtime.from_settings(load_settings(overrides={"storage": {"data_dir": str(data)}}, environ={}))
    runtime.cache = cache  # before the archive is built: its QIDO cache keeps the cache it is given
    archive = Archive(runtime)
    try:
        with TestClient(create_app(archive), base_url="http://archive.test") as client:
            yield Served(archive, client)
    finally:
        archive.close()


@pytest.fixture
def archive(cache: Cache, tmp_path: Path) -> Iterator[Served]:
    yield from open_archive(tmp_path / "data", cache)


def series(count: int, study: str | None = None, series_uid: str | None = None) -> list[Dataset]:
    return list(ct_series(count, rows=8, columns=8, patient_id=PATIENT, study_uid=study, series_uid=series_uid))


def searches_of(archive: Served, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tenants of every search that reaches the index from now on."""
    searched: list[str] = []
    search = archive.index.search

    def counted(tenant_id: str, query: Query) -> list[dict[str, Any]]:
        searched.append(tenant_id)
        return search(tenant_id, query)

    monkeypatch.setattr(archive.index, "search", counted)
    return searched


def test_an_unchanged_query_is_answered_from_the_cache(archive: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = series(2)
    archive.store(first, second)
    searched = searches_of(archive, monkeypatch)
    for _ in range(3):
        assert archive.instances(first.StudyInstanceUID) == sorted([first.SOPInstanceUID, second.SOPInstanceUID])
    assert searched == ["default"]


def test_a_memory_cache_sees_what_another_process_committed_to_the_index(tmp_path: Path) -> None:
    """`dicomcloud import` beside a running `up`: its commits reach the index, never this process's cache."""
    for archive in open_archive(tmp_path / "data", MemoryCache(max_bytes=1024**2)):
        first, second = series(2)
        archive.store(first, second)
        study = first.StudyInstanceUID
        both = sorted([first.SOPInstanceUID, second.SOPInstanceUID])
        assert (archive.instances(study), archive.study_counts()) == (both, [2])
        other_process = SqliteIndex(tmp_path / "data" / "index.sqlite")
        try:
            other_process.delete("default", study, first.SeriesInstanceUID, second.SOPInstanceUID)
        finally:
            other_process.close()
        assert (archive.instances(study), archive.study_counts()) == ([first.SOPInstanceUID], [1])


def test_a_stored_instance_shows_in_the_next_qido(archive: Served) -> None:
    (first,) = series(1)
    archive.store(first)
    study = first.StudyInstanceUID
    assert (archive.instances(study), archive.study_counts()) == ([first.SOPInstanceUID], [1])
    (second,) = series(1, study, first.SeriesInstanceUID)
    archive.store(second)
    assert archive.instances(study) == sorted([first.SOPInstanceUID, second.SOPInstanceUID])
    assert archive.study_counts() == [2]


def test_a_new_study_shows_in_the_next_tenant_wide_qido(archive: Served) -> None:
    archive.store(*series(1))
    assert archive.study_counts() == [1]
    archive.store(*series(3))
    assert sorted(archive.study_counts()) == [1, 3]


def test_a_deleted_instance_and_study_are_gone_from_the_next_qido(archive: Served) -> None:
    first, second = series(2)
    archive.store(first, second)
    study = first.StudyInstanceUID
    assert (len(archive.instances(study)), archive.study_counts()) == (2, [2])
    url = f"/dicom-web/studies/{study}/series/{first.SeriesInstanceUID}/instances/{second.SOPInstanceUID}"
    assert archive.client.delete(url).status_code == 204
    assert (archive.instances(study), archive.study_counts()) == ([first.SOPInstanceUID], [1])
    assert archive.client.delete(f"/dicom-web/studies/{study}").status_code == 204
    assert (archive.instances(study), archive.study_counts()) == ([], [])


def test_qido_answers_correctly_while_redis_is_down(tmp_path: Path) -> None:
    down = RedisCache("redis://127.0.0.1:1/0", timeout=0.2)  # nothing listens on port 1
    for archive in open_archive(tmp_path / "data", down):
        first, second = series(2)
        archive.store(first)
        assert archive.study_counts() == [1]
        archive.store(second)
        assert archive.instances(first.StudyInstanceUID) == sorted([first.SOPInstanceUID, second.SOPInstanceUID])
        assert archive.study_counts() == [2]
    down.close()
