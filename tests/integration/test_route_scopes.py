"""Every route's scope, written down by hand (issue 15).

``test_auth.py``'s route walk takes what each route needs from ``RULES`` in
``api/auth.py``, the code under test: weaken a rule there (``POST /api/comfy/prompt``
from admin to generate) and the walk weakens its expectation with it. The table below
is written independently, from the README's Authentication section and what a user
would expect:

* public: ``/healthz``, ``/readyz``, ``/ui/login`` and ``/ui/static/…`` only;
* read: seeing anything (jobs, outputs, events, backends, costs, metrics, the UI's
  pages and panels, the API docs, ``/mcp``, whose tools check their own action);
* generate: submitting jobs, cancelling or retrying them (the UI's rerun too);
* admin: tokens, budgets, webhook replays, ignite, Tilda imports and raw ComfyUI
  workflows.

A route of the app missing from the table fails the test (someone must decide its
scope here as well), and so does a table entry the app does not serve. For each route,
the scope one step below the one it needs is refused (no credential: 401; a read token
on a generate route, a generate token on an admin route: 403), and the scope it needs
is not refused (any status but 401/403: 404 or 422 for dummy ids and bodies are fine).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass

import httpx2
import pytest
from fastapi import FastAPI
from tests.integration.test_auth import Key, _first_admin, _setting_envs, concrete, walk

from orchestrator.api.app import create_app
from orchestrator.config import load_settings
from orchestrator.testing.serve import serve_in_thread

PUBLIC, READ, GENERATE, ADMIN = "public", "read", "generate", "admin"

# (method, path template) -> the scope it needs. Written by hand: do not derive it
# from api/auth.py.
EXPECTED: dict[tuple[str, str], str] = {
    # --- public ------------------------------------------------------------------------
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/ui/login"): PUBLIC,
    ("POST", "/ui/login"): PUBLIC,
    ("GET", "/ui/static/{path:path}"): PUBLIC,
    # --- admin -------------------------------------------------------------------------
    ("POST", "/api/tokens"): ADMIN,
    ("GET", "/api/tokens"): ADMIN,
    ("DELETE", "/api/tokens/{token_id}"): ADMIN,
    ("PUT", "/api/budgets/tokens/{token_id}"): ADMIN,
    ("DELETE", "/api/budgets/tokens/{token_id}"): ADMIN,
    ("POST", "/api/webhooks/deliveries/{delivery_id}/replay"): ADMIN,
    ("POST", "/api/system/ignite"): ADMIN,
    ("POST", "/api/tilda/import"): ADMIN,
    ("POST", "/api/comfy/prompt"): ADMIN,  # a raw workflow runs any installed node
    # --- generate ----------------------------------------------------------------------
    ("POST", "/api/generate"): GENERATE,
    ("POST", "/api/flux/generate"): GENERATE,
    ("POST", "/api/jobs/{job_id}/cancel"): GENERATE,
    ("POST", "/api/jobs/{job_id}/retry"): GENERATE,
    ("POST", "/ui/jobs/{job_id}/rerun"): GENERATE,
    # --- read: the API -----------------------------------------------------------------
    ("GET", "/api/auth/whoami"): READ,
    ("GET", "/api/jobs"): READ,
    ("GET", "/api/jobs/{job_id}"): READ,
    ("GET", "/api/jobs/{job_id}/events"): READ,
    ("GET", "/api/events"): READ,
    ("GET", "/api/outputs/{job_id}/{n}"): READ,
    ("GET", "/api/models"): READ,
    ("GET", "/api/flux/models"): READ,
    ("GET", "/api/comfy/instances"): READ,
    ("GET", "/api/comfy/object_info"): READ,
    ("GET", "/api/comfy/queue"): READ,
    ("GET", "/api/system/health"): READ,
    ("GET", "/api/webhooks/deliveries"): READ,
    ("GET", "/api/costs"): READ,
    ("GET", "/api/budgets"): READ,
    ("GET", "/api/tilda/imports"): READ,
    ("GET", "/api/tilda/imports/{import_id}"): READ,
    ("GET", "/api/tilda/sites"): READ,
    ("GET", "/api/tilda/pages"): READ,
    ("GET", "/api/tilda/pages/{page_id}"): READ,
    ("GET", "/api/tilda/assets/{asset_id}"): READ,
    ("GET", "/metrics"): READ,
    ("GET", "/mcp"): READ,  # each MCP tool checks its own action
    ("POST", "/mcp"): READ,
    ("DELETE", "/mcp"): READ,
    ("GET", "/openapi.json"): READ,
    ("GET", "/docs"): READ,
    ("GET", "/docs/oauth2-redirect"): READ,
    ("GET", "/redoc"): READ,
    ("GET", "/"): READ,
    # --- read: the UI's pages and panels (they only show things) -----------------------
    ("POST", "/ui/logout"): READ,
    ("GET", "/ui/"): READ,
    ("GET", "/ui/generate"): READ,
    ("GET", "/ui/jobs"): READ,
    ("GET", "/ui/jobs/{job_id}"): READ,
    ("GET", "/ui/gallery"): READ,
    ("GET", "/ui/backends"): READ,
    ("GET", "/ui/settings"): READ,
    ("GET", "/ui/costs"): READ,
    ("GET", "/ui/sites"): READ,
    ("GET", "/ui/sites/pages/{page_id}"): READ,
    ("GET", "/ui/thumbs/{job_id}/{n}"): READ,
    ("GET", "/ui/asset-thumbs/{asset_id}"): READ,
    ("GET", "/ui/panels/queue"): READ,
    ("GET", "/ui/panels/backends"): READ,
    ("GET", "/ui/panels/workers"): READ,
    ("GET", "/ui/panels/templates"): READ,
    ("GET", "/ui/panels/recent"): READ,
    ("GET", "/ui/panels/jobs"): READ,
    ("GET", "/ui/panels/job/{job_id}"): READ,
    ("GET", "/ui/panels/job/{job_id}/timeline"): READ,
    ("GET", "/ui/panels/gallery"): READ,
    ("GET", "/ui/panels/pick-outputs"): READ,
    ("GET", "/ui/panels/sites"): READ,
    ("GET", "/ui/panels/site-pages"): READ,
    ("GET", "/ui/panels/site-page/{page_id}/blocks"): READ,
    ("GET", "/ui/panels/site-page/{page_id}/images"): READ,
    ("GET", "/ui/panels/tilda-imports"): READ,
    ("GET", "/ui/panels/pick-assets"): READ,
    ("GET", "/ui/panels/costs"): READ,
    ("GET", "/ui/panels/budgets"): READ,
}

# who is one step below each scope (None: no credential at all)
BELOW: dict[str, str | None] = {READ: None, GENERATE: READ, ADMIN: GENERATE}


@dataclass
class Served:
    base_url: str
    app: FastAPI
    keys: dict[str, Key]

    def headers(self, who: str | None) -> dict[str, str]:
        return {} if who is None else self.keys[who].headers


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k in _setting_envs()}
    root = tmp_path_factory.mktemp("scopes")
    settings = load_settings(
        root / "orchestrator.toml",
        {"data_dir": root / "data", "demo_mode": "on", "worker_enabled": False},
    )
    assert not settings.auth_disabled
    admin = asyncio.run(_first_admin(settings.db_url))
    app = create_app(settings)
    try:
        with serve_in_thread(app, lifespan="on") as srv:
            keys = {ADMIN: admin}
            with httpx2.Client(base_url=srv.base_url, timeout=30) as c:
                for scope in (READ, GENERATE):
                    r = c.post(
                        "/api/tokens", json={"name": scope, "scope": scope}, headers=admin.headers
                    )
                    assert r.status_code == 201, r.text
                    keys[scope] = Key(r.json()["token"]["id"], r.json()["secret"])
            yield Served(srv.base_url, app, keys)
    finally:
        os.environ.update(saved)


def _status(client: httpx2.Client, method: str, path: str, headers: dict[str, str]) -> int:
    """The status (streams are not read). A 403 counts as a refusal for want of scope
    only when its problem document says so; a route's own 403 (the UI's CSRF check on
    a form) means the scope let the request through."""
    with client.stream(method, path, headers=headers) as r:
        if r.status_code != 403:
            return r.status_code
        r.read()
        problem = r.headers.get("content-type") == "application/problem+json"
        return 403 if problem and "scope" in (r.json().get("detail") or "") else 200


def test_every_route_of_the_app_is_in_the_hand_written_table(served: Served) -> None:
    routes = set(walk(served.app))
    missing = sorted(f"{m} {p}" for m, p in routes - EXPECTED.keys())
    assert missing == [], "decide these routes' scopes in test_route_scopes.EXPECTED"
    gone = sorted(f"{m} {p}" for m, p in EXPECTED.keys() - routes)
    assert gone == [], "the app no longer serves these: drop them from EXPECTED"


@pytest.mark.parametrize("need", [PUBLIC, READ, GENERATE, ADMIN])
def test_each_route_refuses_the_scope_below_and_admits_its_own(served: Served, need: str) -> None:
    routes = sorted(r for r in walk(served.app) if EXPECTED.get(r) == need)
    assert routes, f"no {need} routes?"
    wrong: list[str] = []
    with httpx2.Client(base_url=served.base_url, timeout=30) as c:
        for method, template in routes:
            path = concrete(template)
            if need == PUBLIC:
                got = _status(c, method, path, {})
                if got in (401, 403):
                    wrong.append(f"{method} {template}: {got} without a credential")
                continue
            below = BELOW[need]
            got = _status(c, method, path, served.headers(below))
            refused = 401 if below is None else 403
            if got != refused:
                wrong.append(f"{method} {template}: {got} for {below or 'no credential'}")
            if method == "POST" and template == "/ui/logout":
                continue  # a bearer request has no session to end, but keep the walk pure
            got = _status(c, method, path, served.headers(need))
            if got in (401, 403):
                wrong.append(f"{method} {template}: {got} for a {need} token")
    assert wrong == [], "\n".join(wrong)
