"""Settings: embedded defaults, then `application.<env>.json`, then `DICOMCLOUD_…` variables.

`DICOMCLOUD_ENV` picks the JSON file (looked up in `DICOMCLOUD_CONFIG_DIR`, default `./config`);
without it the embedded defaults apply and no file is needed. Environment variables override
single values with `__` for nesting, e.g. `DICOMCLOUD_HTTP__PORT=9090` or
`DICOMCLOUD_DIMSE__AE_TENANTS='{"CT1": "radiology"}'` (JSON values are parsed).
Fields named in `SECRET_FIELDS` are masked by `Settings.redacted()`, the only form ever logged.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dicomcloud.networks import AddressSet

ENV_PREFIX = "DICOMCLOUD_"
# The bearer token `dicomcloud import --from-dicomweb` sends when no --token-file is given.
TOKEN_VARIABLE = ENV_PREFIX + "IMPORT_TOKEN"
# Variables with our prefix that are not settings: the file choice, the CLI's --log-format default, the token.
NOT_SETTINGS = frozenset({ENV_PREFIX + "ENV", ENV_PREFIX + "CONFIG_DIR", ENV_PREFIX + "LOG_FORMAT", TOKEN_VARIABLE})
SECRET_FIELDS = frozenset({"password", "secret", "token", "client_secret", "dsn", "secret_access_key"})


@dataclass
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    # Processes serving the port (service_workers.py); 0: one per core.
    workers: int = 0
    # Path prefix of the DICOMweb root; the tenant form is /<tenant>/dicom-web.
    root_path: str = "/dicom-web"
    # Origins a browser may call from (CORS); empty: same-origin only. ["*"] opens it to any page.
    cors_origins: list[str] = field(default_factory=list)
    # Largest STOW-RS body accepted, in bytes.
    max_stow_bytes: int = 8 * 1024**3
    # Seconds a request body may stall before the request fails (408) instead of hanging.
    body_timeout: float = 30.0
    # After `body_rate_grace` seconds a request body must have averaged this many bytes a second (else 408).
    body_min_rate: int = 1024
    body_rate_grace: float = 10.0
    # Request line and headers: at most this many bytes (else 431), complete within this many seconds (else 408).
    max_header_bytes: int = 64 * 1024
    header_timeout: float = 10.0
    # Open connections one client address may hold (trusted proxies excepted); more are answered 429.
    max_connections_per_client: int = 128
    # Base URL of every URL the archive writes (RetrieveURL, BulkDataURI, redirects); empty: the address the
    # request reached, or what a trusted proxy forwarded. Never the client's Host header.
    public_url: str = ""
    # Addresses or networks (CIDR) of proxies whose Forwarded / X-Forwarded-* headers are believed.
    trusted_proxies: list[str] = field(default_factory=lambda: ["127.0.0.1", "::1"])
    # The prebuilt OHIF viewer served at /viewer/ (@ohif/app's dist/); empty: the one ./dev fetched into the cache.
    viewer_dist: str = ""

    def __post_init__(self) -> None:
        AddressSet(self.trusted_proxies)  # fail at start on an entry that is no address or network
        if self.workers < 0:
            raise ValueError(f"http.workers must be 0 (one per core) or more, not {self.workers}")


@dataclass
class LimitsSettings:
    """What one request may make the archive compute."""

    # Largest rendered width or height (`viewport`), per side.
    max_viewport: int = 4096
    # Largest frame decoded for one request (rows x columns x samples x bytes per sample); a larger one is
    # refused before it is decoded. Rendering takes a few times this in memory.
    max_decoded_frame_bytes: int = 64 * 1024**2


@dataclass
class MoveDestination:
    """A C-MOVE destination AE: where it listens and, with `tls`, how to reach it over DICOM TLS."""

    host: str
    port: int
    tls: bool = False
    # PEM files: CAs to verify the destination (system CAs when empty), our client certificate and key.
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""


DIMSE_OPERATIONS = ("echo", "store", "find", "get", "move")


@dataclass
class DimsePeer:
    """A known DICOM peer, by its calling AE title: where it may connect from, as whom, and what it may do
    (the PACS administrator's list of modalities, as Orthanc's DicomModalities or dcm4chee's known AEs)."""

    # Addresses or networks (CIDR) the peer connects from; "0.0.0.0/0" and "::/0" for anywhere.
    hosts: list[str] = field(default_factory=list)
    # Tenants it reaches (through the called AE title, `dimse.ae_tenants`); empty: the default tenant only.
    tenants: list[str] = field(default_factory=list)
    operations: list[str] = field(default_factory=lambda: list(DIMSE_OPERATIONS))
    # Whether its C-STORE may replace an instance already stored with other content.
    replace: bool = False
    # With DICOM TLS: the common name its client certificate must carry; empty: no certificate required.
    tls_common_name: str = ""

    def __post_init__(self) -> None:
        unknown = set(self.operations) - set(DIMSE_OPERATIONS)
        if unknown:
            raise ValueError(f"unknown DIMSE operation(s) {sorted(unknown)}; one of {', '.join(DIMSE_OPERATIONS)}")
        if not self.hosts:
            raise ValueError("a DIMSE peer needs the hosts it connects from (addresses or CIDR networks)")
        AddressSet(self.hosts)


@dataclass
class DimseSettings:
    host: str = "127.0.0.1"
    port: int = 11112
    ae_title: str = "DICOMCLOUD"
    # Called AE title -> tenant id. An AE not listed maps to the default tenant unless strict.
    ae_tenants: dict[str, str] = field(default_factory=dict)
    reject_unknown_called_ae: bool = False
    # Access control: only the peers listed in `peers` associate, each with its tenants and operations.
    # None: on exactly when DICOMweb authentication (`auth.enabled`) is.
    access_control: bool | None = None
    # Known peers by calling AE title (leading and trailing spaces are not part of an AE title, PS3.5 6.2).
    peers: dict[str, DimsePeer] = field(default_factory=dict)
    max_pdu: int = 0
    network_timeout: float = 60.0
    # Processes serving the port (service_workers.py); 0: one per core.
    workers: int = 0
    # C-MOVE destinations by AE title: {"WORKSTATION1": {"host": "10.0.0.5", "port": 104, "tls": false}}.
    move_destinations: dict[str, MoveDestination] = field(default_factory=dict)
    # DICOM TLS on the SCP: on when a certificate is given (PEM files, e.g. from `dicomcloud certs`).
    # With `tls_require_client_cert`, peers must present a certificate signed by a CA in `tls_ca_file`.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_ca_file: str = ""
    tls_require_client_cert: bool = False

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError(f"dimse.workers must be 0 (one per core) or more, not {self.workers}")
        self.move_destinations = {
            title.strip(): _move_destination(value) for title, value in self.move_destinations.items()
        }
        self.peers = {
            title.strip(): peer if isinstance(peer, DimsePeer) else DimsePeer(**peer)
            for title, peer in self.peers.items()
        }


def _move_destination(value: MoveDestination | dict[str, Any]) -> MoveDestination:
    return value if isinstance(value, MoveDestination) else MoveDestination(**value)


@dataclass
class S3Settings:
    """The object store of `backends.storage = "s3"`: any S3-compatible one (AWS S3, SeaweedFS, Ceph RGW, MinIO)."""

    # Base URL of the S3 API, e.g. http://127.0.0.1:8333 or https://s3.eu-west-1.amazonaws.com; empty: AWS S3
    # of `region` (or AWS_ENDPOINT).
    endpoint: str = ""
    bucket: str = ""
    region: str = "us-east-1"
    # Credentials: these, else the `profile` of `credentials_file` (AWS's INI format, aws_access_key_id and
    # aws_secret_access_key), else the AWS_* environment variables or the machine's instance role.
    access_key_id: str = ""
    secret_access_key: str = ""
    credentials_file: str = ""
    profile: str = "default"
    # Every key of this archive lives under this prefix (e.g. one per tenant or site sharing a bucket).
    key_prefix: str = ""
    # https://<bucket>.<endpoint host> instead of <endpoint>/<bucket> (AWS S3 prefers it; most others need paths).
    virtual_hosted_style: bool = False
    # Seconds for one request (a multipart part counts as one), and for connecting.
    timeout: float = 30.0
    connect_timeout: float = 5.0
    # Retries of a request that met a 5xx, throttling or a lost connection, with exponential backoff.
    max_retries: int = 4
    # Objects larger than this go up in parts of `multipart_chunk` bytes, `part_concurrency` at once.
    multipart_threshold: int = 16 * 1024**2
    multipart_chunk: int = 8 * 1024**2
    part_concurrency: int = 8
    # Objects of one commit (a STOW-RS request's instances) uploaded at once.
    upload_concurrency: int = 16


@dataclass
class StorageSettings:
    # Everything the archive writes lives under this folder (with `backends.storage = "s3"`, only scratch files).
    data_dir: str = "./data"
    # `replace`: a different object with a stored SOP Instance UID replaces it.
    # `reject`: it is refused (C-STORE 0x0111, STOW FailureReason 0x0111); identical resends succeed.
    duplicate_policy: Literal["replace", "reject"] = "replace"
    # Binary values longer than this become BulkDataURI in DICOM JSON; shorter ones InlineBinary.
    bulkdata_threshold: int = 1024
    # Where new objects go (archive/keys.py): `uids`, <TenantID>/<StudyUID>/<SeriesUID>/<SOPUID>.dcm; `hashed`,
    # <TenantID>/<YYYY>/<MM>/<DD>/<SeaHash of each UID>/..., for object stores that partition by key prefix. One
    # per archive: recorded in storage at first start, and a later change is refused at start.
    key_layout: Literal["uids", "hashed"] = "uids"
    s3: S3Settings = field(default_factory=S3Settings)


@dataclass
class BackendSettings:
    bus: Literal["sqlite", "kafka"] = "sqlite"
    index: Literal["sqlite", "postgres"] = "sqlite"
    cache: Literal["memory", "redis"] = "memory"
    # Where objects live: `fs`, the data folder's storage/; `s3`, the bucket of `storage.s3`.
    storage: Literal["fs", "s3"] = "fs"
    # Bound of the embedded (memory) cache, in each process. Its series documents are also files under the
    # metadata root and parsed ones stay in an LRU of their own, so a large cache mostly holds RSS, not speed:
    # with 64 MB and a full LRU a serving process reached 231 MB on the bench, past its 200 MB per process.
    cache_max_bytes: int = 32 * 1024**2
    # Seconds a QIDO-RS result may be served from the cache (changes invalidate it sooner); 0 = off.
    qido_cache_ttl: float = 30.0
    # libpq connection string of the PostgreSQL index, e.g. postgresql://user:password@host:5432/db
    postgres_dsn: str = ""
    # Redis URL of the cache, e.g. redis://:password@host:6379/0
    redis_url: str = ""
    # Kafka bus: bootstrap servers (host:port,...), and the partitions and replication factor of the
    # topics it creates. A publish the brokers have not acknowledged within the delivery timeout fails
    # (the SCP then answers C-STORE with a failure status).
    kafka_bootstrap: str = ""
    kafka_partitions: int = 3
    kafka_replication: int = 1
    kafka_delivery_timeout: float = 30.0
    warehouse: Literal["duckdb", "doris"] = "duckdb"


@dataclass
class WorkerSettings:
    # Seconds between scans for stale series metadata documents.
    webworker_interval: float = 0.5
    consumer_batch: int = 256
    consumer_poll_timeout: float = 0.5


@dataclass
class DorisSettings:
    # The FE's HTTP address (Stream Load; the FE redirects to a BE) and its MySQL-protocol port (queries).
    http_url: str = "http://127.0.0.1:8030"
    mysql_host: str = "127.0.0.1"
    mysql_port: int = 9030
    database: str = "dicomcloud"
    user: str = "root"
    password: str = ""
    timeout: float = 60.0


@dataclass
class WarehouseSettings:
    # The loader sends its batches when this many rows are pending, or when the oldest waited this long.
    batch_rows: int = 1000
    batch_seconds: float = 2.0
    # Access-log events are published in the background every this many seconds (and at this many queued).
    access_log_flush_seconds: float = 0.5
    access_log_max_queued: int = 10_000
    # Chart.js for the dashboard; empty: the copy ./dev fetched from npm into the cache folder.
    chart_js: str = ""
    doris: DorisSettings = field(default_factory=DorisSettings)


# What @cornerstonejs/dicom-image-loader 5.14 decodes: the `switch (transferSyntax)` of
# decodeImageFrame in its published dist/esm/decodeImageFrameWorker.js (npm, 2025). Its list also
# has 1.2.840.10008.1.2.8.1 (Deflated Image Frame Compression) and a private "3.2.840.10008.1.2.4.96"
# (HTJ2K). JPEG 2000 Part 2 (.92, .93), JPIP, MPEG and H.264/H.265 are absent, so they are transcoded.
CORNERSTONE_SYNTAXES = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.1.98",
    "1.2.840.10008.1.2.8.1",
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.53",
    "1.2.840.10008.1.2.4.55",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "3.2.840.10008.1.2.4.96",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
    "1.2.840.10008.1.2.4.110",
    "1.2.840.10008.1.2.4.111",
    "1.2.840.10008.1.2.4.112",
]


