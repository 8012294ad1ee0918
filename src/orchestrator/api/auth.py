"""Authentication and scope enforcement for every route of the app: one pure ASGI
middleware in front of the routes, so the API, SSE streams, outputs, ``/mcp``,
``/metrics``, the web UI and anything added later are covered alike.

Credentials: ``Authorization: Bearer <token>``, or the web UI's session cookie. A
request with neither gets 401 (problem+json with ``WWW-Authenticate: Bearer``; a
browser asking for a UI page gets the login page, still 401). A token whose scope
is too small gets 403. A request authenticated by the session cookie with an unsafe
method must come from this origin (scheme, host and port) and carry the session's CSRF
token (``ui/csrf.py``), else 403. The principal is put in
the ASGI scope's state: ``request.state.principal``.

:data:`RULES` is the one table of what each route needs; :func:`decide` reads it.
A request no rule matches needs ``admin`` (fail closed), and a test fails while any
route of the app is missing from the table.

With AUTH_DISABLED (loopback only) every request acts as an admin, but a page from
another site still cannot post: unsafe requests to the UI must pass the CSRF check,
and unsafe requests whose ``Origin`` is another site are refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

import structlog
from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator import logs
from orchestrator.api.problems import problem_response
from orchestrator.asgi_body import read_body
from orchestrator.auth_service import SESSION_COOKIE, Tokens
from orchestrator.config import Settings
from orchestrator.domain import auth
from orchestrator.domain.auth import Principal
from orchestrator.domain.auth import Scope as Need
from orchestrator.ui import csrf

log = logs.get(__name__)

PUBLIC: Final = "public"
Requirement = Need | Literal["public"]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
READ, GENERATE, ADMIN = Need.READ, Need.GENERATE, Need.ADMIN


@dataclass(frozen=True)
class Rule:
    methods: frozenset[str]
    template: str
    need: Requirement
    pattern: re.Pattern[str]


def _compile(template: str) -> re.Pattern[str]:
    """``{name}`` matches one path segment, ``{name:path}`` the rest of the path."""
    out = ""
    for part in re.split(r"(\{[^}]+\})", template):
        if part.startswith("{"):
            out += ".*" if part.endswith(":path}") else "[^/]+"
        else:
            out += re.escape(part)
    return re.compile(f"^{out}$")


def rule(methods: str, template: str, need: Requirement) -> Rule:
    return Rule(frozenset(methods.split()), template, need, _compile(template))


LOOK = "GET HEAD"

# What every route needs. First match wins. Public entries are kept to a minimum.
RULES: tuple[Rule, ...] = (
    # --- public ----------------------------------------------------------------------
    rule(LOOK, "/healthz", PUBLIC),
    rule(LOOK, "/readyz", PUBLIC),
    rule(f"{LOOK} POST", "/ui/login", PUBLIC),
    rule(LOOK, "/ui/static/{path:path}", PUBLIC),
    # --- admin -----------------------------------------------------------------------
    rule("GET POST", "/api/tokens", ADMIN),
    rule("DELETE", "/api/tokens/{token_id}", ADMIN),
    rule("POST", "/api/webhooks/deliveries/{delivery_id}/replay", ADMIN),
    rule("POST", "/api/system/ignite", ADMIN),
    rule("POST", "/api/comfy/prompt", ADMIN),  # a raw workflow runs any installed node
    rule("POST", "/api/tilda/import", ADMIN),  # reads server folders, writes DATA_DIR
    rule("PUT DELETE", "/api/budgets/tokens/{token_id}", ADMIN),
    # --- generate --------------------------------------------------------------------
    rule("POST", "/api/generate", GENERATE),
    rule("POST", "/api/flux/generate", GENERATE),
    rule("POST", "/api/jobs/{job_id}/cancel", GENERATE),
    rule("POST", "/api/jobs/{job_id}/retry", GENERATE),
    rule("POST", "/ui/jobs/{job_id}/rerun", GENERATE),
    # --- read ------------------------------------------------------------------------
    rule("POST", "/ui/logout", READ),
    rule(LOOK, "/api/auth/whoami", READ),
    rule(LOOK, "/api/jobs", READ),
    rule(LOOK, "/api/jobs/{job_id}", READ),
    rule(LOOK, "/api/jobs/{job_id}/events", READ),
    rule(LOOK, "/api/events", READ),
    rule(LOOK, "/api/outputs/{job_id}/{n}", READ),
    rule(LOOK, "/api/models", READ),
    rule(LOOK, "/api/flux/models", READ),
    rule(LOOK, "/api/comfy/instances", READ),
    rule(LOOK, "/api/comfy/object_info", READ),
    rule(LOOK, "/api/comfy/queue", READ),
    rule(LOOK, "/api/system/health", READ),
    rule(LOOK, "/api/webhooks/deliveries", READ),
    rule(LOOK, "/api/costs", READ),
    rule(LOOK, "/api/budgets", READ),
    rule(LOOK, "/api/tilda/{path:path}", READ),
    rule(LOOK, "/metrics", READ),
    rule("GET POST DELETE", "/mcp", READ),  # each tool checks its own action
    rule(LOOK, "/", READ),
    rule(LOOK, "/docs", READ),
    rule(LOOK, "/docs/oauth2-redirect", READ),
    rule(LOOK, "/redoc", READ),
    rule(LOOK, "/openapi.json", READ),
    rule(LOOK, "/ui", READ),
    rule(LOOK, "/ui/{page:path}", READ),  # the UI's pages and panels only show things
)


def explicit_rule(method: str, path: str) -> Rule | None:
    """The rule of :data:`RULES` for this request, if any."""
    m = "GET" if method == "OPTIONS" else method.upper()
    for r in RULES:
        if m in r.methods and r.pattern.match(path):
            return r
    return None


def decide(method: str, path: str) -> Requirement:
    """What a request needs: its rule's requirement, else ``admin`` (fail closed)."""
    r = explicit_rule(method, path)
    return ADMIN if r is None else r.need


