"""Headers every response carries, so no route can forget them.

Patient data must not stay in a browser's or a shared proxy's cache after the request: `Cache-Control:
no-store` unless a route chose its own caching. The media type a response declares is the one a browser
uses (`X-Content-Type-Options: nosniff`: a DICOM or JSON body is never run as a script or page), no page
of ours may be framed by another site, and URLs (full of UIDs) are not passed on as referrers.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

ALWAYS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)
NO_STORE = (b"cache-control", b"no-store")


class ResponseHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, _with_headers(send) if scope["type"] == "http" else send)


def _with_headers(send: Send) -> Send:
    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            present = {name.lower() for name, _ in headers}
            headers += [header for header in (*ALWAYS, NO_STORE) if header[0] not in present]
            message = {**message, "headers": headers}
        await send(message)

    return send_with_headers