@dataclass
class TranscodeSettings:
    # Instances stored in any other syntax get a derived copy in `target_syntax` at ingest.
    viewer_syntaxes: list[str] = field(default_factory=lambda: list(CORNERSTONE_SYNTAXES))
    # Explicit VR Little Endian: every viewer and toolkit decodes it with no codec, it is lossless
    # for whatever was decoded, and pydicom writes it without an encoder plugin that could fail.
    target_syntax: str = "1.2.840.10008.1.2.1"
    # Every image instance also gets a copy in each of these syntaxes at ingest (any the archive encodes, e.g.
    # HTJ2K "1.2.840.10008.1.2.4.202" for viewers that stream it), unless it is stored in that syntax already.
    derived_syntaxes: list[str] = field(default_factory=list)
    # Attempts per instance before a TranscodeFailure is published.
    max_attempts: int = 3


@dataclass
class AuthSettings:
    """OAuth2/OIDC bearer tokens on the DICOMweb routes; off by default, fail closed when on."""

    enabled: bool = False
    # `iss` the tokens must carry, and the `aud` that names this archive.
    issuer: str = ""
    audience: str = ""
    # Where the signing keys are; empty: the `jwks_uri` of `<issuer>/.well-known/openid-configuration`.
    jwks_url: str = ""
    # Clock skew tolerated on `exp`, `nbf` and `iat`.
    leeway_seconds: float = 30.0
    # How long keys are cached when the issuer sends no Cache-Control max-age.
    jwks_ttl_seconds: float = 300.0
    # An unknown `kid` refetches the keys at most once per this many seconds.
    jwks_refetch_seconds: float = 30.0
    http_timeout: float = 5.0
    # Claims (dotted paths) holding scopes or roles: a space-separated string or a list.
    scope_claims: list[str] = field(default_factory=lambda: ["scope", "scp", "realm_access.roles"])
    # The scope or role each kind of request needs; `admin_scope` guards the cross-tenant statistics.
    read_scope: str = "dicom.read"
    write_scope: str = "dicom.write"
    delete_scope: str = "dicom.delete"
    admin_scope: str = "dicom.admin"
    # Claim (dotted path) listing the tenants a token may reach.
    tenants_claim: str = "tenants"
    realm: str = "dicomcloud"
    # The issuer's client id of the OHIF viewer at /viewer/ (a public client, authorization code with PKCE);
    # empty: the viewer has no login of its own and takes a token from its URL (`?token=`).
    viewer_client_id: str = ""


