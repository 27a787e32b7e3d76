"""The OHIF viewer at `/viewer/` (the default tenant) and `/<tenant>/viewer/`, served by the archive itself.

The viewer is `@ohif/app`'s prebuilt `dist/` (`./dev` fetches it into the npm cache folder, or
`http.viewer_dist` names the folder), the same files the stack's Nginx serves. They are built for the site
root, so their root-relative URLs are moved under `<prefix>/viewer/` as they are served (as the Nginx config
does); a rewritten file is kept in memory, an unchanged one is sent from disk. Paths that are no file of
`dist/` are the single-page app's own routes and get its index.html; nothing outside `dist/` is ever read.

`app-config.js` is `deploy/ohif/app-config.js` (the stack's) behind a line that names this request's DICOMweb
root, router base and, with auth on and `auth.viewer_client_id` set, the issuer the viewer signs in with.
Viewer files may be framed by the viewer itself (OIDC's silent token refresh is an iframe): `SAMEORIGIN`
here instead of the archive's `DENY`, on these paths only.
"""

from __future__ import annotations

import functools
import hashlib
import json
import mimetypes
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from dicomcloud.config import Settings
from dicomcloud.dicom.uids import validate_tenant
from dicomcloud.errors import NotFound
from dicomcloud.web.npm import npm_cache

router = APIRouter(tags=["Viewer"], include_in_schema=False)

OHIF_APP_CONFIG = Path(__file__).resolve().parents[3] / "deploy" / "ohif" / "app-config.js"
VIEWER_PATH = "/viewer"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".woff2": "font/woff2",
}
VIEWER_HEADERS = {"Cache-Control": "no-cache", "X-Frame-Options": "SAMEORIGIN"}
# Scripts and styles looked at, per (file, version, prefix): dist/ has ~110, of which ~10 are rewritten and kept
# (~18 MB, most of it the app bundle); the rest keep only a None. Enough for every file under a few prefixes.
REWRITTEN_FILES = 512


def viewer_dist(settings: Settings) -> Path:
    return Path(settings.http.viewer_dist) if settings.http.viewer_dist else npm_cache() / "ohif" / "dist"


@router.get(VIEWER_PATH)
def viewer_root(request: Request) -> Response:
    return Response(status_code=301, headers={"Location": f"{_prefix(request)}{VIEWER_PATH}/"})


@router.get(VIEWER_PATH + "/{path:path}")
def viewer_file(request: Request, path: str) -> Response:
    if path == "app-config.js":
        return _app_config(request, None)
    return _served(request, path, None)


@router.get("/{tenant}" + VIEWER_PATH + "/{path:path}")
def tenant_viewer_file(request: Request, tenant: str, path: str) -> Response:
    """A tenant's viewer: its own config and router base; its page loads everything else from `/viewer/`."""
    tenant = validate_tenant(tenant)
    if path == "app-config.js":
        return _app_config(request, tenant)
    return _served(request, path, tenant)


