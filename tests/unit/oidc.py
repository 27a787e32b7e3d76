"""A real OIDC issuer on loopback for the auth tests: generated RSA and EC keys, its discovery
document and JWKS over HTTP, and tokens signed (or forged) with them. A browser signs in with the
authorization code flow and PKCE (RFC 7636): the authorization endpoint approves at once (no login form),
or refuses while `approve` is False, and the token endpoint gives an access token with `login_claims`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

AUDIENCE = "dicomcloud"
JWKS_MAX_AGE = 600


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: PrivateKeyTypes

    def jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        public = self.private.public_key()  # type: ignore[union-attr]
        key: dict[str, Any] = json.loads(algorithm.to_jwk(public))
        return {**key, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(  # type: ignore[union-attr]
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def rsa_key(kid: str) -> SigningKey:
    return SigningKey(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))


def ec_key(kid: str) -> SigningKey:
    return SigningKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


@dataclass
class Issuer:
    """The issuer's URL, the keys its JWKS publishes (mutable, to rotate) and how often it was asked."""

    url: str
    published: list[SigningKey]
    jwks_requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    # The browser sign-in: whether the user approves, the claims of the tokens it gets, and how many it got.
    approve: bool = True
    login_claims: dict[str, Any] = field(default_factory=dict)
    logins: int = 0
    codes: dict[str, dict[str, str]] = field(default_factory=dict)

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "aud": AUDIENCE,
            "sub": "alice",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "scope": "openid dicom.read dicom.write dicom.delete",
            "tenants": ["tenant-a"],
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, key: SigningKey | None = None, headers: dict[str, Any] | None = None, **claims: Any) -> str:
        key = key or self.published[0]
        return jwt.encode(
            self.claims(**claims), key.private, algorithm=key.alg, headers={"kid": key.kid, **(headers or {})}
        )


def unsigned_token(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None = None) -> str:
    """A JWT built by hand: `alg: none`, or HS256 with `secret` (e.g. a public key's PEM), which no library signs."""

    def part(value: bytes) -> str:
        return base64.urlsafe_b64encode(value).rstrip(b"=").decode()

    signing_input = part(json.dumps(header).encode()) + "." + part(json.dumps(claims).encode())
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest() if secret is not None else b""
    return signing_input + "." + part(signature)


@contextmanager
def serve_issuer(keys: list[SigningKey]) -> Iterator[Issuer]:
    """The issuer at http://127.0.0.1:<free port>/realms/test, stopped on exit."""
    issuer = Issuer(url="", published=list(keys))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/realms/test/.well-known/openid-configuration":
                body = {
                    "issuer": issuer.url,
                    "jwks_uri": issuer.url + "/protocol/openid-connect/certs",
                    "authorization_endpoint": issuer.url + "/protocol/openid-connect/auth",
                    "token_endpoint": issuer.url + "/protocol/openid-connect/token",
                    "response_types_supported": ["code"],
                    "code_challenge_methods_supported": ["S256"],
                }
            elif path == "/realms/test/protocol/openid-connect/certs":
                with issuer.lock:
                    issuer.jwks_requests += 1
                    body = {"keys": [key.jwk() for key in issuer.published]}
            elif path == "/realms/test/protocol/openid-connect/auth":
                self.authorize({k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()})
                return
            else:
                self.send_error(404)
                return
            self.send_json(body, {"Cache-Control": f"public, max-age={JWKS_MAX_AGE}"})

        def do_POST(self) -> None:
            if urlsplit(self.path).path != "/realms/test/protocol/openid-connect/token":
                self.send_error(404)
                return
            length = int(self.headers.get("Content-Length") or 0)
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            with issuer.lock:
                grant = issuer.codes.pop(form.get("code", ""), None)
            verifier = form.get("code_verifier", "").encode()
            challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=").decode()
            if grant is None or grant["redirect_uri"] != form.get("redirect_uri") or grant["challenge"] != challenge:
                self.send_json({"error": "invalid_grant"}, status=400)
                return
            with issuer.lock:
                issuer.logins += 1
            id_claims = {"aud": grant["client_id"], **({"nonce": grant["nonce"]} if grant["nonce"] else {})}
            self.send_json({
                "access_token": issuer.token(**issuer.login_claims),
                "id_token": issuer.token(**{**issuer.login_claims, **id_claims}),
                "token_type": "Bearer",
                "expires_in": 300,
                "scope": grant["scope"],
            })  # fmt: skip

        def do_OPTIONS(self) -> None:
            self.send_response(204)
            self.send_header("Access-Control-Allow-Origin", "*")
            self.send_header("Access-Control-Allow-Methods", "GET, POST")
            self.send_header("Access-Control-Allow-Headers", "*")
            self.end_headers()

        def authorize(self, query: dict[str, str]) -> None:
            """Approve at once (a code for the redirect) or refuse (access_denied), as the test set it."""
            if issuer.approve:
                code = secrets.token_urlsafe(16)
                with issuer.lock:
                    issuer.codes[code] = {
                        "client_id": query.get("client_id", ""),
                        "redirect_uri": query.get("redirect_uri", ""),
                        "challenge": query.get("code_challenge", ""),
                        "nonce": query.get("nonce", ""),
                        "scope": query.get("scope", ""),
                    }
                answer = {"code": code, "state": query.get("state", ""), "iss": issuer.url}
            else:
                answer = {"error": "access_denied", "state": query.get("state", "")}
            self.send_response(302)
            self.send_header("Location", f"{query.get('redirect_uri', '')}?{urlencode(answer)}")
            self.end_headers()

        def send_json(self, body: dict[str, Any], headers: dict[str, str] | None = None, status: int = 200) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.send_header("Access-Control-Allow-Origin", "*")  # the browser's sign-in reads these cross-origin
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    issuer.url = f"http://127.0.0.1:{server.server_address[1]}/realms/test"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield issuer
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
