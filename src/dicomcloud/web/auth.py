"""OAuth2/OIDC bearer tokens for wado-server: who may read, store into or delete which tenant's data.

Switched on by `auth.enabled`. A token is a JWT signed by the issuer with an asymmetric key from
its JWKS; the key set is cached in the cache port for as long as the issuer says (Cache-Control
max-age) and fetched again, at most once per `jwks_refetch_seconds`, when a token names a `kid` it
does not hold (a rotated key). The algorithm must be one the key itself fits, so `none` and HS256
"signed" with a public key never verify. The token itself is never logged.
"""

from __future__ import annotations

import enum
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from fastapi import Request
from starlette.concurrency import run_in_threadpool

from dicomcloud.config import AuthSettings
from dicomcloud.errors import Forbidden, ServiceUnavailable, Unauthenticated
from dicomcloud.ports.cache import Cache

log = logging.getLogger(__name__)

# Algorithm -> the key type (and EC curve) it needs. Only asymmetric ones: a symmetric secret
# would have to be shared with every client, and a public key must never be taken as one.
ASYMMETRIC: dict[str, tuple[str, str | None]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", None),
}
REQUIRED_CLAIMS = ["exp", "iss", "aud", "sub"]
# Bounds on how long a fetched key set is trusted, whatever the issuer's Cache-Control says.
MIN_JWKS_TTL = 60.0
MAX_JWKS_TTL = 86_400.0
_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*(\d+)", re.I)
_UNQUOTED = re.compile(r'[^\x20-\x7e]|["\\]')


class Access(enum.Enum):
    READ = "read"
    WRITE = "write"
    DELETE = "delete"
    ADMIN = "admin"


# What each HTTP method of a DICOMweb route does to the archive.
ACCESS_BY_METHOD = {"GET": Access.READ, "HEAD": Access.READ, "POST": Access.WRITE, "DELETE": Access.DELETE}


@dataclass(frozen=True)
class Principal:
    """A verified token's subject and what it grants."""

    subject: str
    scopes: frozenset[str]
    tenants: frozenset[str]


def check_settings(settings: AuthSettings) -> None:
    """Refuse to start with auth on but not fully configured: a half-configured check lets tokens through."""
    if not settings.enabled:
        return
    named = {
        "auth.issuer": settings.issuer,
        "auth.audience": settings.audience,
        "auth.read_scope": settings.read_scope,
        "auth.write_scope": settings.write_scope,
        "auth.delete_scope": settings.delete_scope,
        "auth.admin_scope": settings.admin_scope,
        "auth.tenants_claim": settings.tenants_claim,
    }
    missing = [name for name, value in named.items() if not value.strip()]
    if not settings.scope_claims:
        missing.append("auth.scope_claims")
    if missing:
        raise ValueError(f"auth.enabled needs {', '.join(missing)}; refusing to start without them")


def claim(claims: dict[str, Any], path: str) -> Any:
    """The value at a dotted path (`realm_access.roles`), or None."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def names(value: Any) -> frozenset[str]:
    """A claim holding names: a space-separated string or a list of strings."""
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(item for item in value if isinstance(item, str) and item)
    return frozenset()


def max_age(cache_control: str | None, default: float) -> float:
    """Seconds to keep a key set: the response's max-age, within sane bounds."""
    found = _MAX_AGE.search(cache_control or "")
    seconds = float(found.group(1)) if found else default
    return min(max(seconds, MIN_JWKS_TTL), MAX_JWKS_TTL)


def _quoted(text: str) -> str:
    """Text safe inside a WWW-Authenticate quoted string."""
    return _UNQUOTED.sub("", text)[:200]


def invalid_token(realm: str, description: str) -> Unauthenticated:
    return Unauthenticated(
        f"invalid token: {description}",
        f'Bearer realm="{realm}", error="invalid_token", error_description="{_quoted(description)}"',
    )


