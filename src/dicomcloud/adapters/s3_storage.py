"""The Storage port on any S3-compatible object store: the object under key `a/b/c` is `a/b/c` in the bucket
(under the optional key prefix). Tested on SeaweedFS's S3 gateway; AWS S3, Ceph RGW and MinIO speak the same API.

The client is obstore (Rust's object_store), chosen by measurement against boto3 on SeaweedFS 4.53 here
(loopback, 2 cores, 512 KB objects): ranged GET p50 0.8-0.9 ms against 1.7 ms, HEAD 0.5 against 1.3 ms,
PUT 5.8 against 7.5-8 ms, a 16-thread PUT batch 330-380 objects/s against 280, listing 200 keys 5-9 against
17-30 ms; boto3 only won a whole 64 MB GET (900 against 770 MB/s), which the archive never does.

- Incoming objects are staged in a local scratch folder of this process (`staging`), then `commit` uploads a
  batch concurrently (in parts above `multipart_threshold`), the small objects that go with it (metadata
  entries) among them, and removes the scratch files. A PUT is atomic:
  a reader sees the old object or the new one, and the object is durable (replicated, on SeaweedFS) once the
  store answered, so commit is durable and visible on return.
- `open` GETs the object's first megabyte (a small object whole) and is then a buffered stream over ranged GETs,
  each pinned to the ETag the stream opened with (an object replaced while it is read fails the read instead of
  mixing two versions); `read_ranges` is ranged GETs, ranges close together coalesced into one.
- Two writers racing on one key: the last PUT wins whole. The archive never lets that happen to an original:
  writers of one SOP Instance UID are serialised by the index transaction they place it in (`Index.writing`,
  archive/store.py), on every node, so no conditional write is needed.
- Every call has a timeout; 5xx, throttling and lost connections are retried with exponential backoff.
- Keys are checked as the filesystem adapter checks them (no `..`, no empty component, no odd characters)
  before any request, so both adapters accept exactly the same keys.
"""

from __future__ import annotations

import configparser
import dataclasses
import io
import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import obstore
from obstore.exceptions import BaseError, NotFoundError, PreconditionError
from obstore.store import S3Store

from dicomcloud.adapters import scratch
from dicomcloud.config import S3Settings
from dicomcloud.errors import InvalidInput, ServiceUnavailable, StorageFailure
from dicomcloud.ports.storage import KEY_COMPONENT, ByteRange, ObjectMissing, key_parts

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig, S3Config

log = logging.getLogger(__name__)

# What `open` fetches at once and its stream at least per GET: a DICOM header (or a small object) is read in
# one request, and bigger reads (WADO-RS sends an object in 4 MB pieces) go straight through in one GET each.
READ_BUFFER = 1024 * 1024
# Ranges closer than this are fetched in one GET by `read_ranges`.
COALESCE = 256 * 1024
INITIAL_BACKOFF = timedelta(milliseconds=100)
MAX_BACKOFF = timedelta(seconds=4)
# The S3 error codes that mean the credentials, not the store, are wrong.
CREDENTIAL_ERRORS = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken")
# obstore raises its own NotFoundError or the builtin FileNotFoundError, depending on the call.
_NOT_FOUND = (NotFoundError, FileNotFoundError)
_ERROR_CODE = re.compile(r"<Code>([^<]+)</Code>")
_STATUS = re.compile(r"status code: (\d{3}[^:]*)")


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)


def credentials(settings: S3Settings) -> Credentials | None:
    """The settings' own credentials, else the profile of their credentials file; None leaves the choice to
    the AWS_* environment variables or the machine's instance role."""
    if settings.access_key_id or settings.secret_access_key:
        return Credentials(settings.access_key_id, settings.secret_access_key)
    if not settings.credentials_file:
        return None
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(settings.credentials_file, encoding="utf-8") as source:
            parser.read_file(source)
        section = parser[settings.profile]
        return Credentials(section["aws_access_key_id"].strip(), section["aws_secret_access_key"].strip())
    except (OSError, KeyError, configparser.Error) as exc:
        # Only the error's kind and a missing name: a parse error's text can quote the file, secret included.
        what = f"no {exc}" if isinstance(exc, KeyError) else type(exc).__name__
        raise StorageFailure(
            f"cannot read S3 credentials (profile {settings.profile!r}) from {settings.credentials_file}: {what}"
        ) from None


