"""Throwaway PostgreSQL and Redis servers on loopback, for the local stack, tests and developers.

Each server lives in its own folder, listens on 127.0.0.1 on a free non-default port, runs in its own
session (so it outlives the process that started it, and a terminal's Ctrl-C does not reach it) and is
stopped by pid. PostgreSQL refuses to run as root: under root its processes run as the unprivileged
`postgres` user (the Debian package creates it), which must own the cluster folder and reach it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import string
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis

POSTGRES_USER = "dicomcloud"
POSTGRES_DATABASE = "dicomcloud"
# The unprivileged account PostgreSQL runs as when the stack is started by root.
POSTGRES_SYSTEM_USER = "postgres"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


class StackError(RuntimeError):
    """A server of the stack could not be found, started or stopped."""


@dataclass
class Server:
    """A running server: where it listens and how to stop it."""

    name: str
    pid: int
    port: int
    url: str  # the DSN or URL clients connect with
    folder: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    command: list[str] = field(default_factory=list)
    log: Path | None = None

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return pid_alive(self.pid)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Ask the server to shut down cleanly, then kill it if it does not within `timeout`."""
        stop_pid(self.pid, _STOP_SIGNAL.get(self.name, signal.SIGTERM), timeout, self.process)


# PostgreSQL's "fast" shutdown: abort open transactions, checkpoint, exit.
_STOP_SIGNAL = {"postgres": signal.SIGINT}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_pid(
    pid: int, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Stop one process by pid: `sig`, then SIGKILL after `timeout`; reaped if it is our child."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    if process is not None:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        return
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + timeout
        time.sleep(0.05)


def pid_alive(pid: int) -> bool:
    """Whether `pid` is in the process table (a zombie counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_ready(server: Server, check: Callable[[], bool], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if not server.alive():
            raise StackError(f"{server.name} exited while starting; see {log}:\n{_tail(log)}")
        if check():
            return
        time.sleep(0.1)
    server.stop()
    raise StackError(f"{server.name} was not ready after {READY_TIMEOUT:.0f}s; see {log}:\n{_tail(log)}")


def _tail(path: Path, lines: int = 20) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# -- Debian packages ---------------------------------------------------------------------------------


def install_missing() -> None:
    """Install, with apt-get, the Debian package of each server the stack runs whose program is missing
    (as `./dev` does). Without apt-get, the servers' own lookups name what to install."""
    programs: dict[str, Callable[[], bool]] = {
        "postgresql": _has_postgres,
        "redis-server": lambda: shutil.which("redis-server") is not None,
        "openjdk-17-jre-headless": lambda: shutil.which("java") is not None,
        "maven": lambda: shutil.which("mvn") is not None,
        "nginx-light": lambda: _nginx() is not None,
    }
    missing = [package for package, present in programs.items() if not present()]
    apt_get = shutil.which("apt-get")
    if not missing or apt_get is None:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in ([apt_get, "update", "-q"], [apt_get, "install", "-y", "-q", "--no-install-recommends", *missing]):
        result = subprocess.run([*sudo, *command], capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            raise StackError(f"installing {' '.join(missing)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")


def _has_postgres() -> bool:
    try:
        postgres_bindir()
    except StackError:
        return False
    return True


def _nginx() -> str | None:
    found = shutil.which("nginx")
    if found is None and Path("/usr/sbin/nginx").is_file():
        found = "/usr/sbin/nginx"
    return found


# -- PostgreSQL --------------------------------------------------------------------------------------


def postgres_bindir() -> Path:
    """The folder holding `initdb` and `postgres`: the newest Debian version, else pg_config's, else PATH."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    pg_config = shutil.which("pg_config")
    if pg_config:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if found:
            candidates.append(Path(found))
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    raise StackError("PostgreSQL binaries (initdb, postgres) not found; install the Debian package `postgresql`")


def _run_as() -> pwd.struct_passwd | None:
    """The account PostgreSQL must run as: None for a non-root caller (itself)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(POSTGRES_SYSTEM_USER)
    except KeyError:
        raise StackError(f"running as root needs the system user {POSTGRES_SYSTEM_USER!r} to run PostgreSQL") from None


def _give_to(account: pwd.struct_passwd | None, *paths: Path) -> None:
    if account is None:
        return
    for path in paths:
        os.chown(path, account.pw_uid, account.pw_gid)
    for parent in paths[0].resolve().parents:
        mode = parent.stat().st_mode
        if not mode & 0o001 and parent.stat().st_uid != account.pw_uid:
            raise StackError(f"{account.pw_name} cannot reach {paths[0]}: {parent} is not searchable by others")


def _popen_as(
    account: pwd.struct_passwd | None, command: list[str], log: Path, *, detach: bool
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        if account is None:
            return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=detach)
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=detach,
            user=account.pw_uid,
            group=account.pw_gid,
            extra_groups=[],
            env={**os.environ, "HOME": account.pw_dir, "USER": account.pw_name},
            cwd="/",
        )


def start_postgres(folder: Path, port: int | None = None) -> Server:
    """Start (creating it on first use) a PostgreSQL cluster in `folder` with database `dicomcloud`.

    The superuser `dicomcloud` authenticates with a generated password over TCP, so the DSN is shaped
    like a production one. Started again on the same folder, the cluster keeps its data.
    """
    bindir = postgres_bindir()
    account = _run_as()
    folder.mkdir(parents=True, exist_ok=True)
    data, sockets, log = folder / "data", folder / "sockets", folder / "postgres.log"
    password_file = folder / "password"
    sockets.mkdir(exist_ok=True)
    if not (data / "PG_VERSION").is_file():
        password_file.write_text(secrets.token_urlsafe(18))
        password_file.chmod(0o600)
        data.mkdir(mode=0o700, exist_ok=True)
        _give_to(account, folder, data, sockets, password_file)
        initdb = [
            str(bindir / "initdb"), "-D", str(data), f"--username={POSTGRES_USER}", f"--pwfile={password_file}",
            "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C",
        ]  # fmt: skip
        result = _popen_as(account, initdb, folder / "initdb.log", detach=False).wait()
        if result != 0:
            raise StackError(f"initdb failed ({result}); see {folder / 'initdb.log'}")
    _give_to(account, folder, sockets)
    port = port or free_port()
    command = [
        str(bindir / "postgres"), "-D", str(data), "-k", str(sockets), "-p", str(port),
        "-c", "listen_addresses=127.0.0.1", "-c", "logging_collector=off",
    ]  # fmt: skip
    process = _popen_as(account, command, log, detach=True)
    password = password_file.read_text().strip()
    admin = f"postgresql://{POSTGRES_USER}:{password}@127.0.0.1:{port}/postgres"
    server = Server(
        name="postgres",
        pid=process.pid,
        port=port,
        url=f"postgresql://{POSTGRES_USER}:{password}@127.0.0.1:{port}/{POSTGRES_DATABASE}",
        folder=folder,
        process=process,
        command=command,
        log=log,
    )
    _wait_ready(server, lambda: postgres_answers(admin), log)
    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (POSTGRES_DATABASE,)).fetchone() is None:
            conn.execute(f"CREATE DATABASE {POSTGRES_DATABASE}")
    return server


