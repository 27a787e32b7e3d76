"""`dicomcloud up` alone (no Nginx) is an archive a person can use from a browser: its home page leads to the
OHIF study list, a study uploaded through the viewer's Upload is listed and drawn, a study downloads from the
home page as a ZIP of the stored files, and one deleted there is gone. With auth on, the viewer shows nothing
without a token and the study with one, both ways it gets one: through its own OIDC sign-in (authorization code
with PKCE) against the test issuer on loopback, whose authorization endpoint approves or refuses at once (no
login form to fill in), and as a bearer token handed to it in its URL (`?token=`).
The browser resolves no name but the archive's loopback address, and every page (home, viewer, /docs) renders
from the archive's own files: no CDN.

The browser is driven by viewer_home.cjs (playwright-core from the npm cache, Debian's chromium).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.synthetic import ct_series, write_part10
from dicomcloud.stack.servers import OHIF_DIST
from unit.oidc import AUDIENCE, Issuer, rsa_key, serve_issuer

from .conftest import Archive
from .dicom_clients import stow, stow_body

pytestmark = pytest.mark.e2e

HERE = Path(__file__).parent
NODE_MODULES = OHIF_DIST.parents[1] / "node_modules"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TIMEOUT_MS = 180_000
# Chromium resolves no host name at all: a page that needs a CDN cannot get it.
OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"


def drive(driver: str, job: dict[str, Any]) -> list[dict[str, Any]]:
    """Run a browser driver on `job`; its JSON reports, one per line."""
    env = {**os.environ, "NODE_PATH": str(NODE_MODULES)}
    job = {"chromium": CHROMIUM, "timeoutMs": TIMEOUT_MS, "args": [OFFLINE], **job}
    command = ["node", str(HERE / driver), json.dumps(job)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800, check=False)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def part10_files(folder: Path, count: int, patient: str) -> tuple[str, list[Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    study = ""
    for index, ds in enumerate(ct_series(count, rows=128, columns=128, patient_name=patient, patient_id=patient)):
        study = str(ds.StudyInstanceUID)
        paths.append(folder / f"{index}.dcm")
        write_part10(ds, paths[-1])
    return study, paths


def study_uids(archive: Archive, headers: dict[str, str] | None = None) -> set[str]:
    response = httpx.get(f"{archive.dicomweb_url()}/studies", headers=headers, timeout=30)
    assert response.status_code in (200, 204), response.text
    return {study["0020000D"]["Value"][0] for study in (response.json() if response.status_code == 200 else [])}


@pytest.fixture(scope="module")
def viewer_archive(archive_factory: Callable[..., Archive]) -> Archive:
    assert (OHIF_DIST / "index.html").is_file(), f"the OHIF viewer is not at {OHIF_DIST}: run ./dev test"
    return archive_factory("viewer-home")


@pytest.fixture(scope="module")
def stored_studies(viewer_archive: Archive, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Two studies stored with STOW-RS before the browser starts: one to download, one to delete."""
    studies = {}
    for name in ("Zip^Download", "Delete^Me"):
        study, paths = part10_files(tmp_path_factory.mktemp(name.replace("^", "-")), 3, name)
        response = stow(viewer_archive.dicomweb_url(), [path.read_bytes() for path in paths])
        assert response.status_code == 200, response.text
        studies[study] = paths
    return studies


