"""The viewer, home page, ZIP download and API docs the archive serves itself (no Nginx in front)."""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import support
from fastapi.testclient import TestClient
from oidc import AUDIENCE, rsa_key, serve_issuer
from test_web_app import make_archive, stow_all

from bench.synthetic import ct_series
from dicomcloud.archive.core import Archive
from dicomcloud.archive.keys import original_key
from dicomcloud.web.app import create_app

pytest_plugins = ["test_web_app"]

INDEX = (
    '<!doctype html><html><head><script>window.PUBLIC_URL="/"</script>'
    '<script src="/app-config.js"></script><link rel="manifest" href="/manifest.json">'
    '<meta name="x" content="/assets/tile.png"><script defer src="/app.bundle.js"></script></head></html>'
)
BUNDLE = 'var x = 1;\n__webpack_require__.p = "/";\n'


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    """A stand-in for @ohif/app's dist/: the shapes of its files that get rewritten, and one that does not."""
    folder = tmp_path / "dist"
    (folder / "assets").mkdir(parents=True)
    (folder / "index.html").write_text(INDEX)
    (folder / "app.bundle.js").write_text(BUNDLE)
    (folder / "app.bundle.css").write_text("@font-face { src: url(/font.woff2) }")
    (folder / "codec.wasm").write_bytes(b"\0asm\1\0\0\0")
    (folder / "assets" / "tile.png").write_bytes(b"png")
    (tmp_path / "secret.txt").write_text("outside the viewer")
    return folder


@pytest.fixture
def viewer_client(tmp_path: Path, dist: Path) -> Iterator[TestClient]:
    archive = make_archive(tmp_path / "data", viewer_dist=str(dist))
    with TestClient(create_app(archive)) as client:
        yield client
    archive.close()


def test_the_viewer_page_loads_its_assets_and_config_from_the_viewer_path(viewer_client: TestClient) -> None:
    page = viewer_client.get("/viewer/")
    assert page.status_code == 200
    assert 'PUBLIC_URL="/viewer/"' in page.text
    assert 'src="/viewer/app-config.js"' in page.text
    assert 'href="/viewer/manifest.json"' in page.text and 'content="/viewer/assets/tile.png"' in page.text
    assert 'src="/viewer/app.bundle.js"' in page.text


def test_the_single_page_apps_routes_get_its_page(viewer_client: TestClient) -> None:
    page = viewer_client.get("/viewer/viewer", params={"StudyInstanceUIDs": "1.2.3"})
    assert page.status_code == 200 and 'PUBLIC_URL="/viewer/"' in page.text
    assert viewer_client.get("/viewer", follow_redirects=False).headers["location"] == "/viewer/"


def test_bundles_and_styles_load_their_chunks_and_fonts_from_the_viewer_path(viewer_client: TestClient) -> None:
    bundle = viewer_client.get("/viewer/app.bundle.js")
    assert bundle.headers["content-type"].startswith("text/javascript")
    assert '__webpack_require__.p = "/viewer/"' in bundle.text
    assert "url(/viewer/font.woff2)" in viewer_client.get("/viewer/app.bundle.css").text
    wasm = viewer_client.get("/viewer/codec.wasm")
    assert wasm.headers["content-type"] == "application/wasm" and wasm.content == b"\0asm\1\0\0\0"


def test_a_file_is_revalidated_not_fetched_again(viewer_client: TestClient) -> None:
    for path in ("/viewer/app.bundle.js", "/viewer/codec.wasm"):
        first = viewer_client.get(path)
        assert first.headers["cache-control"] == "no-cache"
        again = viewer_client.get(path, headers={"If-None-Match": first.headers["etag"]})
        assert again.status_code == 304 and again.content == b""


