"""Request id: taken from ``X-Request-ID`` when sane, else generated; bound to every
log line of the request and echoed in the response."""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Mapping

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator import logs

log = logs.get("orchestrator.access")
_level = logging.getLogger("orchestrator.access")  # to skip the debug line cheaply
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Request ids need to be unique, not secret: drawn from a generator seeded once from the
# OS, not from os.urandom per request (a syscall that lets go of the GIL, and taking it
# back costs the event loop up to a switch interval while database threads hold it).
_ids = random.Random()


def new_request_id() -> str:
    return f"{_ids.getrandbits(128):032x}"


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = incoming if incoming and _SAFE_ID.match(incoming) else new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status_holder = {"status": 0}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                if _level.isEnabledFor(logging.DEBUG):
                    log.debug(
                        "request",
                        method=scope.get("method"),
                        path=scope.get("path"),
                        status=status_holder["status"],
                        duration_ms=round((time.perf_counter() - started) * 1000, 2),
                    )


MAX_BODY_BYTES = 40 * 1024 * 1024  # base64 images up to ~28 MB, plus the JSON around them


class BodyLimitMiddleware:
    """413 for request bodies over ``max_bytes``: by Content-Length when given, else
    by counting while the body streams in (nothing oversized is buffered)."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int = MAX_BODY_BYTES,
        per_path: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.per_path = dict(per_path or {})  # e.g. a larger limit for uploads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(scope.get("path", ""), self.max_bytes)
        framed = False  # in HTTP/1.x a request with neither header has no body
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                framed = True
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0 or declared > limit:
                    await _too_large(scope, send, limit)
                    return
            elif name == b"transfer-encoding":
                framed = True
        if not framed and scope.get("http_version") in ("1.0", "1.1"):
            await self.app(scope, receive, send)  # nothing to count (most GETs)
            return
        received = 0
        refused = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Answer now; the app sees the client go away, and whatever it
                    # answers itself is dropped.
                    refused = True
                    await _too_large(scope, send, limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, limited_receive, guarded_send)


async def _too_large(scope: Scope, send: Send, limit: int) -> None:
    state = scope.get("state") or {}
    body = json.dumps(
        {
            "type": "https://orchestrator.dev/problems/payload-too-large",
            "title": "Payload too large",
            "status": 413,
            "detail": f"request bodies are limited to {limit} bytes",
            "instance": scope.get("path"),
            "request_id": state.get("request_id"),
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
