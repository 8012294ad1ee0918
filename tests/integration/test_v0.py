"""v0 jobs end to end: the worker against the fake v0 server on 127.0.0.1 (success
with streaming progress, page context and images, every failure mapping, retries,
deadline, cancel mid-stream), demo mode in process, the HTTP API and MCP."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp_types import ResourceLink, TextContent
from PIL import Image
from tests.integration.test_cli import clean_environ
from tests.integration.test_cli import run as run_cli

from orchestrator import errors
from orchestrator.api.app import create_app
from orchestrator.backends import v0_prompt as vp
from orchestrator.backends.v0 import V0Backend
from orchestrator.config import Settings
from orchestrator.domain.jobs import Job, JobStatus, UpstreamHandle
from orchestrator.domain.params import V0Params, V0Request
from orchestrator.engine.worker import WorkerOptions
from orchestrator.errors import ErrorCode
from orchestrator.mcp_server import build_mcp
from orchestrator.runtime import Runtime, open_runtime
from orchestrator.storage import InputStore
from orchestrator.testing.fake_v0 import FakeV0, FakeV0Config
from orchestrator.testing.serve import ServedApp, serve_in_thread

V0_KEY = "v0-test-key-0123456789"
FakePair = tuple[FakeV0, ServedApp]


def image(fmt: str = "PNG", size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 100, 50)).save(buf, format=fmt)
    return buf.getvalue()


class MemoryPages:
    """An in-memory page source (the PageSource protocol), standing in for the
    imported Tilda pages."""

    def __init__(self) -> None:
        self.pages = {
            "page-1": vp.PageContext(
                page_id="page-1",
                title="Bakery Morning",
                description="Fresh bread every day",
                address="/about",
                blocks=[
                    vp.PageBlock(["Warm bread at seven", "Every day"], "T004"),
                    vp.PageBlock(["Call us: 555-0100"], "T005"),
                    vp.PageBlock(["Тёплый хлеб — «каждый» день 🥖"]),
                ],
                image_ids=["svg", "cover", "gallery", "missing", "extra"],
            )
        }
        self.assets = {
            "svg": vp.ImageData("image/svg+xml", b"<svg xmlns='http://www.w3.org/2000/svg'/>"),
            "cover": vp.ImageData("image/jpeg", image("JPEG", (1600, 900))),
            "gallery": vp.ImageData("image/png", image()),
            "extra": vp.ImageData("image/png", image()),
        }

    async def page_context(self, page_id: str) -> vp.PageContext:
        try:
            return self.pages[page_id]
        except KeyError:
            raise errors.NotFound(f"no page {page_id}") from None

    async def asset_image(self, asset_id: str) -> vp.ImageData:
        try:
            return self.assets[asset_id]
        except KeyError:
            raise errors.NotFound(f"no asset {asset_id}") from None


@pytest.fixture
def fake_v0() -> Iterator[FakePair]:
    fake = FakeV0(FakeV0Config(api_keys={V0_KEY}, chunk_chars=16))
    with serve_in_thread(fake.app) as served:
        yield fake, served


@pytest.fixture
def settings_for(
    make_settings: Callable[..., Settings], fake_v0: FakePair
) -> Callable[..., Settings]:
    _fake, served = fake_v0

    def make(**kw: object) -> Settings:
        base: dict[str, object] = {"v0_api_key": V0_KEY, "v0_base_url": served.base_url}
        base.update(kw)
        return make_settings(**base)

    return make


@asynccontextmanager
async def runtime(settings: Settings, *, pages: bool = True) -> AsyncIterator[Runtime]:
    options = WorkerOptions(
        concurrency=8,
        lease_s=settings.lease_s,
        poll_interval_s=settings.worker_poll_interval_s,
        shutdown_grace_s=2.0,
    )
    async with open_runtime(settings, run_worker=True, worker_options=options) as rt:
        backend = rt.service.backends["v0"]
        assert isinstance(backend, V0Backend)
        if pages:
            backend.pages = MemoryPages()
        backend.progress_interval_s = 0.05
        yield rt


def v0(prompt: str = "Modernise this page", **kw: Any) -> V0Request:
    request = kw.pop("request", {})
    return V0Request(params=V0Params(prompt=prompt, **kw), **request)


async def run(rt: Runtime, req: V0Request, limit_s: float = 30) -> Job:
    job, _ = await rt.service.submit(req)
    return await rt.service.wait_for(job.id, limit_s)


async def until(pred: Callable[[], bool], limit_s: float = 10.0) -> None:
    end = time.monotonic() + limit_s
    while not pred():
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_page_job_streams_and_stores_code(
    settings_for: Callable[..., Settings], fake_v0: FakePair, db_url: str
) -> None:
    fake, _ = fake_v0
    fake.config.chunk_chars = 6
    fake.config.chunk_delay_s = 0.01  # about a second of streaming
    own = base64.b64encode(image()).decode()
    async with runtime(settings_for(database_url=db_url)) as rt:
        job = await run(
            rt,
            v0(site_page_id="page-1", images=[f"data:image/png;base64,{own}"], page_images=2),
        )
        assert job.status == JobStatus.SUCCEEDED, job.error
        assert job.model == "v0-1.5-md" and job.progress == 1.0 and not job.simulated
        [ref] = job.params["images"]  # type: ignore[misc]
        assert isinstance(ref, str) and ref.startswith("input:")
        code_out, md_out = job.outputs
        assert code_out.mime_type == "text/x-typescript" and code_out.path.endswith("-0.tsx")
        assert md_out.mime_type == "text/markdown" and md_out.path.endswith("-1.md")
        assert code_out.width is None and code_out.height is None
        code = rt.service.store.resolve(code_out.path).read_text(encoding="utf-8")
        answer = rt.service.store.resolve(md_out.path).read_text(encoding="utf-8")
        assert code.startswith("// Generated by the fake v0 server") and "```" not in code
        assert '{"Bakery Morning"}' in code and '{"Warm bread at seven Every day"}' in code
        assert '{"Call us: 555-0100"}' in code and code.count("<img ") == 3
        assert '{"Тёплый хлеб — «каждый» день 🥖"}' in code  # UTF-8 split across chunks
        assert f'```tsx file="app/page.tsx"\n{code}```' in answer
        events = await rt.service.events(job.id)
        streaming = [e for e in events if (e.message or "").startswith("streaming:")]
        assert streaming, [e.message for e in events]
        assert all(e.kind == "progress" and e.progress is None for e in streaming)
        [info] = [e for e in events if e.kind == "info"]
        usage = info.data["usage"]
        assert isinstance(usage, dict) and usage["total_tokens"] == (
            usage["prompt_tokens"] + usage["completion_tokens"]  # type: ignore[operator]
        )
        assert info.data["finish_reason"] == "stop" and info.data["truncated"] is False
        assert info.data["site_page"] == {
            "id": "page-1",
            "title": "Bakery Morning",
            "blocks": 3,
            "images_sent": 2,
            "images_skipped": 1,
        }
        assert info.data["images_sent"] == 3
    [sent] = fake.requests
    assert sent["model"] == "v0-1.5-md" and sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    system, user = sent["messages"]  # type: ignore[misc]
    assert system == {"role": "system", "content": vp.SYSTEM_TSX}
    parts = user["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "image_url", "text", "image_url"]
    assert parts[0]["text"].startswith("Context:") and "Warm bread at seven" in parts[0]["text"]
    assert parts[3]["text"] == "Modernise this page"
    # the big cover was scaled down and re-encoded; the small images went as they were
    cover = base64.b64decode(parts[1]["image_url"]["url"].split(",", 1)[1])
    with Image.open(io.BytesIO(cover)) as im:
        assert im.size == (1024, 576)
    assert parts[4]["image_url"]["url"] == f"data:image/png;base64,{own}"


async def test_markdown_format_and_options(
    settings_for: Callable[..., Settings], fake_v0: FakePair
) -> None:
    fake, _ = fake_v0
    async with runtime(settings_for()) as rt:
        job = await run(
            rt,
            v0(
                "A pricing page",
                model="v0-1.5-lg",
                output_format="md",
                system="Use a dark theme.",
                max_completion_tokens=40,
            ),
        )
        assert job.status == JobStatus.SUCCEEDED, job.error
        [out] = job.outputs
        assert out.mime_type == "text/markdown" and out.path.endswith(".md")
        text = rt.service.store.resolve(out.path).read_text(encoding="utf-8")
        assert len(text) == 160  # cut at 40 tokens
        [info] = [e for e in await rt.service.events(job.id) if e.kind == "info"]
        assert info.data["truncated"] is True and info.data["finish_reason"] == "length"
        # the same Idempotency-Key and body: the same job, nothing sent again
        req = v0("An about page")
        first, created = await rt.service.submit(req, "key-1")
        again, created_again = await rt.service.submit(req, "key-1")
        assert created and not created_again and again.id == first.id
        await rt.service.wait_for(first.id, 30)
        with pytest.raises(errors.IdempotencyConflict):
            await rt.service.submit(v0("Another page"), "key-1")
    sent, about = fake.requests
    assert about["messages"][1]["content"] == "An about page"  # type: ignore[index]
    assert sent["model"] == "v0-1.5-lg" and sent["max_completion_tokens"] == 40
    assert sent["messages"][0]["content"] == vp.SYSTEM_MD + "\n\nUse a dark theme."  # type: ignore[index]
    assert sent["messages"][1] == {"role": "user", "content": "A pricing page"}  # type: ignore[index]


async def test_unknown_page_or_asset_is_refused_before_anything_is_sent(
    settings_for: Callable[..., Settings], fake_v0: FakePair
) -> None:
    fake, _ = fake_v0
    async with runtime(settings_for()) as rt:
        with pytest.raises(errors.InvalidRequest) as info:
            await rt.service.submit(v0(site_page_id="nope"))
        assert info.value.extra["errors"][0]["loc"] == ["body", "params", "site_page_id"]  # type: ignore[index]
        with pytest.raises(errors.InvalidRequest) as info:
            await rt.service.submit(v0(images=["asset:missing"]))
        assert info.value.extra["errors"][0]["loc"] == ["body", "params", "images", 0]  # type: ignore[index]
        with pytest.raises(errors.InvalidRequest):
            await rt.service.submit(v0(images=["not base64 at all!"]))
        assert (await rt.service.list_jobs()).items == []
    async with runtime(settings_for(), pages=False) as rt:  # the real (empty) Tilda import
        with pytest.raises(errors.InvalidRequest, match="no imported site page 'page-1'"):
            await rt.service.submit(v0(site_page_id="page-1"))
        backend = rt.service.backends["v0"]
        assert isinstance(backend, V0Backend)
        backend.pages = None  # a backend built without any page source
        with pytest.raises(errors.InvalidRequest, match="site pages are not available"):
            await rt.service.submit(v0(site_page_id="page-1"))
    assert fake.requests == []


async def test_asset_images_go_along(
    settings_for: Callable[..., Settings], fake_v0: FakePair
) -> None:
    fake, _ = fake_v0
    async with runtime(settings_for()) as rt:
        job = await run(rt, v0(images=["asset:gallery"]))
        assert job.status == JobStatus.SUCCEEDED, job.error
        assert job.params["images"] == ["asset:gallery"]
    parts = fake.requests[0]["messages"][1]["content"]  # type: ignore[index]
    assert [p["type"] for p in parts] == ["text", "image_url"]  # type: ignore[index,union-attr]


async def test_tokens_are_costed(settings_for: Callable[..., Settings]) -> None:
    """The answer's total_tokens reach the cost ledger (V0_CREDITS_PER_1K_TOKENS)."""
    async with runtime(settings_for(v0_credits_per_1k_tokens=2.0)) as rt:
        job = await run(rt, v0("A pricing page"))
        assert job.status == JobStatus.SUCCEEDED, job.error
        [info] = [e for e in await rt.service.events(job.id) if e.kind == "info"]
        usage = info.data["usage"]
        assert isinstance(usage, dict) and isinstance(usage["total_tokens"], int)
        assert job.cost == pytest.approx(usage["total_tokens"] / 1000 * 2.0)


