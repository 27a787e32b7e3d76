"""The README's run command works on a fresh clone: it installs what it needs and serves, home page and viewer
included."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from .conftest import free_port, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def readme_run_command() -> list[str]:
    """The first command of the README's quick start."""
    text = (REPO / "README.md").read_text()
    block = text.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    first = block.strip().splitlines()[0].split("#", 1)[0].split()
    assert first == ["./dev", "up"], first
    return first


def test_readme_run_command_starts_the_archive_from_a_fresh_clone(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    http_port, dimse_port = free_port(), free_port()
    command = [*readme_run_command(), "--data", str(tmp_path / "data"),
               "--http-port", str(http_port), "--dimse-port", str(dimse_port)]
    log = (tmp_path / "up.log").open("wb")
    process = subprocess.Popen(command, cwd=clone, stdout=log, stderr=subprocess.STDOUT,
                               env={k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")},
                               start_new_session=True)
    try:
        def serving() -> bool:
            assert process.poll() is None, (tmp_path / "up.log").read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{http_port}/dicom-web/studies", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(serving, 900, "the fresh clone's archive to serve")
        echo = subprocess.run(["echoscu", "-aec", "DICOMCLOUD", "127.0.0.1", str(dimse_port)], check=False)
        assert echo.returncode == 0
        assert (tmp_path / "data").is_dir()
        for page in ("/", "/viewer/", "/docs"):  # what a person opens first: ./dev up fetched the viewer and docs
            assert httpx.get(f"http://127.0.0.1:{http_port}{page}", timeout=10).status_code == 200, page
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
        log.close()
