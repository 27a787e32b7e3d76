"""The archive's processes on a SeaweedFS bucket (the session's `weed server`): a service refuses to start on
credentials the store rejects, `dicomcloud storage migrate --to s3` copies an archive on the filesystem into
the bucket, resumable, every object verified by digest, after which the same archive serves its instances from
the bucket; the hashed key layout is recorded in the bucket like on a filesystem."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from tests.unit.support import make_archive, staged, store, write_ct

from dicomcloud.adapters.fs_storage import FsStorage
from dicomcloud.adapters.s3_storage import S3Storage, create_bucket
from dicomcloud.archive.keys import LAYOUT_MARKER, uid_hash
from dicomcloud.archive.retrieve import StoredInstance
from dicomcloud.config import S3Settings
from dicomcloud.stack.seaweedfs import SeaweedFS

from .conftest import start_archive

pytestmark = [pytest.mark.e2e]

FILES = ["CT_small.dcm", "MR_small.dcm", "rtdose.dcm"]


def dicomcloud(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "dicomcloud", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, env={**os.environ, **env})


def s3_environment(settings: S3Settings) -> dict[str, str]:
    return {
        "DICOMCLOUD_STORAGE__S3__ENDPOINT": settings.endpoint,
        "DICOMCLOUD_STORAGE__S3__BUCKET": settings.bucket,
        "DICOMCLOUD_STORAGE__S3__KEY_PREFIX": settings.key_prefix,
        "DICOMCLOUD_STORAGE__S3__ACCESS_KEY_ID": settings.access_key_id,
        "DICOMCLOUD_STORAGE__S3__SECRET_ACCESS_KEY": settings.secret_access_key,
    }


def test_a_service_refuses_to_start_on_credentials_the_store_rejects_and_says_so(
    seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    settings = seaweedfs.settings("refusing")
    create_bucket(settings)
    wrong = {**s3_environment(settings), "DICOMCLOUD_STORAGE__S3__SECRET_ACCESS_KEY": "not-the-secret-key"}
    started = dicomcloud("server", "--data", str(tmp_path), env={"DICOMCLOUD_BACKENDS__STORAGE": "s3", **wrong})
    assert started.returncode == 1
    assert f"refused the access key {settings.access_key_id} for bucket refusing" in started.stderr
    assert "SignatureDoesNotMatch" in started.stderr and "not-the-secret-key" not in started.stderr


def test_storage_migrate_copies_every_object_resumes_where_it_stopped_and_the_archive_then_reads_the_bucket(
    seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    data = tmp_path / "archive"
    files = [str(get_testdata_file(name)) for name in FILES]
    imported = dicomcloud("import", "--data", str(data), *files, env={})
    assert imported.returncode == 0, imported.stderr[-2000:]
    settings = seaweedfs.settings("migrated", key_prefix=f"m{uuid.uuid4().hex[:8]}")
    s3_env = s3_environment(settings)
    local = FsStorage(root=data / "storage", staging=data / "tmp")
    keys = local.list("")
    assert len([key for key in keys if key.endswith(".dcm")]) == len(FILES)

    first = dicomcloud("storage", "migrate", "--to", "s3", "--data", str(data), env=s3_env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert f"{len(keys)} objects: {len(keys)} copied, 0 already there; verified, 0 differ" in first.stdout
    bucket = S3Storage(settings, tmp_path / "scratch")
    assert bucket.list("") == keys
    assert all(bucket.read(key) == local.read(key) for key in keys)

    bucket.delete([keys[0]])  # as if the first run had stopped before that object
    again = dicomcloud("storage", "migrate", "--to", "s3", "--data", str(data), env=s3_env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{len(keys)} objects: 1 copied, {len(keys) - 1} already there; verified, 0 differ" in again.stdout

    original = next(key for key in keys if key.endswith(".dcm"))
    bucket.write(original, bytes(len(local.read(original))))  # same size, other bytes: only the digest tells
    differs = dicomcloud("storage", "migrate", "--to", "s3", "--data", str(data), env=s3_env)
    assert differs.returncode == 1 and "1 differ" in differs.stdout
    bucket.write(original, local.read(original))

    for key in keys:
        (data / "storage" / key).unlink()  # nothing left on disk: every read below comes from the bucket
    archive = start_archive(tmp_path, "archive", {"DICOMCLOUD_BACKENDS__STORAGE": "s3", **s3_env})
    try:
        _, study, series, name = original.split("/")
        response = httpx.get(
            f"{archive.dicomweb_url()}/studies/{study}/series/{series}/instances/{name.removesuffix('.dcm')}",
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
            timeout=30,
        )
        assert response.status_code == 200, response.text[:300]
        assert bucket.read(original) in response.content
    finally:
        archive.stop()


def test_the_hashed_layout_on_s3_places_objects_under_hashed_keys_and_a_changed_setting_is_refused(
    seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    settings = seaweedfs.settings("hashed", key_prefix=f"h{uuid.uuid4().hex[:8]}")
    create_bucket(settings)
    env = {"DICOMCLOUD_BACKENDS__STORAGE": "s3", **s3_environment(settings)}
    path = get_testdata_file("CT_small.dcm")
    imported = dicomcloud(
        "import", "--data", str(tmp_path), str(path), env={**env, "DICOMCLOUD_STORAGE__KEY_LAYOUT": "hashed"}
    )
    assert imported.returncode == 0, imported.stderr[-2000:]
    ds = pydicom.dcmread(path)
    uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    original = f"default/{ds.StudyDate[:4]}/{ds.StudyDate[4:6]}/{ds.StudyDate[6:]}/" + "/".join(map(uid_hash, uids))
    bucket = S3Storage(settings, tmp_path / "scratch")
    assert bucket.read(original + ".dcm") == Path(path).read_bytes()
    assert LAYOUT_MARKER in bucket.list("")

    refused = dicomcloud("server", "--data", str(tmp_path), env=env)
    assert refused.returncode == 1
    assert "keeps its objects in the 'hashed' key layout" in refused.stderr


def test_what_each_operation_asks_of_the_store_counted_by_the_store(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    """A stored instance is one PUT of its original and one of its metadata entry, alone or in a batch, and nothing
    else; a frame is one ranged GET; choosing what a retrieve sends reads nothing, and sending an instance is one
    GET. SeaweedFS's own request counter tells (settled: it counts a request once its handler has returned)."""
    settings = seaweedfs.settings("counted")
    create_bucket(settings)
    archive = make_archive(tmp_path / "data", backends={"storage": "s3"}, storage={"s3": vars(settings)})
    study, series = generate_uid(), generate_uid()
    files = [write_ct(tmp_path / f"{n}.dcm", study, series, generate_uid()) for n in range(5)]

    def requests_of(action: Callable[[], object]) -> dict[tuple[str, str], int]:
        before = settled_requests(seaweedfs, "counted")
        action()
        return dict(settled_requests(seaweedfs, "counted") - before)

    assert requests_of(lambda: store(archive, files[0])) == {("PUT", "200"): 2}
    batch = [staged(archive, path) for path in files[1:]]
    stowed = requests_of(lambda: archive.store.store_many(batch, tenant_id="default", source="stow"))
    assert stowed == {("PUT", "200"): 2 * len(batch)}

    locations = archive.retrieve.instances("default", study, series)
    index = archive.retrieve.frame_index(locations[0])  # the series document, composed from the entries once
    assert requests_of(lambda: archive.retrieve.frames(locations[0], index, [1])) == {("GET", "206"): 1}
    chosen: list[StoredInstance] = []
    assert requests_of(lambda: chosen.extend(archive.retrieve.stored(locations, None))) == {}

    def send_all() -> None:
        for instance in chosen:
            with archive.runtime.storage.open(instance.key) as stream:
                assert len(stream.read()) == instance.size

    assert requests_of(send_all) == {("GET", "206"): len(files)}


def settled_requests(weed: SeaweedFS, bucket: str) -> Counter[tuple[str, str]]:
    """The bucket's request counts once two readings a little apart agree."""
    counts = weed.s3_requests(bucket)
    while True:
        time.sleep(0.1)
        again = weed.s3_requests(bucket)
        if again == counts:
            return counts
        counts = again
