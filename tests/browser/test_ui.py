"""The web UI in Chromium: submit and watch a job, toasts, cancel, an error
boundary, gallery search; a screenshot of every page goes to artifacts/."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx2
import pytest
from playwright.sync_api import Page, Route, expect
from tests.browser.conftest import TASK_S, UiServer

pytestmark = pytest.mark.browser
Shot = Callable[[Page, str], Path]
TERMINAL = ("succeeded", "failed", "canceled")


def api_job(server: UiServer, prompt: str, *, wait: bool = True) -> str:
    """Queue a FLUX job through the API (the test's own client, not the UI)."""
    with httpx2.Client(base_url=server.base_url, timeout=30) as client:
        r = client.post(
            "/api/generate",
            json={"backend": "flux", "params": {"model": "flux-dev", "prompt": prompt}},
        )
        assert r.status_code == 202, r.text
        job_id: str = r.json()["id"]
        if wait:
            deadline = time.monotonic() + 30
            while True:
                j = client.get(f"/api/jobs/{job_id}").json()
                if (
                    j["status"] in ("succeeded", "failed", "canceled")
                    or time.monotonic() > deadline
                ):
                    break
                time.sleep(0.1)
            assert j["status"] == "succeeded", j
        return job_id


def wait_for_visible_images(page: Page) -> None:
    """Until every image in the viewport has loaded (lazy ones below it may wait)."""
    page.wait_for_function(
        """() => [...document.images].every(
            (i) => (i.complete && i.naturalWidth > 0) || i.getBoundingClientRect().top > innerHeight
        )"""
    )


def test_submit_watch_progress_and_see_the_image(page: Page, shot: Shot) -> None:
    page.goto("/ui/generate?backend=flux&model=flux-dev")
    shot(page, "generate")
    page.fill("#f-prompt", "a lighthouse at dusk, oil painting")
    page.fill("#f-width", "512")
    page.fill("#f-height", "512")
    page.click("#submit-button")
    page.wait_for_url(re.compile(r"/ui/jobs/[0-9a-f-]{36}$"))
    # The toast the form left for this page.
    expect(page.get_by_role("status").filter(has_text="queued on flux")).to_be_visible()
    # The bar moves: some value strictly between 0 and 100 shows up live.
    page.wait_for_function(
        """() => {
            const bar = document.querySelector('#job-panel [role=progressbar]');
            const v = bar ? Number(bar.getAttribute('aria-valuenow')) : 0;
            return v > 0 && v < 100;
        }""",
        timeout=TASK_S * 4 * 1000,
    )
    seen_midway = page.get_attribute("#job-panel [role=progressbar]", "aria-valuenow")
    shot(page, "job-running")
    image = page.locator("#job-panel .outputs img")
    expect(image).to_be_visible(timeout=TASK_S * 6 * 1000)
    expect(page.locator("#job-panel .badge.status-succeeded")).to_be_visible()
    expect(page.locator("#job-panel [role=progressbar]")).to_have_attribute("aria-valuenow", "100")
    assert seen_midway is not None and 0 < int(seen_midway) < 100
    # The image really loaded (decoded, with a size).
    assert page.evaluate("img => img.complete && img.naturalWidth > 0", image.element_handle())
    expect(page.get_by_role("status").filter(has_text="succeeded.")).to_be_visible()
    expect(page.locator("#timeline-panel .timeline")).to_contain_text("succeeded")
    shot(page, "job")


def test_failure_toast_while_elsewhere(page: Page, ui_server: UiServer, shot: Shot) -> None:
    page.goto("/ui/")
    expect(page.locator("#live-status.on")).to_be_attached()
    job_id = api_job(ui_server, "this one breaks [error]", wait=False)
    alert = page.get_by_role("alert").filter(has_text=f"Job {job_id[:8]} failed:")
    expect(alert).to_be_visible(timeout=TASK_S * 6 * 1000)
    expect(alert).to_contain_text("Details")
    shot(page, "toast-failure")
    alert.get_by_role("button", name="Dismiss").click()
    expect(alert).to_have_count(0)


def test_success_toast_while_elsewhere(page: Page, ui_server: UiServer) -> None:
    page.goto("/ui/settings")
    expect(page.locator("#live-status.on")).to_be_attached()
    job_id = api_job(ui_server, "a quiet harbour", wait=False)
    toast = page.get_by_role("status").filter(has_text=f"Job {job_id[:8]} succeeded.")
    expect(toast).to_be_visible(timeout=TASK_S * 6 * 1000)
    expect(toast.get_by_role("link", name="View")).to_have_attribute("href", f"/ui/jobs/{job_id}")


def test_cancel_a_running_job(page: Page, ui_server: UiServer, shot: Shot) -> None:
    ui_server.fake.config.task_duration_s = 60.0
    try:
        job_id = api_job(ui_server, "a very slow painting", wait=False)
        page.goto("/ui/jobs")
        row = page.locator(f"tr[data-job='{job_id}']")
        expect(row.locator(".badge.status-running")).to_be_visible(timeout=10_000)
        shot(page, "jobs")
        row.get_by_role("button", name="Cancel").click()
        short = job_id[:8]
        outcome = re.compile(rf"Cancel requested for job {short}\.|Job {short} canceled\.")
        expect(page.get_by_role("status").filter(has_text=outcome)).to_be_visible()
        # ...and the server-wide stream's notice once the worker has stopped it.
        expect(
            page.get_by_role("status").filter(has_text=f"Job {short} was canceled.")
        ).to_be_visible()
        # The table updates itself, without a reload.
        expect(row.locator(".badge.status-canceled")).to_be_visible(timeout=10_000)
        expect(row.get_by_role("button", name="Retry")).to_be_visible()
    finally:
        ui_server.fake.config.task_duration_s = TASK_S


def test_a_failing_panel_shows_its_error_and_the_rest_works(page: Page, shot: Shot) -> None:
    def fail(route: Route) -> None:
        route.fulfill(status=500, headers={"X-Request-ID": "rid-panel-500"}, body="boom")

    page.route("**/ui/panels/queue*", fail)
    page.goto("/ui/")
    queue = page.locator("#queue-panel")
    error = queue.locator(".panel-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("HTTP 500")
    expect(error).to_contain_text("rid-panel-500")
    expect(
        page.locator(".toast[role=alert]").filter(has_text="Queue could not be loaded")
    ).to_be_visible()
    # The other panels load and work.
    expect(page.locator("#backends-panel .backend-list")).to_contain_text("flux")
    expect(page.locator("#recent-panel .panel-error")).to_be_hidden()
    shot(page, "dashboard-panel-error")
    # Once the server answers again, Retry heals the panel.
    page.unroute("**/ui/panels/queue*")
    error.get_by_role("button", name="Retry").click()
    expect(error).to_be_hidden()
    expect(queue.locator(".stats")).to_be_visible()
    page.get_by_role("link", name="Generate", exact=True).click()
    expect(page.locator("#generate-form")).to_be_visible()


def test_field_errors_come_from_the_api(page: Page) -> None:
    page.goto("/ui/generate?backend=flux&model=flux-dev")
    page.fill("#f-width", "300")  # not a multiple of 32
    page.click("#submit-button")
    error = page.locator("#err-width")
    expect(error).to_be_visible()
    expect(error).to_contain_text("multiple of 32")
    expect(page.locator("#f-width")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_role("alert").filter(has_text="1 field(s) need attention")).to_be_visible()
    assert page.url.endswith("/ui/generate?backend=flux&model=flux-dev")


def test_gallery_search(page: Page, ui_server: UiServer, shot: Shot) -> None:
    api_job(ui_server, "a zebra crossing the savanna")
    api_job(ui_server, "a teapot on a table")
    page.goto("/ui/gallery")
    tiles = page.locator("#gallery-panel .tile")
    expect(tiles.filter(has_text="teapot")).to_have_count(1)
    page.fill("input[name=q]", "zebra")
    expect(tiles.filter(has_text="teapot")).to_have_count(0)
    expect(tiles.filter(has_text="zebra")).to_have_count(1)
    assert "q=zebra" in page.url
    thumb = tiles.first.locator("img")
    expect(thumb).to_have_attribute("loading", "lazy")
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=thumb.element_handle()
    )
    shot(page, "gallery")
    tiles.first.locator("a.tile-link").click()
    expect(page.locator("#lightbox img")).to_be_visible()


@pytest.fixture(scope="module")
def finished_job(ui_server: UiServer) -> str:
    return api_job(ui_server, "a red bicycle")


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_page_renders(page: Page, finished_job: str, shot: Shot, scheme: str) -> None:
    """Each page loads with its panels and without a panel error, in both themes."""
    page.emulate_media(color_scheme=scheme)  # type: ignore[arg-type]
    suffix = "" if scheme == "light" else "-dark"
    for name, path, ready in [
        ("dashboard", "/ui/", "#recent-panel .tile"),
        ("jobs", "/ui/jobs", "#jobs-panel table"),
        ("backends", "/ui/backends", "#templates-panel table"),
        ("settings", "/ui/settings", "table.settings"),
        ("generate", "/ui/generate?backend=svd", "#generate-form"),
        ("gallery", "/ui/gallery", "#gallery-panel .tile"),
    ]:
        page.goto(path)
        expect(page.locator(ready).first).to_be_visible()
        expect(page.locator(".panel-error:visible")).to_have_count(0)
        wait_for_visible_images(page)
        if scheme == "light" and name in ("jobs", "gallery", "generate"):
            continue  # light screenshots of these come from the tests above
        shot(page, name + suffix)
    page.goto("/ui/jobs/no-such-job")
    expect(page.locator(".error-page")).to_contain_text("404")
    expect(page.locator(".error-page .request-id")).not_to_be_empty()
    shot(page, "error-404" + suffix)


def test_ignite_renders_its_checks(page: Page, shot: Shot) -> None:
    page.goto("/ui/backends")
    page.get_by_role("button", name="Ignite: check everything").click()
    table = page.locator("#ignite-panel table")
    expect(table).to_be_visible(timeout=20_000)
    expect(table.locator("tr[data-component='database']")).to_contain_text("ok")
    shot(page, "backends-ignite")


def test_use_as_input_and_pick_an_output(page: Page, ui_server: UiServer, shot: Shot) -> None:
    """From a job's image to an SVD job: the image input is prefilled with the
    output reference; the picker dialog can choose another; the result plays."""
    first = api_job(ui_server, "a sailing boat")
    page.goto(f"/ui/jobs/{first}")
    page.get_by_role("link", name="Use as input: animate").click()
    page.wait_for_url(re.compile(r"/ui/generate\?backend=svd"))
    expect(page.locator("#f-init_image")).to_have_value(f"output:{first}/0")
    expect(page.locator(".image-preview img")).to_be_visible()
    # Pick another output in the dialog instead.
    second = api_job(ui_server, "a hot air balloon")
    page.get_by_role("button", name="Pick an output or asset…").click()
    dialog = page.locator("#picker")
    choice = dialog.locator(f"[data-pick-value='output:{second}/0']")
    expect(choice).to_be_visible()
    shot(page, "generate-picker")
    choice.click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#f-init_image")).to_have_value(f"output:{second}/0")
    page.fill("#f-frames", "4")
    page.fill("#f-width", "256")
    page.fill("#f-height", "256")
    page.click("#submit-button")
    page.wait_for_url(re.compile(r"/ui/jobs/[0-9a-f-]{36}$"))
    expect(page.locator("#job-panel .badge.status-succeeded")).to_be_visible(timeout=30_000)
    output = page.locator("#job-panel .outputs img, #job-panel .outputs video").first
    expect(output).to_be_visible()
    expect(page.locator("dl.params")).to_contain_text("input:")
    shot(page, "job-svd")


def test_text_outputs_show_as_code(page: Page, ui_server: UiServer, shot: Shot) -> None:
    page.goto("/ui/generate?backend=v0&model=v0-1.5-md")
    page.fill("#f-prompt", "a pricing page with three plans")
    page.click("#submit-button")
    page.wait_for_url(re.compile(r"/ui/jobs/[0-9a-f-]{36}$"))
    code = page.locator("#job-panel pre.code code").first
    expect(code).to_be_visible(timeout=30_000)
    expect(code).not_to_be_empty()
    expect(page.locator("#job-panel a[download]").first).to_be_visible()
    shot(page, "job-text")


def test_a_dropped_stream_and_a_script_error_stay_in_their_panel(
    page: Page, ui_server: UiServer, shot: Shot
) -> None:
    ui_server.fake.config.task_duration_s = 60.0
    try:
        job_id = api_job(ui_server, "a job whose stream breaks", wait=False)
        events = f"**/api/jobs/{job_id}/events*"
        # 1. The job's live stream answers 500: the status panel says so, with a toast.
        page.route(events, lambda route: route.fulfill(status=500, body="down"))
        page.goto(f"/ui/jobs/{job_id}")
        error = page.locator("#job-panel .panel-error")
        expect(error).to_contain_text("Live updates for this job were interrupted")
        expect(page.locator(".toast[role=alert]").filter(has_text="interrupted")).to_be_visible()
        expect(page.locator("#timeline-panel .timeline")).to_be_visible()  # unaffected
        expect(page.locator("#timeline-panel .panel-error")).to_be_hidden()
        shot(page, "job-stream-dropped")
        # 2. A malformed event makes the panel's own script throw: caught, shown there.
        page.unroute(events)
        bad = "event: transition\ndata: {not json\n\n"
        page.route(
            events,
            lambda route: route.fulfill(status=200, content_type="text/event-stream", body=bad),
        )
        page.reload()
        expect(page.locator(".toast[role=alert]").filter(has_text="JSON")).to_be_visible()
        expect(page.locator("#job-panel")).to_have_class(re.compile("has-error"))
        expect(page.locator("#timeline-panel .panel-error")).to_be_hidden()
        # The rest of the page still works: cancel the job from its button.
        page.unroute(events)
        page.locator(".page-head").get_by_role("button", name="Cancel").click()
        expect(
            page.get_by_role("status").filter(has_text=f"Job {job_id[:8]} was canceled.")
        ).to_be_visible()
    finally:
        ui_server.fake.config.task_duration_s = TASK_S


def test_upload_an_image_input(page: Page, tmp_path: Path) -> None:
    from PIL import Image

    picture = tmp_path / "input.png"
    Image.new("RGB", (64, 48), (200, 40, 90)).save(picture)
    page.goto("/ui/generate?backend=flux&model=flux-kontext-pro")
    page.fill("#f-prompt", "make it blue")
    page.set_input_files("input[data-upload='f-input_image']", str(picture))
    expect(page.locator("#f-input_image")).to_have_value(re.compile(r"^data:image/png;base64,"))
    expect(page.locator("[data-image-for='input_image'] .image-preview img")).to_be_visible()
    page.click("#submit-button")
    page.wait_for_url(re.compile(r"/ui/jobs/[0-9a-f-]{36}$"))
    expect(page.locator("#job-panel .badge.status-succeeded")).to_be_visible(
        timeout=TASK_S * 6 * 1000
    )
