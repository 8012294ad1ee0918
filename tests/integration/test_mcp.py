"""The MCP server: every tool and resource in memory (``mcp.Client(server)``), a stdio
round trip against ``orchestrator mcp`` started from another working directory, and
a streamable HTTP round trip against a running ``serve`` (with progress)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client, ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import (
    BlobResourceContents,
    CallToolResult,
    ImageContent,
    ReadResourceResult,
    ResourceLink,
    TextResourceContents,
)
from PIL import Image
from pydantic import JsonValue
from tests.conftest import TEST_KEY
from tests.integration.test_cli import clean_environ

from orchestrator.config import Settings
from orchestrator.db.engine import open_database
from orchestrator.db.jobs import JobRepo, NewJob
from orchestrator.domain.jobs import JobStatus
from orchestrator.mcp_server import OrchestratorMCP, build_mcp, make_preview
from orchestrator.runtime import Runtime, open_runtime
from orchestrator.testing.fake_bfl import FakeBfl
from orchestrator.testing.serve import ServedApp

FakePair = tuple[FakeBfl, ServedApp]
CLI = [sys.executable, "-m", "orchestrator"]
FLUX = {"model": "flux-dev", "prompt": "a lighthouse at dusk", "width": 256, "height": 256}


def png_b64(size: tuple[int, int] = (64, 64)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (0, 120, 200)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def svd_params(init_image: str) -> dict[str, Any]:
    return {"init_image": init_image, "frames": 3, "width": 128, "height": 64, "steps": 2}


class Progress:
    def __init__(self) -> None:
        self.seen: list[tuple[float, float | None, str | None]] = []

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        self.seen.append((progress, total, message))

    def check(self) -> None:
        values = [p for p, _t, _m in self.seen]
        assert values, "no progress notifications"
        assert values == sorted(values) and len(set(values)) == len(values), values
        assert values[-1] == 1.0 and all(0 <= v <= 1 for v in values)
        assert any("succeeded" in (m or "") for _p, _t, m in self.seen)


def _text(r: ReadResourceResult) -> str:
    content = r.contents[0]
    assert isinstance(content, TextResourceContents)
    return content.text


def structured(r: CallToolResult) -> dict[str, Any]:
    assert not r.is_error, r.content
    assert r.structured_content is not None
    return r.structured_content


def error_text(r: CallToolResult) -> str:
    assert r.is_error
    text: str = getattr(r.content[0], "text", "")
    return text


# --- in memory -----------------------------------------------------------------------------


@pytest.fixture
async def runtime(
    make_settings: Callable[..., Settings], fake_bfl: FakePair
) -> AsyncIterator[Runtime]:
    """FLUX against the fake BFL (fast), ComfyUI simulated (demo mode on)."""
    _fake, bfl = fake_bfl
    settings = make_settings(demo_mode="on", bfl_api_key=TEST_KEY, flux_base_url=bfl.base_url)
    async with open_runtime(settings, run_worker=True) as rt:
        yield rt


@pytest.fixture
def server(runtime: Runtime) -> OrchestratorMCP:
    return build_mcp(lambda: runtime.service)


async def test_generate_wait_progress_output_and_resources(
    server: OrchestratorMCP, runtime: Runtime
) -> None:
    progress = Progress()
    async with Client(server) as c:
        tools = {t.name for t in (await c.list_tools()).tools}
        assert tools == {
            "generate",
            "get_job",
            "list_jobs",
            "cancel_job",
            "list_backends",
            "list_models",
            "list_workflows",
            "search_outputs",
            "get_output",
            "ignite",
            "cost_report",
            "list_site_pages",
            "get_site_page",
        }
        job = structured(
            await c.call_tool(
                "generate",
                {"backend": "flux", "params": FLUX, "wait": True, "idempotency_key": "k-1"},
                progress_callback=progress,
            )
        )
        progress.check()
        assert job["status"] == "succeeded" and job["replayed"] is False
        assert job["prompt"] == FLUX["prompt"]
        out = job["outputs"][0]
        assert out["uri"] == f"output://{job['id']}/0" and out["mime_type"] == "image/jpeg"
        assert await asyncio.to_thread(Path(out["file_path"]).is_file)
        assert out["url"] == f"/api/outputs/{job['id']}/0"

        # idempotency: the same key returns the same job
        again = structured(
            await c.call_tool(
                "generate", {"backend": "flux", "params": FLUX, "idempotency_key": "k-1"}
            )
        )
        assert again["id"] == job["id"] and again["replayed"] is True
        conflict = await c.call_tool(
            "generate",
            {"backend": "flux", "params": {**FLUX, "prompt": "x"}, "idempotency_key": "k-1"},
        )
        assert "Idempotency" in error_text(conflict)

        got = structured(await c.call_tool("get_job", {"job_id": job["id"]}))
        assert got["id"] == job["id"] and got["outputs"] == job["outputs"]

        # get_output: a bounded preview plus a link to the full file
        r = await c.call_tool("get_output", {"job_id": job["id"], "max_px": 128})
        assert not r.is_error, r.content
        image, link = r.content
        assert isinstance(image, ImageContent) and image.mime_type == "image/jpeg"
        with Image.open(io.BytesIO(base64.b64decode(image.data))) as im:
            assert max(im.size) == 128
        assert isinstance(link, ResourceLink) and str(link.uri) == out["uri"]
        assert link.mime_type == "image/jpeg"

        # resources
        templates = {
            str(t.uri_template) for t in (await c.list_resource_templates()).resource_templates
        }
        assert {"job://{job_id}", "output://{job_id}/{n}"} <= templates
        assert "backends://status" in {str(r.uri) for r in (await c.list_resources()).resources}
        blob = (await c.read_resource(out["uri"])).contents[0]
        assert isinstance(blob, BlobResourceContents) and blob.mime_type == "image/jpeg"
        full = runtime.service.store.resolve(
            (await runtime.service.get_job(job["id"])).outputs[0].path
        )
        assert base64.b64decode(blob.blob) == full.read_bytes()
        doc = json.loads(_text(await c.read_resource(f"job://{job['id']}")))
        assert doc["id"] == job["id"] and doc["params"]["prompt"] == FLUX["prompt"]
        status = json.loads(_text(await c.read_resource("backends://status")))
        assert status["workers"] >= 1 and {b["name"] for b in status["backends"]} >= {"flux", "svd"}
        with pytest.raises(Exception, match="no job"):
            await c.read_resource("job://nope")
        with pytest.raises(Exception, match="no output 7"):
            await c.read_resource(f"output://{job['id']}/7")


async def test_errors_are_clear_messages(server: OrchestratorMCP) -> None:
    async with Client(server) as c:
        bad = await c.call_tool(
            "generate", {"backend": "flux", "params": {**FLUX, "width": 100, "steps": 0}}
        )
        text = error_text(bad)
        assert "params.width" in text and "multiple of 32" in text and "params.steps" in text
        assert "Traceback" not in text
        assert "params.model" in error_text(
            await c.call_tool("generate", {"backend": "flux", "params": {"prompt": "x"}})
        )
        assert "params.prompt" in error_text(
            await c.call_tool("generate", {"backend": "sdxl", "params": {}})
        )
        assert "unknown backend 'dalle'" in error_text(
            await c.call_tool("generate", {"backend": "dalle", "params": {}})
        )
        assert "no job with id 'nope'" in error_text(
            await c.call_tool("get_job", {"job_id": "nope"})
        )
        assert (
            "not found" in error_text(await c.call_tool("get_output", {"job_id": "nope"})).lower()
        )
        assert "unknown backend" in error_text(
            await c.call_tool("list_models", {"backend": "dalle"})
        )


async def test_svd_video_list_cancel_and_search(server: OrchestratorMCP) -> None:
    async with Client(server) as c:
        image = structured(
            await c.call_tool("generate", {"backend": "flux", "params": FLUX, "wait": True})
        )
        progress = Progress()
        video = structured(
            await c.call_tool(
                "generate",
                {
                    "backend": "svd",
                    "params": svd_params(f"output:{image['id']}/0"),
                    "wait": True,
                    "timeout_s": 60,
                },
                progress_callback=progress,
            )
        )
        progress.check()
        assert video["status"] == "succeeded", video
        assert video["outputs"][0]["mime_type"] == "image/webp"
        r = await c.call_tool("get_output", {"job_id": video["id"]})
        preview, link = r.content
        assert isinstance(preview, ImageContent) and preview.mime_type == "image/jpeg"
        with Image.open(io.BytesIO(base64.b64decode(preview.data))) as im:
            assert im.size == (128, 64) and getattr(im, "n_frames", 1) == 1
        assert isinstance(link, ResourceLink) and link.mime_type == "image/webp"

        # cancel: a job queued with a far lower priority behind nothing still may start,
        # so accept either outcome of the request, and check the end state
        queued = structured(
            await c.call_tool("generate", {"backend": "flux", "params": {**FLUX, "prompt": "z"}})
        )
        canceled = structured(await c.call_tool("cancel_job", {"job_id": queued["id"]}))
        assert canceled["status"] == "canceled" or canceled["cancel_requested"] is True

        # list_jobs: filters and paging
        first = structured(await c.call_tool("list_jobs", {"limit": 2}))
        assert len(first["items"]) == 2 and first["next_cursor"]
        rest = structured(
            await c.call_tool("list_jobs", {"limit": 2, "cursor": first["next_cursor"]})
        )
        ids = [j["id"] for j in first["items"] + rest["items"]]
        assert len(ids) == len(set(ids)) == 3
        svd_only = structured(await c.call_tool("list_jobs", {"backend": ["svd"]}))
        assert [j["id"] for j in svd_only["items"]] == [video["id"]]
        succeeded = structured(await c.call_tool("list_jobs", {"status": ["succeeded"]}))
        assert {j["id"] for j in succeeded["items"]} == {image["id"], video["id"]}

        # search_outputs: prompt text (case-insensitive), backend, date
        def found(doc: dict[str, Any]) -> list[str]:
            return [j["id"] for j in doc["items"]]

        assert found(structured(await c.call_tool("search_outputs", {"query": "LIGHTHOUSE"}))) == [
            image["id"]
        ]
        assert found(structured(await c.call_tool("search_outputs", {"query": "castle"}))) == []
        assert found(structured(await c.call_tool("search_outputs", {"query": "%"}))) == []
        assert found(structured(await c.call_tool("search_outputs", {"backend": ["svd"]}))) == [
            video["id"]
        ]
        later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
        earlier = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
        assert (
            found(structured(await c.call_tool("search_outputs", {"created_after": later}))) == []
        )
        assert set(
            found(structured(await c.call_tool("search_outputs", {"created_after": earlier})))
        ) == {image["id"], video["id"]}
        assert (
            found(structured(await c.call_tool("search_outputs", {"created_before": earlier})))
            == []
        )


async def test_models_workflows_and_backends(server: OrchestratorMCP) -> None:
    async with Client(server) as c:
        models = structured(await c.call_tool("list_models", {}))["models"]
        by_name = {(m["backend"], m["model"]): m for m in models}
        dev = by_name[("flux", "flux-dev")]
        assert "steps" in dev["params_schema"]["properties"] and dev["max_active"] == 24
        assert ("svd", "svd") in by_name
        only = structured(await c.call_tool("list_models", {"backend": "sdxl"}))["models"]
        assert [m["backend"] for m in only] == ["sdxl"]
        flows = structured(await c.call_tool("list_workflows", {}))["workflows"]
        svd = next(w for w in flows if w["backend"] == "svd")
        assert "init_image" in svd["params_schema"]["properties"] and svd["description"]
        report = structured(await c.call_tool("list_backends", {}))
        assert report["demo"] is True and report["workers"] >= 1
        flux = next(b for b in report["backends"] if b["name"] == "flux")
        assert flux["status"] == "ok" and flux["limits"]["flux"] == 24
        assert flux["limits"]["flux:flux-kontext-max"] == 6
        comfy = next(b for b in report["backends"] if b["name"] == "sdxl")
        assert comfy["simulated"] is True and comfy["limits"]


def test_preview_is_bounded(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    Image.effect_noise((3000, 1500), 64).convert("RGB").save(big)
    data, fmt = make_preview(big, 2048)
    assert fmt == "jpeg" and len(data) <= 1_000_000
    with Image.open(io.BytesIO(data)) as im:
        assert max(im.size) <= 2048 and abs(im.size[0] - 2 * im.size[1]) <= 1
    alpha = tmp_path / "alpha.png"
    Image.new("RGBA", (300, 100), (1, 2, 3, 100)).save(alpha)
    data, fmt = make_preview(alpha, 100)
    assert fmt == "png"
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (100, 33) and im.mode == "RGBA"


# --- stdio and HTTP, as real processes ---------------------------------------------------------


def _start_serve(cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, "serve"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)
    return proc.returncode, err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _round_trip(session: ClientSession) -> tuple[dict[str, Any], dict[str, Any]]:
    """What an agent does: a FLUX image and an SVD video, with progress, and the image."""
    await session.initialize()
    progress = Progress()
    image = structured(
        await session.call_tool(
            "generate",
            {
                "backend": "flux",
                "params": {"model": "flux-pro-1.1", "prompt": "an owl"},
                "wait": True,
            },
            progress_callback=progress,
        )
    )
    progress.check()
    assert image["status"] == "succeeded" and image["simulated"] is True
    r = await session.call_tool("get_output", {"job_id": image["id"]})
    assert [c.type for c in r.content] == ["image", "resource_link"]
    video = structured(
        await session.call_tool(
            "generate",
            {"backend": "svd", "params": svd_params(png_b64()), "wait": True},
            progress_callback=Progress(),
        )
    )
    assert video["status"] == "succeeded" and video["outputs"][0]["mime_type"] == "image/webp"
    return image, video


@pytest.mark.slow
async def test_stdio_from_another_directory(tmp_path: Path) -> None:
    config = tmp_path / "cfg" / "orchestrator.toml"
    config.parent.mkdir()
    config.write_text('data_dir = "data"\nworker_poll_interval_s = 0.1\n')
    env = clean_environ(ORCHESTRATOR_CONFIG=str(config))
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    made = await asyncio.to_thread(
        subprocess.run,
        [*CLI, "generate", "flux", "queued from the CLI"],
        cwd=one,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    cli_job = made.stdout.strip()
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "orchestrator", "mcp"], cwd=two, env=env
    )
    with (tmp_path / "stderr.log").open("w") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            image, _video = await _round_trip(session)
            assert Path(image["outputs"][0]["file_path"]).is_relative_to(config.parent / "data")
            # the same database as the CLI: its queued job was run by this process's worker
            listed = structured(await session.call_tool("list_jobs", {"limit": 50}))
            assert cli_job in {j["id"] for j in listed["items"]}
            job = structured(await session.call_tool("get_job", {"job_id": cli_job}))
            for _ in range(100):
                if job["status"] == "succeeded":
                    break
                await asyncio.sleep(0.1)
                job = structured(await session.call_tool("get_job", {"job_id": cli_job}))
            assert job["status"] == "succeeded"
            report = structured(await session.call_tool("list_backends", {}))
            assert report["workers"] == 1
    assert not list(two.iterdir()) and not list(one.iterdir())
    log = (tmp_path / "stderr.log").read_text()
    assert "Traceback" not in log


@pytest.mark.slow
async def test_http_round_trip_against_serve(tmp_path: Path) -> None:
    port = _free_port()
    config = tmp_path / "cfg" / "orchestrator.toml"
    config.parent.mkdir()
    config.write_text(f'data_dir = "data"\nport = {port}\nworker_poll_interval_s = 0.1\n')
    env = clean_environ(ORCHESTRATOR_CONFIG=str(config), LOG_FORMAT="json")
    proc = _start_serve(tmp_path, env)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx2.AsyncClient(base_url=base, timeout=10) as http:
            for _ in range(300):
                try:
                    if (await http.get("/api/system/health")).status_code == 200:
                        break
                except httpx2.TransportError:
                    await asyncio.sleep(0.05)
            assert (await http.get("/docs")).status_code == 200
            lost = await http.get("/no/such/route")
            assert lost.status_code == 404
            assert lost.headers["content-type"] == "application/problem+json"
            async with (
                streamable_http_client(f"{base}/mcp") as (read, write),
                ClientSession(read, write) as session,
            ):
                image, _video = await _round_trip(session)
                out = image["outputs"][0]
                assert out["http_url"] == f"{base}/api/outputs/{image['id']}/0"
                got = await http.get(out["http_url"])
                assert got.status_code == 200 and got.headers["content-type"] == "image/jpeg"
                # a stdio server started while serve runs only queues and reads
                params = StdioServerParameters(
                    command=sys.executable,
                    args=["-m", "orchestrator", "mcp"],
                    cwd=tmp_path,
                    env=env,
                )
                with (tmp_path / "stdio.log").open("w") as errlog:
                    async with (
                        stdio_client(params, errlog=errlog) as (r2, w2),
                        ClientSession(r2, w2) as stdio,
                    ):
                        await stdio.initialize()
                        job = structured(
                            await stdio.call_tool(
                                "generate",
                                {"backend": "flux", "params": FLUX, "wait": True},
                            )
                        )
                        assert job["status"] == "succeeded"
                        health = (await http.get("/api/system/health")).json()
                        assert health["workers"] == 1
            bad_host = await http.post(
                "/mcp", headers={"host": "evil.example"}, json={"jsonrpc": "2.0"}
            )
            assert bad_host.status_code == 421
    finally:
        code, err = await asyncio.to_thread(_stop, proc)
    assert code == 0, err


# --- the search query, on SQLite and PostgreSQL ----------------------------------------------


async def test_search_query_on_each_database(db_url: str) -> None:
    db = await open_database(db_url)
    try:
        repo = JobRepo(db)
        made = {}
        for backend, prompt in [
            ("flux", "A Lighthouse at dusk"),
            ("sdxl", "lighthouse, 100% red"),
            ("flux", "an owl_in snow"),
            ("svd", None),
        ]:
            params: dict[str, JsonValue] = {"prompt": prompt} if prompt else {"frames": 3}
            job, _ = await repo.create(
                NewJob(
                    id=str(uuid.uuid4()),
                    backend=backend,
                    model=backend,
                    params=params,
                    priority=0,
                    deadline_at=datetime.now(UTC) + timedelta(minutes=5),
                    idempotency_key=None,
                    request_hash=None,
                    simulated=False,
                )
            )
            made[prompt] = job.id

        async def ids(**kw: Any) -> set[str]:
            return {j.id for j in (await repo.search(**kw)).items}

        both = {made["A Lighthouse at dusk"], made["lighthouse, 100% red"]}
        assert await ids(text="LIGHTHOUSE") == both
        assert await ids(text="lighthouse", backend=["sdxl"]) == {made["lighthouse, 100% red"]}
        assert await ids(text="100%") == {made["lighthouse, 100% red"]}
        assert await ids(text="0%") == {made["lighthouse, 100% red"]}
        assert await ids(text="l_ghthouse") == set()
        assert await ids(text="owl_in") == {made["an owl_in snow"]}
        assert await ids(text="frames") == set()  # parameter names are not prompts
        assert len(await ids()) == 4
        assert await ids(status=[JobStatus.SUCCEEDED]) == set()
        now = datetime.now(UTC)
        assert await ids(created_after=now + timedelta(seconds=5)) == set()
        assert len(await ids(created_before=now + timedelta(seconds=5))) == 4
        page = await repo.search(text="lighthouse", limit=1)
        rest = await repo.search(text="lighthouse", limit=1, cursor=page.next_cursor)
        assert {page.items[0].id, rest.items[0].id} == both and rest.next_cursor is None
    finally:
        await db.dispose()


async def test_ignite_and_cost_report_tools(server: OrchestratorMCP, runtime: Runtime) -> None:
    async with Client(server) as c:
        report = structured(await c.call_tool("ignite", {}))
        assert report["ok"] is True
        components = {check["component"]: check["status"] for check in report["checks"]}
        assert components["database"] == "ok" and components["flux"] == "ok"
        job = structured(
            await c.call_tool("generate", {"backend": "flux", "params": FLUX, "wait": True})
        )
        assert job["status"] == "succeeded"
        costs = structured(await c.call_tool("cost_report", {"group_by": ["backend", "model"]}))
        assert costs["currency"] == "credits" and costs["total"] == 2.5
        assert costs["rows"] == [
            {
                "day": None,
                "backend": "flux",
                "model": "flux-dev",
                "token_id": None,
                "jobs": 1,
                "cost": 2.5,
                "gpu_seconds": 0.0,
            }
        ]
        bad = await c.call_tool("cost_report", {"group_by": ["colour"]})
        assert bad.is_error