def route_path(scope: Scope) -> str:
    """The path the router matches: without the server's ``root_path`` (as
    Starlette's routing does), so a rule cannot be side-stepped by a prefix."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("/", ""):
        return path[len(root) :] or "/"
    return path


def wants_login_page(method: str, path: str, headers: Headers) -> bool:
    """A browser navigating to a page: answer 401 with the login form."""
    if method not in ("GET", "HEAD") or "text/html" not in headers.get("accept", ""):
        return False
    if path.startswith("/ui/static/"):
        return False
    return path in ("/", "/docs", "/redoc", "/ui") or path.startswith("/ui/")


def bearer_of(headers: Headers) -> str | Literal[False] | None:
    """The bearer token; None without an Authorization header; False when the
    header is not a bearer credential."""
    value = headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return False
    return token


TokensGetter = Callable[[], Tokens]


class AuthMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings, tokens: TokensGetter) -> None:
        self.app = app
        self.disabled = settings.auth_disabled
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        method = scope.get("method", "GET") if scope["type"] == "http" else "GET"
        path = route_path(scope)
        headers = Headers(scope=scope)
        scheme: str = scope.get("scheme", "http")  # as uvicorn decided (proxy headers too)
        if self.disabled:
            state["principal"] = auth.AUTH_DISABLED
            if scope["type"] == "websocket" and csrf.foreign(headers, scheme):
                await send({"type": "websocket.close", "code": 1008})
                return
            if method not in SAFE_METHODS and csrf.foreign(headers, scheme):
                await _problem(
                    scope,
                    receive,
                    send,
                    403,
                    "Forbidden",
                    "cross-site",
                    "a page of another site cannot change anything here",
                )
                return
            if method not in SAFE_METHODS and path.startswith("/ui/") and path != "/ui/login":
                # No login, but a page from another site must not post to the UI.
                onward = await self._check_csrf(scope, receive, send)
                if onward is None:
                    return
                receive = onward
            await self.app(scope, receive, send)
            return
        need = decide(method, path)
        if need == PUBLIC:
            await self.app(scope, receive, send)
            return
        principal, problem = await self._authenticate(headers, scheme)
        if principal is None:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await self._unauthorized(scope, receive, send, problem, method, path, headers)
            return
        state["principal"] = principal
        with structlog.contextvars.bound_contextvars(
            principal=principal.name, principal_id=principal.token_id
        ):
            if scope["type"] == "websocket":
                # No CSRF token on a websocket: a session may open one only from
                # this site's own pages.
                refused = not principal.scope.allows(need) or (
                    principal.via == "session" and csrf.foreign(headers, scheme)
                )
                if refused:
                    await send({"type": "websocket.close", "code": 1008})
                    return
                await self.app(scope, receive, send)
                return
            if not principal.scope.allows(need):
                detail = (
                    f"{method} {path} needs the {need.value} scope; this token "
                    f"({principal.name}) has {principal.scope.value}"
                )
                log.info("forbidden", method=method, path=path, needed=need.value)
                await _problem(scope, receive, send, 403, "Forbidden", "forbidden", detail)
                return
            if principal.via == "session" and method not in SAFE_METHODS:
                if csrf.foreign(headers, scheme):
                    await _problem(
                        scope,
                        receive,
                        send,
                        403,
                        "Forbidden",
                        "cross-site",
                        "a page of another origin cannot act with this session",
                    )
                    return
                onward = await self._check_csrf(scope, receive, send)
                if onward is None:
                    return
                receive = onward
            await self.app(scope, receive, send)

    async def _authenticate(self, headers: Headers, scheme: str) -> tuple[Principal | None, str]:
        bearer = bearer_of(headers)
        if bearer is False:
            return None, "use Authorization: Bearer <token>"
        if bearer is not None:
            principal = await self.tokens().authenticate(bearer)
            return principal, "the token is not valid (unknown or revoked)"
        cookie = _cookie(headers, csrf.cookie_name(SESSION_COOKIE, scheme))
        if cookie is not None:
            principal = await self.tokens().session_principal(cookie)
            return principal, "the session has ended: log in again"
        return None, (
            "authentication required: send Authorization: Bearer <token> "
            "(create one with `orchestrator token create`)"
        )

    async def _unauthorized(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        detail: str,
        method: str,
        path: str,
        headers: Headers,
    ) -> None:
        session_name = csrf.cookie_name(SESSION_COOKIE, scope.get("scheme", "http"))
        stale_cookie = _cookie(headers, session_name) is not None
        if wants_login_page(method, path, headers):
            from orchestrator.ui import login

            request = Request(scope, receive)
            query = scope.get("query_string", b"").decode("latin-1")
            response: Response = login.login_page(
                request,
                status_code=401,
                next_path=path + (f"?{query}" if query else ""),
                error="Your session has ended: log in again." if stale_cookie else None,
            )
        else:
            error = ', error="invalid_token"' if "not valid" in detail else ""
            response = problem_response(
                Request(scope, receive),
                401,
                "Unauthorized",
                "unauthorized",
                detail,
                headers={"WWW-Authenticate": f'Bearer realm="orchestrator"{error}'},
            )
        if stale_cookie:
            response.delete_cookie(session_name, path="/", secure=session_name != SESSION_COOKIE)
        await response(scope, receive, send)

    async def _check_csrf(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """Verify the CSRF token, reading a form body if need be. Returns the receive
        channel the app must use from now on (the body replayed), or None after
        answering 403."""
        ctype = Headers(scope=scope).get("content-type", "")
        if ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            body = await read_body(receive)
            if body is None:
                return None
            checked, onward = _replay(body, receive), _replay(body, receive)
        else:
            checked = onward = receive  # verify() reads no other body
        if await csrf.verify(Request(scope, checked)):
            return onward
        await _problem(
            scope,
            onward,
            send,
            403,
            "Forbidden",
            "csrf-failed",
            "missing or wrong CSRF token: send the page's token (its csrf-token meta tag) "
            f"in the {csrf.CSRF_HEADER} header or the {csrf.CSRF_FIELD} form field",
        )
        return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive channel that yields ``body`` once, then defers to ``receive``."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _cookie(headers: Headers, name: str) -> str | None:
    for header in headers.getlist("cookie"):
        for part in header.split(";"):
            key, _, value = part.strip().partition("=")
            if key == name and value:
                return value
    return None


async def _problem(
    scope: Scope, receive: Receive, send: Send, status: int, title: str, slug: str, detail: str
) -> None:
    response = problem_response(Request(scope, receive), status, title, slug, detail)
    await response(scope, receive, send)


def install(app: FastAPI, settings: Settings, tokens: TokensGetter) -> None:
    """Add the middleware. Call before adding the body-limit and request-id
    middlewares, so it runs inside them (401s carry a request id; a form body read
    for the CSRF check is already size-limited)."""
    app.add_middleware(AuthMiddleware, settings=settings, tokens=tokens)


async def announce(settings: Settings, tokens: Tokens) -> None:
    """At start-up: say how the server is protected, and how to get in when no
    token exists yet (a token is never made up here)."""
    if settings.auth_disabled:
        log.warning(
            "authentication is DISABLED (AUTH_DISABLED): anyone who can reach "
            f"{settings.host}:{settings.port} can use the API, the UI and MCP"
        )
        return
    if await tokens.count_active() == 0:
        log.warning(
            "authentication is on and no API token exists yet: create the first admin "
            "token with `orchestrator token create --name admin --scope admin` (it is "
            "printed once), then log in to the UI with it or send it to the API as a "
            "bearer token in the Authorization header"
        )


def document(app: FastAPI) -> None:
    """Bearer and cookie security schemes, and 401/403 problems on every operation
    that is not public."""
    base: Callable[[], dict[str, object]] = app.openapi

    def openapi() -> dict[str, object]:
        doc = base()
        components = doc.setdefault("components", {})
        assert isinstance(components, dict)
        components.setdefault(
            "securitySchemes",
            {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API token: `orchestrator token create`.",
                },
                "session": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE},
            },
        )
        doc.setdefault("security", [{"bearer": []}, {"session": []}])
        paths = doc.get("paths", {})
        assert isinstance(paths, dict)
        for path, item in paths.items():
            for method, operation in item.items():
                if not isinstance(operation, dict) or "responses" not in operation:
                    continue
                if decide(method.upper(), path) == PUBLIC:
                    operation.setdefault("security", [])
                    continue
                responses = operation["responses"]
                for code, what in (("401", "No valid credentials"), ("403", "Not allowed")):
                    responses.setdefault(
                        code,
                        {
                            "description": what,
                            "content": {
                                "application/problem+json": {
                                    "schema": {"$ref": "#/components/schemas/Problem"}
                                }
                            },
                        },
                    )
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