@pytest.mark.parametrize(
    "path",
    [
        "/viewer/../secret.txt",
        "/viewer/%2e%2e/secret.txt",
        "/viewer/assets/..%2f..%2fsecret.txt",
        "/viewer/%00.js",
        "/viewer/" + "a" * 5000,
        "/viewer/" + "a" * 300 + ".js",
        "/tenant-a/viewer/..%2fsecret.txt",
    ],
)
def test_nothing_outside_the_viewers_folder_is_served(viewer_client: TestClient, path: str) -> None:
    response = viewer_client.get(path)
    assert "outside the viewer" not in response.text
    assert response.status_code in (200, 404)  # the app's page for a route, never the file


def test_a_missing_asset_is_not_found_rather_than_the_page(viewer_client: TestClient) -> None:
    assert viewer_client.get("/viewer/missing.bundle.js").status_code == 404


def test_only_the_viewers_files_may_be_framed_and_by_itself_only(viewer_client: TestClient) -> None:
    assert viewer_client.get("/viewer/").headers["x-frame-options"] == "SAMEORIGIN"
    assert viewer_client.get("/viewer/codec.wasm").headers["x-frame-options"] == "SAMEORIGIN"
    for path in ("/", "/docs", "/dicom-web/studies"):
        assert viewer_client.get(path).headers["x-frame-options"] == "DENY"
    assert viewer_client.get("/viewer/").headers["x-content-type-options"] == "nosniff"


def test_the_viewer_config_names_the_archives_root_and_the_tenants(viewer_client: TestClient) -> None:
    config = viewer_client.get("/viewer/app-config.js")
    assert config.headers["content-type"].startswith("text/javascript")
    assert '"dicomwebRoot": "http://testserver/dicom-web"' in config.text
    assert '"routerBasename": "/viewer"' in config.text
    assert "dicomUploadEnabled: true" in config.text
    tenant = viewer_client.get("/tenant-a/viewer/app-config.js")
    assert '"dicomwebRoot": "http://testserver/tenant-a/dicom-web"' in tenant.text
    assert '"routerBasename": "/tenant-a/viewer"' in tenant.text
    page = viewer_client.get("/tenant-a/viewer/viewer")
    assert 'src="/tenant-a/viewer/app-config.js"' in page.text and 'src="/viewer/app.bundle.js"' in page.text


def test_under_a_public_urls_path_everything_moves_under_it(tmp_path: Path, dist: Path) -> None:
    archive = make_archive(tmp_path / "data", viewer_dist=str(dist), public_url="https://pacs.example/pacs")
    with TestClient(create_app(archive)) as client:
        page = client.get("/viewer/").text
        bundle = client.get("/viewer/app.bundle.js").text
        config = client.get("/viewer/app-config.js").text
    archive.close()
    assert 'PUBLIC_URL="/pacs/viewer/"' in page and 'src="/pacs/viewer/app-config.js"' in page
    assert '__webpack_require__.p = "/pacs/viewer/"' in bundle
    assert '"dicomwebRoot": "https://pacs.example/pacs/dicom-web"' in config
    assert '"routerBasename": "/pacs/viewer"' in config


def test_with_auth_and_a_viewer_client_the_viewer_signs_in_with_the_issuer(tmp_path: Path, dist: Path) -> None:
    auth = {"enabled": True, "issuer": "http://127.0.0.1:1/realms/test", "audience": "dicomcloud",
            "jwks_url": "http://127.0.0.1:1/certs", "viewer_client_id": "ohif"}  # fmt: skip
    archive = support.make_archive(tmp_path / "data", http={"viewer_dist": str(dist)}, auth=auth)
    with TestClient(create_app(archive)) as client:
        config = client.get("/viewer/app-config.js").text
    archive.close()
    assert '"authority": "http://127.0.0.1:1/realms/test"' in config and '"client_id": "ohif"' in config
    assert '"post_logout_redirect_uri": "/signed-out"' in config  # not the router base, which is a viewer route
    assert '"response_type": "code"' in config and '"scope": "openid dicom.read dicom.write dicom.delete"' in config


