"""What a DICOMweb handler needs to know about its request: the archive, the tenant, the base URL
(web/origin.py decided the origin it starts with; never the client's Host header).

The tenant comes from the URL form that matched (`/dicom-web/…` is the default tenant,
`/<tenant>/dicom-web/…` names one); a router-level dependency records it before any handler runs.
The dependencies here are coroutines: FastAPI would run a plain function in a worker thread, a hop per
request that costs more than what they do.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Request

from dicomcloud.archive.core import Archive
from dicomcloud.dicom.uids import validate_tenant, validate_uid
from dicomcloud.errors import InvalidUID


@dataclass(frozen=True)
class RequestScope:
    """One request's view: the archive, the tenant it acts for, and the DICOMweb root URL (no trailing slash)."""

    archive: Archive
    tenant: str
    request: Request
    prefix: str  # the DICOMweb root's path: `<root>` or `/<tenant><root>`

    @functools.cached_property
    def base_url(self) -> str:
        """Built when an answer names a URL (a frame's never does): the origin web/origin.py decided, and the prefix."""
        return str(self.request.base_url).rstrip("/") + self.prefix

    def study_url(self, study: str) -> str:
        return f"{self.base_url}/studies/{study}"

    def series_url(self, study: str, series: str) -> str:
        return f"{self.study_url(study)}/series/{series}"

    def instance_url(self, study: str, series: str, sop: str) -> str:
        return f"{self.series_url(study, series)}/instances/{sop}"


def path_uid(value: str, what: str = "UID") -> str:
    """A UID from the URL path, taken exactly as sent.

    Unlike `validate_uid`, no NUL or space padding is tolerated: a path is not a DICOM value.
    """
    uid = validate_uid(value, what)
    if uid != value:
        raise InvalidUID(f"invalid {what}: {value[:80]!r}")
    return uid


async def use_default_tenant(request: Request) -> None:
    settings = request.app.state.archive.settings
    request.state.tenant = settings.tenant
    request.state.prefix = settings.http.root_path


async def use_path_tenant(request: Request, tenant: str = Path(description="Tenant id")) -> None:
    settings = request.app.state.archive.settings
    request.state.tenant = validate_tenant(tenant)
    request.state.prefix = f"/{tenant}{settings.http.root_path}"


async def request_scope(request: Request) -> RequestScope:
    """The request's scope; the tenant was set by the router's tenant dependency, the origin by web/origin.py."""
    return RequestScope(request.app.state.archive, request.state.tenant, request, request.state.prefix)


Scope = Annotated[RequestScope, Depends(request_scope)]
