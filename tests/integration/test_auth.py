"""Authentication end to end: a real server on 127.0.0.1 with auth on.

* The route walk: every route of the app (API, SSE, outputs, ``/metrics``, ``/mcp``,
  UI pages, mounts) answers 401 without a credential, public ones excepted; a read
  token gets 403 on generate and admin routes, a generate token on admin routes;
  and no route is missing from the scope table.
* Tokens: created shown once, listed without secrets, revoked (401 at once, and its
  UI sessions die); jobs record their token; a generate token cannot cancel or retry
  another token's job; never in the logs.
* The UI session: login (with CSRF), cookie flags, CSRF on unsafe requests, logout
  (the origin checks, the session-bound token and ``__Host-`` cookies: test_csrf.py).
* MCP over streamable HTTP with a bearer token (and 401 without).
* Tokens and sessions on SQLite and PostgreSQL through the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from starlette.applications import Starlette
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket
from tests.integration.test_cli import CLI, clean_environ
from typer.testing import CliRunner
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from orchestrator import errors, logs
from orchestrator.api import auth as api_auth
from orchestrator.api.app import create_app
from orchestrator.auth_service import SESSION_COOKIE, Tokens
from orchestrator.cli import app as cli_app
from orchestrator.config import Settings, env_name, load_settings
from orchestrator.db.engine import open_database
from orchestrator.db.tokens import TokenRepo
from orchestrator.domain import auth
from orchestrator.domain.auth import Principal, Scope
from orchestrator.domain.params import ComfyRequest, FluxRequest
from orchestrator.runtime import open_runtime
from orchestrator.testing.serve import serve_in_thread
from orchestrator.ui import csrf

FLUX_JOB = {"backend": "flux", "params": {"model": "flux-dev", "prompt": "a fox"}}


@dataclass
class Key:
    id: str
    secret: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}


@dataclass
class Server:
    base_url: str
    app: FastAPI
    settings: Settings
    admin: Key
    read: Key
    gen: Key
    gen2: Key

    def client(self, **kw: Any) -> httpx2.Client:
        return httpx2.Client(base_url=self.base_url, timeout=30, **kw)

    def new_token(self, name: str, scope: str) -> Key:
        with self.client() as c:
            r = c.post(
                "/api/tokens", json={"name": name, "scope": scope}, headers=self.admin.headers
            )
        assert r.status_code == 201, r.text
        doc = r.json()
        return Key(doc["token"]["id"], doc["secret"])


def _setting_envs() -> set[str]:
    return {env_name(n) for n in Settings.model_fields} | {"ORCHESTRATOR_CONFIG"}


async def _first_admin(db_url: str) -> Key:
    """What `orchestrator token create --scope admin` does, before the server runs."""
    db = await open_database(db_url)
    try:
        made = await Tokens(TokenRepo(db), session_ttl_s=3600).create("first admin", Scope.ADMIN)
    finally:
        await db.dispose()
    return Key(made.token.id, made.secret)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k in _setting_envs()}
    root = tmp_path_factory.mktemp("auth")
    settings = load_settings(
        root / "orchestrator.toml",
        {"data_dir": root / "data", "demo_mode": "on", "worker_enabled": False},
    )
    assert not settings.auth_disabled  # the default
    admin = asyncio.run(_first_admin(settings.db_url))
    app = create_app(settings)
    try:
        with serve_in_thread(app, lifespan="on") as served:
            s = Server(served.base_url, app, settings, admin, admin, admin, admin)
            s.read = s.new_token("reader", "read")
            s.gen = s.new_token("maker", "generate")
            s.gen2 = s.new_token("other maker", "generate")
            yield s
    finally:
        os.environ.update(saved)


# --- the route walk ----------------------------------------------------------------------


def walk(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path template) for every route of the app: included routers
    flattened, mounts (static files) and the MCP endpoint included."""
    found: list[tuple[str, str]] = []
    for ctx in iter_route_contexts(app.routes):
        route, path = ctx.original_route, ctx.path
        assert path is not None, route
        if isinstance(route, Mount):
            found.append(("GET", path + "/{path:path}"))
        elif isinstance(route, WebSocketRoute):
            found.append(("GET", path))
        elif isinstance(route, APIRoute | Route):
            methods = ctx.methods or {"GET", "POST", "DELETE"}  # a bare ASGI endpoint
            found += [(m, path) for m in sorted(methods) if m != "HEAD"]
        else:
            raise AssertionError(f"a route of an unknown kind: {type(route).__name__}")
    return found