def open_store(settings: S3Settings) -> S3Store:
    """An obstore client of the settings' bucket, with their timeouts and retries."""
    if not settings.bucket:
        raise StorageFailure("S3 storage needs a bucket (env: DICOMCLOUD_STORAGE__S3__BUCKET)")
    prefix = settings.key_prefix.strip("/")
    if prefix:
        key_parts(prefix)
    client: ClientConfig = {
        "timeout": timedelta(seconds=settings.timeout),
        "connect_timeout": timedelta(seconds=settings.connect_timeout),
        "allow_http": settings.endpoint.startswith("http://"),
    }
    retry: RetryConfig = {
        "max_retries": settings.max_retries,
        "backoff": {"init_backoff": INITIAL_BACKOFF, "max_backoff": MAX_BACKOFF, "base": 2},
        "retry_timeout": timedelta(seconds=settings.timeout),
    }
    config: S3Config = {"region": settings.region, "virtual_hosted_style_request": settings.virtual_hosted_style}
    if settings.endpoint:
        config["endpoint"] = settings.endpoint.rstrip("/")
    found = credentials(settings)
    if found is not None:
        config["access_key_id"], config["secret_access_key"] = found.access_key_id, found.secret_access_key
    return S3Store(settings.bucket, prefix=prefix or None, config=config, client_options=client, retry_config=retry)


def create_bucket(settings: S3Settings) -> bool:
    """Create the settings' bucket; False when it already was ours. (obstore speaks objects, not buckets: a
    CreateBucket is a PUT on the bucket's URL, here presigned with the same credentials.)"""
    store = open_store(dataclasses.replace(settings, key_prefix=""))
    url = obstore.sign(store, "PUT", "", timedelta(minutes=1))
    body = b""
    if settings.region != "us-east-1":
        body = (
            '<CreateBucketConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<LocationConstraint>{settings.region}</LocationConstraint></CreateBucketConfiguration>"
        ).encode()
    request = urllib.request.Request(url, data=body, method="PUT")
    try:
        with urllib.request.urlopen(request, timeout=settings.timeout):
            return True
    except urllib.error.HTTPError as exc:
        code = _error_code(exc.read().decode(errors="replace"))
        if exc.code == 409 and code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            return False
        raise StorageFailure(f"cannot create bucket {settings.bucket}: {exc.code} {code}") from None
    except OSError as exc:  # the URL is a credential for a few minutes: it is never part of a message
        raise StorageFailure(f"cannot create bucket {settings.bucket}: {exc.__class__.__name__}") from None


