"""Storage of objects: originals, derived copies, metadata entries and series documents alike.

The port speaks keys and bytes, never paths: an object is put from a stream, opened as a stream, read
by byte ranges, sized, listed by prefix and deleted, so a local folder and an S3 bucket are two
adapters of one contract (tests/contract/test_storage.py). The key layout is the archive's
(archive/keys.py); keys are `/`-separated and adapters refuse any that could leave their root.

One rule for a missing object: reading it (`open`, `read`, `read_ranges`) raises ObjectMissing;
`size` answers None; `delete` of a missing key is a success.

Writes replace atomically: a reader sees the old object or the new one, never a mix. Incoming
objects are first staged (`stage`: a scratch file the adapter can take over), then `commit` makes a
batch of them durable under their keys at once, so a batch costs about what one object costs; small
objects that go with them (metadata entries) ride in the same batch (`commit`'s `derivable`), so an
object store puts them all concurrently instead of one after another.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import BinaryIO, Protocol

from dicomcloud.errors import InvalidInput, NotFound

ByteRange = tuple[int, int]  # (offset, length)
KEY_COMPONENT = re.compile(r"^[A-Za-z0-9._-]+$")


def key_parts(key: str) -> list[str]:
    """The components of a key, refusing empty keys, `.`/`..` and odd characters: every adapter accepts
    exactly these keys, and none of them can leave the adapter's root."""
    if not isinstance(key, str) or not key:
        raise InvalidInput("empty storage key")
    parts = key.split("/")
    for part in parts:
        if part in (".", "..") or not KEY_COMPONENT.fullmatch(part):
            raise InvalidInput(f"refused storage key: {key[:200]!r}")
    return parts


class ObjectMissing(NotFound):
    """No object under the key asked for."""


class Storage(Protocol):
    # Whether every read waits for a network round trip (an object store) rather than a local disk: readers of
    # many objects then keep several in flight and learn what they can from metadata instead of reading objects.
    remote: bool

    def stage(self) -> BinaryIO:
        """A new, empty scratch file open for writing and reading, not yet under any key."""
        ...

    def commit(
        self, placements: Sequence[tuple[BinaryIO, str]], derivable: Sequence[tuple[str, bytes]] = ()
    ) -> None:
        """Store each staged file under its key (replacing what is there); all durable on return.

        A staged file may also be any open regular file: the adapter moves it when it can and copies
        it otherwise. The files are consumed either way; on a failure nothing is guaranteed placed.
        `derivable` are (key, bytes) of small objects written with the batch as `write(..., durable=False)`
        writes them: whole, visible on return, possibly lost by a crash of the machine.
        """
        ...

    def discard(self, staged: BinaryIO) -> None:
        """Close and drop a staged file that will not be committed (a no-op once consumed)."""
        ...

    def write(self, key: str, data: bytes, *, durable: bool = True) -> None:
        """Put a small object whole. Without `durable` it may be lost by a crash of the machine (never half
        written): for objects the archive can derive again."""
        ...

    def open(self, key: str) -> io.BufferedReader:
        """A readable, seekable stream of the object (its size: `seek(0, 2)`); an object store wraps ranged
        reads in one, so a reader reads what it needs and `readinto` fills a caller's buffer."""
        ...

    def read(self, key: str) -> bytes:
        """The whole object."""
        ...

    def read_ranges(self, key: str, ranges: Sequence[ByteRange]) -> list[bytes]:
        """The bytes of each (offset, length) range; StorageFailure if the object is shorter."""
        ...

    def size(self, key: str) -> int | None:
        """The object's size in bytes, None when there is none."""
        ...

    def list(self, prefix: str) -> list[str]:
        """Every key that starts with `prefix`, sorted."""
        ...

    def delete(self, keys: Sequence[str]) -> None:
        """Remove these objects; missing ones are fine."""
        ...

    def ping(self) -> None:
        """Return when the storage can be written; raise ServiceUnavailable otherwise (for /ready)."""
        ...
