"""Storage of instance files and derived documents.

Instances live at `<root>/<TenantID>/<StudyUID>/<SeriesUID>/<SOPUID>.dcm` (the user's layout);
a derived copy in another transfer syntax sits beside its original as `<SOPUID>_<TransferSyntaxUID>.dcm`
(`_` never occurs in a UID) and is removed or invalidated with it; documents (series metadata)
live under a separate metadata root. Every write is temp name, fsync, rename.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Protocol


class Storage(Protocol):
    def new_temp(self) -> tuple[BinaryIO, Path]:
        """An open, empty temp file on the same filesystem as the final location."""
        ...

    def instance_relpath(self, tenant_id: str, study_uid: str, series_uid: str, sop_uid: str) -> str:
        """Validate every id, then give the relative path of the instance file."""
        ...

    def derived_relpath(self, relpath: str, transfer_syntax: str) -> str:
        """The relative path of the copy of instance `relpath` in `transfer_syntax` (validated)."""
        ...

    def commit_instance(self, temp: Path, relpath: str) -> None:
        """fsync `temp`, rename it to `relpath` (replacing any file there), fsync the folder.

        Committing an original removes its derived copies: they were made from the file it replaces.
        """
        ...

    def place_instance(self, temp: Path, relpath: str) -> None:
        """`commit_instance` without its fsyncs, for committing many files at once: `temp` must have
        been through `sync_temps`, and the name is durable only once `sync_folders` covered it."""
        ...

    def sync_temps(self, temps: Sequence[Path]) -> None:
        """fsync complete temp files (several at once concurrently), ready for `place_instance`."""
        ...

    def sync_folders(self, relpaths: Sequence[str]) -> None:
        """Make the names placed at these instance paths durable (one fsync per distinct folder)."""
        ...

    def path(self, relpath: str) -> Path:
        """The absolute path for a relative one (checked to stay under the root)."""
        ...

    def remove_instance(self, relpath: str) -> None:
        """Delete an instance file and its derived copies (missing is fine); prune folders left empty."""
        ...

    def read_document(self, key: str) -> bytes | None: ...

    def write_document(self, key: str, data: bytes) -> None: ...

    def delete_document(self, key: str) -> None: ...

    def ping(self) -> None:
        """Return when every storage folder is writable; raise ServiceUnavailable otherwise (for /ready)."""
        ...