def concrete(template: str) -> str:
    """A template with dummy values for its parameters."""
    path = re.sub(r"\{[^}:]+:path\}", "x/y.css", template)
    return re.sub(r"\{[^}]+\}", "0", path)


def status_of(client: httpx2.Client, method: str, path: str, headers: dict[str, str]) -> int:
    """The status only: streams (SSE) are not read. A 403 for want of scope counts as
    403; one from the route itself (e.g. a UI form's own CSRF check) as 200."""
    with client.stream(method, path, headers=headers) as r:
        if r.status_code != 403:
            return r.status_code
        r.read()
        problem = r.headers.get("content-type") == "application/problem+json"
        return 403 if problem and "scope" in (r.json().get("detail") or "") else 200


def test_the_walk_sees_every_kind_of_route(server: Server) -> None:
    paths = {p for _m, p in walk(server.app)}
    assert "/mcp" in paths and "/metrics" in paths and "/api/jobs/{job_id}/events" in paths
    assert "/api/outputs/{job_id}/{n}" in paths and "/ui/login" in paths
    assert "/ui/static/{path:path}" in paths
    assert any(p.startswith("/ui/") and p != "/ui/login" for p in paths)


def test_every_route_has_a_decided_scope(server: Server) -> None:
    undecided = [
        f"{m} {p}" for m, p in walk(server.app) if api_auth.explicit_rule(m, concrete(p)) is None
    ]
    assert undecided == [], "add these routes to api/auth.py RULES"


def test_every_route_answers_401_without_a_token(server: Server) -> None:
    public, guarded = [], []
    with server.client() as c:
        for method, template in walk(server.app):
            path = concrete(template)
            status = status_of(c, method, path, {})
            if api_auth.decide(method, path) == api_auth.PUBLIC:
                public.append(template)
                assert status != 401, f"{method} {template} is public"
            else:
                guarded.append(template)
                assert status == 401, f"{method} {template} answered {status} without a token"
        r = c.get("/api/jobs")
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["title"] == "Unauthorized" and r.json()["request_id"]
        wrong = c.get("/api/jobs", headers={"Authorization": "Bearer orch_nope"})
        assert (
            wrong.status_code == 401
            and 'error="invalid_token"' in wrong.headers["www-authenticate"]
        )
        basic = c.get("/api/jobs", headers={"Authorization": "Basic dXNlcjpwdw=="})
        assert basic.status_code == 401
    assert "/mcp" in guarded and "/metrics" in guarded and len(guarded) > 30
    assert set(public) <= {"/healthz", "/readyz", "/ui/login", "/ui/static/{path:path}"}


@pytest.mark.parametrize(
    ("who", "refused"),
    [("read", {Scope.GENERATE, Scope.ADMIN}), ("gen", {Scope.ADMIN}), ("admin", set())],
)
def test_scopes_on_every_route(server: Server, who: str, refused: set[Scope]) -> None:
    key: Key = getattr(server, who)
    allowed_seen = refused_seen = 0
    with server.client() as c:
        for method, template in walk(server.app):
            path = concrete(template)
            need = api_auth.decide(method, path)
            if need == api_auth.PUBLIC or template == "/ui/logout":
                continue  # logging out would end nothing here, but keep the walk pure
            status = status_of(c, method, path, key.headers)
            if need in refused:
                refused_seen += 1
                assert status == 403, f"{who}: {method} {template} answered {status}"
            else:
                allowed_seen += 1
                assert status not in (401, 403), f"{who}: {method} {template} got {status}"
    assert allowed_seen > 10
    assert refused_seen > 0 or not refused


def test_public_routes_need_nothing(server: Server) -> None:
    with server.client() as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code in (200, 503)
        page = c.get("/ui/login")
        assert page.status_code == 200 and 'name="token"' in page.text
        assert c.get("/ui/static/app.css").status_code in (200, 404)