async def test_v0_jobs_are_held_to_a_tiny_budget(settings_for: Callable[..., Settings]) -> None:
    """v0 jobs used to be estimated at 0 and were never refused: a 1-credit daily budget
    let 807 credits through. The estimate is now a token ceiling at the rate."""
    settings = settings_for(v0_credits_per_1k_tokens=2.0, daily_budget=1.0)
    async with runtime(settings) as rt:
        with pytest.raises(errors.BudgetExceeded) as info:
            await rt.service.submit(v0("A pricing page"))
        assert info.value.extra["estimate"] == pytest.approx(16.008)  # (8000 + 4) / 1000 * 2
        # a small enough cap fits: 4 prompt + 400 answer tokens = 0.808 credits
        job, _ = await rt.service.submit(v0("A pricing page", max_completion_tokens=400))
        assert job.cost_estimate == pytest.approx(0.808)
        done = await rt.service.wait_for(job.id, 30)
        assert done.status == JobStatus.SUCCEEDED, done.error
        # the reservation gave way to the real cost
        assert done.cost is not None and done.cost <= 0.808


async def test_a_broken_and_retried_stream_bills_both_attempts(
    settings_for: Callable[..., Settings], fake_v0: FakePair
) -> None:
    """A stream cut mid-way was billed by v0 but reports no usage (that comes last);
    only the retried attempt's tokens used to be counted."""
    fake, _ = fake_v0
    fake.faults.add(cut_after=3)
    async with runtime(settings_for(v0_credits_per_1k_tokens=1000.0)) as rt:
        job = await run(rt, v0("A pricing page"))
        assert job.status == JobStatus.SUCCEEDED, job.error
        [info] = [e for e in await rt.service.events(job.id) if e.kind == "info"]
    usage = info.data["usage"]
    assert isinstance(usage, dict) and isinstance(usage["total_tokens"], int)
    assert isinstance(usage["prompt_tokens"], int)
    # the cut attempt: at least its prompt and the 3 chunks of 16 characters it streamed
    least = usage["prompt_tokens"] + 3 * 16 // 4
    assert job.cost is not None and job.cost >= usage["total_tokens"] + least


