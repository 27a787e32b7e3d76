"""Orthanc (Debian package) as a peer: started on loopback with a given configuration, stopped after."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .conftest import answers, free_port, wait_until

ORTHANC_PLUGINS = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@dataclass
class Orthanc:
    url: str
    process: subprocess.Popen[bytes]


@contextmanager
def running_orthanc(
    folder: Path, config: dict[str, Any], basic_auth: tuple[str, str] | None = None
) -> Iterator[Orthanc]:
    """Orthanc with its DICOMweb plugin, HTTP on a free port, `config` on top of the defaults; with
    `basic_auth`, its HTTP API wants that user and password."""
    if shutil.which("Orthanc") is None or not ORTHANC_PLUGINS.exists():
        pytest.fail("Orthanc and its DICOMweb plugin must be installed (./dev test installs them)")
    http_port = free_port()
    settings = {
        "Name": "peer",
        "StorageDirectory": str(folder / "db"),
        "IndexDirectory": str(folder / "db"),
        "HttpPort": http_port,
        "DicomPort": free_port(),
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": basic_auth is not None,
        "RegisteredUsers": dict([basic_auth] if basic_auth else []),
        "Plugins": [str(ORTHANC_PLUGINS)],
        **config,
    }
    (folder / "orthanc.json").write_text(json.dumps(settings))
    log = (folder / "orthanc.log").open("wb")
    process = subprocess.Popen(["Orthanc", str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_until(lambda: answers(f"{url}/system", basic_auth), 60, "Orthanc to start")
        yield Orthanc(url, process)
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