class S3Storage:
    """Implements `ports.storage.Storage` on an S3 bucket, staging incoming objects in `staging`."""

    remote = True

    def __init__(self, settings: S3Settings, staging: Path) -> None:
        try:
            Path(staging).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageFailure(f"cannot create the scratch folder {staging}: {exc}") from exc
        self.staging = Path(staging).resolve()
        self.settings = settings
        self.bucket = settings.bucket
        self._store = open_store(settings)
        self._uploads = ThreadPoolExecutor(max(1, settings.upload_concurrency), thread_name_prefix="s3-upload")

    def verify(self) -> None:
        """Refuse to work with credentials the store rejects or a bucket it does not have (a clear message at a
        service's start); a store that does not answer yet is only logged: the service waits for it."""
        where = self.settings.endpoint or "AWS S3"
        try:
            self._list_one()
        except StorageFailure as exc:
            if "NoSuchBucket" in exc.message:
                raise StorageFailure(f"no bucket {self.bucket} at {where}: `dicomcloud init` creates it") from None
            if any(code in exc.message for code in CREDENTIAL_ERRORS):
                found = credentials(self.settings)
                whose = f"access key {found.access_key_id}" if found else "credentials from the environment"
                raise StorageFailure(
                    f"the S3 store at {where} refused the {whose} for bucket {self.bucket}: {exc.message}"
                ) from None
            log.warning("S3 bucket %s at %s does not answer yet: %s", self.bucket, where, exc.message)

    # -- writes ------------------------------------------------------------------------------------

    def stage(self) -> BinaryIO:
        return scratch.new_file(self.staging)

    def commit(
        self, placements: Sequence[tuple[BinaryIO, str]], derivable: Sequence[tuple[str, bytes]] = ()
    ) -> None:
        """Every object of the batch, staged files and `derivable` alike, uploaded at once."""
        sources: list[Path] = []
        try:
            for key in [key for _, key in placements] + [key for key, _ in derivable]:
                key_parts(key)
            sources = [self._source(staged) for staged, _ in placements]
            uploads: list[tuple[Path | bytes, str]] = list(zip(sources, (key for _, key in placements), strict=True))
            uploads += [(data, key) for key, data in derivable]
            if len(uploads) == 1:
                self._upload(*uploads[0])
            else:
                for future in [self._uploads.submit(self._upload, source, key) for source, key in uploads]:
                    future.result()
        finally:
            for staged, _ in placements:
                self.discard(staged)
            for source in sources:
                if source.parent == self.staging:  # a scratch copy of a stream that had no file of its own
                    with suppress(OSError):
                        source.unlink(missing_ok=True)

    def _source(self, staged: BinaryIO) -> Path:
        """The file to upload from: the staged file's own (flushed), or a scratch copy of an unnamed stream."""
        staged.flush()
        name = getattr(staged, "name", None)
        if isinstance(name, str) and Path(name).is_file():
            return Path(name)
        copy = self.stage()
        with copy:
            staged.seek(0)
            while chunk := staged.read(READ_BUFFER):
                copy.write(chunk)
        staged.close()
        return Path(copy.name)

    def _upload(self, source: Path | bytes, key: str) -> None:
        """One object from a file (in parts when it is large) or from memory."""
        settings = self.settings
        with self._failing("store", key):
            if isinstance(source, bytes):
                obstore.put(self._store, key, source, use_multipart=False)
            elif source.stat().st_size > settings.multipart_threshold:
                obstore.put(
                    self._store, key, source, use_multipart=True,
                    chunk_size=settings.multipart_chunk, max_concurrency=settings.part_concurrency,
                )  # fmt: skip
            else:
                obstore.put(self._store, key, source.read_bytes(), use_multipart=False)

    def discard(self, staged: BinaryIO) -> None:
        name = getattr(staged, "name", None)
        with suppress(OSError):
            staged.close()
        if isinstance(name, str) and Path(name).parent.resolve() == self.staging:
            with suppress(OSError):
                Path(name).unlink(missing_ok=True)

    def write(self, key: str, data: bytes, *, durable: bool = True) -> None:
        """One PUT, durable either way (an object store has no cheaper kind)."""
        key_parts(key)
        with self._failing("write", key):
            obstore.put(self._store, key, data, use_multipart=False)

    def delete(self, keys: Sequence[str]) -> None:
        """Batched: S3 DeleteObjects takes up to 1,000 keys a request; missing ones are no error."""
        for key in keys:
            key_parts(key)
        if keys:
            with self._failing("delete", keys[0] if len(keys) == 1 else f"{len(keys)} objects"):
                obstore.delete(self._store, list(keys))

    # -- reads -------------------------------------------------------------------------------------

    def open(self, key: str) -> io.BufferedReader:
        """One GET of the object's first READ_BUFFER bytes tells its size and ETag too: a small object is read
        whole by opening it, a DICOM header of a big one without a second request."""
        key_parts(key)
        with self._failing("open", key, missing=True):
            try:
                first = obstore.get(self._store, key, options={"range": (0, READ_BUFFER)})
                meta, head = first.meta, bytes(first.bytes())
            except BaseError as exc:
                if "InvalidRange" not in str(exc):
                    raise
                meta, head = obstore.head(self._store, key), b""  # an empty object has no range to get
        raw = _RangedReader(self._store, key, int(meta["size"]), meta.get("e_tag"), self._url(key), head)
        return io.BufferedReader(raw, buffer_size=READ_BUFFER)

    def _url(self, key: str) -> str:
        prefix = self.settings.key_prefix.strip("/")
        return f"s3://{self.bucket}/{prefix + '/' if prefix else ''}{key}"

    def read(self, key: str) -> bytes:
        key_parts(key)
        with self._failing("read", key, missing=True):
            return bytes(obstore.get(self._store, key).bytes())

    def read_ranges(self, key: str, ranges: Sequence[ByteRange]) -> list[bytes]:
        key_parts(key)
        wanted = [(offset, length) for offset, length in ranges if length > 0]
        with self._failing("read", key, missing=True):
            if not wanted:
                obstore.head(self._store, key)  # a missing object is missing whatever is asked of it
                return [b"" for _ in ranges]
            pieces = obstore.get_ranges(
                self._store, key, starts=[o for o, _ in wanted], lengths=[n for _, n in wanted], coalesce=COALESCE
            )
        found = iter(pieces)
        out = []
        for offset, length in ranges:
            piece = bytes(next(found)) if length > 0 else b""
            if len(piece) != length:
                raise StorageFailure(f"{key} is shorter than {offset}+{length} bytes")
            out.append(piece)
        return out

    def size(self, key: str) -> int | None:
        key_parts(key)
        try:
            with self._failing("size", key, missing=True):
                return int(obstore.head(self._store, key)["size"])
        except ObjectMissing:
            return None

    def list(self, prefix: str) -> list[str]:
        """Paginated ListObjectsV2 of the prefix's folder (obstore lists by whole path components), filtered."""
        folder, _, partial = prefix.rpartition("/")
        if folder:
            key_parts(folder)
        if partial and not KEY_COMPONENT.fullmatch(partial):
            raise InvalidInput(f"refused storage prefix: {prefix[:200]!r}")
        with self._failing("list", prefix or "the bucket"):
            listed = [meta["path"] for chunk in obstore.list(self._store, folder or None) for meta in chunk]
        return sorted(key for key in listed if key.startswith(prefix))

    def ping(self) -> None:
        if not (self.staging.is_dir() and os.access(self.staging, os.W_OK | os.X_OK)):
            raise ServiceUnavailable(f"scratch folder {self.staging} is missing or not writable")
        try:
            self._list_one()
        except StorageFailure as exc:
            raise ServiceUnavailable(exc.message) from None

    def _list_one(self) -> None:
        """One ListObjectsV2 request: the endpoint answers, accepts the credentials and has the bucket."""
        with self._failing("list", "objects"):
            next(iter(obstore.list(self._store, None, chunk_size=1)), None)

    def sweep_staging(self, older_than_seconds: float) -> int:
        """Remove scratch files a crash left behind; how many."""
        return scratch.sweep(self.staging, older_than_seconds)

    @contextmanager
    def _failing(self, action: str, key: str, *, missing: bool = False) -> Iterator[None]:
        """obstore's errors as the port's: ObjectMissing for a missing object (where that is a read's answer),
        StorageFailure (503, C-STORE 0xA700) for anything else, with the store's S3 error code."""
        try:
            yield
        except _NOT_FOUND:
            if missing:
                raise ObjectMissing(f"no object {key}") from None
            raise StorageFailure(f"cannot {action} {key}: not found in bucket {self.bucket}") from None
        except (BaseError, OSError) as exc:
            raise StorageFailure(f"cannot {action} {key} in bucket {self.bucket}: {_summary(exc)}") from None


