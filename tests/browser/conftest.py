"""Browser tests: a real ``orchestrator`` server (fake FLUX served on a port,
simulated ComfyUI) driven by Debian's Chromium through Playwright. Never
downloads a browser: without Chromium the tests fail under CI=true and are
skipped elsewhere, with the reason."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from orchestrator.api.app import create_app
from orchestrator.config import Settings, env_name, load_settings
from orchestrator.testing.fake_bfl import FakeBfl, FakeBflConfig
from orchestrator.testing.serve import serve_in_thread

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; see .ci/run
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
KEY = "bfl-browser-test-key-0123456789"
TASK_S = 2.5  # how long a FLUX task takes on the fake: long enough to watch it move
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"


@dataclass
class UiServer:
    base_url: str
    fake: FakeBfl
    settings: Settings


@pytest.fixture(scope="session")
def chromium_path() -> Path:
    if not CHROMIUM.is_file():
        reason = (
            f"Chromium is not installed at {CHROMIUM} (Debian: apt-get install chromium); "
            "the browser tests never download a browser"
        )
        if IN_CI:
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiServer]:
    """One server per test module, with FLUX on a fake whose task length tests may
    change, and the simulated ComfyUI of demo mode."""
    root = tmp_path_factory.mktemp("ui")
    fake = FakeBfl(FakeBflConfig(api_keys={KEY}, task_duration_s=TASK_S, poll_retry_after_s=0))
    with pytest.MonkeyPatch.context() as mp:
        for name in Settings.model_fields:
            mp.delenv(env_name(name), raising=False)
            mp.delenv(name.upper(), raising=False)
        config = root / "orchestrator.toml"
        mp.setenv("ORCHESTRATOR_CONFIG", str(config))
        with serve_in_thread(fake.app) as bfl:
            fake.public_base_url = bfl.base_url
            settings = load_settings(
                config,
                {
                    "data_dir": root / "data",
                    "demo_mode": "on",  # ComfyUI simulated; FLUX is the fake above
                    "auth_disabled": True,
                    "bfl_api_key": KEY,
                    "flux_base_url": bfl.base_url,
                    "flux_poll_interval_s": 0.1,
                    "worker_poll_interval_s": 0.05,
                    "lease_s": 10.0,
                    "http_connect_timeout_s": 2.0,
                    "http_read_timeout_s": 10.0,
                },
            )
            with serve_in_thread(create_app(settings), lifespan="on") as served:
                yield UiServer(served.base_url, fake, settings)


@pytest.fixture(scope="module")  # closed before other modules' asyncio tests run
def browser(chromium_path: Path) -> Iterator[Browser]:

    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=str(chromium_path), headless=True, args=CHROMIUM_ARGS
        )
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser, ui_server: UiServer) -> Iterator[Page]:
    """A fresh browser context (cookies, storage) on the test server; script errors
    fail the test."""
    context = browser.new_context(
        base_url=ui_server.base_url, viewport={"width": 1280, "height": 900}
    )
    context.set_default_timeout(15_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert not errors, f"uncaught script errors: {errors}"


@pytest.fixture
def shot() -> Callable[[Page, str], Path]:
    """``shot(page, name)`` saves a full-page screenshot as a test artifact."""
    return screenshot


def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