async def test_server_refusing_stream_options(
    settings_for: Callable[..., Settings], fake_v0: FakePair
) -> None:
    """A server that refuses OpenAI's stream_options still answers; usage is then
    unknown, and later jobs do not ask for it again."""
    fake, _ = fake_v0
    fake.config.accept_stream_options = False
    async with runtime(settings_for()) as rt:
        for prompt in ("first page", "second page"):
            job = await run(rt, v0(prompt))
            assert job.status == JobStatus.SUCCEEDED, job.error
            [info] = [e for e in await rt.service.events(job.id) if e.kind == "info"]
            assert info.data["usage"] is None
        backend = rt.service.backends["v0"]
        assert isinstance(backend, V0Backend) and backend.client is not None
        assert backend.client.ask_usage is False
    assert [r.get("stream_options") for r in fake.requests] == [None, None]
    assert fake.completed == 2


@pytest.mark.parametrize(
    ("setup", "code", "requests"),
    [
        ("badkey", ErrorCode.UPSTREAM_AUTH, 0),
        ("400", ErrorCode.INVALID_PARAMS, 0),
        ("403", ErrorCode.UPSTREAM_AUTH, 0),
        ("500forever", ErrorCode.UPSTREAM_UNAVAILABLE, 0),
        ("cutforever", ErrorCode.STREAM_INTERRUPTED, 4),
        ("errorevent", ErrorCode.STREAM_INTERRUPTED, 4),
        ("nocode", ErrorCode.GENERATION_FAILED, 1),
    ],
)
async def test_failures_map_to_codes(
    settings_for: Callable[..., Settings],
    fake_v0: FakePair,
    setup: str,
    code: ErrorCode,
    requests: int,
) -> None:
    fake, _ = fake_v0
    overrides: dict[str, object] = {"v0_api_key": "wrong-key-000000"} if setup == "badkey" else {}
    if setup == "400":
        fake.faults.add(status=400)
    if setup == "403":
        fake.faults.add(status=403)
    if setup == "500forever":
        fake.faults.add(status=500, count=20)
    if setup == "cutforever":
        fake.faults.add(cut_after=2, count=20)
    if setup == "errorevent":
        fake.faults.add(error_after=1, count=20)
    prompt = "[no-code] a page" if setup == "nocode" else "a page"
    async with runtime(settings_for(**overrides)) as rt:
        job = await run(rt, v0(prompt))
    assert job.status == JobStatus.FAILED
    assert job.error is not None and job.error.code == code, job.error
    assert len(fake.requests) == requests  # valid requests that reached the model
    if setup in ("500forever", "cutforever", "errorevent"):
        assert fake.faults.fired == 4  # the first try and MAX_RETRIES retries
    if setup == "nocode":
        assert "without any code block" in job.error.message
        assert job.error.details["answer_start"]


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ({"status": 429, "headers": {"Retry-After": "0"}}, "rate limit"),
        ({"status": 503, "count": 2}, "answered 503"),
        ({"drop": True}, "broke on the request"),
        ({"cut_after": 3}, "broke on the stream"),
        ({"error_after": 2}, "mid-stream"),
        ({"stall_after": 2}, "timed out on the stream"),
    ],
)
async def test_transient_failures_are_retried(
    settings_for: Callable[..., Settings],
    fake_v0: FakePair,
    fault: dict[str, Any],
    reason: str,
) -> None:
    fake, _ = fake_v0
    fake.faults.add(**fault)
    async with runtime(settings_for(http_read_timeout_s=0.5)) as rt:
        job = await run(rt, v0("a page"))
        assert job.status == JobStatus.SUCCEEDED, job.error
        [info] = [e for e in await rt.service.events(job.id) if e.kind == "info"]
        retried = info.data["retried_after"]
        assert isinstance(retried, list) and len(retried) == fault.get("count", 1)
        assert reason in str(retried[0]), retried
        assert info.data["attempts"] == len(retried) + 1
    assert fake.completed == 1
    assert fake.faults.fired == fault.get("count", 1)