def test_a_browser_without_a_session_gets_the_login_page(server: Server) -> None:
    with server.client() as c:
        r = c.get("/ui/jobs?status=failed", headers={"Accept": "text/html"})
    assert r.status_code == 401 and r.headers["content-type"].startswith("text/html")
    assert 'action="/ui/login"' in r.text and 'value="/ui/jobs?status=failed"' in r.text
    assert 'href="/ui/static/app.css' in r.text
    assert csrf.CSRF_COOKIE in r.headers.get("set-cookie", "")


# --- tokens -------------------------------------------------------------------------------


def test_token_management_over_the_api(server: Server) -> None:
    with server.client() as c:
        listed = c.get("/api/tokens", headers=server.admin.headers)
        assert listed.status_code == 200
        text = listed.text
        assert server.read.secret not in text and server.gen.secret not in text
        names = {t["name"]: t for t in listed.json()}
        assert names["reader"]["scope"] == "read"
        assert server.read.secret.startswith(names["reader"]["prefix"])
        assert names["reader"]["last_used_at"] is not None  # it was used above
        bad = c.post(
            "/api/tokens", json={"name": "x", "scope": "root"}, headers=server.admin.headers
        )
        assert bad.status_code == 422
        assert c.delete("/api/tokens/nope", headers=server.admin.headers).status_code == 404
        who = c.get("/api/auth/whoami", headers=server.gen.headers).json()
        assert who == {
            "principal": {
                "token_id": server.gen.id,
                "name": "maker",
                "scope": "generate",
                "via": "token",
            },
            "auth_enabled": True,
        }


def test_revoked_token_is_refused_and_its_sessions_die(server: Server) -> None:
    key = server.new_token("short-lived", "read")
    with server.client() as browser, server.client() as api:
        _login(browser, key.secret)
        session = browser.cookies[SESSION_COOKIE]
        assert browser.get("/api/auth/whoami").json()["principal"]["via"] == "session"
        assert api.get("/api/jobs", headers=key.headers).status_code == 200
        r = api.delete(f"/api/tokens/{key.id}", headers=server.admin.headers)
        assert r.status_code == 200 and r.json()["revoked_at"] is not None
        assert api.get("/api/jobs", headers=key.headers).status_code == 401
        page = browser.get("/ui/jobs", headers={"Accept": "text/html"})
        assert page.status_code == 401 and "log in again" in page.text
        assert SESSION_COOKIE not in browser.cookies  # the dead cookie is cleared
        stale = {"Cookie": f"{SESSION_COOKIE}={session}"}
        assert api.get("/api/jobs", headers=stale).status_code == 401
        again = api.delete(f"/api/tokens/{key.id}", headers=server.admin.headers)
        assert again.status_code == 200


def test_jobs_record_their_token_and_generate_tokens_manage_only_their_own(
    server: Server,
) -> None:
    with server.client() as c:
        mine = c.post("/api/generate", json=FLUX_JOB, headers=server.gen.headers)
        theirs = c.post("/api/generate", json=FLUX_JOB, headers=server.gen2.headers)
        assert mine.status_code == theirs.status_code == 202
        assert mine.json()["token_id"] == server.gen.id
        job_id, other_id = mine.json()["id"], theirs.json()["id"]
        assert c.get(f"/api/jobs/{job_id}", headers=server.read.headers).json()["token_id"] == (
            server.gen.id
        )
        refused = c.post(f"/api/jobs/{other_id}/cancel", headers=server.gen.headers)
        assert refused.status_code == 403 and "only the jobs it created" in refused.json()["detail"]
        assert c.get(f"/api/jobs/{other_id}", headers=server.read.headers).json()["status"] == (
            "queued"
        )
        assert c.post(f"/api/jobs/{job_id}/cancel", headers=server.read.headers).status_code == 403
        done = c.post(f"/api/jobs/{job_id}/cancel", headers=server.gen.headers)
        assert done.status_code == 200 and done.json()["status"] == "canceled"
        assert c.post(f"/api/jobs/{job_id}/retry", headers=server.gen2.headers).status_code == 403
        retried = c.post(f"/api/jobs/{job_id}/retry", headers=server.gen.headers)
        assert retried.status_code == 202 and retried.json()["token_id"] == server.gen.id
        admin = c.post(f"/api/jobs/{other_id}/cancel", headers=server.admin.headers)
        assert admin.status_code == 200
        raw = c.post(
            "/api/generate",
            json={"backend": "comfy", "params": {"workflow": {"1": {"class_type": "X"}}}},
            headers=server.gen.headers,
        )
        assert raw.status_code == 403  # raw workflows are admin-only, on every route


