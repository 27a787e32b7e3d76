"""`/docs`: Swagger UI over `/openapi.json`, from the npm package swagger-ui-dist in the cache folder.

FastAPI's own page loads Swagger UI from a public CDN, which a hospital network without internet cannot
reach; here every file comes from this archive.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse

from dicomcloud.errors import NotFound
from dicomcloud.web.npm import npm_cache

router = APIRouter(include_in_schema=False)

# The files of swagger-ui-dist the page needs, by the name it asks for them.
SWAGGER_FILES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


@router.get("/docs")
def docs(request: Request) -> HTMLResponse:
    base = str(request.scope.get("root_path", "")).rstrip("/")
    return HTMLResponse(PAGE.replace("{base}", base))


@router.get("/docs/swagger-ui/{name}")
def swagger_file(name: str) -> FileResponse:
    media_type = SWAGGER_FILES.get(name)
    if media_type is None:
        raise NotFound(f"no file {name[:80]!r} in Swagger UI")
    path = npm_cache() / "node_modules" / "swagger-ui-dist" / name
    if not path.is_file():
        raise NotFound(f"Swagger UI is not installed at {path.parent}: run ./dev up")
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "no-cache"})


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>dicomcloud API</title>
<link rel="stylesheet" href="{base}/docs/swagger-ui/swagger-ui.css">
<link rel="icon" type="image/png" href="{base}/docs/swagger-ui/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{base}/docs/swagger-ui/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({
  url: "{base}/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  layout: "BaseLayout",
});
</script>
</body>
</html>
"""