@pytest.fixture(scope="module")
def session(
    viewer_archive: Archive, stored_studies: dict[str, list[Path]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """One browser session over home, upload, open, ZIP and delete; the reports by step, and what it used."""
    folder = tmp_path_factory.mktemp("browser")
    uploaded, files = part10_files(folder / "upload", 4, "Uploaded^ThroughViewer")
    zip_study, delete_study = list(stored_studies)
    steps = [
        {"do": "home"},
        {"do": "upload", "files": [str(path) for path in files], "expect": "Uploaded"},
        {"do": "open", "uid": uploaded},
        {"do": "zip", "uid": zip_study, "to": str(folder / "study.zip")},
        {"do": "delete", "uid": delete_study},
        {"do": "docs"},
    ]
    reports = drive("viewer_home.cjs", {"base": viewer_archive.base_url, "shots": str(folder), "steps": steps})
    return {
        "reports": {report["do"]: report for report in reports},
        "uploaded": uploaded,
        "files": files,
        "zip": (zip_study, folder / "study.zip"),
        "deleted": delete_study,
    }


def test_the_home_page_leads_to_the_viewers_study_list(session: dict[str, Any], viewer_archive: Archive) -> None:
    home = session["reports"]["home"]
    assert home["reached"], home["text"]
    assert home["url"] == f"{viewer_archive.base_url}/viewer/"


def test_a_study_uploaded_through_the_viewer_is_listed_and_drawn(
    session: dict[str, Any], viewer_archive: Archive
) -> None:
    upload = session["reports"]["upload"]
    assert upload["stored"] and set(upload["stored"]) == {200}, upload
    assert upload["listed"], upload["text"]
    assert viewer_archive.count_instances(StudyInstanceUID=session["uploaded"]) == len(session["files"])
    opened = session["reports"]["open"]
    assert opened["frames"] > 0 and opened["spread"] > 1, opened
    assert opened["refused"] == []


def test_a_study_downloads_from_the_home_page_as_a_zip_of_the_stored_files(
    session: dict[str, Any], stored_studies: dict[str, list[Path]], viewer_archive: Archive
) -> None:
    study, path = session["zip"]
    report = session["reports"]["zip"]
    assert report["failure"] is None and report["name"] == f"{study}.zip"
    with zipfile.ZipFile(path) as archive:
        received = sorted(archive.read(info) for info in archive.infolist())
    assert received == sorted(file.read_bytes() for file in stored_studies[study])
    stored = viewer_archive.data / "storage" / "default" / study
    assert received == sorted(file.read_bytes() for file in stored.rglob("*.dcm") if "_" not in file.name)


def test_a_study_deleted_from_the_home_page_is_gone(session: dict[str, Any], viewer_archive: Archive) -> None:
    report = session["reports"]["delete"]
    assert report["listed"] and report["offered"] and report["gone"], report
    assert session["deleted"] not in study_uids(viewer_archive)
    assert httpx.get(f"{viewer_archive.dicomweb_url()}/studies/{session['deleted']}/metadata").status_code == 404


def test_the_api_docs_render_with_no_network_beyond_loopback(session: dict[str, Any]) -> None:
    docs = session["reports"]["docs"]
    assert docs["drawn"] and docs["title"].startswith("dicomcloud DICOMweb"), docs
    assert docs["operations"] > 10, docs
    assert docs["elsewhere"] == [] and docs["errors"] == [], docs


def test_no_page_asks_for_anything_beyond_the_archive(session: dict[str, Any]) -> None:
    assert {step: report["elsewhere"] for step, report in session["reports"].items() if report["elsewhere"]} == {}


# -- with auth on ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    with serve_issuer([rsa_key("viewer-key")]) as running:
        yield running


def auth_env(issuer: Issuer) -> dict[str, str]:
    return {
        "DICOMCLOUD_AUTH__ENABLED": "true",
        "DICOMCLOUD_AUTH__ISSUER": issuer.url,
        "DICOMCLOUD_AUTH__AUDIENCE": AUDIENCE,
    }


@pytest.fixture(scope="module")
def secured(archive_factory: Callable[..., Archive], issuer: Issuer) -> Archive:
    return archive_factory("viewer-oidc", auth_env(issuer))


def store_with_token(archive: Archive, folder: Path, patient: str, token: str) -> str:
    study, paths = part10_files(folder / "study", 2, patient)
    body, content_type = stow_body([path.read_bytes() for path in paths])
    headers = {"Authorization": f"Bearer {token}", "Content-Type": content_type}
    stored = httpx.post(f"{archive.dicomweb_url()}/studies", content=body, headers=headers, timeout=60)
    assert stored.status_code == 200, stored.text
    return study


def test_with_auth_the_viewer_shows_nothing_without_a_token_and_the_study_with_one(
    secured: Archive, issuer: Issuer, tmp_path: Path
) -> None:
    token = issuer.token(tenants=["default"])
    study = store_with_token(secured, tmp_path, "Secured^Study", token)
    steps = [{"do": "open", "uid": study, "timeoutMs": 20_000}, {"do": "open", "uid": study, "token": token}]
    without, with_token = drive("viewer_home.cjs", {"base": secured.base_url, "shots": str(tmp_path), "steps": steps})
    assert without["spread"] == 0 and without["frames"] == 0, without
    assert any(refusal.startswith("401 ") for refusal in without["refused"]), without
    assert with_token["frames"] > 0 and with_token["spread"] > 1, with_token
    assert with_token["refused"] == []


def test_with_auth_the_home_page_offers_delete_only_to_a_token_that_grants_it(
    secured: Archive, issuer: Issuer, tmp_path: Path
) -> None:
    deleter = issuer.token(tenants=["default"])
    study = store_with_token(secured, tmp_path, "Secured^Delete", deleter)
    reader = issuer.token(scope="dicom.read", tenants=["default"])
    steps = [{"do": "delete", "uid": study, "token": reader}, {"do": "delete", "uid": study, "token": deleter}]
    as_reader, as_deleter = drive("viewer_home.cjs", {"base": secured.base_url, "shots": str(tmp_path), "steps": steps})
    assert as_reader["listed"] and not as_reader["offered"], as_reader
    assert as_deleter["listed"] and as_deleter["offered"] and as_deleter["gone"], as_deleter
    assert study not in study_uids(secured, {"Authorization": f"Bearer {deleter}"})


@pytest.fixture(scope="module")
def signing_in(archive_factory: Callable[..., Archive], issuer: Issuer) -> Archive:
    """An archive whose viewer signs in with the issuer itself (auth.viewer_client_id)."""
    return archive_factory("viewer-oidc-sign-in", {**auth_env(issuer), "DICOMCLOUD_AUTH__VIEWER_CLIENT_ID": "viewer"})


def test_with_the_viewers_own_sign_in_it_shows_nothing_until_the_issuer_signs_the_user_in(
    signing_in: Archive, issuer: Issuer, tmp_path: Path
) -> None:
    study = store_with_token(signing_in, tmp_path, "Signed^In", issuer.token(tenants=["default"]))
    issuer.login_claims = {"tenants": ["default"]}
    job = {"base": signing_in.base_url, "shots": str(tmp_path)}
    try:
        issuer.approve = False
        (refused,) = drive("viewer_home.cjs", {**job, "steps": [{"do": "open", "uid": study, "timeoutMs": 20_000}]})
        issuer.approve = True
        logins = issuer.logins
        (signed_in,) = drive("viewer_home.cjs", {**job, "steps": [{"do": "open", "uid": study}]})
    finally:
        issuer.approve, issuer.login_claims = True, {}
    assert refused["frames"] == 0 and refused["spread"] == 0, refused
    assert issuer.logins == logins + 1
    assert signed_in["frames"] > 0 and signed_in["spread"] > 1, signed_in
    assert signed_in["refused"] == []