def test_tokens_never_reach_the_logs(server: Server) -> None:
    buf = io.StringIO()
    logs.configure("DEBUG", "json", stream=buf)
    try:
        with server.client() as c:
            c.get("/api/jobs", headers=server.read.headers)
            c.post("/api/generate", json=FLUX_JOB, headers=server.read.headers)  # 403, logged
            c.get("/api/jobs", headers={"Authorization": f"Bearer {server.gen.secret}x"})
            _login(c, server.gen.secret)
            cookie = c.cookies.get(SESSION_COOKIE)
            assert cookie
            c.post("/ui/login", data={"token": server.gen2.secret})  # no CSRF: refused
        log = logs.get("test")
        log.warning(
            "a careless caller",
            headers={"authorization": f"Bearer {server.admin.secret}", "cookie": cookie},
            note=f"retry with {server.admin.secret}",
        )
        try:
            raise RuntimeError(f"boom {server.admin.secret} {cookie}")
        except RuntimeError:
            log.exception("failed")
    finally:
        logs.configure("INFO", "json", stream=sys.stderr)
    out = buf.getvalue()
    assert '"forbidden"' in out and "a careless caller" in out and "boom" in out
    for secret in (server.read.secret, server.gen.secret, server.gen2.secret, server.admin.secret):
        assert secret not in out and secret[5:25] not in out
    assert cookie not in out


# --- the UI session -----------------------------------------------------------------------


def _login(c: httpx2.Client, secret: str, next_path: str = "/ui/") -> httpx2.Response:
    c.get("/ui/login")
    token = c.cookies.get(csrf.CSRF_COOKIE)
    assert token
    r = c.post(
        "/ui/login",
        data={"token": secret, csrf.CSRF_FIELD: token, "next": next_path},
    )
    assert r.status_code == 303, r.text
    return r


def test_login_sets_a_safe_session_cookie(server: Server) -> None:
    with server.client() as c:
        r = _login(c, server.gen.secret, "/ui/jobs")
        assert r.headers["location"] == "/ui/jobs"
        cookie = next(
            h for h in r.headers.get_list("set-cookie") if h.startswith(SESSION_COOKIE + "=")
        )
        flags = {p.strip().split("=")[0].lower(): p for p in cookie.split(";")[1:]}
        assert "httponly" in flags and flags["samesite"].strip().lower() == "samesite=lax"
        assert "secure" not in flags  # plain http here; set behind https
        assert int(flags["max-age"].split("=")[1]) == int(server.settings.session_ttl_s)
        assert flags["path"].strip() == "Path=/"
        value = c.cookies[SESSION_COOKIE]
        assert value.startswith("orchs_") and server.gen.secret not in value
        who = c.get("/api/auth/whoami").json()["principal"]
        assert who == {
            "token_id": server.gen.id,
            "name": "maker",
            "scope": "generate",
            "via": "session",
        }
        assert c.get("/ui/jobs", headers={"Accept": "text/html"}).status_code == 200


def test_login_refusals(server: Server) -> None:
    with server.client() as c:
        c.get("/ui/login")
        token = c.cookies[csrf.CSRF_COOKIE]
        wrong = c.post("/ui/login", data={"token": "orch_wrong", csrf.CSRF_FIELD: token})
        assert wrong.status_code == 401 and "not valid" in wrong.text
        assert SESSION_COOKIE not in c.cookies
        no_csrf = c.post("/ui/login", data={"token": server.gen.secret})
        assert no_csrf.status_code == 403 and SESSION_COOKIE not in c.cookies
        forged = c.post("/ui/login", data={"token": server.gen.secret, csrf.CSRF_FIELD: "x" * 43})
        assert forged.status_code == 403
        evil = _login(c, server.gen.secret, "//evil.example/")
        assert evil.headers["location"] == "/ui/"