class _RangedReader(io.RawIOBase):
    """A seekable raw stream over one object's bytes: `head` (its first bytes, fetched at open) from memory,
    anything past it by a ranged GET of what `readinto` asks for, pinned to the ETag seen at open. Its `name` is
    the object's s3:// URL (pydicom reads the name of any BufferedReader; as no local path, nothing ever reopens
    it as a file)."""

    def __init__(self, store: S3Store, key: str, size: int, etag: str | None, name: str, head: bytes) -> None:
        self._store, self._key, self._size, self._etag, self._head = store, key, size, etag, head
        self.name = name
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._position = base + offset
        return self._position

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        end = min(self._size, self._position + len(buffer))
        if end <= self._position:
            return 0
        if self._position < len(self._head):
            count = min(end, len(self._head)) - self._position
            memoryview(buffer).cast("B")[:count] = self._head[self._position : self._position + count]
            self._position += count
            return count
        options: dict[str, object] = {"range": (self._position, end)}
        if self._etag:
            options["if_match"] = self._etag
        try:
            data = obstore.get(self._store, self._key, options=options).bytes()  # type: ignore[arg-type]
        except (*_NOT_FOUND, PreconditionError):
            raise StorageFailure(f"{self._key} was replaced or deleted while being read") from None
        except (BaseError, OSError) as exc:
            raise StorageFailure(f"cannot read {self._key}: {_summary(exc)}") from None
        count = len(data)
        memoryview(buffer).cast("B")[:count] = data
        self._position += count
        return count


def _summary(exc: BaseException) -> str:
    """obstore's message without its debug dump: the S3 error code and HTTP status when the store sent them,
    else the message's first line."""
    text = str(exc)
    code, status = _error_code(text), _STATUS.search(text)
    if code:
        return f"{code} ({status.group(1)})" if status else code
    return text.split("\n", 1)[0][:300]


def _error_code(text: str) -> str:
    found = _ERROR_CODE.search(text)
    return found.group(1) if found else ""

