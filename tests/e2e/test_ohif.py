"""OHIF, served by the shipped Nginx config in front of `dicomcloud up`, lists the studies and displays a study of
every transfer-syntax group of pydicom's test files and a generated 200-slice CT series in headless Chromium;
none of the viewer's own requests goes past Nginx to the archive.

The browser is driven by ohif_viewer.cjs (playwright-core from the npm cache, Debian's chromium); this side
stores the studies, starts Nginx, and inspects what the driver reports and the screenshots it took.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from bench.synthetic import ct_series, new_uid
from dicomcloud.stack.servers import OHIF_DIST, NginxSite, start_nginx

from .conftest import Archive, free_port
from .dicom_clients import stow

pytestmark = pytest.mark.e2e

DRIVER = Path(__file__).with_name("ohif_viewer.cjs")
NODE_MODULES = OHIF_DIST.parents[1] / "node_modules"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CT_SLICES = 200
# One pydicom test file per transfer-syntax group it ships images in (Deflated has only one, JPEG-LS only lossless).
PYDICOM_FILES = {
    "implicit-little-endian": "MR_small_implicit.dcm",
    "explicit-little-endian": "CT_small.dcm",
    "deflated": "image_dfl.dcm",
    "explicit-big-endian": "MR_small_bigendian.dcm",
    "rle": "MR_small_RLE.dcm",
    "jpeg-baseline": "SC_rgb_dcmtk_+eb+cy+np.dcm",
    "jpeg-extended": "JPGExtended.dcm",
    "jpeg-lossless": "SC_rgb_jpeg_gdcm.dcm",
    "jpeg-ls": "MR_small_jpeg_ls_lossless.dcm",
    "jpeg2000-lossless": "MR_small_jp2klossless.dcm",
    "jpeg2000": "693_J2KI.dcm",
}
# What a failed decode looks like in the console: the image loader's and codecs' own wording.
DECODE_ERROR = ("decod", "codec", "transfer syntax", "transfersyntax", "pixel data", "imageloader", "wasm")


@dataclass
class Viewer:
    base: str
    studies: dict[str, str]  # name -> StudyInstanceUID


def reidentified(name: str) -> Dataset:
    """A test file as a study of its own: pydicom ships one object in many syntaxes under the same UIDs."""
    path = get_testdata_file(name)
    assert isinstance(path, str), name
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = new_uid(), new_uid(), new_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def part10(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def store(archive: Archive, datasets: list[Dataset]) -> str:
    response = stow(archive.dicomweb_url(), [part10(ds) for ds in datasets])
    assert response.status_code == 200, response.text
    return str(datasets[0].StudyInstanceUID)


@pytest.fixture(scope="module")
def viewer(
    archive_factory: Callable[..., Archive], pki: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Viewer]:
    assert (OHIF_DIST / "index.html").is_file(), f"the OHIF viewer is not at {OHIF_DIST}: run ./dev test"
    archive = archive_factory("ohif")
    studies = {name: store(archive, [reidentified(file)]) for name, file in PYDICOM_FILES.items()}
    studies["ct-200-slices"] = store(archive, list(ct_series(CT_SLICES, rows=256, columns=256)))
    archive.wait_indexed(len(PYDICOM_FILES) + CT_SLICES, timeout=300)

    site = NginxSite(
        https_listen=f"127.0.0.1:{free_port()}",
        http_listen=f"127.0.0.1:{free_port()}",
        cert_file=pki / "server.pem",
        key_file=pki / "server.key",
        upstreams=[f"127.0.0.1:{archive.http_port}"],
        run_dir=tmp_path_factory.mktemp("viewer-nginx"),
    )
    nginx = start_nginx(site)
    try:
        yield Viewer(f"https://localhost:{nginx.port}", studies)
    finally:
        nginx.stop()


@pytest.fixture(scope="module")
def browsed(viewer: Viewer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Run the browser once over the study list and every study; its reports by name ("list" for the list,
    "strays" for the requests that went elsewhere than the viewer's files and DICOMweb)."""
    shots = tmp_path_factory.mktemp("screenshots")
    job = {
        "base": viewer.base,
        "chromium": CHROMIUM,
        "shots": str(shots),
        "timeoutMs": 180_000,
        "studies": [{"name": name, "uid": uid} for name, uid in viewer.studies.items()],
    }
    env = {**os.environ, "NODE_PATH": str(NODE_MODULES)}
    done = subprocess.run(
        ["node", str(DRIVER), json.dumps(job)], capture_output=True, text=True, env=env, timeout=3600, check=False
    )
    assert done.returncode == 0, done.stderr
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {report.get("name", report["kind"]): report for report in reports}


def test_the_study_list_shows_every_stored_study(browsed: dict[str, dict[str, Any]], viewer: Viewer) -> None:
    listing = browsed["list"]
    assert listing["listed"], listing["text"]
    assert f"of {len(viewer.studies)}" in listing["text"]


def image_spread(png: Path) -> float:
    """Standard deviation of the screenshot's central half, away from the corner overlays: 0 when blank."""
    image = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    rows, columns = image.shape
    return float(image[rows // 4 : 3 * rows // 4, columns // 4 : 3 * columns // 4].std())


@pytest.mark.parametrize("name", [*PYDICOM_FILES, "ct-200-slices"])
def test_each_study_is_displayed_without_a_decode_error(browsed: dict[str, dict[str, Any]], name: str) -> None:
    report = browsed[name]
    decode_errors = [e for e in report["errors"] if any(word in e.lower() for word in DECODE_ERROR)]
    assert not decode_errors, report["errors"]
    assert report["frames"] > 0, f"no frame of the study was fetched: {report}"
    assert report["spread"] > 1, f"the viewport stayed blank: {report}"
    assert image_spread(Path(report["shot"])) > 1, f"the screenshot is blank: {report['shot']}"


def test_the_viewers_own_files_never_reach_a_wado_server(browsed: dict[str, dict[str, Any]]) -> None:
    """Nginx serves everything under /viewer/ itself (no proxy_pass there); the viewer asks for nothing else."""
    assert browsed["strays"]["strays"] == []


@pytest.mark.parametrize("name", ["list", *PYDICOM_FILES, "ct-200-slices"])
def test_the_archive_answers_every_request_the_viewer_makes(browsed: dict[str, dict[str, Any]], name: str) -> None:
    assert browsed[name]["refused"] == []
