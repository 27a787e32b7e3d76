"""Where the browser code the archive serves comes from: npm packages `./dev` fetched into the cache folder
(`${XDG_CACHE_HOME:-~/.cache}/dicomcloud/npm`), never a CDN at page load."""

from __future__ import annotations

import os
from pathlib import Path


def npm_cache() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "dicomcloud" / "npm"
