"""Imported Tilda content through every entry point, in demo mode (simulated FLUX and
ComfyUI): the HTTP API (upload, server path under the allowed roots, progress and
report, pages, assets), imported images driving FLUX image-prompt, Kontext and SVD
jobs to success, the MCP tools, and the ``orchestrator tilda`` command."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import time
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from tests.integration.test_cli import clean_environ
from tests.integration.test_mcp import error_text, structured

from orchestrator.api.app import create_app
from orchestrator.config import Settings
from orchestrator.domain.tilda import ImportStatus
from orchestrator.mcp_server import build_mcp
from orchestrator.runtime import Runtime, open_runtime
from orchestrator.testing import tilda_export as te
from orchestrator.testing.serve import serve_in_thread

CLI = [sys.executable, "-m", "orchestrator"]
PROBLEM = "application/problem+json"


@pytest.fixture
def exports(tmp_path: Path) -> Path:
    root = tmp_path / "exports"
    te.build_export(root / "v1")
    te.build_export(root / "v2", revision=2)
    return root


@pytest.fixture
def client(
    make_settings: Callable[..., Settings], exports: Path
) -> Iterator[tuple[httpx2.Client, Settings]]:
    settings = make_settings(
        demo_mode="on", auth_disabled=True, tilda_import_roots=[exports], lease_s=30.0
    )
    with (
        serve_in_thread(create_app(settings), lifespan="on") as served,
        httpx2.Client(base_url=served.base_url, timeout=60) as http,
    ):
        yield http, settings


def finished(http: httpx2.Client, location: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        doc: dict[str, Any] = http.get(location).json()
        if doc["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
            return doc
        time.sleep(0.05)


def test_import_browse_and_use_as_inputs(
    client: tuple[httpx2.Client, Settings], exports: Path, tmp_path: Path
) -> None:
    http, settings = client
    # upload the zip Tilda gives (one top folder)
    zipped = te.zip_folder(exports / "v1", tmp_path / "project7732209.zip", top="project7732209")
    r = http.post(
        "/api/tilda/import",
        files={"file": ("project7732209.zip", zipped.read_bytes(), "application/zip")},
    )
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "queued"
    location = r.headers["location"]
    assert location == f"/api/tilda/imports/{r.json()['id']}"
    run = finished(http, location)
    assert run["status"] == "succeeded", run
    assert run["source"] == "project7732209.zip"
    assert run["report"]["pages_total"] == 7 and len(run["report"]["added"]) == 7
    assert run["progress"]["stage"] == "done"
    assert not list((settings.data_path / "tilda-uploads").glob("*"))  # upload removed

    sites = http.get("/api/tilda/sites").json()
    assert [(s["name"], s["page_count"]) for s in sites] == [(te.DOMAIN, 7)]
    page = http.get("/api/tilda/pages", params={"site": sites[0]["id"], "limit": 2}).json()
    assert page["total"] == 7 and len(page["items"]) == 2
    shop = http.get("/api/tilda/pages", params={"q": "eco spray"}).json()["items"]
    assert [p["alias"] for p in shop] == ["shop"]
    detail = http.get(f"/api/tilda/pages/{shop[0]['id']}").json()
    assert detail["blocks"][0]["code"] == "t754"
    assert [b["code"] for b in detail["header_blocks"]] == ["T228"]
    product = next(a for a in detail["images"] if a["original_name"] == te.IMG_PRODUCTS[0])
    got = http.get(product["url"])
    assert got.status_code == 200 and got.headers["content-type"] == "image/jpeg"
    exp_bytes = (exports / "v1" / "images" / te.IMG_PRODUCTS[0]).read_bytes()
    assert got.content == exp_bytes

    # errors are problems
    for path in ("/api/tilda/pages/nope", "/api/tilda/imports/nope", "/api/tilda/assets/ab12"):
        r = http.get(path)
        assert r.status_code == 404 and r.headers["content-type"] == PROBLEM, path
    r = http.post("/api/tilda/import", json={"path": str(tmp_path)})
    assert r.status_code == 403 and r.headers["content-type"] == PROBLEM
    assert r.json()["type"].endswith("/import-path-not-allowed")
    r = http.post("/api/tilda/import", json={"path": str(exports / ".." / "..")})
    assert r.status_code == 403
    r = http.post("/api/tilda/import", json={"path": str(exports / "v3")})
    assert r.status_code == 422 and "no export folder" in r.json()["detail"]
    r = http.post("/api/tilda/import", json={})  # no TILDA_DUMP_PATH set
    assert r.status_code == 422 and "TILDA_DUMP_PATH" in r.json()["detail"]

    # a server-side folder under the allowed roots: the newer export
    r = http.post("/api/tilda/import", json={"path": str(exports / "v2")})
    assert r.status_code == 202, r.text
    run = finished(http, r.headers["location"])
    assert run["status"] == "succeeded", run
    assert run["report"]["added"] == [te.BLOG_ID] and run["report"]["removed"] == [te.SHOP_ID]

    # a hostile upload: accepted as a run, which fails with the reason
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../escape.html", "<div id='allrecords'></div>")
    r = http.post("/api/tilda/import", files={"file": ("evil.zip", evil.read_bytes())})
    run = finished(http, r.headers["location"])
    assert run["status"] == "failed" and run["error_code"] == "unsafe_archive"
    assert "'..'" in run["error_message"]

    # imported images as generation inputs (demo mode: simulated FLUX and ComfyUI)
    about = http.get("/api/tilda/pages", params={"q": "fifteen"}).json()["items"][0]
    images = http.get(f"/api/tilda/pages/{about['id']}").json()["images"]
    asset = images[0]
    data = http.get(asset["url"]).content
    jobs = {
        "flux": {
            "backend": "flux",
            "params": {
                "model": "flux-dev",
                "prompt": "the same room, brighter",
                "width": 256,
                "height": 256,
                "image_prompt": f"asset:{asset['id']}",
            },
        },
        "kontext": {
            "backend": "flux",
            "params": {
                "model": "flux-kontext-pro",
                "prompt": "make it night",
                "input_image": f"asset:{asset['id']}",
            },
        },
        "svd": {
            "backend": "svd",
            "params": {
                "init_image": f"asset:{asset['id']}",
                "frames": 4,
                "width": 256,
                "height": 128,
                "steps": 2,
            },
        },
    }
    ids = {}
    for name, body in jobs.items():
        r = http.post("/api/generate", json=body)
        assert r.status_code == 202, (name, r.text)
        ids[name] = r.json()["id"]
    for name, job_id in ids.items():
        job = finished(http, f"/api/jobs/{job_id}")
        assert job["status"] == "succeeded", (name, job)
        assert job["outputs"], name
    flux = http.get(f"/api/jobs/{ids['flux']}").json()["params"]
    assert base64.b64decode(flux["image_prompt"]) == data  # sent to BFL inline
    kontext = http.get(f"/api/jobs/{ids['kontext']}").json()["params"]
    assert base64.b64decode(kontext["input_image"]) == data
    svd = http.get(f"/api/jobs/{ids['svd']}").json()["params"]
    digest = hashlib.sha256(data).hexdigest()
    assert svd["init_image"].startswith(f"input:{digest}.")  # stored once as an input

    r = http.post(
        "/api/generate",
        json={"backend": "svd", "params": {"init_image": "asset:0123456789abcdef"}},
    )
    assert r.status_code == 422 and "0123456789abcdef" in r.json()["detail"]


@pytest.fixture
async def runtime(make_settings: Callable[..., Settings]) -> AsyncIterator[Runtime]:
    settings = make_settings(demo_mode="on")
    async with open_runtime(settings, run_worker=False) as rt:
        yield rt


async def test_mcp_tools(runtime: Runtime, exports: Path) -> None:
    run = await runtime.service.tilda.import_path(exports / "v1")
    assert run.status == ImportStatus.SUCCEEDED
    server = build_mcp(lambda: runtime.service)
    async with Client(server) as c:
        listed = structured(await c.call_tool("list_site_pages", {"query": "regular cleaning"}))
        aliases = {p["alias"] for p in listed["items"]}
        assert "services/regular-cleaning" in aliases
        everything = structured(await c.call_tool("list_site_pages", {"limit": 3}))
        assert everything["total"] == 7 and len(everything["items"]) == 3
        page_id = next(
            p["id"] for p in listed["items"] if p["alias"] == "services/regular-cleaning"
        )
        page = structured(await c.call_tool("get_site_page", {"page_id": page_id}))
        assert page["blocks"][0]["code"] == "T396"
        assert page["blocks"][0]["texts"][0]["text"] == "Regular cleaning\nevery week"
        assert page["images"][0]["id"] in page["blocks"][0]["image_asset_ids"]
        assert page["missing_images"] == [te.IMG_MISSING]
        assert "not found" in error_text(await c.call_tool("get_site_page", {"page_id": "nope"}))


def test_cli_import_twice_then_hostile(tmp_path: Path, exports: Path) -> None:
    env = clean_environ(ORCHESTRATOR_CONFIG=str(tmp_path / "cfg" / "orchestrator.toml"))
    data = tmp_path / "data"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, "--data-dir", str(data), *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    first = run("tilda", "import", str(exports / "v1"))
    assert first.returncode == 0, first.stderr
    assert "7" in first.stdout and "missing image" in first.stderr
    second = run("tilda", "import", str(exports / "v1"), "--json")
    assert second.returncode == 0, second.stderr
    report = json.loads(second.stdout)["report"]
    assert report["unchanged"] == 7 and report["added"] == []
    pages = json.loads(run("tilda", "pages", "--json").stdout)
    assert pages["total"] == 7
    home = next(p for p in pages["items"] if p["is_home"])
    detail = json.loads(run("tilda", "page", home["id"]).stdout)
    asset_id = detail["images"][0]["id"]
    path = run("tilda", "asset", asset_id).stdout.strip()
    assert Path(path).is_file() and Path(path).is_relative_to(data / "assets")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "index.html").write_text("<html><body>hi</body></html>")
    bad = run("tilda", "import", str(tmp_path / "bad"))
    assert bad.returncode == 1
    assert "not_tilda_export" in bad.stderr and "not a Tilda export" in bad.stderr
