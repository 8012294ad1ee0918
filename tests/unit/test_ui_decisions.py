"""The web UI's pure decisions: form widgets from parameter schemas, how outputs
are shown, ages, and the "run again with a new seed" request."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import JsonValue

from orchestrator.domain.jobs import Job, JobStatus
from orchestrator.domain.params import (
    ComfyRawParams,
    FluxDevParams,
    FluxKontextProParams,
    FluxRequest,
    Sd35Params,
    SvdParams,
)
from orchestrator.ui import forms, media, nav, rerun


def _by_name(schema: dict[str, JsonValue]) -> dict[str, forms.FormField]:
    return {f.name: f for f in forms.fields_for(schema)}


@pytest.mark.parametrize(
    ("model", "name", "widget", "extra"),
    [
        (FluxDevParams, "prompt", "textarea", {"required": False, "default": ""}),
        (FluxDevParams, "seed", "seed", {"nullable": True}),
        (FluxDevParams, "width", "integer", {"minimum": 256, "maximum": 1440, "step": "32"}),
        (FluxDevParams, "guidance", "number", {"minimum": 1.5, "maximum": 5, "step": "any"}),
        (FluxDevParams, "output_format", "select", {"options": ("jpeg", "png")}),
        (FluxDevParams, "prompt_upsampling", "checkbox", {"default": False}),
        (FluxDevParams, "image_prompt", "image", {"nullable": True}),
        (FluxKontextProParams, "prompt", "textarea", {"required": True}),
        (FluxKontextProParams, "input_image_2", "image", {"nullable": True}),
        (FluxKontextProParams, "aspect_ratio", "text", {"nullable": True}),
        (SvdParams, "init_image", "image", {"required": True}),
        (SvdParams, "sampler", "select", {"default": "euler"}),
        (Sd35Params, "variant", "select", {"options": ("large", "large-turbo", "medium")}),
        (Sd35Params, "steps", "integer", {"nullable": True, "minimum": 1, "maximum": 150}),
        (ComfyRawParams, "workflow", "json", {"required": True}),
    ],
)
def test_widget_for_each_field(
    model: type, name: str, widget: str, extra: dict[str, object]
) -> None:
    field = _by_name(model.model_json_schema())[name]
    assert field.widget == widget
    for attr, value in extra.items():
        assert getattr(field, attr) == value, attr


@pytest.mark.parametrize("model", [FluxDevParams, SvdParams, Sd35Params, ComfyRawParams])
def test_discriminator_is_not_a_field_and_prompt_comes_first(model: type) -> None:
    fields = forms.fields_for(model.model_json_schema())
    names = [f.name for f in fields]
    assert "model" not in names
    if "prompt" in names:
        assert names[0] == "prompt"


def test_unknown_shapes_fall_back_to_json_and_const_is_skipped() -> None:
    schema: dict[str, JsonValue] = {
        "properties": {
            "fixed": {"const": "x"},
            "mapping": {"type": "object"},
            "choice": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
        },
        "required": ["mapping"],
    }
    fields = _by_name(schema)
    assert set(fields) == {"mapping", "choice"}
    assert fields["mapping"].widget == "json" and fields["mapping"].required
    assert fields["choice"].widget == "text"


@pytest.mark.parametrize(
    ("mime", "path", "kind"),
    [
        ("image/png", "a/0.png", "image"),
        ("image/webp", "a/0.webp", "image"),
        ("image/gif", "a/0.gif", "image"),
        ("video/mp4", "a/0.mp4", "video"),
        ("video/webm; codecs=vp9", "a/0.webm", "video"),
        ("text/markdown", "a/README.md", "text"),
        ("text/plain; charset=utf-8", "a/0.txt", "text"),
        ("application/json", "a/0.json", "text"),
        ("application/octet-stream", "a/page.tsx", "text"),
        ("application/octet-stream", "a/model.bin", "file"),
        ("application/zip", "a/site.zip", "file"),
    ],
)
def test_media_kind(mime: str, path: str, kind: str) -> None:
    assert media.kind(mime, path) == kind


NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("ago", "text"),
    [
        (timedelta(seconds=0), "0 s"),
        (timedelta(seconds=59), "59 s"),
        (timedelta(minutes=5), "5 min"),
        (timedelta(hours=3, minutes=59), "3 h"),
        (timedelta(days=2), "2 d"),
        (timedelta(seconds=-5), "0 s"),  # clock skew never shows a negative age
    ],
)
def test_age(ago: timedelta, text: str) -> None:
    assert media.age(NOW - ago, NOW) == text


@pytest.mark.parametrize(
    ("progress", "pct"), [(None, 0), (0.0, 0), (0.514, 51), (1.0, 100), (1.7, 100), (-1, 0)]
)
def test_pct(progress: float | None, pct: int) -> None:
    assert media.pct(progress) == pct


@pytest.mark.parametrize(
    ("n", "text"), [(0, "0 B"), (1023, "1023 B"), (2048, "2.0 KB"), (5 * 1024**2, "5.0 MB")]
)
def test_human_size(n: int, text: str) -> None:
    assert media.human_size(n) == text


def _job(backend: str, model: str, params: dict[str, JsonValue]) -> Job:
    return Job(
        id="00000000-0000-0000-0000-000000000001",
        backend=backend,
        model=model,
        params=params,
        status=JobStatus.SUCCEEDED,
        priority=5,
        deadline_at=NOW,
        created_at=NOW,
        updated_at=NOW,
    )


def test_new_seed_for_flux_keeps_everything_else() -> None:
    job = _job("flux", "flux-dev", {"prompt": "a cat", "seed": 1, "width": 512, "height": 512})
    req = rerun.with_new_seed(job, 42)
    assert isinstance(req, FluxRequest)
    assert req.params.model == "flux-dev"
    assert req.params.seed == 42
    assert req.params.prompt == "a cat" and req.priority == 5


@pytest.mark.parametrize(
    ("backend", "model", "params", "seed_at"),
    [
        ("sdxl", "sdxl", {"prompt": "x", "seed": 3}, ("seed",)),
        ("sd35", "large", {"prompt": "x", "variant": "large", "seed": 3}, ("seed",)),
        ("svd", "svd", {"init_image": "input:abc.png", "seed": 3}, ("seed",)),
        ("workflow", "upscale", {"name": "upscale", "inputs": {"seed": 3}}, ("inputs", "seed")),
        ("workflow", "plain", {"name": "plain", "inputs": {"scale": 2}}, None),
        ("comfy", "raw", {"workflow": {"1": {"class_type": "A", "inputs": {}}}}, None),
        ("v0", "v0-1.5-md", {"prompt": "a page", "output_format": "tsx"}, None),
    ],
)
def test_request_body_sets_the_seed_where_there_is_one(
    backend: str, model: str, params: dict[str, JsonValue], seed_at: tuple[str, ...] | None
) -> None:
    job = _job(backend, model, params)
    body = rerun.request_body(job, 99)
    assert body["backend"] == backend
    assert rerun.has_seed(job) == (seed_at is not None)
    value: JsonValue = body["params"]
    for key in seed_at or ():
        assert isinstance(value, dict)
        value = value[key]
    if seed_at is not None:
        assert value == 99
    else:
        assert body["params"] == params


def test_nav_add_is_idempotent_and_positions() -> None:
    saved = list(nav.NAV)
    try:
        nav.add(nav.NavItem("reports", "Reports", "/ui/reports"), before="settings")
        nav.add(nav.NavItem("reports", "Reports", "/ui/reports"), before="settings")
        keys = [i.key for i in nav.NAV]
        assert keys.count("reports") == 1
        assert keys.index("reports") == keys.index("settings") - 1
    finally:
        nav.NAV[:] = saved


@pytest.mark.parametrize(
    ("path", "accept", "html"),
    [
        ("/ui/", "text/html,application/xhtml+xml,*/*;q=0.8", True),
        ("/ui/jobs/x", "text/html", True),
        ("/ui", "text/html", True),
        ("/ui/panels/queue", "text/html", True),
        ("/ui/jobs/x", "application/json", False),
        ("/ui/jobs/x", "", False),
        ("/ui/static/app.css", "text/html", False),
        ("/api/jobs/x", "text/html", False),
        ("/uix", "text/html", False),
        ("/docs", "text/html", False),
    ],
)
def test_html_error_pages_only_for_ui_pages(path: str, accept: str, html: bool) -> None:
    from starlette.requests import Request

    from orchestrator.api.problems import wants_html

    headers = [(b"accept", accept.encode())] if accept else []
    request = Request({"type": "http", "method": "GET", "path": path, "headers": headers})
    assert wants_html(request) is html