class KeySet:
    """The issuer's signing keys by `kid`, shared across processes through the cache port."""

    def __init__(self, settings: AuthSettings, cache: Cache) -> None:
        self.settings = settings
        self.cache = cache
        self._cache_key = f"auth:jwks:{settings.issuer}"
        self._lock = threading.Lock()
        self._last_refetch = float("-inf")

    def key(self, kid: str) -> dict[str, Any]:
        keys = self._cached()
        if keys is None or (kid not in keys and self._may_refetch()):
            keys = self._fetch()
        found = keys.get(kid)
        if found is None:
            raise invalid_token(self.settings.realm, "signing key unknown")
        return found

    def _may_refetch(self) -> bool:
        """At most one refetch per interval, so tokens with made-up kids cannot hammer the issuer."""
        with self._lock:
            now = time.monotonic()
            if now - self._last_refetch < self.settings.jwks_refetch_seconds:
                return False
            self._last_refetch = now
            return True

    def _cached(self) -> dict[str, dict[str, Any]] | None:
        raw = self.cache.get(self._cache_key)
        if raw is None:
            return None
        try:
            return _by_kid(json.loads(raw))
        except (ValueError, ServiceUnavailable):
            log.warning("ignored a damaged cached key set of %s", self.settings.issuer)
            return None

    def _fetch(self) -> dict[str, dict[str, Any]]:
        response = self._get(self.jwks_url())
        try:
            document = response.json()
        except ValueError as exc:
            raise ServiceUnavailable(f"the token issuer's key set is not JSON: {exc}") from exc
        keys = _by_kid(document)
        ttl = max_age(response.headers.get("cache-control"), self.settings.jwks_ttl_seconds)
        self.cache.set(self._cache_key, json.dumps({"keys": list(keys.values())}).encode(), ttl)
        log.info("fetched %d signing keys of %s (kept %.0f s)", len(keys), self.settings.issuer, ttl)
        return keys

    def jwks_url(self) -> str:
        """The configured key set URL, else the one the issuer's discovery document names (cached likewise)."""
        if self.settings.jwks_url:
            return self.settings.jwks_url
        discovery_key = f"auth:oidc:{self.settings.issuer}"
        raw = self.cache.get(discovery_key)
        if raw is not None:
            return raw.decode()
        response = self._get(self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration")
        try:
            document = response.json()
        except ValueError as exc:
            raise ServiceUnavailable(f"the token issuer's discovery document is not JSON: {exc}") from exc
        if not isinstance(document, dict) or document.get("issuer") != self.settings.issuer:
            raise ServiceUnavailable("the token issuer's discovery document names another issuer")
        url = document.get("jwks_uri")
        if not isinstance(url, str) or not url:
            raise ServiceUnavailable("the token issuer's discovery document has no jwks_uri")
        ttl = max_age(response.headers.get("cache-control"), self.settings.jwks_ttl_seconds)
        self.cache.set(discovery_key, url.encode(), ttl)
        return url

    def _get(self, url: str) -> httpx.Response:
        try:
            response = httpx.get(url, timeout=self.settings.http_timeout)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(f"the token issuer cannot be reached at {url}: {exc}") from exc
        return response


def _by_kid(document: Any) -> dict[str, dict[str, Any]]:
    """The usable signing keys of a JWKS: with a `kid`, not marked for encryption."""
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise ServiceUnavailable("the token issuer's key set has no keys list")
    return {
        key["kid"]: key
        for key in keys
        if isinstance(key, dict) and isinstance(key.get("kid"), str) and key.get("use", "sig") == "sig"
    }


class Authenticator:
    """Verifies a request's bearer token and checks it grants the access and the tenant asked for."""

    def __init__(self, settings: AuthSettings, cache: Cache) -> None:
        check_settings(settings)
        self.settings = settings
        self.keys = KeySet(settings, cache)
        self._scopes = {
            Access.READ: settings.read_scope,
            Access.WRITE: settings.write_scope,
            Access.DELETE: settings.delete_scope,
            Access.ADMIN: settings.admin_scope,
        }

    def authorize(self, request: Request, access: Access, tenant: str | None) -> Principal:
        """The request's principal, also left as `request.state.sub` for the access log."""
        principal = self.principal(_bearer(request.headers.get("authorization"), self.settings.realm))
        request.state.sub = principal.subject
        needed = self._scopes[access]
        if needed not in principal.scopes:
            raise Forbidden(
                f"the token does not grant {needed!r}",
                f'Bearer realm="{self.settings.realm}", error="insufficient_scope", scope="{_quoted(needed)}"',
            )
        if tenant is not None and tenant not in principal.tenants:
            raise Forbidden(
                f"the token does not grant tenant {tenant!r}",
                f'Bearer realm="{self.settings.realm}", error="insufficient_scope"',
            )
        return principal

    def granted(self, request: Request, tenant: str) -> frozenset[Access]:
        """What the request's token may do on `tenant`: for pages that offer only the actions that will work."""
        principal = self.principal(_bearer(request.headers.get("authorization"), self.settings.realm))
        request.state.sub = principal.subject
        if tenant not in principal.tenants:
            return frozenset()
        return frozenset(access for access, scope in self._scopes.items() if scope in principal.scopes)

    def principal(self, token: str) -> Principal:
        claims = self.verify(token)
        scopes: frozenset[str] = frozenset()
        for path in self.settings.scope_claims:
            scopes |= names(claim(claims, path))
        tenants = names(claim(claims, self.settings.tenants_claim))
        return Principal(subject=str(claims["sub"]), scopes=scopes, tenants=tenants)

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims, once signature, issuer, audience and validity period check out."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise invalid_token(self.settings.realm, "not a JWT") from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in ASYMMETRIC:
            raise invalid_token(self.settings.realm, f"algorithm {str(alg)[:20]!r} is not accepted")
        if not isinstance(kid, str) or not kid:
            raise invalid_token(self.settings.realm, "no kid in the token header")
        jwk = self.keys.key(kid)
        kty, crv = ASYMMETRIC[alg]
        if jwk.get("alg", alg) != alg or jwk.get("kty") != kty or (crv is not None and jwk.get("crv") != crv):
            raise invalid_token(self.settings.realm, f"algorithm {alg} does not fit the signing key")
        try:
            key = jwt.PyJWK(jwk, algorithm=alg)
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                leeway=self.settings.leeway_seconds,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            raise invalid_token(self.settings.realm, "the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise invalid_token(self.settings.realm, "the token is not yet valid") from None
        except jwt.PyJWTError as exc:
            raise invalid_token(self.settings.realm, str(exc)) from None
        return claims


def _bearer(header: str | None, realm: str) -> str:
    scheme, _, token = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("a bearer token is required", f'Bearer realm="{realm}"')
    return token.strip()


def open_authenticator(settings: AuthSettings, cache: Cache) -> Authenticator | None:
    """The app's authenticator, or None when auth is off; raises ValueError when misconfigured."""
    return Authenticator(settings, cache) if settings.enabled else None


async def require_dicomweb_access(request: Request) -> None:
    """Route dependency: the token must grant what the method does, on the URL's tenant (set before this runs).
    Verifying may fetch the issuer's keys, so it runs in a worker thread; with auth off nothing leaves the loop."""
    auth: Authenticator | None = request.app.state.auth
    if auth is None:
        return
    access = ACCESS_BY_METHOD.get(request.method)
    if access is None:
        raise Forbidden(f"method {request.method} is not allowed", f'Bearer realm="{auth.settings.realm}"')
    await run_in_threadpool(auth.authorize, request, access, request.state.tenant)


async def require_admin(request: Request) -> None:
    """Route dependency for data that spans tenants (the statistics): the admin scope."""
    auth: Authenticator | None = request.app.state.auth
    if auth is not None:
        await run_in_threadpool(auth.authorize, request, Access.ADMIN, None)