@dataclass
class OpsSettings:
    """Where a service process answers /health, /ready and /metrics; port 0 = no ops listener."""

    host: str = "127.0.0.1"
    port: int = 0


@dataclass
class Settings:
    tenant: str = "default"
    http: HttpSettings = field(default_factory=HttpSettings)
    dimse: DimseSettings = field(default_factory=DimseSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    backends: BackendSettings = field(default_factory=BackendSettings)
    workers: WorkerSettings = field(default_factory=WorkerSettings)
    warehouse: WarehouseSettings = field(default_factory=WarehouseSettings)
    transcode: TranscodeSettings = field(default_factory=TranscodeSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    ops: OpsSettings = field(default_factory=OpsSettings)
    log_level: str = "INFO"

    @property
    def data_path(self) -> Path:
        return Path(self.storage.data_dir).resolve()

    @property
    def dimse_access_control(self) -> bool:
        """Whether DIMSE peers must be known ones (on with DICOMweb authentication unless set otherwise)."""
        configured = self.dimse.access_control
        return self.auth.enabled if configured is None else configured

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict with every secret masked: the only form that may be logged."""
        masked: dict[str, Any] = _mask(dataclasses.asdict(self))
        return masked


def _mask(value: Any, key: str = "") -> Any:
    """Secret fields (`password`, or named like `postgres_dsn`) wholly; passwords inside URLs anywhere."""
    if isinstance(value, dict):
        return {k: _mask(v, k) for k, v in value.items()}
    if value and (key.lower() in SECRET_FIELDS or key.lower().rpartition("_")[2] in SECRET_FIELDS):
        return "***"
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\g<head>***@", value)
    return value


_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^/\s@]+@", re.I)


def load_settings(overrides: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Build settings from defaults, the environment's JSON file, env variables, then `overrides`."""
    env = dict(os.environ if environ is None else environ)
    merged: dict[str, Any] = {}
    env_name = env.get(ENV_PREFIX + "ENV")
    if env_name:
        config_dir = Path(env.get(ENV_PREFIX + "CONFIG_DIR", "config"))
        path = config_dir / f"application.{env_name}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{ENV_PREFIX}ENV={env_name} but {path} does not exist")
        merged = _deep_merge(merged, json.loads(path.read_text(encoding="utf-8")))
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name in NOT_SETTINGS:
            continue
        keys = name[len(ENV_PREFIX) :].lower().split("__")
        merged = _deep_merge(merged, _nest(keys, _parse_env_value(raw)))
    if overrides:
        merged = _deep_merge(merged, overrides)
    settings: Settings = _build(Settings, merged)
    return settings


def _parse_env_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _nest(keys: list[str], value: Any) -> dict[str, Any]:
    for key in reversed(keys[1:]):
        value = {key: value}
    return {keys[0]: value}


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("ae_tenants", "peers"):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _build(cls: Any, values: dict[str, Any]) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise ValueError(f"unknown setting(s) for {cls.__name__}: {', '.join(sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        factory = known[name].default_factory
        sample = None if factory is dataclasses.MISSING else factory()
        if dataclasses.is_dataclass(sample) and isinstance(value, dict):
            kwargs[name] = _build(type(sample), value)
        else:
            kwargs[name] = value
    return cls(**kwargs)
