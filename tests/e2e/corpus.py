"""The corpus of odd real-life files: every file that the registry packages the archive depends on ship as test
data (pydicom's test, charset and palette files, pynetdicom's), and pydicom-data's, fetched once from PyPI into
the cache (`./dev test` fetches it before the tests run: `python -m tests.e2e.corpus`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pydicom
import pynetdicom

PYDICOM_DATA_VERSION = "1.0.0"
# Where pydicom-data's wheel keeps its files.
_WHEEL_FOLDER = "data_store/data/"


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dicomcloud"


def pydicom_data() -> Path:
    """pydicom-data's files, downloaded with pip (the package itself is never installed) and unpacked once."""
    folder = cache_root() / "testdata" / f"pydicom-data-{PYDICOM_DATA_VERSION}"
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as scratch:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             "-d", scratch, f"pydicom-data=={PYDICOM_DATA_VERSION}"],
            check=True,
        )
        (wheel,) = Path(scratch).glob("*.whl")
        unpacked = Path(scratch) / "data"
        unpacked.mkdir()
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.infolist():
                name = member.filename
                if name.startswith(_WHEEL_FOLDER) and not member.is_dir() and "/" not in name[len(_WHEEL_FOLDER):]:
                    (unpacked / name[len(_WHEEL_FOLDER):]).write_bytes(archive.read(member))
        shutil.move(unpacked, folder)
    return folder


def corpus_roots() -> list[Path]:
    pydicom_folder = Path(pydicom.__file__).parent / "data"
    return [
        pydicom_folder / "test_files",
        pydicom_folder / "charset_files",
        pydicom_folder / "palettes",
        Path(pynetdicom.__file__).parent / "tests" / "dicom_files",
        pydicom_data(),
    ]


def corpus_files() -> list[Path]:
    """Every shipped file, DICOM or not (a README is as odd a STOW-RS part as any)."""
    return [
        path
        for root in corpus_roots()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".py"
    ]


if __name__ == "__main__":
    print(f"{len(corpus_files())} corpus files")
