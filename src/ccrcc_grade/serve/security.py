"""The workstation's front door: which requests it answers at all, and what every answer carries.

One ASGI middleware (no library covers this combination: Starlette's TrustedHostMiddleware
answers a wrong Host with plain text and has no Origin or body checks) that, before any route
runs:

- refuses a Host header that does not name this server (DNS rebinding: a hostile page whose
  domain resolves to 127.0.0.1 reaches a loopback server with its own name in Host);
- refuses state-changing requests (POST, PUT, PATCH, DELETE) sent by another site: the browser
  says so in ``Sec-Fetch-Site`` and ``Origin``, which a page cannot forge, so a page the
  clinician visits cannot post studies to the workstation even on loopback without a token;
- refuses an upload without a Content-Length or above the upload limit before reading it, and
  more concurrent uploads than the limit (each is held in memory while it is parsed);

and adds to every answer a Content-Security-Policy without inline script or third-party origins
(inline styles stay allowed: the printable report and Swagger UI use them, and CSS runs no code),
``nosniff``, no framing, no referrer, and ``Cache-Control: no-store`` on everything but the
page's own static files (patient images and reports never stay in a browser or proxy cache).
Refusals are the API's usual JSON ``{"detail": ...}``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
OTHER_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
SECURITY_HEADERS = [(b"content-security-policy", CSP.encode()), *OTHER_HEADERS]
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
UPLOAD_PATHS = ("/api/studies",)


def host_name(value: str) -> str:
    """``example.org:8000`` -> ``example.org``; ``[::1]:8000`` -> ``::1``; lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class Guard:
    """The middleware (see the module's docstring). ``hosts``: the names the server answers to;
    ``max_body``: the largest upload in bytes (a little multipart framing on top is allowed);
    ``max_uploads``: uploads parsed at the same time; ``csp``: the Content-Security-Policy (the
    OHIF viewer needs inline script and WebAssembly); ``cacheable(path)``: which answers may stay
    in a browser cache (the page's own static files)."""

    def __init__(
        self,
        app: ASGIApp,
        hosts: list[str],
        max_body: int,
        max_uploads: int = 2,
        csp: str = CSP,
        cacheable: Callable[[str], bool] = lambda path: path.startswith("/static/"),
    ):
        self.app = app
        self.headers = [(b"content-security-policy", csp.encode()), *OTHER_HEADERS]
        self.cacheable = cacheable
        self.hosts = {host_name(h) for h in hosts}
        self.max_body = max_body
        self.uploads = threading.BoundedSemaphore(max_uploads)
        self.max_uploads = max_uploads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self.refusal(scope, headers)
        if refusal is not None:
            return await self.answer(send, *refusal, self.headers)
        upload = scope["method"] == "POST" and scope["path"] in UPLOAD_PATHS
        if upload and not self.uploads.acquire(blocking=False):
            return await self.answer(
                send,
                429,
                f"{self.max_uploads} uploads are being read already; try again when one has finished",
                self.headers,
            )
        no_store = not self.cacheable(scope["path"])

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = self.headers + ([(b"cache-control", b"no-store")] if no_store else [])
                names = {k for k, _ in extra}
                message = {**message, "headers": [h for h in message["headers"] if h[0] not in names] + extra}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            if upload:
                self.uploads.release()

    def refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        host = host_name(headers.get("host", ""))
        if host not in self.hosts:
            return 421, (
                f"Host {headers.get('host', '')!r} does not name this server (answers to: "
                f"{', '.join(sorted(self.hosts))}); start serve with --allowed-host to add a name"
            )
        if scope["method"] in UNSAFE_METHODS:
            site = headers.get("sec-fetch-site", "")
            origin = headers.get("origin")
            if site in ("cross-site", "same-site"):
                return 403, f"a {scope['method']} from another site ({site}) is refused"
            if origin is not None and (origin == "null" or urlsplit(origin).netloc.lower() != headers["host"].lower()):
                return 403, f"a {scope['method']} from another origin ({origin}) is refused"
        if scope["method"] == "POST" and scope["path"] in UPLOAD_PATHS:
            length = headers.get("content-length")
            if length is None or not length.isdigit():
                return 411, "an upload needs a Content-Length header"
            if int(length) > self.max_body + 2**20:
                return 413, f"upload exceeds the limit of {self.max_body / 1e6:.0f} MB"
        return None

    @staticmethod
    async def answer(send: Send, status: int, detail: str, security: list = SECURITY_HEADERS) -> None:
        body = json.dumps({"detail": detail}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += security + [(b"cache-control", b"no-store")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