def test_session_requests_need_the_csrf_token_and_bearer_ones_do_not(server: Server) -> None:
    with server.client() as c:
        _login(c, server.gen.secret)
        job = c.post("/api/generate", json=FLUX_JOB, headers=server.gen.headers).json()
        no_token = c.post(f"/api/jobs/{job['id']}/cancel")
        assert no_token.status_code == 403 and no_token.json()["type"].endswith("csrf-failed")
        wrong = c.post(f"/api/jobs/{job['id']}/cancel", headers={csrf.CSRF_HEADER: "x" * 43})
        assert wrong.status_code == 403
        json_body = c.post("/api/generate", json=FLUX_JOB)
        assert json_body.status_code == 403
        good = csrf_headers(c)
        ok = c.post(f"/api/jobs/{job['id']}/cancel", headers=good)
        assert ok.status_code == 200 and ok.json()["status"] == "canceled"
        made = c.post("/api/generate", json=FLUX_JOB, headers=good)
        assert made.status_code == 202 and made.json()["token_id"] == server.gen.id
        # a form post with the field passes, and the body still reaches the route
        form = c.post(
            f"/ui/jobs/{made.json()['id']}/rerun",
            data={csrf.CSRF_FIELD: good[csrf.CSRF_HEADER], "mode": "retry"},
        )
        assert form.status_code != 403, form.text
    with server.client() as bearer:
        r = bearer.post("/api/generate", json=FLUX_JOB, headers=server.gen.headers)
        assert r.status_code == 202


def page_token(c: httpx2.Client) -> str:
    """The CSRF token a UI page of this session carries (its csrf-token meta tag)."""
    page = c.get("/ui/", headers={"Accept": "text/html"})
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
    assert found, page.text[:500]
    return found[1]


def csrf_headers(c: httpx2.Client) -> dict[str, str]:
    return {csrf.CSRF_HEADER: page_token(c)}


def test_logout_ends_the_session(server: Server) -> None:
    with server.client() as c:
        _login(c, server.read.secret)
        cookie = c.cookies[SESSION_COOKIE]
        assert c.post("/ui/logout").status_code == 403  # CSRF, as any unsafe request
        r = c.post("/ui/logout", headers=csrf_headers(c))
        assert r.status_code == 303 and r.headers["location"] == "/ui/login"
        assert SESSION_COOKIE not in c.cookies
    with server.client(cookies={SESSION_COOKIE: cookie}) as stolen:
        assert stolen.get("/api/jobs").status_code == 401


# --- MCP over streamable HTTP --------------------------------------------------------------


