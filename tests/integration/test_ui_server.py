"""The web UI's server side on a real server: every page and panel renders against
the demo backends, thumbnails are made once and cached, UI form posts need the
CSRF token, server errors on UI pages are friendly HTML (the API keeps
problem+json), and the server-wide event stream."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
from fastapi import FastAPI
from tests.conftest import TEST_KEY

from orchestrator.api.app import create_app
from orchestrator.config import Settings
from orchestrator.testing.fake_bfl import FakeBfl
from orchestrator.testing.serve import ServedApp, serve_in_thread
from orchestrator.ui import csrf

FakePair = tuple[FakeBfl, ServedApp]
HTML = {"Accept": "text/html"}


@dataclass
class Ui:
    client: httpx2.Client
    settings: Settings


@pytest.fixture
def ui_factory(
    make_settings: Callable[..., Settings], fake_bfl: FakePair
) -> Iterator[Callable[[Callable[[FastAPI], None] | None], Ui]]:
    _fake, bfl = fake_bfl
    stack: list[tuple[object, httpx2.Client]] = []

    def make(customize: Callable[[FastAPI], None] | None = None) -> Ui:
        settings = make_settings(
            demo_mode="on",  # simulated ComfyUI; FLUX is the fake
            auth_disabled=True,
            bfl_api_key=TEST_KEY,
            flux_base_url=bfl.base_url,
        )
        app = create_app(settings)
        if customize is not None:
            customize(app)
        cm = serve_in_thread(app, lifespan="on")
        served = cm.__enter__()
        client = httpx2.Client(base_url=served.base_url, timeout=30)
        stack.append((cm, client))
        return Ui(client, settings)

    yield make
    for cm, client in reversed(stack):
        client.close()
        cm.__exit__(None, None, None)  # type: ignore[attr-defined]


@pytest.fixture
def ui(ui_factory: Callable[[Callable[[FastAPI], None] | None], Ui]) -> Ui:
    return ui_factory(None)


def run_job(ui: Ui, prompt: str) -> str:
    r = ui.client.post(
        "/api/generate",
        json={
            "backend": "flux",
            "params": {"model": "flux-dev", "prompt": prompt, "width": 256, "height": 256},
        },
    )
    assert r.status_code == 202, r.text
    job_id: str = r.json()["id"]
    with ui.client.stream("GET", f"/api/jobs/{job_id}/events") as s:
        for _line in s.iter_lines():
            pass
    assert ui.client.get(f"/api/jobs/{job_id}").json()["status"] == "succeeded"
    return job_id


PAGES = [
    "/ui/",
    "/ui/generate",
    "/ui/generate?backend=svd",
    "/ui/generate?backend=sd35&model=sd35",
    "/ui/generate?backend=comfy&model=raw",
    "/ui/generate?backend=flux&model=flux-kontext-pro&image=output:x/0",
    "/ui/jobs",
    "/ui/jobs?status=failed&backend=flux",
    "/ui/gallery",
    "/ui/gallery?q=cat&backend=flux&model=flux-dev&from=2020-01-01&to=2099-12-31",
    "/ui/backends",
    "/ui/settings",
    "/ui/panels/queue",
    "/ui/panels/backends",
    "/ui/panels/backends?compact=true",
    "/ui/panels/workers",
    "/ui/panels/templates",
    "/ui/panels/recent",
    "/ui/panels/jobs",
    "/ui/panels/gallery?q=cat",
    "/ui/panels/pick-outputs",
]


def test_every_page_and_panel_renders(ui: Ui) -> None:
    job_id = run_job(ui, "a cat on a mat")
    for path in [*PAGES, f"/ui/jobs/{job_id}", f"/ui/panels/job/{job_id}"]:
        r = ui.client.get(path, headers=HTML)
        assert r.status_code == 200, (path, r.text[:500])
        assert r.headers["content-type"].startswith("text/html"), path
    dashboard = ui.client.get("/ui/", headers=HTML).text
    for item in ("Dashboard", "Generate", "Jobs", "Gallery", "Backends", "Settings", "/docs"):
        assert item in dashboard
    assert "Demo mode" in dashboard
    gallery = ui.client.get("/ui/panels/gallery?q=cat", headers=HTML).text
    assert f"/ui/thumbs/{job_id}/0" in gallery and 'loading="lazy"' in gallery
    assert "a cat on a mat" not in ui.client.get("/ui/panels/gallery?q=zebra").text
    assert "a cat on a mat" in ui.client.get("/ui/panels/gallery?model=flux-dev").text
    assert "a cat on a mat" not in ui.client.get("/ui/panels/gallery?model=flux-pro").text
    assert "a cat on a mat" not in ui.client.get("/ui/panels/gallery?backend=sdxl").text
    assert "a cat on a mat" not in ui.client.get("/ui/panels/gallery?to=2020-01-01").text
    timeline = ui.client.get(f"/ui/panels/job/{job_id}/timeline", headers=HTML).text
    assert "succeeded" in timeline
    v0 = ui.client.get("/ui/generate?backend=v0&image=output:x/0", headers=HTML).text
    assert 'value="[&#34;output:x/0&#34;]"' in v0  # a JSON list, safely quoted
    settings_page = ui.client.get("/ui/settings", headers=HTML).text

    assert "BFL_API_KEY" in settings_page and TEST_KEY not in settings_page


def test_root_redirects_to_the_ui(ui: Ui) -> None:
    r = ui.client.get("/")
    assert r.status_code in (302, 307) and r.headers["location"] == "/ui/"


def test_a_page_sets_the_csrf_cookie_and_form_field(ui: Ui) -> None:
    job_id = run_job(ui, "token please")
    r = ui.client.get(f"/ui/jobs/{job_id}", headers=HTML)
    token = r.cookies.get(csrf.CSRF_COOKIE)
    assert token and f'name="csrf_token" value="{token}"' in r.text


def test_thumbnail_made_once_and_cached(ui: Ui) -> None:
    job_id = run_job(ui, "thumb me")
    r = ui.client.get(f"/ui/thumbs/{job_id}/0")
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/webp"
    assert "immutable" in r.headers["cache-control"]
    thumbs = list((ui.settings.data_path / "thumbs").rglob("*.webp"))
    assert len(thumbs) == 1
    first = thumbs[0].stat().st_mtime_ns
    time.sleep(0.05)
    again = ui.client.get(f"/ui/thumbs/{job_id}/0")
    assert again.content == r.content
    assert thumbs[0].stat().st_mtime_ns == first  # served from the cache, not remade
    from PIL import Image

    with Image.open(thumbs[0]) as img:
        assert max(img.size) <= 384
    assert ui.client.get(f"/ui/thumbs/{job_id}/7").status_code == 404


def test_rerun_needs_the_csrf_token(ui: Ui) -> None:
    job_id = run_job(ui, "again please")
    page = ui.client.get(f"/ui/jobs/{job_id}", headers=HTML)
    token = page.cookies[csrf.CSRF_COOKIE]
    url = f"/ui/jobs/{job_id}/rerun"
    # No token, a wrong token, a token without its cookie: refused, nothing queued.
    before = len(ui.client.get("/api/jobs").json()["items"])
    for cookies, data in [
        ({}, {}),
        ({"orch_csrf": token}, {"csrf_token": "x" * 40}),
        ({}, {"csrf_token": token}),
    ]:
        ui.client.cookies.clear()
        for k, v in cookies.items():
            ui.client.cookies.set(k, v)
        r = ui.client.post(url, data=data, headers=HTML)
        assert r.status_code == 403, r.text[:300]
        assert "csrf" in r.text.lower()
    assert len(ui.client.get("/api/jobs").json()["items"]) == before
    ui.client.cookies.clear()
    ui.client.cookies.set(csrf.CSRF_COOKIE, token)
    r = ui.client.post(url, data={"csrf_token": token}, headers=HTML)
    assert r.status_code == 303
    new_id = r.headers["location"].rsplit("/", 1)[-1]
    new = ui.client.get(f"/api/jobs/{new_id}").json()
    old = ui.client.get(f"/api/jobs/{job_id}").json()
    assert new["id"] != job_id and new["params"]["prompt"] == "again please"
    assert new["params"]["seed"] is not None and new["params"]["seed"] != old["params"]["seed"]


def _boom() -> None:
    raise RuntimeError("secret internals 1234")


def test_server_errors_are_friendly_html_on_ui_pages_only(
    ui_factory: Callable[[Callable[[FastAPI], None] | None], Ui],
) -> None:
    def add_failing_routes(app: FastAPI) -> None:
        app.add_api_route("/ui/_test/boom", _boom, include_in_schema=False)
        app.add_api_route("/api/_test/boom", _boom, include_in_schema=False)

    ui = ui_factory(add_failing_routes)
    # uvicorn drops the connection after an unhandled error: one connection each.
    close = {"Connection": "close"}
    r = ui.client.get("/ui/_test/boom", headers={**HTML, **close, "X-Request-ID": "rid-ui-boom"})
    assert r.status_code == 500
    assert r.headers["content-type"].startswith("text/html")
    assert "rid-ui-boom" in r.text and "Internal error" in r.text
    assert "secret internals" not in r.text and "Traceback" not in r.text
    # The API keeps problem+json, also when the client asks for HTML.
    api = ui.client.get("/api/_test/boom", headers={**HTML, **close})
    assert api.status_code == 500
    assert api.headers["content-type"] == "application/problem+json"
    # A missing job on a UI page: an HTML 404 with the request id; JSON clients get a problem.
    page = ui.client.get("/ui/jobs/nope", headers={**HTML, "X-Request-ID": "rid-404"})
    assert page.status_code == 404 and "rid-404" in page.text
    assert page.headers["content-type"].startswith("text/html")
    problem = ui.client.get("/ui/jobs/nope", headers={"Accept": "application/json"})
    assert problem.status_code == 404
    assert problem.headers["content-type"] == "application/problem+json"


def test_server_wide_event_stream(ui: Ui) -> None:
    """GET /api/events: events of every job from now on, resumable by id."""
    seen: list[dict[str, object]] = []
    with ui.client.stream("GET", "/api/events") as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        r2 = ui.client.post(
            "/api/generate",
            json={"backend": "flux", "params": {"model": "flux-dev", "prompt": "watch all"}},
        )
        job_id = r2.json()["id"]
        for line in r.iter_lines():
            if line.startswith("data:"):
                ev = json.loads(line.removeprefix("data:").strip())
                seen.append(ev)
                if ev.get("kind") == "transition" and ev.get("status") == "succeeded":
                    break
    kinds = [e["kind"] for e in seen if e["job_id"] == job_id]
    assert kinds[0] == "created" and "progress" in kinds and kinds[-1] == "transition"
    ids = [int(str(e["id"])) for e in seen]
    assert ids == sorted(ids)
    # Resume after the first event: the rest come again, the first does not.
    with ui.client.stream("GET", "/api/events", params={"after": ids[0]}) as r:
        for line in r.iter_lines():
            if line.startswith("id:"):
                assert int(line.removeprefix("id:").strip()) == ids[1]
                break


def test_ui_files_are_package_data() -> None:
    """Templates and static files live inside the package (installed with it)."""
    import orchestrator.ui

    root = Path(orchestrator.ui.__file__).parent
    assert (root / "templates" / "base.html").is_file()
    assert (root / "static" / "js" / "app.js").is_file()
