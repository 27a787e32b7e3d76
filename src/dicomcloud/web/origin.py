"""Where clients reach the archive: the one place a request's scheme, host, path prefix and client address
are decided.

Every URL the archive writes (RetrieveURL, BulkDataURI, a redirect's Location, the OpenAPI servers) is
built from
1. `http.public_url`, when set;
2. else, on a connection from a trusted proxy (`http.trusted_proxies`, loopback by default, so the shipped
   Nginx works unconfigured), what the proxy forwarded: RFC 7239 `Forwarded` (proto, host) or
   `X-Forwarded-Proto`, `-Host`, `-Port` and `-Prefix`, the value the nearest proxy wrote (the last); each
   one on its own (a proxy may forward a prefix and no host), the rest from the address reached. RFC 7239
   has no prefix parameter, so a path prefix only travels as `X-Forwarded-Prefix`;
3. else the address and port the connection reached.

A client's `Host` header is never believed: anyone can write any name there (`Host: evil.example`), and a
URL built from it would send the next client to that name. The middleware rewrites the ASGI scope (scheme,
server, the host header, root_path and path and, from a trusted proxy, the client address) before anything
reads it, so Starlette's own URL building, the routes and the access log all see the decided values. A
prefix goes into root_path, and into path unless the proxy left it there (the ASGI path includes root_path),
so routes match either way and a redirect's Location keeps it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from dicomcloud.config import HttpSettings
from dicomcloud.networks import AddressSet

DEFAULT_PORTS = {"http": 80, "https": 443}
# A host as a proxy may forward it: a DNS name or IPv4 address, or a bracketed IPv6 address; optional port.
_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9-]{1,63})*|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?"
)
# A path prefix: segments of unreserved characters, no "." or ".." (a URL would resolve out of the prefix).
_PREFIX = re.compile(r"(?:/(?!\.\.?(?:/|$))[A-Za-z0-9._~-]+)*")
_FORWARDED_PAIR = re.compile(r'\s*([A-Za-z]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)\s*')


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str  # host[:port], the port left out when it is the scheme's default
    prefix: str = ""  # a path the proxy serves the archive under ("/pacs"), or ""


def host_and_port(host: str, port: int | None, scheme: str) -> str:
    """`host` (IPv6 bracketed) with `:port` unless the port is the scheme's default."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return shown if port in (None, DEFAULT_PORTS.get(scheme)) else f"{shown}:{port}"


def reached_origin(scope: Scope) -> Origin:
    """The address and port the connection reached, as the origin a URL names."""
    scheme = scope.get("scheme", "http")
    server = scope.get("server")
    if not server:
        return Origin(scheme, "localhost")
    host, port = server[0], server[1]
    return Origin(scheme, host_and_port(str(host), int(port) if port else None, scheme))


def forwarded_origin(headers: dict[str, str], reached: Origin) -> Origin:
    """The origin a trusted proxy forwarded; what it did not forward (or forwarded malformed) as reached."""
    forwarded = _last_forwarded_element(headers.get("forwarded", ""))
    scheme = forwarded.get("proto") or _last(headers.get("x-forwarded-proto", ""))
    host = forwarded.get("host") or _last(headers.get("x-forwarded-host", ""))
    port = _last(headers.get("x-forwarded-port", ""))
    prefix = _last(headers.get("x-forwarded-prefix", "")).rstrip("/")
    scheme = scheme.lower() if scheme.lower() in DEFAULT_PORTS else reached.scheme
    prefix = prefix if _PREFIX.fullmatch(prefix) else ""
    if not host or not _HOST.fullmatch(host):
        if not port.isdigit():
            return Origin(scheme, _reached_host_under(reached, scheme), prefix)
        host = _without_port(reached.host)
    if port.isdigit() and ":" not in host.rpartition("]")[2]:
        host = host_and_port(host, int(port), scheme)
    return Origin(scheme, host, prefix)


def _without_port(host: str) -> str:
    return host.rsplit(":", 1)[0] if ":" in host.rpartition("]")[2] else host


def _reached_host_under(reached: Origin, scheme: str) -> str:
    """The reached host[:port] named under `scheme`: a port left out as the reached scheme's default is shown."""
    if scheme == reached.scheme or ":" in reached.host.rpartition("]")[2]:
        return reached.host
    return f"{reached.host}:{DEFAULT_PORTS[reached.scheme]}"


def forwarded_client(headers: dict[str, str], trusted: AddressSet) -> str | None:
    """The client's address: the last one in X-Forwarded-For (or Forwarded `for=`) that is no trusted proxy."""
    chain = [value for element in _forwarded_elements(headers.get("forwarded", "")) if (value := element.get("for"))]
    chain = chain or [item.strip() for item in headers.get("x-forwarded-for", "").split(",") if item.strip()]
    for address in reversed(chain):
        address = address.strip("[]") if address.startswith("[") else address
        if address not in trusted:
            return address
    return None


def _last(value: str) -> str:
    return value.rsplit(",", 1)[-1].strip()


def _forwarded_elements(value: str) -> list[dict[str, str]]:
    elements = []
    for element in value.split(","):
        pairs = {}
        for pair in element.split(";"):
            match = _FORWARDED_PAIR.fullmatch(pair)
            if match:
                pairs[match.group(1).lower()] = match.group(2).strip('"')
        elements.append(pairs)
    return elements


def _last_forwarded_element(value: str) -> dict[str, str]:
    elements = _forwarded_elements(value) if value else []
    return elements[-1] if elements else {}


class TrustedOrigin:
    """ASGI middleware that decides the request's origin (see the module docstring) and writes it into the scope."""

    def __init__(self, app: ASGIApp, settings: HttpSettings) -> None:
        self.app = app
        self.trusted = AddressSet(settings.trusted_proxies)
        # Whether a peer address is a trusted proxy, remembered: parsing it is most of what a request costs here.
        self._trusted = functools.lru_cache(maxsize=4096)(self.trusted.__contains__)
        self.public: Origin | None = None
        if settings.public_url:
            url = urlsplit(settings.public_url)
            self.public = Origin(url.scheme or "https", url.netloc, url.path.rstrip("/"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope = self._rewrite(scope)
        await self.app(scope, receive, send)

    def _rewrite(self, scope: Scope) -> Scope:
        reached = reached_origin(scope)
        client = scope.get("client")
        from_proxy = client is not None and self._trusted(client[0])
        headers: dict[str, str] = {}
        for name, value in scope.get("headers", []) if from_proxy else ():  # only a proxy's headers are read
            key = name.decode("latin-1")
            headers[key] = f"{headers[key]}, {value.decode('latin-1')}" if key in headers else value.decode("latin-1")
        origin = self.public or (forwarded_origin(headers, reached) if from_proxy else reached)
        rewritten = dict(scope)
        rewritten["scheme"] = origin.scheme
        rewritten["headers"] = [(b"host", origin.host.encode("latin-1"))] + [
            (name, value) for name, value in scope.get("headers", []) if name != b"host"
        ]
        if origin.prefix:
            rewritten["root_path"] = origin.prefix + scope.get("root_path", "")
            path = scope.get("path", "")
            if path != origin.prefix and not path.startswith(origin.prefix + "/"):
                rewritten["path"] = origin.prefix + path
                rewritten["raw_path"] = origin.prefix.encode("ascii") + scope.get("raw_path", path.encode())
        if from_proxy:
            address = forwarded_client(headers, self.trusted)
            if address:
                rewritten["client"] = (address, 0)
        return rewritten
