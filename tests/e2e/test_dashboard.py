"""Done when: the dashboard renders in headless Chromium with non-empty charts whose numbers match the API."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from bench.synthetic import ct_series, write_part10

from .conftest import Archive, wait_until
from .dicom_clients import stow

pytestmark = pytest.mark.e2e

INSTANCES = 4
# The charts' bar colours (dashboard.py) and the least pixels of each a drawn chart shows.
BAR_COLOURS = {"modalities": (54, 162, 235), "tenants": (255, 99, 132), "received": (75, 192, 192)}
MIN_PIXELS = 500


def chromium(*args: str) -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "chromium is not installed (./dev test installs Debian's chromium)"
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--virtual-time-budget=20000", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def summary(archive: Archive) -> dict[str, Any]:
    response = httpx.get(f"{archive.base_url}/api/stats/summary", timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_the_dashboard_draws_charts_with_the_apis_numbers(
    archive_factory: Callable[..., Archive], tmp_path: Path
) -> None:
    archive = archive_factory("dashboard", {"DICOMCLOUD_WAREHOUSE__BATCH_SECONDS": "0.2"})
    parts = []
    for n, ds in enumerate(ct_series(INSTANCES, rows=32, columns=32, patient_id="DASHBOARD", seed=3)):
        write_part10(ds, tmp_path / f"{n}.dcm")
        parts.append((tmp_path / f"{n}.dcm").read_bytes())
    assert stow(archive.dicomweb_url(), parts).status_code == 200
    wait_until(lambda: summary(archive)["totals"]["instances"] == INSTANCES, 60, "the warehouse to be loaded")
    wait_until(lambda: bool(httpx.get(f"{archive.base_url}/api/stats/received_per_day").json()), 60, "receive log")
    totals = summary(archive)["totals"]
    url = f"{archive.base_url}/dashboard"

    dom = chromium("--dump-dom", url)
    assert 'data-ready="true"' in dom, re.findall(r'<p id="error">(.*?)</p>', dom)
    for key in ("studies", "series", "instances", "bytes"):
        assert re.search(rf'<b id="{key}">{totals[key]}</b>', dom), key

    shot = tmp_path / "dashboard.png"
    chromium(f"--screenshot={shot}", "--window-size=1200,1000", url)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    for chart, colour in BAR_COLOURS.items():
        drawn = int((np.abs(pixels - np.array(colour)).sum(axis=2) < 30).sum())
        assert drawn >= MIN_PIXELS, f"the {chart} chart shows {drawn} pixels of its bars"
