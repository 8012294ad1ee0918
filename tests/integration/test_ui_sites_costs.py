"""The Sites and Costs pages on a real server (demo ComfyUI, fake FLUX): an imported
synthetic Tilda export browsed through every page and panel, imported-image
thumbnails, the picker's assets source, the v0 and "use as input" prefills, the
friendly 404s; cost totals, budgets and token names."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from tests.conftest import TEST_KEY

from orchestrator.api.app import create_app
from orchestrator.config import Settings
from orchestrator.domain.auth import Scope
from orchestrator.runtime import open_runtime
from orchestrator.testing import tilda_export as te
from orchestrator.testing.fake_bfl import FakeBfl
from orchestrator.testing.serve import ServedApp, serve_in_thread

HTML = {"Accept": "text/html"}


@dataclass
class Server:
    client: httpx2.Client
    settings: Settings


@pytest.fixture
def server(
    make_settings: Callable[..., Settings],
    fake_bfl: tuple[FakeBfl, ServedApp],
    tmp_path: Path,
) -> Iterator[Server]:
    _fake, bfl = fake_bfl
    export = tmp_path / "export"
    te.build_export(export)
    settings = make_settings(
        demo_mode="on",
        bfl_api_key=TEST_KEY,
        flux_base_url=bfl.base_url,
        tilda_dump_path=export,
        lease_s=30.0,
    )
    with (
        serve_in_thread(create_app(settings), lifespan="on") as served,
        httpx2.Client(base_url=served.base_url, timeout=60) as client,
    ):
        yield Server(client, settings)


def imported(s: Server) -> dict[str, Any]:
    """Import TILDA_DUMP_PATH (no body) and wait for the run."""
    r = s.client.post("/api/tilda/import")
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 60
    while True:
        run: dict[str, Any] = s.client.get(r.headers["location"]).json()
        if run["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert run["status"] == "succeeded", run
    return run


def html(s: Server, path: str) -> str:
    r = s.client.get(path, headers=HTML)
    assert r.status_code == 200, (path, r.text[:500])
    assert r.headers["content-type"].startswith("text/html"), path
    return r.text


def test_sites_pages_and_panels(server: Server) -> None:
    s = server
    assert "No site imported yet" in html(s, "/ui/panels/sites")
    assert "No site imported yet" in html(s, "/ui/panels/pick-assets")
    page = html(s, "/ui/sites")
    assert 'id="import-form"' in page and 'id="import-default"' in page  # one-click import
    nav = [x.split('"')[0] for x in page.split('<li><a href="')[1:]]
    assert nav.index("/ui/sites") == nav.index("/ui/backends") - 1
    assert nav.index("/ui/costs") == nav.index("/ui/settings") - 1

    run = imported(s)
    imports = html(s, "/ui/panels/tilda-imports")
    assert "7 pages: 7 added, 0 changed, 0 removed, 0 unchanged" in imports
    sites = s.client.get("/api/tilda/sites").json()
    site_id = sites[0]["id"]
    assert run["site_id"] == site_id
    assert te.DOMAIN in html(s, "/ui/panels/sites")
    html(s, f"/ui/sites?site={site_id}&q=eco")

    listing = html(s, f"/ui/panels/site-pages?site={site_id}")
    assert "1\u20137 of 7" in listing and "data-offset" not in listing
    assert "shop" in html(s, "/ui/panels/site-pages?q=eco+spray")
    assert "No page matches" in html(s, "/ui/panels/site-pages?q=zzz-nothing")
    first = html(s, "/ui/panels/site-pages?offset=0&site=" + site_id)
    assert first.count('<tr data-page="') == 7

    pages = s.client.get("/api/tilda/pages", params={"q": "regular"}).json()["items"]
    home = next(p for p in pages if p["is_home"])
    detail = html(s, f"/ui/sites/pages/{home['id']}")
    assert "Example Cleaning — spotless homes" in detail
    assert f"/ui/generate?backend=v0&amp;site_page_id={home['id']}" in detail
    assert "cleaning, home, office" in detail  # keywords
    blocks = html(s, f"/ui/panels/site-page/{home['id']}/blocks")
    # Texts keep their line breaks (shown with white-space: pre-line).
    assert "We clean homes and offices.\nSince 2015." in blocks
    assert blocks.count('data-layout="header"') == 1 and blocks.count('data-layout="footer"') == 1
    assert "T181" in blocks and "/services/regular-cleaning" in blocks
    images = html(s, f"/ui/panels/site-page/{home['id']}/images")
    api_page = s.client.get(f"/api/tilda/pages/{home['id']}").json()
    cover = api_page["images"][0]["id"]
    assert f'src="/ui/asset-thumbs/{cover}"' in images and 'loading="lazy"' in images
    assert f"/ui/generate?backend=svd&amp;image=asset:{cover}" in images

    # "Use as input" and "generate page code with v0" land on prefilled forms.
    svd = html(s, f"/ui/generate?backend=svd&image=asset:{cover}")
    assert f'value="asset:{cover}"' in svd
    v0 = html(s, f"/ui/generate?backend=v0&site_page_id={home['id']}")
    assert f'name="site_page_id" id="f-site_page_id" value="{home["id"]}"' in v0
    assert 'data-source="/ui/panels/pick-assets"' in v0  # the picker's assets tab

    # The picker's source: newest, by site, by page, by text.
    newest = html(s, "/ui/panels/pick-assets")
    assert newest.count('data-pick-value="asset:') == sites[0]["asset_count"] > 3
    by_site = html(s, f"/ui/panels/pick-assets?site={site_id}")
    assert "data-picker-select" in by_site
    by_page = html(s, f"/ui/panels/pick-assets?site={site_id}&page={home['id']}")
    assert by_page.count('data-pick-value="asset:') == len(api_page["images"])
    assert f'data-pick-value="asset:{cover}"' in by_page
    assert "No imported image matches" in html(s, "/ui/panels/pick-assets?q=zzz-nothing")
    assert "product_0" in html(s, "/ui/panels/pick-assets?q=product_0")


def test_asset_thumbnails_are_made_once(server: Server) -> None:
    s = server
    imported(s)
    page = s.client.get("/api/tilda/pages", params={"q": "spotless"}).json()["items"][0]
    asset = s.client.get(f"/api/tilda/pages/{page['id']}").json()["images"][0]
    r = s.client.get(f"/ui/asset-thumbs/{asset['id']}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
    assert "immutable" in r.headers["cache-control"]
    cached = list((s.settings.data_path / "thumbs").rglob(f"{asset['sha256']}-*.webp"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    assert s.client.get(f"/ui/asset-thumbs/{asset['id']}").content == r.content
    assert cached[0].stat().st_mtime_ns == stamp
    assert s.client.get("/ui/asset-thumbs/0123abcd").status_code == 404


def test_unknown_site_page_is_a_friendly_404(server: Server) -> None:
    r = server.client.get("/ui/sites/pages/no-such-page", headers={**HTML, "X-Request-ID": "rid-s"})
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("text/html")
    assert "rid-s" in r.text and "no imported page" in r.text and "Traceback" not in r.text
    panel = server.client.get("/ui/panels/site-page/no-such-page/blocks", headers=HTML)
    assert panel.status_code == 404


def _flux_job(s: Server, prompt: str) -> dict[str, Any]:
    r = s.client.post(
        "/api/generate",
        json={"backend": "flux", "params": {"model": "flux-dev", "prompt": prompt}},
    )
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 30
    while True:
        job: dict[str, Any] = s.client.get(f"/api/jobs/{r.json()['id']}").json()
        if job["status"] in ("succeeded", "failed", "canceled") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert job["status"] == "succeeded", job
    return job


def test_costs_page_totals_budgets_and_token_names(server: Server) -> None:
    s = server
    job = _flux_job(s, "a costly lighthouse")
    cost = job["cost"]
    assert cost and cost > 0
    assert f"cost <span data-job-cost>{cost:g}</span> credits" in html(
        s, f"/ui/panels/job/{job['id']}"
    )
    assert "estimate" in html(s, f"/ui/panels/job/{job['id']}")
    assert f'<td class="num">{cost:g}</td>' in html(s, "/ui/panels/jobs")

    page = html(s, "/ui/costs")
    assert 'id="costs-panel"' in page and 'id="budgets-panel"' in page
    assert "No API tokens yet" in page  # the admin form, without a token to pick
    by_day = html(s, "/ui/panels/costs")
    assert f"data-cost-total>{cost:g}<" in by_day
    assert by_day.count('class="bar"') == 30  # one bar per day of the default range
    by_backend = html(s, "/ui/panels/costs?by=backend")
    assert "<td>flux</td>" in by_backend and f'<td class="num">{cost:g}</td>' in by_backend
    assert "<td>flux-dev</td>" in html(s, "/ui/panels/costs?by=model")
    assert "no token (local or auth disabled)" in html(s, "/ui/panels/costs?by=token")
    week = html(s, "/ui/panels/costs?since=2020-01-01&until=2020-01-07")
    assert week.count('class="bar"') == 7 and "No jobs in this range" in week

    bad = s.client.get("/ui/panels/costs?since=yesterday", headers=HTML)
    assert bad.status_code == 422 and "2026-01-31" in bad.text
    backwards = s.client.get("/ui/panels/costs?since=2020-02-01&until=2020-01-01", headers=HTML)
    assert backwards.status_code == 422

    token = s.client.post("/api/tokens", json={"name": "ci-bot", "scope": "generate"}).json()
    token_id = token["token"]["id"]
    assert "ci-bot" in html(s, "/ui/costs")  # offered in the budget form
    r = s.client.put(f"/api/budgets/tokens/{token_id}", json={"daily_limit": 50})
    assert r.status_code == 200, r.text
    budgets = html(s, "/ui/panels/budgets")
    assert "Global (DAILY_BUDGET)" in budgets and "ci-bot" in budgets
    assert f'data-token="{token_id}"' in budgets and "limit 50" in budgets


def test_costs_page_for_a_read_token(make_settings: Callable[..., Settings]) -> None:
    """A read token sees totals and budgets, without the admin form or other names."""
    settings = make_settings(demo_mode="on", auth_disabled=False)
    with (
        serve_in_thread(create_app(settings), lifespan="on") as served,
        httpx2.Client(base_url=served.base_url, timeout=30) as client,
    ):

        async def make_token() -> str:
            async with open_runtime(settings, run_worker=False) as rt:
                made = await rt.service.tokens.create("viewer", Scope.READ)
                return made.secret

        secret = asyncio.run(make_token())
        auth = {"Authorization": f"Bearer {secret}", **HTML}
        page = client.get("/ui/costs", headers=auth)
        assert page.status_code == 200, page.text[:300]
        assert "budget-form" not in page.text
        assert client.get("/ui/panels/budgets", headers=auth).status_code == 200
        assert client.get("/ui/panels/costs?by=token", headers=auth).status_code == 200
        sites = client.get("/ui/sites", headers=auth)
        assert sites.status_code == 200 and 'id="import-form"' not in sites.text
        assert "Importing needs an admin token" in sites.text
        assert client.get("/ui/costs", headers=HTML).status_code == 401
