"""ComfyUI jobs end to end against the fake ComfyUI served on 127.0.0.1: every job
kind, error mapping, cancel, a dropped websocket, a server restart, re-attach, and a
pool of two instances with one dying."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager

import httpx2
import pytest
from PIL import Image
from tests.integration.conftest import Pair

from orchestrator.api.app import create_app
from orchestrator.config import Settings
from orchestrator.domain.jobs import Job, JobStatus
from orchestrator.domain.params import (
    ComfyRawParams,
    ComfyRequest,
    Sd35Params,
    Sd35Request,
    SdxlParams,
    SdxlRequest,
    SvdParams,
    SvdRequest,
)
from orchestrator.engine.worker import WorkerOptions
from orchestrator.errors import ErrorCode
from orchestrator.runtime import Runtime, open_runtime
from orchestrator.storage import read_embedded
from orchestrator.testing.fake_comfy import FakeComfy
from orchestrator.testing.serve import serve_in_thread

RAW = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": 255},
    },
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "raw"}},
}


@asynccontextmanager
async def runtime(
    settings: Settings, worker: bool = True, grace: float = 5.0
) -> AsyncIterator[Runtime]:
    opts = WorkerOptions(
        concurrency=8, lease_s=settings.lease_s, poll_interval_s=0.05, shutdown_grace_s=grace
    )
    async with open_runtime(settings, run_worker=worker, worker_options=opts) as rt:
        yield rt


def sdxl(prompt: str = "a cat", **kw: object) -> SdxlRequest:
    params = {"prompt": prompt, "width": 128, "height": 128, "steps": 3, **kw}
    return SdxlRequest(params=SdxlParams.model_validate(params))


def png_b64(size: tuple[int, int] = (64, 64)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


async def until(pred: Callable[[], bool], limit_s: float = 10.0) -> None:
    for _ in range(int(limit_s / 0.02)):
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def running_on_upstream(rt: Runtime, job_id: str, fake: FakeComfy, hang: bool = True) -> Job:
    """Wait until the job's prompt runs on the fake (and, with ``hang``, sits at the
    hung node, so ``release()`` releases it)."""
    for _ in range(500):
        job = await rt.service.get_job(job_id)
        if (
            job.upstream is not None
            and fake.running_id == job.upstream.task_id
            and (fake.hung or not hang)
        ):
            return job
        await asyncio.sleep(0.02)
    raise AssertionError("the prompt never started on the fake")


async def test_sdxl_end_to_end(
    comfy_settings: Callable[..., Settings], comfy: Pair, db_url: str
) -> None:
    fake, _ = comfy
    async with runtime(comfy_settings(database_url=db_url)) as rt:
        job, _ = await rt.service.submit(sdxl("a lighthouse"))
        assert isinstance(job.params["seed"], int)  # fixed at submit: the job records it
        done = await rt.service.wait_for(job.id, 20)
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert done.upstream is not None and fake.submitted == [done.upstream.task_id]
    [out] = done.outputs
    assert out.mime_type == "image/png" and (out.width, out.height) == (128, 128)
    meta = read_embedded(rt.service.store.resolve(out.path))
    assert meta is not None and meta["instance"] == "default"
    assert meta["params"]["prompt"] == "a lighthouse"


async def test_sd35_svd_and_raw_workflows(
    comfy_settings: Callable[..., Settings], comfy: Pair
) -> None:
    async with runtime(comfy_settings()) as rt:
        sd35, _ = await rt.service.submit(
            Sd35Request(params=Sd35Params(prompt="x", variant="large-turbo", width=128, height=128))
        )
        svd, _ = await rt.service.submit(
            SvdRequest(
                params=SvdParams(init_image=png_b64(), frames=4, width=128, height=64, steps=2)
            )
        )
        raw, _ = await rt.service.submit(
            ComfyRequest(params=ComfyRawParams.model_validate({"workflow": RAW}))
        )
        jobs = [await rt.service.wait_for(j.id, 20) for j in (sd35, svd, raw)]
    assert [j.status for j in jobs] == [JobStatus.SUCCEEDED] * 3, [j.error for j in jobs]
    assert jobs[0].params["steps"] == 4 and jobs[0].params["checkpoint"] == (
        "sd3.5_large_turbo.safetensors"
    )
    [video] = jobs[1].outputs
    assert video.mime_type == "image/webp" and video.duration_s and video.duration_s > 0
    assert str(jobs[1].params["init_image"]).startswith("input:")
    assert comfy[0].uploads, "the init image was uploaded to the instance"
    assert (jobs[2].outputs[0].width, jobs[2].outputs[0].height) == (64, 48)


async def test_error_codes(
    comfy_settings: Callable[..., Settings], comfy: Pair, tmp_path_factory: pytest.TempPathFactory
) -> None:
    fake, _ = comfy
    fake.config.broken_models = {"sd_xl_refiner_1.0.safetensors"}
    bad_ckpt = dict(RAW)
    bad_ckpt["3"] = {
        "class_type": "CheckpointLoaderSimple",
        "inputs": {"ckpt_name": "nope.safetensors"},
    }
    bad_ckpt["4"] = {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["3", 2]}}
    bad_ckpt["5"] = {
        "class_type": "EmptyLatentImage",
        "inputs": {"width": 64, "height": 64, "batch_size": 1},
    }
    bad_ckpt["6"] = {
        "class_type": "SaveImage",
        "inputs": {"images": ["4", 0], "filename_prefix": "x"},
    }
    cases: list[tuple[object, ErrorCode, str]] = [
        (sdxl(checkpoint="missing.safetensors"), ErrorCode.MISSING_MODEL, "missing.safetensors"),
        (
            sdxl(checkpoint="sd_xl_refiner_1.0.safetensors"),
            ErrorCode.EXECUTION_ERROR,
            "node 4 (CheckpointLoaderSimple) failed: Error while deserializing header",
        ),
        (
            ComfyRequest(
                params=ComfyRawParams.model_validate(
                    {"workflow": {"1": {"class_type": "NoSuchNode", "inputs": {}}}}
                )
            ),
            ErrorCode.INVALID_WORKFLOW,
            "node 1: Cannot execute because node NoSuchNode does not exist",
        ),
        (
            ComfyRequest(params=ComfyRawParams.model_validate({"workflow": bad_ckpt})),
            ErrorCode.MISSING_MODEL,
            "node 3 (CheckpointLoaderSimple) input ckpt_name: 'nope.safetensors' is not installed",
        ),
    ]
    async with runtime(comfy_settings()) as rt:
        for req, code, needle in cases:
            job, _ = await rt.service.submit(req)  # type: ignore[arg-type]
            done = await rt.service.wait_for(job.id, 20)
            assert done.status == JobStatus.FAILED and done.error is not None
            assert done.error.code == code, done.error
            assert needle in done.error.message


async def test_cancel_pending_and_running(
    comfy_settings: Callable[..., Settings], comfy: Pair
) -> None:
    fake, _ = comfy
    fake.hang_next_node("KSampler")
    async with runtime(comfy_settings()) as rt:
        a, _ = await rt.service.submit(sdxl("first"))
        a = await running_on_upstream(rt, a.id, fake)
        b, _ = await rt.service.submit(sdxl("second"))
        await until(lambda: len(fake.queue_ids) == 2)
        await rt.service.cancel_job(b.id)
        b_done = await rt.service.wait_for(b.id, 10)
        assert b_done.status == JobStatus.CANCELED
        assert b_done.upstream is not None
        assert b_done.upstream.task_id not in fake.queue_ids
        assert fake.history(b_done.upstream.task_id) is None
        await rt.service.cancel_job(a.id)
        a_done = await rt.service.wait_for(a.id, 10)
        assert a_done.status == JobStatus.CANCELED
        assert a.upstream is not None
        entry = fake.history(a.upstream.task_id)
        assert entry is not None and entry["status"]["messages"][-1][0] == "execution_interrupted"
        events = await rt.service.events(a.id)
        assert "interrupted on ComfyUI" in (events[-1].message or "")


async def test_websocket_drop_mid_job(comfy_settings: Callable[..., Settings], comfy: Pair) -> None:
    fake, _ = comfy
    fake.hang_next_node("KSampler")
    async with runtime(comfy_settings()) as rt:
        job, _ = await rt.service.submit(sdxl("dropped"))
        await running_on_upstream(rt, job.id, fake)
        fake.drop_sockets()
        fake.release()
        done = await rt.service.wait_for(job.id, 20)
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert len(done.outputs) == 1 and len(fake.submitted) == 1


async def test_lost_events_are_reconciled(
    comfy_settings: Callable[..., Settings], comfy: Pair
) -> None:
    """The socket is refused for the whole run: history and queue still finish it."""
    fake, _ = comfy
    fake.hang_next_node("KSampler")
    async with runtime(comfy_settings()) as rt:
        job, _ = await rt.service.submit(sdxl("no events"))
        await running_on_upstream(rt, job.id, fake)
        fake.drop_sockets()
        fake.release()
        done = await rt.service.wait_for(job.id, 20)
    assert done.status == JobStatus.SUCCEEDED, done.error


async def test_restart_mid_job(comfy_settings: Callable[..., Settings], comfy: Pair) -> None:
    fake, _ = comfy
    fake.hang_next_node("KSampler")
    async with runtime(comfy_settings()) as rt:
        started, _ = await rt.service.submit(sdxl("was running"))
        started = await running_on_upstream(rt, started.id, fake)
        waiting, _ = await rt.service.submit(sdxl("was pending"))
        await until(lambda: len(fake.queue_ids) == 2)
        fake.restart()
        fake.release()
        lost = await rt.service.wait_for(started.id, 20)
        again = await rt.service.wait_for(waiting.id, 20)
    assert lost.status == JobStatus.FAILED and lost.error is not None
    assert lost.error.code == ErrorCode.PROMPT_LOST
    assert again.status == JobStatus.SUCCEEDED, again.error
    # requeued once, but a restart that forgot a prompt that never ran is not the
    # job's try: it does not count against its requeue limit
    assert again.attempts == 1 and len(again.outputs) == 1


async def test_reattach_after_our_restart(
    comfy_settings: Callable[..., Settings], comfy: Pair
) -> None:
    fake, _ = comfy
    fake.hang_next_node("KSampler")
    settings = comfy_settings()
    async with runtime(settings, grace=0.0) as rt:
        job, _ = await rt.service.submit(sdxl("survive us"))
        await running_on_upstream(rt, job.id, fake)
    fake.release()
    async with runtime(settings) as rt:
        done = await rt.service.wait_for(job.id, 20)
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert len(fake.submitted) == 1  # re-attached, never resubmitted


async def test_two_instances_share_load_and_survive_one_dying(
    make_settings: Callable[..., Settings], comfy: Pair, comfy2: Pair
) -> None:
    (a, sa), (b, sb) = comfy, comfy2
    a.config.node_delay_s = b.config.node_delay_s = 0.05
    settings = make_settings(
        comfy_instances=[
            {"name": "a", "url": sa.base_url, "max_in_flight": 2},
            {"name": "b", "url": sb.base_url, "max_in_flight": 2},
        ],
        comfy_reconcile_interval_s=0.3,
        comfy_health_interval_s=0.2,
    )
    async with runtime(settings) as rt:
        first = [(await rt.service.submit(sdxl(f"shared {i}")))[0] for i in range(6)]
        done = [await rt.service.wait_for(j.id, 30) for j in first]
        assert all(j.status == JobStatus.SUCCEEDED for j in done), [j.error for j in done]
        assert a.submitted and b.submitted, "both instances took work"
        # now instance a dies with work on it
        a.hang_next_node("KSampler")
        more = [(await rt.service.submit(sdxl(f"after {i}")))[0] for i in range(4)]
        await until(lambda: a.running_id is not None)
        a.refuse(True)
        finished = [await rt.service.wait_for(j.id, 30) for j in more]
    assert all(j.status.terminal for j in finished)
    ok = [j for j in finished if j.status == JobStatus.SUCCEEDED]
    failed = [j for j in finished if j.status == JobStatus.FAILED]
    assert len(ok) >= 3, [j.error for j in finished]
    for j in failed:  # only the prompt that had started on the dead instance
        assert j.error is not None and j.error.code == ErrorCode.BACKEND_UNAVAILABLE
    assert all(j.upstream is not None and j.upstream.instance == "b" for j in ok[-2:])


@pytest.fixture
def api(comfy_settings: Callable[..., Settings]) -> Iterator[httpx2.Client]:
    with ExitStack() as stack:
        served = stack.enter_context(serve_in_thread(create_app(comfy_settings()), lifespan="on"))
        yield stack.enter_context(httpx2.Client(base_url=served.base_url, timeout=30))


def test_comfy_routes(api: httpx2.Client) -> None:
    instances = api.get("/api/comfy/instances").json()
    assert [i["name"] for i in instances] == ["default"]
    inst = instances[0]
    assert inst["healthy"] and "sd_xl_base_1.0.safetensors" in inst["models"]
    assert all(r["ok"] for r in inst["templates"].values()), inst["templates"]
    info = api.get("/api/comfy/object_info", params={"node": "KSampler"}).json()
    assert "KSampler" in info
    assert api.get("/api/comfy/object_info", params={"instance": "nope"}).status_code == 404
    r = api.post("/api/comfy/prompt", params={"wait": "true"}, json={"workflow": RAW})
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
    queue = api.get("/api/comfy/queue").json()
    assert queue["default"] == {"queue_running": [], "queue_pending": []}
    gen = api.post(
        "/api/generate",
        json={
            "backend": "sdxl",
            "params": {"prompt": "via generate", "width": 128, "height": 128, "steps": 2},
        },
    )
    assert gen.status_code == 202 and gen.json()["backend"] == "sdxl"
    bad = api.post(
        "/api/generate", json={"backend": "sdxl", "params": {"prompt": "x", "width": 100}}
    )
    assert bad.status_code == 422
    assert any(e["loc"][-1] == "width" for e in bad.json()["errors"])
    health = api.get("/api/system/health").json()
    names = {b["name"]: b["status"] for b in health["backends"]}
    assert names["sdxl"] == "ok" and names["flux"] == "disabled"
    models = api.get("/api/flux/models").json()
    assert {m["model"] for m in models} >= {"flux-dev"}
    assert json.loads(json.dumps(instances))  # serialisable
