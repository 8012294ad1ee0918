"""DNS-rebinding protection for the whole app.

A page on a rebinding host (``evil.example`` resolving to 127.0.0.1) reaches a server
bound to loopback with ``Host: evil.example:PORT`` and a matching ``Origin``, so a
same-origin check passes; with authentication off it could create tokens and queue
paid jobs. A server bound to loopback therefore answers only requests whose ``Host``
names it: ``127.0.0.1``, ``localhost``, ``[::1]`` (any port) and the names in
``ALLOWED_HOSTS``. Others get ``421 Misdirected Request``. When the server binds another
address the guard is off unless ``ALLOWED_HOSTS`` is set (then it is enforced too).
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from orchestrator.api.problems import problem_response
from orchestrator.config import is_loopback

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


def allow_list(bind_host: str, extra: Iterable[str]) -> frozenset[str] | None:
    """The host names to answer, or None when the guard is off."""
    names = frozenset(n.strip().strip("[]").lower() for n in extra if n.strip())
    if not names and not is_loopback(bind_host):
        return None
    return LOOPBACK_NAMES | names | {bind_host.strip("[]").lower()}


def host_name(header: str) -> str:
    """``Host`` without its port, lower-case (``[::1]:8000`` -> ``::1``)."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    return value.rpartition(":")[0] if value.count(":") == 1 else value


class HostGuardMiddleware:
    def __init__(self, app: ASGIApp, allowed: frozenset[str]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = None
            for name, value in scope.get("headers", []):
                if name == b"host":
                    host = value.decode("latin-1")
                    break
            # No Host (HTTP/1.0): nothing a rebinding page could have sent.
            if host is not None and host_name(host) not in self.allowed:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                response = problem_response(
                    Request(scope),
                    421,
                    "Misdirected request",
                    "misdirected-request",
                    f"this server does not answer to the host {host_name(host)!r}; add it "
                    "to ALLOWED_HOSTS if it is a name of this server",
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