def postgres_answers(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return False
    return True


# -- Redis -------------------------------------------------------------------------------------------


def start_redis(folder: Path, port: int | None = None) -> Server:
    """Start a Redis server with persistence off: the cache holds nothing the archive cannot rebuild."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise StackError("redis-server not found; install the Debian package `redis-server`")
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = folder / "redis.log"
    command = [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
        "--save", "", "--appendonly", "no", "--daemonize", "no",
    ]  # fmt: skip
    process = _popen_as(None, command, log, detach=True)
    url = f"redis://127.0.0.1:{port}/0"
    server = Server("redis", process.pid, port, url, folder, process, command, log)
    _wait_ready(server, lambda: redis_answers(url), log)
    return server


def redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


# -- Nginx -------------------------------------------------------------------------------------------

NGINX_TEMPLATES = Path(__file__).resolve().parents[3] / "deploy" / "nginx"
NGINX_MODULES = Path("/usr/lib/nginx/modules")
# The OHIF viewer Nginx serves at /viewer/: @ohif/app's prebuilt dist/ as ./dev fetches it, and our config.
OHIF_DIST = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dicomcloud" / "npm" / "ohif" / "dist"
OHIF_APP_CONFIG = NGINX_TEMPLATES.parent / "ohif" / "app-config.js"


@dataclass(frozen=True)
class NginxSite:
    """What the shipped template needs: where Nginx listens, its certificate, and the wado-servers."""

    https_listen: str
    http_listen: str
    cert_file: Path
    key_file: Path
    upstreams: Sequence[str]
    run_dir: Path
    server_name: str = "localhost"
    # DICOM TLS passed through to the SCP: (listen address, wado-storescp host:port); None leaves it out.
    dimse_tls: tuple[str, str] | None = None
    modules: Path = NGINX_MODULES
    viewer_dist: Path = OHIF_DIST
    viewer_config: Path = OHIF_APP_CONFIG


def render_nginx(site: NginxSite, templates: Path = NGINX_TEMPLATES) -> str:
    """The shipped config for `site`: one upstream `server` line per wado-server (a failed one is left out for
    5 s), and the DICOM TLS stream part in front when asked for."""
    if not site.upstreams:
        raise StackError("Nginx needs at least one wado-server upstream")
    values = {
        "HTTPS_LISTEN": site.https_listen,
        "HTTPS_PORT": site.https_listen.rpartition(":")[2],
        "HTTP_LISTEN": site.http_listen,
        "SERVER_NAME": site.server_name,
        "CERT_FILE": str(site.cert_file),
        "KEY_FILE": str(site.key_file),
        "UPSTREAM_SERVERS": "\n        ".join(f"server {up} max_fails=1 fail_timeout=5s;" for up in site.upstreams),
        "RUN_DIR": str(site.run_dir),
        "NGINX_MODULES": str(site.modules),
        "OHIF_DIST": str(site.viewer_dist),
        "OHIF_APP_CONFIG": str(site.viewer_config),
    }
    parts = [templates / "nginx.conf.template"]
    if site.dimse_tls is not None:
        values["DIMSE_TLS_LISTEN"], values["UPSTREAM_DIMSE"] = site.dimse_tls
        parts.insert(0, templates / "dimse-tls.conf.template")
    # Nginx's own `$host`-style variables stay; a `${NAME}` left over is a template variable nobody set.
    text = "".join(string.Template(part.read_text()).safe_substitute(values) for part in parts)
    unset = sorted(set(re.findall(r"\$\{(\w+)\}", text)))
    if unset:
        raise StackError(f"Nginx template variables not set: {', '.join(unset)}")
    return text


def nginx_directives() -> str:
    """Nginx in the foreground; as root, its workers stay root: the account they would drop to cannot read
    the viewer in root's cache folder (a local stack on loopback, not a production install)."""
    return "daemon off;" + (" user root;" if os.geteuid() == 0 else "")


def start_nginx(site: NginxSite, templates: Path = NGINX_TEMPLATES) -> Server:
    """Render the config into `site.run_dir` and run Nginx in the foreground of its own session."""
    binary = _nginx()
    if binary is None:
        raise StackError("nginx not found; install the Debian packages `nginx-light` and `libnginx-mod-stream`")
    site.run_dir.mkdir(parents=True, exist_ok=True)
    config, log = site.run_dir / "nginx.conf", site.run_dir / "nginx.log"
    config.write_text(render_nginx(site, templates))
    command = [binary, "-p", str(site.run_dir), "-e", "stderr", "-c", str(config), "-g", nginx_directives()]
    process = _popen_as(None, command, log, detach=True)
    host, _, port = site.https_listen.rpartition(":")
    server = Server(
        name="nginx",
        pid=process.pid,
        port=int(port),
        url=f"https://{site.server_name}:{port}",
        folder=site.run_dir,
        process=process,
        command=command,
        log=log,
    )
    _wait_ready(server, lambda: accepts(host or "127.0.0.1", int(port)), log)
    return server


def accepts(host: str, port: int) -> bool:
    """True when something accepts a TCP connection at host:port."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False
