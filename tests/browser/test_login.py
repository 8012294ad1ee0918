"""The web UI with authentication on, in Chromium: a page asked for without a session
shows the login form; a wrong token is refused in place; the right one lands on the
page first asked for; the session's requests (a cancel through the page's script) carry
the CSRF token; logging out ends the session."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
from playwright.sync_api import Browser, Page, expect

from orchestrator.api.app import create_app
from orchestrator.auth_service import SESSION_COOKIE, Tokens
from orchestrator.config import Settings, env_name, load_settings
from orchestrator.db.engine import open_database
from orchestrator.db.tokens import TokenRepo
from orchestrator.domain.auth import Scope
from orchestrator.testing.serve import serve_in_thread

pytestmark = pytest.mark.browser


@dataclass
class Closed:
    base_url: str
    secret: str


async def _token(db_url: str) -> str:
    db = await open_database(db_url)
    try:
        made = await Tokens(TokenRepo(db), session_ttl_s=3600).create("ui tester", Scope.GENERATE)
    finally:
        await db.dispose()
    return made.secret


@pytest.fixture(scope="module")
def closed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Closed]:
    root = tmp_path_factory.mktemp("ui-auth")
    with pytest.MonkeyPatch.context() as mp:
        for name in Settings.model_fields:
            mp.delenv(env_name(name), raising=False)
            mp.delenv(name.upper(), raising=False)
        config = root / "orchestrator.toml"
        mp.setenv("ORCHESTRATOR_CONFIG", str(config))
        settings = load_settings(
            config, {"data_dir": root / "data", "demo_mode": "on", "worker_enabled": False}
        )
        # Playwright's loop runs in this thread: make the token in another.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            secret = pool.submit(asyncio.run, _token(settings.db_url)).result()
        with serve_in_thread(create_app(settings), lifespan="on") as served:
            yield Closed(served.base_url, secret)


@pytest.fixture
def anon_page(browser: Browser, closed_server: Closed) -> Iterator[Page]:
    context = browser.new_context(
        base_url=closed_server.base_url, viewport={"width": 1280, "height": 900}
    )
    context.set_default_timeout(15_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert not errors, f"uncaught script errors: {errors}"


def test_log_in_act_and_log_out(
    anon_page: Page, closed_server: Closed, shot: Callable[[Page, str], Path]
) -> None:
    page = anon_page
    with httpx2.Client(
        base_url=closed_server.base_url,
        headers={"Authorization": f"Bearer {closed_server.secret}"},
        timeout=30,
    ) as api:
        job = api.post(
            "/api/generate",
            json={"backend": "flux", "params": {"model": "flux-dev", "prompt": "a heron"}},
        ).json()
        first = page.goto(f"/ui/jobs/{job['id']}")
        assert first is not None and first.status == 401
        expect(page.get_by_role("heading", name="Log in")).to_be_visible()
        shot(page, "auth-login")

        page.get_by_label("API token").fill("orch_not-a-real-token-at-all")
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("alert")).to_contain_text("not valid")
        shot(page, "auth-login-refused")

        page.get_by_label("API token").fill(closed_server.secret)
        page.get_by_role("button", name="Log in").click()
        expect(page).to_have_url(f"{closed_server.base_url}/ui/jobs/{job['id']}")
        expect(page.get_by_title("Signed in")).to_have_text("ui tester")
        cookie = next(c for c in page.context.cookies() if c["name"] == SESSION_COOKIE)
        assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"

        page.get_by_role("button", name="Cancel").first.click()
        expect(page.get_by_role("status").filter(has_text="canceled").first).to_be_visible()
        assert api.get(f"/api/jobs/{job['id']}").json()["status"] == "canceled"
        shot(page, "auth-signed-in-cancel")

        page.get_by_role("button", name="Log out").click()
        expect(page.get_by_role("heading", name="Log in")).to_be_visible()
        assert not [c for c in page.context.cookies() if c["name"] == SESSION_COOKIE]
        again = page.goto("/ui/")
        assert again is not None and again.status == 401