async def test_deadline_while_stalled(
    settings_for: Callable[..., Settings], fake_v0: FakePair
) -> None:
    fake, _ = fake_v0
    fake.faults.add(stall_after=1)
    async with runtime(settings_for(http_read_timeout_s=30)) as rt:
        job = await run(rt, v0("a page", request={"deadline_s": 1.0}))
        assert job.status == JobStatus.FAILED
        assert job.error is not None and job.error.code == ErrorCode.DEADLINE_EXCEEDED
    await until(lambda: fake.disconnects == 1)
    assert fake.completed == 0


async def test_cancel_mid_stream(settings_for: Callable[..., Settings], fake_v0: FakePair) -> None:
    fake, _ = fake_v0
    fake.config.chunk_chars = 2
    fake.config.chunk_delay_s = 0.05  # half a minute of streaming
    async with runtime(settings_for()) as rt:
        job, _ = await rt.service.submit(v0("a long page"))

        async def streaming() -> bool:
            events = await rt.service.events(job.id)
            return any((e.message or "").startswith("streaming:") for e in events)

        end = time.monotonic() + 10
        while not await streaming():
            assert time.monotonic() < end
            await asyncio.sleep(0.05)
        await rt.service.cancel_job(job.id)
        done = await rt.service.wait_for(job.id, 10)
        assert done.status == JobStatus.CANCELED
        events = await rt.service.events(job.id)
        assert "v0 stream was closed" in (events[-1].message or "")
    await until(lambda: fake.disconnects == 1)
    assert fake.completed == 0


