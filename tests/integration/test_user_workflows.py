"""User workflows: a file with a declared parameter schema becomes a job kind."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx2
import pytest
from PIL import Image

from orchestrator.api.app import create_app
from orchestrator.backends.user_workflows import load_user_workflows
from orchestrator.config import Settings
from orchestrator.testing.fake_comfy import FakeComfy, FakeComfyConfig
from orchestrator.testing.serve import serve_in_thread

INVERT = {
    "description": "Invert an image and save it",
    "params": {
        "image": {"type": "image", "node": "1", "input": "image", "required": True},
        "prefix": {
            "type": "string",
            "node": "3",
            "input": "filename_prefix",
            "default": "inverted",
            "max_length": 40,
        },
    },
    "workflow": {
        "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
    },
}
SOLID = {
    "params": {
        "width": {
            "type": "integer",
            "targets": [{"node": "1", "input": "width"}],
            "minimum": 16,
            "maximum": 512,
            "default": 32,
        },
        "color": {"type": "integer", "node": "1", "input": "color", "enum": [0, 255, 65280]},
    },
    "workflow": {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "s"}},
    },
}


def test_loading_reports_broken_files(tmp_path: Path) -> None:
    (tmp_path / "good.json").write_text(json.dumps(SOLID))
    (tmp_path / "Bad Name.json").write_text(json.dumps(SOLID))
    broken = json.loads(json.dumps(SOLID))
    broken["params"]["width"]["targets"] = [{"node": "9", "input": "width"}]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    (tmp_path / "notjson.json").write_text("{")
    found, problems = load_user_workflows(tmp_path)
    assert list(found) == ["good"]
    assert set(problems) == {"Bad Name.json", "broken.json", "notjson.json"}
    assert "no node '9'" in problems["broken.json"]
    built = found["good"].build({"width": 64, "color": 255})
    assert built["1"]["inputs"] == {"width": 64, "height": 32, "batch_size": 1, "color": 255}
    assert SOLID["workflow"]["1"]["inputs"]["width"] == 32  # type: ignore[index]


@pytest.fixture
def api(make_settings: Callable[..., Settings], tmp_path: Path) -> Iterator[httpx2.Client]:
    folder = tmp_path / "workflows"
    folder.mkdir()
    (folder / "invert.json").write_text(json.dumps(INVERT))
    (folder / "solid.json").write_text(json.dumps(SOLID))
    fake = FakeComfy(FakeComfyConfig(base_dir=tmp_path / "comfy"))
    with ExitStack() as stack:
        comfy = stack.enter_context(serve_in_thread(fake.app, lifespan="on"))
        settings = make_settings(
            comfy_url=comfy.base_url, comfy_workflows_dir=folder, comfy_reconcile_interval_s=0.3
        )
        app = stack.enter_context(serve_in_thread(create_app(settings), lifespan="on"))
        yield stack.enter_context(httpx2.Client(base_url=app.base_url, timeout=30))


def wait(client: httpx2.Client, job_id: str) -> dict[str, object]:
    with client.stream("GET", f"/api/jobs/{job_id}/events") as r:
        for _ in r.iter_lines():
            pass
    doc: dict[str, object] = client.get(f"/api/jobs/{job_id}").json()
    return doc


def test_user_workflow_jobs(api: httpx2.Client) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(buf, "PNG")
    r = api.post(
        "/api/generate",
        json={
            "backend": "workflow",
            "params": {
                "name": "invert",
                "inputs": {"image": base64.b64encode(buf.getvalue()).decode()},
            },
        },
    )
    assert r.status_code == 202, r.text
    job = wait(api, r.json()["id"])
    assert job["status"] == "succeeded", job
    assert job["model"] == "invert"
    out = api.get(job["outputs"][0]["url"])  # type: ignore[index]
    with Image.open(io.BytesIO(out.content)) as im:
        assert im.size == (40, 30) and im.convert("RGB").getpixel((0, 0))[0] < 20
    solid = api.post(
        "/api/generate",
        json={
            "backend": "workflow",
            "params": {"name": "solid", "inputs": {"width": 48, "color": 65280}},
        },
    )
    assert wait(api, solid.json()["id"])["status"] == "succeeded"
    bad = api.post(
        "/api/generate",
        json={
            "backend": "workflow",
            "params": {"name": "solid", "inputs": {"width": 5000, "color": 1, "extra": 1}},
        },
    )
    assert bad.status_code == 422
    locs = {tuple(e["loc"]) for e in bad.json()["errors"]}
    assert ("body", "params", "inputs", "width") in locs
    assert ("body", "params", "inputs", "extra") in locs
    unknown = api.post("/api/generate", json={"backend": "workflow", "params": {"name": "nope"}})
    assert unknown.status_code == 422 and unknown.json()["available"] == ["invert", "solid"]
    models = api.get("/api/models", params={"backend": "workflow"}).json()
    by_name = {m["model"]: m for m in models}
    assert set(by_name) == {"invert", "solid"}
    assert by_name["invert"]["params_schema"]["required"] == ["image"]
    everything = {(m["backend"], m["model"]) for m in api.get("/api/models").json()}
    assert {("flux", "flux-dev"), ("sdxl", "sdxl"), ("svd", "svd"), ("workflow", "solid")} <= (
        everything
    )
