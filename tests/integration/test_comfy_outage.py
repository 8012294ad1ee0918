"""ComfyUI outages (issue 16): jobs that had not started executing wait for an instance
instead of failing, an instance is used again the moment it answers, a deadline stops the
prompt on ComfyUI before the job ends, and ``in_flight`` always comes back to 0.

Against the fake ComfyUI served on 127.0.0.1, which restarts (forgetting its queue),
refuses every request for a while, or hangs a node on demand.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from tests.integration.conftest import Pair
from tests.integration.test_comfy import (
    RAW,
    running_on_upstream,
    runtime,
    sdxl,
    until,
)

from orchestrator.backends.comfy import ComfyInstance
from orchestrator.config import Settings
from orchestrator.domain.jobs import Job, JobStatus
from orchestrator.domain.params import ComfyRawParams, ComfyRequest, SdxlRequest
from orchestrator.errors import ErrorCode
from orchestrator.runtime import Runtime

WAITING = "waiting for a ComfyUI instance"


def instance(rt: Runtime, name: str = "default") -> ComfyInstance:
    pool = rt.service.comfy
    assert pool is not None
    return pool.instances[name]


async def messages(rt: Runtime, job_id: str) -> list[str]:
    return [e.message or "" for e in await rt.service.events(job_id)]


async def wait_all(rt: Runtime, jobs: list[Job], limit_s: float) -> list[Job]:
    return [await rt.service.wait_for(j.id, limit_s) for j in jobs]


async def test_an_outage_holds_queued_jobs_until_comfy_is_back(
    comfy_settings: Callable[..., Settings], comfy: Pair
) -> None:
    """ComfyUI down: jobs wait (saying so in their events) instead of failing
    ``backend_unavailable`` within seconds, and run once it is back."""
    fake, _ = comfy
    async with runtime(comfy_settings()) as rt:
        fake.refuse(True)
        await until(lambda: not instance(rt).healthy)
        jobs = [(await rt.service.submit(sdxl(f"held {i}")))[0] for i in range(3)]
        await asyncio.sleep(2.0)  # several health checks and reconcile intervals
        now = [await rt.service.get_job(j.id) for j in jobs]
        assert [j.status for j in now] == [JobStatus.QUEUED] * 3, [j.error for j in now]
        for j in jobs:
            assert any(WAITING in m for m in await messages(rt, j.id))
        fake.refuse(False)
        done = await wait_all(rt, jobs, 20)
    assert [j.status for j in done] == [JobStatus.SUCCEEDED] * 3, [j.error for j in done]
    assert len(fake.submitted) == 3


async def test_jobs_queued_before_the_outage_say_they_wait_and_past_deadline_fail(
    comfy_settings: Callable[..., Settings], comfy: Pair, db_url: str
) -> None:
    """Jobs already queued when the instance goes down get the "waiting" event (one
    statement for all); a queued job whose deadline passes meanwhile fails
    ``deadline_exceeded`` although nothing claims jobs of the down backend."""
    fake, _ = comfy
    fake.hang_next_node("KSampler")
    async with runtime(comfy_settings(database_url=db_url, lease_s=2.0)) as rt:
        first, _ = await rt.service.submit(sdxl("occupies the instance"))
        await running_on_upstream(rt, first.id, fake)
        behind = [(await rt.service.submit(sdxl(f"behind {i}")))[0] for i in range(4)]
        short, _ = await rt.service.submit(with_deadline(sdxl("short deadline"), 1.0))
        await until(lambda: len(fake.queue_ids) >= 2)
        fake.refuse(True)
        await until(lambda: not instance(rt).healthy)
        still_queued = [
            j for j in behind if (await rt.service.get_job(j.id)).status == JobStatus.QUEUED
        ]
        assert still_queued, "some jobs were still in our queue when the instance went down"
        for j in still_queued:
            await until_async(lambda j=j: waits(rt, j.id), 5)
        expired = await rt.service.wait_for(short.id, 20)
        assert expired.status == JobStatus.FAILED and expired.error is not None
        assert expired.error.code == ErrorCode.DEADLINE_EXCEEDED
        fake.refuse(False)
        fake.release()
        done = await wait_all(rt, behind, 30)
    assert [j.status for j in done] == [JobStatus.SUCCEEDED] * 4, [j.error for j in done]


async def waits(rt: Runtime, job_id: str) -> bool:
    return any(WAITING in m for m in await messages(rt, job_id))


async def until_async(pred: Callable[[], Awaitable[bool]], limit_s: float) -> None:
    give_up = time.monotonic() + limit_s
    while not await pred():
        if time.monotonic() > give_up:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.05)


async def test_a_job_claimed_as_comfy_goes_down_waits_too(
    comfy_settings: Callable[..., Settings], comfy: Pair
) -> None:
    """The pool still believes the instance is up (its last check passed) when the job
    is claimed: the refused submit puts it back to wait, not to fail."""
    fake, _ = comfy
    async with runtime(comfy_settings(comfy_health_interval_s=60)) as rt:
        assert instance(rt).healthy
        fake.refuse(True)
        job, _ = await rt.service.submit(sdxl("claimed into an outage"))
        await until(lambda: not instance(rt).healthy)
        await asyncio.sleep(1.0)
        assert (await rt.service.get_job(job.id)).status == JobStatus.QUEUED
        assert any(WAITING in m for m in await messages(rt, job.id))
        fake.refuse(False)
        done = await rt.service.wait_for(job.id, 20)
    assert done.status == JobStatus.SUCCEEDED, done.error


async def test_an_instance_is_used_the_moment_it_is_back(
    comfy_settings: Callable[..., Settings], comfy: Pair
) -> None:
    """Health checks every 60 s: a job must not wait for the next one (nor fail, as it
    did in the first seconds after the server was back)."""
    fake, _ = comfy
    fake.refuse(True)
    async with runtime(comfy_settings(comfy_health_interval_s=60)) as rt:
        assert not instance(rt).healthy
        job, _ = await rt.service.submit(sdxl("right after"))
        await asyncio.sleep(0.5)
        fake.refuse(False)
        t0 = time.monotonic()
        done = await rt.service.wait_for(job.id, 30)
        took = time.monotonic() - t0
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert took < 15, f"the instance was used again only after {took:.1f} s"


async def test_a_pending_prompt_waits_through_a_slow_restart(
    comfy_settings: Callable[..., Settings], comfy: Pair
) -> None:
    """ComfyUI restarts and stays down for 3 s: the prompt that was executing is lost
    (it started), the one pending there is requeued and runs once the server is back."""
    fake, _ = comfy
    fake.hang_next_node("KSampler")
    async with runtime(comfy_settings()) as rt:
        started, _ = await rt.service.submit(sdxl("was running"))
        started = await running_on_upstream(rt, started.id, fake)
        pending, _ = await rt.service.submit(sdxl("was pending"))
        await until(lambda: len(fake.queue_ids) == 2)
        fake.restart(down_s=3.0)
        lost = await rt.service.wait_for(started.id, 30)
        again = await rt.service.wait_for(pending.id, 30)
        pending_events = await messages(rt, pending.id)
    assert lost.status == JobStatus.FAILED and lost.error is not None
    assert lost.error.code in (ErrorCode.PROMPT_LOST, ErrorCode.BACKEND_UNAVAILABLE)
    assert again.status == JobStatus.SUCCEEDED, again.error
    assert any(WAITING in m for m in pending_events), pending_events


async def test_a_restart_in_the_middle_of_a_100_job_batch_fails_only_what_had_started(
    comfy_settings: Callable[..., Settings], comfy: Pair
) -> None:
    fake, _ = comfy
    async with runtime(comfy_settings(comfy_max_in_flight=4)) as rt:
        jobs = [
            (await rt.service.submit(sdxl(f"batch {i}", width=64, height=64, steps=1)))[0]
            for i in range(100)
        ]
        await until(lambda: len(fake.history_ids) >= 25, 60)
        fake.hang_next_node("KSampler")
        await until(lambda: bool(fake.hung), 30)
        executing = fake.running_id  # the fake runs one prompt at a time
        fake.restart(down_s=2.0)
        done = await wait_all(rt, jobs, 120)
    failed = [j for j in done if j.status != JobStatus.SUCCEEDED]
    for j in failed:
        assert j.upstream is not None and j.upstream.task_id == executing, j.error
    assert len(failed) <= 1
    assert sum(j.status == JobStatus.SUCCEEDED for j in done) >= 99


def with_deadline(req: SdxlRequest, seconds: float) -> SdxlRequest:
    return req.model_copy(update={"deadline_s": seconds})


async def test_a_deadline_interrupts_the_running_prompt_before_the_job_ends(
    comfy_settings: Callable[..., Settings], comfy: Pair
) -> None:
    fake, _ = comfy
    fake.hang_next_node("KSampler")
    async with runtime(comfy_settings()) as rt:
        # deadlines with room for a loaded CI machine to get both prompts onto ComfyUI
        running, _ = await rt.service.submit(with_deadline(sdxl("too slow"), 6.0))
        running = await running_on_upstream(rt, running.id, fake)
        pending, _ = await rt.service.submit(with_deadline(sdxl("queued behind"), 6.0))
        await until(lambda: len(fake.queue_ids) == 2)
        assert running.upstream is not None
        done = await rt.service.wait_for(running.id, 20)
        # the moment the job is failed, ComfyUI no longer runs its prompt
        assert fake.running_id != running.upstream.task_id
        assert running.upstream.task_id not in fake.queue_ids
        late = await rt.service.wait_for(pending.id, 20)
        assert late.upstream is not None
        assert late.upstream.task_id not in fake.queue_ids
        await until(lambda: instance(rt).in_flight == 0)
    assert done.status == JobStatus.FAILED and done.error is not None
    assert done.error.code == ErrorCode.DEADLINE_EXCEEDED
    assert "interrupted on ComfyUI" in done.error.message, done.error.message
    entry = fake.history(running.upstream.task_id)
    assert entry is not None and entry["status"]["messages"][-1][0] == "execution_interrupted"
    assert late.status == JobStatus.FAILED and late.error is not None
    assert late.error.code == ErrorCode.DEADLINE_EXCEEDED


def raw(workflow: dict[str, object]) -> ComfyRequest:
    return ComfyRequest(params=ComfyRawParams.model_validate({"workflow": workflow}))


async def test_in_flight_returns_to_zero_after_any_mix(
    comfy_settings: Callable[..., Settings], comfy: Pair
) -> None:
    """Accepted, refused at submit (unknown node, missing model), canceled pending and
    running, failed while running: the instance's in_flight ends at 0 (a refused submit
    used to keep one unit forever, and least-busy routing avoided the instance)."""
    fake, _ = comfy
    fake.config.broken_models = {"sd_xl_refiner_1.0.safetensors"}
    missing = {  # a loader whose model is not installed, feeding the output
        "3": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "no.safetensors"}},
        "4": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["3", 2]}},
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1},
        },
        "6": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "x"}},
    }
    async with runtime(comfy_settings()) as rt:
        inst = instance(rt)
        refused = [
            (await rt.service.submit(raw({"1": {"class_type": "NoSuchNode", "inputs": {}}})))[0],
            (await rt.service.submit(raw(missing)))[0],
        ]
        for j in await wait_all(rt, refused, 20):
            assert j.status == JobStatus.FAILED and j.error is not None
            assert j.error.code in (ErrorCode.INVALID_WORKFLOW, ErrorCode.MISSING_MODEL)
        assert inst.in_flight == 0, "a refused submit kept its unit"
        ok, _ = await rt.service.submit(raw(RAW))
        broken, _ = await rt.service.submit(
            sdxl("broken", checkpoint="sd_xl_refiner_1.0.safetensors")
        )
        fake.hang_next_node("KSampler")
        hung, _ = await rt.service.submit(sdxl("hung"))
        await running_on_upstream(rt, hung.id, fake)
        queued, _ = await rt.service.submit(sdxl("queued"))
        await until(lambda: len(fake.queue_ids) >= 2)
        await rt.service.cancel_job(queued.id)
        await rt.service.cancel_job(hung.id)
        ends = await wait_all(rt, [ok, broken, hung, queued], 20)
        assert [j.status for j in ends] == [
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.CANCELED,
            JobStatus.CANCELED,
        ], [j.error for j in ends]
        await until(lambda: inst.in_flight == 0, 5)
        assert not inst.active and not inst.socket.listeners