async def test_no_reattach_after_restart(fake_v0: FakePair, tmp_path: Path) -> None:
    """A worker that takes over a v0 job from a dead one fails it clearly instead of
    paying for the answer again."""
    fake, served = fake_v0
    async with httpx2.AsyncClient(timeout=5) as http:
        backend = V0Backend(
            http, base_url=served.base_url, api_key=V0_KEY, inputs=InputStore(tmp_path)
        )
        now = datetime.now(UTC)
        job = Job(
            id="6d0c1b5e-0000-4000-8000-000000000001",
            backend="v0",
            model="v0-1.5-md",
            params=V0Params(prompt="x").model_dump(mode="json", exclude={"model"}),
            status=JobStatus.RUNNING,
            priority=0,
            deadline_at=now + timedelta(minutes=5),
            created_at=now,
            updated_at=now,
        )

        async def progress(_p: float | None, _m: str | None) -> None:
            return None

        handle = UpstreamHandle(task_id=f"v0-chat-{job.id}")
        with pytest.raises(errors.UpstreamError) as info:
            await backend.wait(job, handle, progress)
        assert info.value.code == ErrorCode.SUBMIT_INTERRUPTED
        # the same job submitted by this process runs
        submitted = await backend.submit(job)
        done = await backend.wait(job, submitted.handle, progress)
        assert done.details["tokens"] and [f.ref for f in done.files] == ["code", "answer"]
    assert len(fake.requests) == 1


# --- demo mode, HTTP API, MCP ------------------------------------------------------------------