async def _mcp_call(server: Server, key: Key, tool: str, args: dict[str, Any]) -> Any:
    async with (
        httpx2.AsyncClient(headers=key.headers, timeout=30) as http,
        streamable_http_client(f"{server.base_url}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        return await session.call_tool(tool, args)


async def test_mcp_over_http_acts_for_the_bearer(server: Server) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    async with httpx2.AsyncClient(base_url=server.base_url, timeout=30) as raw:
        anonymous = await raw.post("/mcp", json=body)
        assert anonymous.status_code == 401
    listed = await _mcp_call(server, server.read, "list_jobs", {"limit": 5})
    assert not listed.is_error
    refused = await _mcp_call(server, server.read, "generate", FLUX_JOB)
    assert refused.is_error and "Forbidden" in refused.content[0].text
    made = await _mcp_call(server, server.gen, "generate", FLUX_JOB)
    assert not made.is_error, made.content
    job_id = made.structured_content["id"]
    async with httpx2.AsyncClient(base_url=server.base_url, timeout=30) as c:
        job = (await c.get(f"/api/jobs/{job_id}", headers=server.read.headers)).json()
    assert job["token_id"] == server.gen.id
    other = await _mcp_call(server, server.gen2, "cancel_job", {"job_id": job_id})
    assert other.is_error and "only the jobs it created" in other.content[0].text
    own = await _mcp_call(server, server.gen, "cancel_job", {"job_id": job_id})
    assert not own.is_error and own.structured_content["status"] == "canceled"
    ignite = await _mcp_call(server, server.gen, "ignite", {})
    assert ignite.is_error and "admin" in ignite.content[0].text


# --- websockets (none in the app yet; the middleware covers them when one is added) --------


def test_websockets_need_a_credential_and_the_right_scope(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(auth_disabled=False)
    keys: dict[str, str] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        db = await open_database(settings.db_url)
        tokens = Tokens(TokenRepo(db), session_ttl_s=60)
        holder.append(tokens)
        keys["admin"] = (await tokens.create("a", Scope.ADMIN)).secret
        keys["read"] = (await tokens.create("r", Scope.READ)).secret
        started = await tokens.start_session(keys["admin"])
        assert started is not None
        keys["cookie"] = started[1]
        yield
        await db.dispose()

    async def echo(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text(ws.state.principal.name)
        await ws.close()

    holder: list[Tokens] = []
    inner = Starlette(routes=[WebSocketRoute("/ws", echo)], lifespan=lifespan)
    app = api_auth.AuthMiddleware(inner, settings, lambda: holder[0])
    with serve_in_thread(app, lifespan="on") as served:
        url = f"ws://127.0.0.1:{served.port}/ws"

        def opens(headers: dict[str, str]) -> bool:
            try:
                with ws_connect(url, additional_headers=headers, open_timeout=10) as ws:
                    return ws.recv(timeout=10) in ("a", "r")
            except (InvalidStatus, ConnectionClosed):
                return False

        assert opens({"Authorization": f"Bearer {keys['admin']}"})
        assert not opens({})
        assert not opens({"Authorization": f"Bearer {keys['read']}"})  # no rule: admin
        assert not opens({"Authorization": "Bearer orch_wrong"})
        cookie = {"Cookie": f"{SESSION_COOKIE}={keys['cookie']}"}
        assert opens({**cookie, "Origin": f"http://127.0.0.1:{served.port}"})
        assert not opens({**cookie, "Origin": "http://evil.example"})


# --- auth disabled (loopback) ------------------------------------------------------------


def test_with_auth_disabled_other_sites_still_cannot_post(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(demo_mode="on", worker_enabled=False)
    assert settings.auth_disabled
    with (
        serve_in_thread(create_app(settings), lifespan="on") as served,
        httpx2.Client(base_url=served.base_url, timeout=30) as c,
    ):
        who = c.get("/api/auth/whoami").json()
        assert who["auth_enabled"] is False and who["principal"]["via"] == "auth-disabled"
        assert c.post("/api/generate", json=FLUX_JOB).status_code == 202  # curl, scripts
        same = c.post("/api/generate", json=FLUX_JOB, headers={"Origin": served.base_url})
        assert same.status_code == 202
        evil = c.post("/api/generate", json=FLUX_JOB, headers={"Origin": "http://evil.example"})
        assert evil.status_code == 403 and evil.json()["type"].endswith("cross-site")
        job_id = same.json()["id"]
        form = c.post(f"/ui/jobs/{job_id}/rerun", data={"x": "1"})
        assert form.status_code == 403  # the UI's forms need the CSRF token even so
        assert c.get("/ui/login", follow_redirects=False).status_code == 303


# --- the CLI and settings -----------------------------------------------------------------


def test_token_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["--data-dir", str(tmp_path / "data")]
    made = runner.invoke(cli_app, [*base, "token", "create", "--name", "ci", "--scope", "read"])
    assert made.exit_code == 0, made.output
    secret = made.stdout.strip()
    assert re.fullmatch(r"orch_[A-Za-z0-9_-]{40,}", secret)
    assert "shown only once" in made.stderr
    listed = runner.invoke(cli_app, [*base, "token", "list", "--json"])
    assert listed.exit_code == 0 and secret not in listed.stdout
    (token,) = json.loads(listed.stdout)
    assert token["name"] == "ci" and token["scope"] == "read" and token["revoked_at"] is None
    assert secret.startswith(token["prefix"])
    revoked = runner.invoke(cli_app, [*base, "token", "revoke", token["id"]])
    assert revoked.exit_code == 0 and "revoked" in revoked.stdout
    (after,) = json.loads(runner.invoke(cli_app, [*base, "token", "list", "--json"]).stdout)
    assert after["revoked_at"] is not None
    missing = runner.invoke(cli_app, [*base, "token", "revoke", "nope"])
    assert missing.exit_code == 1 and "not found" in missing.stderr.lower()
    bad = runner.invoke(cli_app, [*base, "token", "create", "--name", "x", "--scope", "root"])
    assert bad.exit_code == 2


def test_auth_cannot_be_turned_off_off_loopback(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["--data-dir", str(tmp_path / "data")]
    flag = runner.invoke(cli_app, [*base, "serve", "--host", "0.0.0.0", "--no-auth"])
    assert flag.exit_code == 2 and "AUTH_DISABLED" in flag.stderr
    env = {"AUTH_DISABLED": "true", "ORCHESTRATOR_HOST": "192.168.1.20"}
    by_env = runner.invoke(cli_app, [*base, "config", "check"], env=env)
    assert by_env.exit_code == 2 and "AUTH_DISABLED" in by_env.stderr
    on_loopback = runner.invoke(cli_app, [*base, "config", "check"], env={"AUTH_DISABLED": "1"})
    assert on_loopback.exit_code == 0, on_loopback.output
    assert "authentication disabled" in on_loopback.stdout


def test_a_fresh_serve_is_closed_and_says_how_to_get_in(tmp_path: Path) -> None:
    """`make run` on a fresh machine: auth on, no token yet, one warning saying how."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = clean_environ(
        HOME=str(tmp_path / "home"),
        XDG_CONFIG_HOME=str(tmp_path / "home" / ".config"),
        XDG_DATA_HOME=str(tmp_path / "home" / ".local" / "share"),
        AUTH_DISABLED="false",
        ORCHESTRATOR_PORT=str(port),
        LOG_FORMAT="json",
    )
    proc = subprocess.Popen(
        [*CLI, "serve"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        with httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            for _ in range(400):
                try:
                    if c.get("/healthz").status_code == 200:
                        break
                except httpx2.TransportError:
                    time.sleep(0.05)
            assert c.get("/api/jobs").status_code == 401
            assert c.get("/mcp").status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    lines = [json.loads(ln) for ln in err.splitlines() if ln.startswith("{")]
    hints = [ln for ln in lines if "token create" in ln["event"]]
    assert len(hints) == 1 and hints[0]["level"] == "warning"
    assert "--scope admin" in hints[0]["event"] and "orch_" not in err


async def test_serve_says_how_to_create_the_first_token(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(auth_disabled=False)
    db = await open_database(settings.db_url)
    tokens = Tokens(TokenRepo(db), session_ttl_s=60)
    buf = io.StringIO()
    logs.configure("INFO", "json", stream=buf)
    try:
        await api_auth.announce(settings, tokens)
        warning = buf.getvalue()
        assert "orchestrator token create --name admin --scope admin" in warning
        assert '"level": "warning"' in warning and "orch_" not in warning
        await tokens.create("first", Scope.ADMIN)
        buf.seek(0)
        buf.truncate()
        await api_auth.announce(settings, tokens)
        assert buf.getvalue() == ""
        await api_auth.announce(make_settings(), tokens)
        assert "DISABLED" in buf.getvalue()
    finally:
        logs.configure("INFO", "json", stream=sys.stderr)
        await db.dispose()


# --- tokens, sessions and ownership in the service, on SQLite and PostgreSQL ----------------


@pytest.fixture
async def service_rt(make_settings: Callable[..., Settings], db_url: str) -> AsyncIterator[Any]:
    settings = make_settings(database_url=db_url, bfl_api_key="bfl-unused-key-0123456789")
    async with open_runtime(settings, run_worker=False) as rt:
        yield rt


def flux_request() -> FluxRequest:
    return FluxRequest.model_validate({"params": {"model": "flux-dev", "prompt": "an owl"}})


async def test_tokens_sessions_and_ownership(service_rt: Any) -> None:
    service = service_rt.service
    tokens: Tokens = service.tokens
    assert await tokens.count_active() == 0
    gen = await tokens.create("maker", Scope.GENERATE)
    gen2 = await tokens.create("other", Scope.GENERATE)
    reader = await tokens.create("reader", Scope.READ)
    assert len({gen.secret, gen2.secret, reader.secret}) == 3
    with pytest.raises(errors.Forbidden):
        await tokens.create("sneaky", Scope.ADMIN, principal=_p(gen))
    with pytest.raises(errors.InvalidRequest):
        await tokens.create("bad\nname", Scope.READ)
    p_gen = await tokens.authenticate(gen.secret)
    assert p_gen == Principal(
        token_id=gen.token.id, name="maker", scope=Scope.GENERATE, via="token"
    )
    assert await tokens.authenticate(gen.secret + "x") is None
    assert await tokens.authenticate("orch_" + "A" * 43) is None
    assert await tokens.authenticate("not a token") is None
    p_gen2, p_read = (
        await tokens.authenticate(gen2.secret),
        await tokens.authenticate(reader.secret),
    )
    assert p_gen2 is not None and p_read is not None

    job, _ = await service.submit(flux_request(), principal=p_gen)
    assert job.token_id == gen.token.id
    assert (await service.get_job(job.id)).token_id == gen.token.id
    local, _ = await service.submit(flux_request())
    assert local.token_id is None  # the CLI's jobs belong to no token
    with pytest.raises(errors.Forbidden):
        await service.submit(flux_request(), principal=p_read)
    raw = ComfyRequest.model_validate({"params": {"workflow": {"1": {"class_type": "X"}}}})
    with pytest.raises(errors.Forbidden):
        await service.submit(raw, principal=p_gen)
    with pytest.raises(errors.Forbidden):
        await service.cancel_job(job.id, principal=p_gen2)
    with pytest.raises(errors.Forbidden):
        await service.cancel_job(local.id, principal=p_gen)
    assert (await service.cancel_job(job.id, principal=p_gen)).status.value == "canceled"
    with pytest.raises(errors.Forbidden):
        await service.retry_job(job.id, principal=p_gen2)
    again = await service.retry_job(job.id, principal=p_gen)
    assert again.token_id == gen.token.id and again.retry_of == job.id
    await service.cancel_job(local.id)  # the local owner may

    started = await tokens.start_session(gen.secret)
    assert started is not None
    principal, cookie, expires = started
    assert principal.via == "session" and cookie.startswith("orchs_")
    assert expires > datetime.now(UTC) + timedelta(seconds=tokens.session_ttl_s - 60)
    assert await tokens.session_principal(cookie) == principal
    assert await tokens.session_principal(cookie + "x") is None
    assert await tokens.start_session(gen.secret + "x") is None
    second = await tokens.start_session(gen.secret)
    assert second is not None
    await tokens.end_session(second[1])
    assert await tokens.session_principal(second[1]) is None

    expired = Tokens(tokens.repo, session_ttl_s=-1)
    stale = await expired.start_session(gen2.secret)
    assert stale is not None and await tokens.session_principal(stale[1]) is None

    revoked = await tokens.revoke(gen.token.id)
    assert revoked.revoked_at is not None
    assert await tokens.authenticate(gen.secret) is None
    assert await tokens.session_principal(cookie) is None
    assert await tokens.repo.session_count(gen.token.id) == 0
    assert await tokens.count_active() == 2
    listed = {t.id: t for t in await tokens.all()}
    assert listed[gen.token.id].revoked_at is not None
    assert listed[gen2.token.id].last_used_at is not None
    assert listed[reader.token.id].revoked_at is None
    with pytest.raises(errors.TokenNotFound):
        await tokens.revoke("nope")
    with pytest.raises(errors.Forbidden):
        await tokens.all(principal=p_read)


def _p(made: Any) -> Principal:
    t = made.token
    return Principal(token_id=t.id, name=t.name, scope=t.scope, via="token")


def test_the_local_principal_is_an_admin() -> None:
    assert auth.LOCAL.scope is Scope.ADMIN and auth.LOCAL.token_id is None
