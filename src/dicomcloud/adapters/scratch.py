"""The local scratch folder both storage adapters stage incoming objects in (the filesystem's beside its
objects, S3's on the node that received them)."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

from dicomcloud.errors import StorageFailure

PREFIX = "dicomcloud-"
SUFFIX = ".part"


def new_file(folder: Path) -> BinaryIO:
    """A new, empty scratch file in `folder`, open for writing and reading, that knows its path."""
    try:
        fd, name = tempfile.mkstemp(prefix=PREFIX, suffix=SUFFIX, dir=folder)
    except OSError as exc:
        raise StorageFailure(f"cannot create a scratch file: {exc}") from exc
    staged = os.fdopen(fd, "r+b")
    # Named, so the stream knows where it is (commit renames or uploads it; pydicom's deferred reads reopen it).
    staged.raw.name = name  # type: ignore[attr-defined]
    return staged


def sweep(folder: Path, older_than_seconds: float) -> int:
    """Remove the files in `folder` older than that: what a crash left behind (pynetdicom's received datasets
    included); how many."""
    cutoff = time.time() - older_than_seconds
    removed = 0
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    Path(entry.path).unlink(missing_ok=True)
                    removed += 1
    except OSError as exc:
        raise StorageFailure(f"cannot sweep {folder}: {exc}") from exc
    return removed