async def test_demo_mode_simulates_v0(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(demo_mode="on")
    async with runtime(settings) as rt:
        backend = rt.service.backends["v0"]
        assert backend.enabled and backend.simulated
        health = await backend.health()
        assert health.status == "ok" and health.simulated
        job = await run(rt, v0("A landing page for a bakery", site_page_id="page-1"))
        assert job.status == JobStatus.SUCCEEDED, job.error
        assert job.simulated
        out = job.outputs[0]
        code = rt.service.store.resolve(out.path).read_text(encoding="utf-8")
        assert out.path.endswith(".tsx") and "(SIMULATED)" in code
        assert "export default function Page()" in code and '{"Bakery Morning"}' in code


async def test_disabled_without_key(make_settings: Callable[..., Settings]) -> None:
    async with runtime(make_settings(), pages=False) as rt:
        backend = rt.service.backends["v0"]
        assert not backend.enabled and backend.disabled_reason == "V0_API_KEY is not set"
        assert (await backend.health()).status == "disabled"
        with pytest.raises(errors.BackendDisabled, match="V0_API_KEY"):
            await rt.service.submit(v0())


async def test_models_and_mcp_generate(make_settings: Callable[..., Settings]) -> None:
    async with runtime(make_settings(demo_mode="on")) as rt:
        models = rt.service.models("v0")
        assert [(m.backend, m.model, m.max_active) for m in models] == [
            ("v0", "v0-1.5-md", 4),
            ("v0", "v0-1.5-lg", 4),
        ]
        assert "site_page_id" in models[0].params_schema["properties"]  # type: ignore[operator]
        server = build_mcp(lambda: rt.service)
        async with Client(server) as c:
            listed = await c.call_tool("list_models", {"backend": "v0"})
            assert not listed.is_error and listed.structured_content is not None
            assert {m["model"] for m in listed.structured_content["models"]} == {
                "v0-1.5-md",
                "v0-1.5-lg",
            }
            r = await c.call_tool(
                "generate",
                {
                    "backend": "v0",
                    "params": {"prompt": "A contact page", "site_page_id": "page-1"},
                    "wait": True,
                    "timeout_s": 30,
                },
            )
            assert not r.is_error, r.content
            job = r.structured_content
            assert job is not None and job["status"] == "succeeded", job
            assert job["backend"] == "v0" and job["outputs"]
            out = await c.call_tool("get_output", {"job_id": job["id"], "n": 0})
            assert not out.is_error, out.content
            text, link = out.content
            assert isinstance(text, TextContent) and isinstance(link, ResourceLink)
            assert text.text.startswith("// Generated by the fake v0 server")
            assert link.mime_type == "text/x-typescript"
            bad = await c.call_tool(
                "generate", {"backend": "v0", "params": {"prompt": "x", "model": "gpt-4o"}}
            )
            assert bad.is_error


def test_http_api_generate(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(demo_mode="on")
    app = create_app(settings)
    with (
        serve_in_thread(app, lifespan="on") as served,
        httpx2.Client(base_url=served.base_url, timeout=30) as client,
    ):
        body = {"backend": "v0", "params": {"prompt": "A bakery landing page"}}
        r = client.post("/api/generate", json=body)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        end = time.monotonic() + 30
        while (job := client.get(f"/api/jobs/{job_id}").json())["status"] not in (
            "succeeded",
            "failed",
        ):
            assert time.monotonic() < end
            time.sleep(0.05)
        assert job["status"] == "succeeded", job
        assert job["backend"] == "v0" and job["model"] == "v0-1.5-md"
        assert [o["mime_type"] for o in job["outputs"]] == [
            "text/x-typescript",
            "text/markdown",
        ]
        code = client.get(job["outputs"][0]["url"])
        assert code.status_code == 200
        assert code.headers["content-type"] == "text/x-typescript; charset=utf-8"
        assert "export default function Page()" in code.text
        bad = client.post(
            "/api/generate",
            json={"backend": "v0", "params": {"prompt": "x", "site_page_id": "nope"}},
        )
        assert bad.status_code == 422
        assert bad.headers["content-type"].startswith("application/problem+json")
        assert "site_page_id" in bad.text
        models = client.get("/api/models", params={"backend": "v0"})
        assert models.status_code == 200, models.text
        assert {m["model"] for m in models.json()} == {"v0-1.5-md", "v0-1.5-lg"}


def test_cli_generate_v0(tmp_path: Path) -> None:
    """`orchestrator generate v0 --wait` in demo mode prints the .tsx and .md paths;
    an invalid model is refused with the field named."""
    env = clean_environ(DATA_DIR=str(tmp_path / "data"), DEMO_MODE="on")
    picture = tmp_path / "p.png"
    picture.write_bytes(image())
    args = ["generate", "v0", "A bakery page", "--image", str(picture), "--wait"]
    done = run_cli(args, tmp_path, env, timeout=90)
    assert done.returncode == 0, done.stderr
    code_path, md_path = (Path(line) for line in done.stdout.split())
    assert code_path.suffix == ".tsx" and md_path.suffix == ".md"
    assert "export default function Page()" in code_path.read_text(encoding="utf-8")
    assert "<img " in code_path.read_text(encoding="utf-8")  # the image went along
    bad = run_cli(["generate", "v0", "x", "--model", "gpt-4o"], tmp_path, env)
    assert bad.returncode == 2 and "model" in bad.stderr