def test_without_the_viewer_installed_the_answer_says_how_to_get_it(tmp_path: Path) -> None:
    archive = make_archive(tmp_path / "data", viewer_dist=str(tmp_path / "nowhere"))
    with TestClient(create_app(archive)) as client:
        response = client.get("/viewer/")
    archive.close()
    assert response.status_code == 404 and "./dev up" in response.json()["error"]


# -- home page and ZIP -----------------------------------------------------------------------------


def test_the_home_page_leads_to_the_viewers_study_list(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="study-list"' in page.text
    assert '"root": "/dicom-web"' in page.text
    assert client.get("/api/access").json() == {"read": True, "write": True, "delete": True}


def test_the_home_page_cannot_be_made_to_run_script_from_its_tenant(client: TestClient) -> None:
    assert client.get("/", params={"tenant": "</script><script>alert(1)"}).status_code == 400


def zip_entries(body: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert archive.testzip() is None
        return {info.filename: archive.read(info) for info in archive.infolist()}


def stored_files(archive: Archive, datasets: list[pydicom.Dataset]) -> dict[str, bytes]:
    keys = [original_key("default", ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in datasets]
    return {key.partition("/")[2]: archive.runtime.storage.read(key) for key in keys}


def test_a_study_downloads_as_a_zip_of_the_stored_files(client: TestClient, archive: Archive, tmp_path: Path) -> None:
    datasets = list(ct_series(3, rows=32, columns=32))
    stow_all(client, datasets, tmp_path)
    study = datasets[0].StudyInstanceUID
    response = client.get(f"/dicom-web/studies/{study}", headers={"Accept": "application/zip"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    assert "content-encoding" not in response.headers
    assert re.fullmatch(rf'attachment; filename="{re.escape(study)}.zip"', response.headers["content-disposition"])
    assert zip_entries(response.content) == stored_files(archive, datasets)


def test_a_link_names_the_zip_in_the_accept_query_parameter(
    client: TestClient, archive: Archive, tmp_path: Path
) -> None:
    datasets = list(ct_series(2, rows=16, columns=16))
    stow_all(client, datasets, tmp_path)
    ds = datasets[0]
    url = f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    response = client.get(url, params={"accept": "application/zip"}, headers={"Accept": "text/html, */*;q=0.8"})
    assert response.headers["content-type"] == "application/zip"
    assert zip_entries(response.content) == stored_files(archive, datasets)


# -- API docs --------------------------------------------------------------------------------------


def test_the_api_docs_load_nothing_from_another_site(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(source.startswith("/docs/swagger-ui/") for source in sources)
    assert "https://" not in page.text and "http://" not in page.text
    assert client.get("/docs/swagger-ui/swagger-ui-bundle.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/docs/swagger-ui/package.json").status_code == 404


def test_with_auth_the_home_page_offers_only_what_the_token_allows(tmp_path: Path) -> None:
    with serve_issuer([rsa_key("home")]) as issuer:
        auth = {"enabled": True, "issuer": issuer.url, "audience": AUDIENCE}
        archive = support.make_archive(tmp_path / "data", auth=auth)
        with TestClient(create_app(archive)) as client:
            assert client.get("/").status_code == 200  # the page itself; its data needs the token
            assert client.get("/api/access").status_code == 401
            reader = {"Authorization": f"Bearer {issuer.token(scope='dicom.read', tenants=['default'])}"}
            assert client.get("/api/access", headers=reader).json() == {"read": True, "write": False, "delete": False}
            everything = {"Authorization": f"Bearer {issuer.token(tenants=['default'])}"}
            assert client.get("/api/access", headers=everything).json() == {"read": True, "write": True, "delete": True}
            elsewhere = client.get("/api/access", params={"tenant": "tenant-b"}, headers=everything).json()
            assert elsewhere == {"read": False, "write": False, "delete": False}
        archive.close()
