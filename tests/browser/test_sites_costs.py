"""The Sites and Costs pages in Chromium: import a synthetic Tilda export from the
page and watch it, browse to a page's blocks and images, animate an imported
image with SVD, pick an imported image in the Generate form, read a FLUX job's
cost, and set a token budget (and see a bad value refused)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from playwright.sync_api import Page, expect
from tests.browser.conftest import UiServer
from tests.browser.test_ui import api_job

from orchestrator.testing import tilda_export as te

pytestmark = pytest.mark.browser
Shot = Callable[[Page, str], Path]
HOME_TITLE = "Example Cleaning — spotless homes"
ZIP_NAME = f"project{te.PROJECT_ID}.zip"


def wait_for_shown_images(page: Page) -> None:
    """Until every image shown in the viewport has loaded (lazy ones below it, or in
    a closed <details>, may wait)."""
    page.wait_for_function(
        """() => [...document.images].every((i) => {
            if (!i.checkVisibility()) return true;
            const top = i.getBoundingClientRect().top;
            return (i.complete && i.naturalWidth > 0) || top > innerHeight;
        })"""
    )


@pytest.fixture(scope="module")
def export_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tilda")
    te.build_export(root / "export")
    return te.zip_folder(root / "export", root / ZIP_NAME, top=f"project{te.PROJECT_ID}")


@pytest.fixture
def site(ui_server: UiServer, export_zip: Path) -> dict[str, Any]:
    """The imported site (imported through the API when no test did it yet)."""
    with httpx2.Client(base_url=ui_server.base_url, timeout=30) as client:
        sites: list[dict[str, Any]] = client.get("/api/tilda/sites").json()
        if not sites:
            r = client.post(
                "/api/tilda/import",
                files={"file": (ZIP_NAME, export_zip.read_bytes(), "application/zip")},
            )
            assert r.status_code == 202, r.text
            while client.get(r.headers["location"]).json()["status"] in ("queued", "running"):
                time.sleep(0.05)
            sites = client.get("/api/tilda/sites").json()
    assert sites, "the import made no site"
    return sites[0]


def test_import_an_export_from_the_sites_page(page: Page, export_zip: Path, shot: Shot) -> None:
    page.goto("/ui/sites")
    expect(page.locator("#sites-panel .panel-body")).not_to_have_attribute("aria-busy", "true")
    # Record every value the progress bar takes.
    page.evaluate(
        """() => {
            window.seen = [];
            const bar = document.getElementById('import-progress');
            new MutationObserver(() => seen.push(Number(bar.getAttribute('aria-valuenow'))))
                .observe(bar, {attributes: true, attributeFilter: ['aria-valuenow']});
        }"""
    )
    page.set_input_files("#import-file", str(export_zip))
    page.get_by_role("button", name="Upload and import").click()
    expect(
        page.get_by_role("status").filter(has_text=f"Import of {ZIP_NAME} started.")
    ).to_be_visible()
    done = page.get_by_role("status").filter(has_text=f"Import of {ZIP_NAME} finished: 7 pages:")
    expect(done).to_be_visible()
    run = page.locator("#import-run")
    expect(run.locator("#import-status")).to_have_text("succeeded")
    expect(run.locator("#import-progress")).to_have_attribute("aria-valuenow", "100")
    expect(run.locator("#import-stage")).to_contain_text("done")
    seen: list[int] = page.evaluate("window.seen")
    assert seen and seen[-1] == 100 and seen == sorted(seen), seen
    if "7 added" in (done.text_content() or ""):  # a first import (not a re-run)
        expect(run.locator("[data-report-key=added]")).to_contain_text(te.HOME_ID)
    expect(run.locator(".import-summary")).to_contain_text("7 pages:")
    # The panels around it refreshed themselves.
    expect(page.locator("#imports-panel li[data-status=succeeded]").first).to_contain_text(ZIP_NAME)
    expect(page.locator("#sites-panel")).to_contain_text(te.DOMAIN)
    expect(page.locator("#pages-panel tr[data-page]")).to_have_count(7)
    shot(page, "sites")


def test_a_broken_upload_fails_visibly(page: Page, tmp_path: Path) -> None:
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 this is not a whole zip file")
    page.goto("/ui/sites")
    page.set_input_files("#import-file", str(broken))
    page.get_by_role("button", name="Upload and import").click()
    alert = page.locator(".toast[role=alert]").filter(has_text="Import of broken.zip failed")
    expect(alert).to_be_visible()
    expect(page.locator("#import-status")).to_have_text("failed")
    expect(page.locator("#import-report .callout.error")).to_contain_text("corrupt_archive")
    expect(page.locator("#imports-panel li[data-status=failed]").first).to_contain_text(
        "broken.zip"
    )


def test_browse_to_a_page_and_see_its_blocks_and_images(
    page: Page, site: dict[str, Any], shot: Shot
) -> None:
    page.goto("/ui/sites")
    page.fill("#pages-filters input[name=q]", "spotless")
    rows = page.locator("#pages-panel tr[data-page]")
    expect(rows).to_have_count(1)
    assert "q=spotless" in page.url
    rows.get_by_role("link", name=HOME_TITLE).click()
    page.wait_for_url(re.compile(r"/ui/sites/pages/[0-9a-f-]+$"))
    expect(page.locator("h1")).to_have_text(HOME_TITLE)
    blocks = page.locator("#blocks-panel")
    text = blocks.locator(".block-text .text").filter(has_text="We clean homes")
    expect(text).to_be_visible()
    # The line breaks of the export are kept on screen.
    assert text.evaluate("el => el.innerText").startswith(
        "We clean homes and offices.\nSince 2015."
    )
    expect(blocks.locator(".block[data-placement=page]")).to_have_count(2)
    expect(blocks.locator("details[data-layout=header]")).to_have_count(1)
    expect(blocks.locator(".badge").filter(has_text="T181")).to_be_visible()
    images = page.locator("#images-panel img")
    expect(images.first).to_have_attribute("loading", "lazy")
    expect(images.first).to_be_visible()
    wait_for_shown_images(page)
    assert images.first.evaluate("i => i.complete && i.naturalWidth > 0")
    expect(page.locator(".panel-error:visible")).to_have_count(0)
    shot(page, "site-page")
    v0 = page.get_by_role("link", name="Generate page code with v0")
    page_id = page.url.rsplit("/", 1)[-1]
    v0.click()
    page.wait_for_url(re.compile(r"/ui/generate\?backend=v0"))
    expect(page.locator("#f-site_page_id")).to_have_value(page_id)


def test_an_imported_image_animated_with_svd(page: Page, site: dict[str, Any]) -> None:
    page.goto(f"/ui/sites?site={site['id']}&q=spotless")
    page.locator("#pages-panel tr[data-page] a").first.click()
    tile = page.locator("#images-panel .asset-tile").first
    asset_id = tile.get_attribute("data-asset")
    tile.get_by_role("link", name="Use as input: animate").click()
    page.wait_for_url(re.compile(r"/ui/generate\?backend=svd"))
    expect(page.locator("#f-init_image")).to_have_value(f"asset:{asset_id}")
    preview = page.locator("[data-image-for=init_image] .image-preview img")
    expect(preview).to_be_visible()
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=preview.element_handle()
    )
    page.fill("#f-frames", "4")
    page.fill("#f-width", "256")
    page.fill("#f-height", "256")
    page.click("#submit-button")
    page.wait_for_url(re.compile(r"/ui/jobs/[0-9a-f-]{36}$"))
    expect(page.locator("#job-panel .badge.status-succeeded")).to_be_visible(timeout=30_000)
    expect(page.locator("#job-panel .outputs img, #job-panel .outputs video").first).to_be_visible()


def test_the_asset_picker_fills_an_image_input(
    page: Page, site: dict[str, Any], shot: Shot
) -> None:
    page.goto("/ui/generate?backend=flux&model=flux-kontext-pro")
    page.locator("[data-pick='f-input_image']").click()
    dialog = page.locator("#picker")
    dialog.get_by_role("tab", name="Imported site images").click()
    expect(dialog.locator("[data-pick-value^='asset:']").first).to_be_visible()
    dialog.get_by_role("button", name=site["name"]).click()
    pick_page = dialog.locator("select[data-picker-select]")
    expect(pick_page).to_be_visible()
    about = pick_page.locator("option", has_text="About us").get_attribute("value")
    pick_page.select_option(about)
    choices = dialog.locator("[data-pick-value^='asset:']")
    expect(choices).to_have_count(3)  # the about page's gallery (a duplicate stored once)
    value = choices.first.get_attribute("data-pick-value")
    shot(page, "generate-asset-picker")
    choices.first.click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#f-input_image")).to_have_value(value or "")
    expect(page.locator("[data-image-for=input_image] .image-preview img")).to_be_visible()


def test_costs_page_and_token_budgets(page: Page, ui_server: UiServer, shot: Shot) -> None:
    job_id = api_job(ui_server, "a lighthouse that costs credits")
    with httpx2.Client(base_url=ui_server.base_url, timeout=30) as client:
        job = client.get(f"/api/jobs/{job_id}").json()
        total = client.get("/api/costs").json()["total"]
        made = client.post("/api/tokens", json={"name": "ci-bot", "scope": "generate"})
        assert made.status_code == 201, made.text
        token_id = made.json()["token"]["id"]
    assert job["cost"] > 0
    page.goto(f"/ui/jobs/{job_id}")
    expect(page.locator("#job-panel [data-job-cost]")).to_have_text(f"{job['cost']:g}")

    page.goto("/ui/costs")
    costs = page.locator("#costs-panel")
    expect(costs.locator("[data-cost-total]")).to_have_text(f"{total:g}")
    expect(costs.locator(".bar")).to_have_count(30)
    page.select_option("#cost-filters select[name=by]", "backend")
    flux = costs.locator("table[data-group=backend] tbody tr").filter(has_text="flux")
    expect(flux).to_be_visible()
    assert "by=backend" in page.url

    form = page.locator("#budget-form")
    form.locator("#budget-token").select_option(token_id)
    form.locator("#budget-limit").fill("25")
    form.get_by_role("button", name="Set budget").click()
    expect(
        page.get_by_role("status").filter(has_text="Budget of ci-bot set to 25 credits per day.")
    ).to_be_visible()
    budget = page.locator(f"#budgets-panel li[data-token='{token_id}']")
    expect(budget).to_contain_text("ci-bot")
    expect(budget).to_contain_text("limit 25")
    expect(budget.locator("[role=progressbar]")).to_be_visible()
    shot(page, "costs")

    # A negative limit: the API's 422, on the field, in the panel and as a toast.
    form.locator("#budget-limit").fill("-5")
    form.get_by_role("button", name="Set budget").click()
    expect(page.locator("#budget-limit-error")).to_contain_text("greater than or equal to 0")
    expect(page.locator("#budget-form-panel .panel-error")).to_contain_text("HTTP 422")
    expect(page.locator(".toast[role=alert]").filter(has_text="Set budget")).to_be_visible()
    expect(budget).to_contain_text("limit 25")  # unchanged

    toasts = page.locator(".toast-close")  # the toasts sit over the form: dismiss them
    while toasts.count():
        toasts.first.click()
    form.get_by_role("button", name="Remove budget").click()
    removed = page.get_by_role("status").filter(has_text="Budget of ci-bot removed.")
    expect(removed).to_be_visible()
    expect(page.locator(f"#budgets-panel li[data-token='{token_id}']")).to_have_count(0)


def test_dark_screenshots(page: Page, site: dict[str, Any], shot: Shot) -> None:
    page.emulate_media(color_scheme="dark")
    page.goto("/ui/sites")
    expect(page.locator("#pages-panel tr[data-page]").first).to_be_visible()
    shot(page, "sites-dark")
    page.locator("#pages-panel tr[data-page]").get_by_role("link", name=HOME_TITLE).click()
    expect(page.locator("#blocks-panel .block[data-placement=page]").first).to_be_visible()
    wait_for_shown_images(page)
    shot(page, "site-page-dark")
    page.goto("/ui/costs")
    expect(page.locator("#costs-panel [data-cost-total]")).to_be_visible()
    expect(page.locator("#budgets-panel .budget").first).to_be_visible()
    expect(page.locator(".panel-error:visible")).to_have_count(0)
    shot(page, "costs-dark")
    page.goto("/ui/sites/pages/no-such-page")
    expect(page.locator(".error-page")).to_contain_text("404")