def _prefix(request: Request) -> str:
    """The path the archive is served under (a trusted proxy's prefix, or http.public_url's path)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _dist(request: Request) -> Path:
    dist = viewer_dist(request.app.state.archive.settings)
    if not (dist / "index.html").is_file():
        raise NotFound(f"the OHIF viewer is not installed at {dist}: run ./dev up, or set http.viewer_dist")
    return dist.resolve()


def _served(request: Request, path: str, tenant: str | None) -> Response:
    file = _file_in(_dist(request), path)
    if file is None:
        if "." in path.rpartition("/")[2]:
            raise NotFound(f"no file {path[:200]!r} in the viewer")
        return _index(request, tenant)
    if file.name == "index.html":
        return _index(request, tenant)
    return _file(request, file, _prefix(request))


def _file_in(dist: Path, path: str) -> Path | None:
    """The file `path` names inside `dist`; None when it names none there (outside it, missing, no valid name)."""
    if not path or "\0" in path:
        return None
    try:
        file = (dist / path).resolve()
        return file if file.is_relative_to(dist) and file.is_file() else None
    except OSError:  # a name too long for the filesystem, say
        return None


def _index(request: Request, tenant: str | None) -> Response:
    """The app's page: its assets from `<prefix>/viewer/`, its config from the tenant's viewer path."""
    prefix = _prefix(request)
    config_path = f"{prefix}/{tenant}{VIEWER_PATH}" if tenant else f"{prefix}{VIEWER_PATH}"
    text = (_dist(request) / "index.html").read_text().replace('src="/app-config.js"', "src=APP_CONFIG")
    body = _rewrite(text, ".html", prefix).replace("src=APP_CONFIG", f'src="{config_path}/app-config.js"')
    return _bytes_response(request, _tagged(body.encode()), MEDIA_TYPES[".html"])


def _file(request: Request, file: Path, prefix: str) -> Response:
    stat = file.stat()
    media_type = MEDIA_TYPES.get(file.suffix) or mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    rewritten = _rewritten(file, stat.st_mtime_ns, prefix) if file.suffix in (".js", ".css") else None
    if rewritten is not None:
        return _bytes_response(request, rewritten, media_type)
    etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={**VIEWER_HEADERS, "ETag": etag})
    return FileResponse(file, media_type=media_type, headers={**VIEWER_HEADERS, "ETag": etag})


@functools.lru_cache(maxsize=REWRITTEN_FILES)
def _rewritten(file: Path, version: int, prefix: str) -> tuple[bytes, str] | None:
    """The file with its root-relative URLs under the viewer's path and its ETag, or None when it has none."""
    text = file.read_bytes().decode("utf-8", errors="surrogateescape")
    changed = _rewrite(text, file.suffix, prefix)
    return None if changed == text else _tagged(changed.encode("utf-8", errors="surrogateescape"))


def _rewrite(text: str, suffix: str, prefix: str) -> str:
    base = f"{prefix}{VIEWER_PATH}/"
    if suffix == ".html":
        for old, new in (('PUBLIC_URL="/"', f'PUBLIC_URL="{base}"'), ('src="/', f'src="{base}'),
                         ('href="/', f'href="{base}'), ('content="/assets/', f'content="{base}assets/')):  # fmt: skip
            text = text.replace(old, new)
        return text
    if suffix == ".css":
        return text.replace("url(/", f"url({base}")
    return text.replace('__webpack_require__.p = "/"', f'__webpack_require__.p = "{base}"')


def _tagged(body: bytes) -> tuple[bytes, str]:
    return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _bytes_response(request: Request, tagged: tuple[bytes, str], media_type: str) -> Response:
    body, etag = tagged
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={**VIEWER_HEADERS, "ETag": etag})
    return Response(body, media_type=media_type, headers={**VIEWER_HEADERS, "ETag": etag})


def _app_config(request: Request, tenant: str | None) -> Response:
    """deploy/ohif/app-config.js with this archive's DICOMweb root and router base in front of it."""
    settings: Settings = request.app.state.archive.settings
    prefix = _prefix(request)
    origin = str(request.base_url).rstrip("/")
    tenant_path = f"/{tenant}" if tenant else ""
    deployment: dict[str, Any] = {
        "dicomwebRoot": f"{origin}{tenant_path}{settings.http.root_path}",
        "routerBasename": f"{prefix}{tenant_path}{VIEWER_PATH}",
    }
    auth = settings.auth
    if auth.enabled and auth.viewer_client_id:
        # OHIF makes its callback and silent-refresh URLs under the router base (`…/viewer/callback`) and mounts a
        # sign-out route at the sign-out redirect's full path: its default (the router base) would take the
        # viewer's own `/viewer/viewer` route, so it is a path of its own.
        scopes = ["openid", auth.read_scope, auth.write_scope, auth.delete_scope]
        deployment["oidc"] = [
            {
                "authority": auth.issuer,
                "client_id": auth.viewer_client_id,
                "response_type": "code",
                "scope": " ".join(scopes),
                "post_logout_redirect_uri": "/signed-out",
            }
        ]
    text = f"window.dicomcloud = {json.dumps(deployment)};\n" + OHIF_APP_CONFIG.read_text()
    return Response(text, media_type=MEDIA_TYPES[".js"], headers={"Cache-Control": "no-store"})
