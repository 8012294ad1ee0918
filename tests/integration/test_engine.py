"""The worker against a fake BFL on 127.0.0.1: success, every failure mapping,
re-attach after a crash, deadlines, cancel, shutdown, and several workers."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import httpx2
import pytest
from tests.conftest import TEST_KEY

from orchestrator.backends.flux import FluxClient
from orchestrator.config import Settings
from orchestrator.db.engine import open_database
from orchestrator.db.jobs import JobRepo
from orchestrator.db.schema import jobs
from orchestrator.domain.jobs import Job, JobStatus, UpstreamHandle
from orchestrator.domain.params import FluxDevParams, FluxPro11Params, FluxRequest
from orchestrator.engine.worker import WorkerOptions
from orchestrator.errors import ErrorCode
from orchestrator.runtime import Runtime, open_runtime
from orchestrator.storage import read_embedded
from orchestrator.testing.fake_bfl import FakeBfl
from orchestrator.testing.serve import ServedApp

FakePair = tuple[FakeBfl, ServedApp]


@asynccontextmanager
async def runtime(
    settings: Settings, worker: bool = True, **opts: object
) -> AsyncIterator[Runtime]:
    options = WorkerOptions(
        concurrency=int(opts.get("concurrency", 16)),  # type: ignore[call-overload]
        lease_s=settings.lease_s,
        poll_interval_s=settings.worker_poll_interval_s,
        shutdown_grace_s=float(opts.get("grace", 5.0)),  # type: ignore[arg-type]
    )
    async with open_runtime(settings, run_worker=worker, worker_options=options) as rt:
        yield rt


def dev(prompt: str, **kw: object) -> FluxRequest:
    return FluxRequest(params=FluxDevParams(prompt=prompt, width=256, height=256, **kw))  # type: ignore[arg-type]


async def run_one(rt: Runtime, req: FluxRequest, limit_s: float = 20) -> Job:
    job, _ = await rt.service.submit(req)
    return await rt.service.wait_for(job.id, limit_s)


async def test_flux_job_end_to_end(
    settings_for: Callable[..., Settings], fake_bfl: FakePair, db_url: str
) -> None:
    fake, _ = fake_bfl
    settings = settings_for(database_url=db_url)
    async with runtime(settings) as rt:
        job = await run_one(rt, dev("a lighthouse at dusk", seed=7))
        assert job.status == JobStatus.SUCCEEDED, job.error
        assert job.cost == 2.5 and job.upstream is not None and job.progress == 1.0
        [out] = job.outputs
        path = rt.service.store.resolve(out.path)
        data = path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == out.sha256 and len(data) == out.size_bytes
        assert (out.width, out.height) == (256, 256) and out.mime_type == "image/jpeg"
        meta = read_embedded(path)
        assert meta is not None and meta["params"] == job.params and meta["job_id"] == job.id
        manifest = json.loads(rt.service.store.manifest_path(job).read_text())
        assert manifest["id"] == job.id and manifest["outputs"][0]["sha256"] == out.sha256
        events = await rt.service.events(job.id)
        kinds = [e.kind for e in events]
        assert kinds[0] == "created" and "upstream" in kinds and kinds[-1] == "transition"
        assert events[-1].status == JobStatus.SUCCEEDED
    assert fake.submission_count("a lighthouse at dusk") == 1
    assert fake.misrouted_polls == 0 and fake.downloads == 1
    assert not list((settings.output_path / ".partial").glob("*"))


@pytest.mark.parametrize(
    ("prompt", "setup", "code"),
    [
        ("[moderate:request] x", None, ErrorCode.MODERATED),
        ("[moderate:content] x", None, ErrorCode.MODERATED),
        ("[error] x", None, ErrorCode.GENERATION_FAILED),
        ("no credits", "credits", ErrorCode.INSUFFICIENT_CREDITS),
        ("bad key", "key", ErrorCode.UPSTREAM_AUTH),
        ("submit 500", "submit500", ErrorCode.UPSTREAM_ERROR),
        ("submit reset", "submitdrop", ErrorCode.SUBMIT_UNCERTAIN),
        ("submit bad json", "submitjson", ErrorCode.SUBMIT_UNCERTAIN),
        ("expired", "expired", ErrorCode.RESULT_EXPIRED),
        ("poll 403", "poll403", ErrorCode.UPSTREAM_AUTH),
        ("poll always 502", "poll502forever", ErrorCode.UPSTREAM_UNAVAILABLE),
    ],
)
async def test_failures_map_to_codes(
    settings_for: Callable[..., Settings],
    fake_bfl: FakePair,
    prompt: str,
    setup: str | None,
    code: ErrorCode,
) -> None:
    fake, _ = fake_bfl
    extra: dict[str, object] = {}
    if setup == "credits":
        fake.credits = 0
    elif setup == "key":
        extra["bfl_api_key"] = "wrong-key-0000"
    elif setup == "submit500":
        fake.faults.add("submit", status=500)
    elif setup == "submitdrop":
        fake.faults.add("submit", drop=True, process=True)
    elif setup == "submitjson":
        fake.faults.add("submit", status=200, body="{not json", process=True)
    elif setup == "expired":
        fake.config.sample_ttl_s = 0.0
    elif setup == "poll403":
        fake.faults.add("poll", status=403, body='{"detail":"Not authenticated"}')
    elif setup == "poll502forever":
        fake.faults.add("poll", status=502, body="<html>bad gateway</html>", count=50)
    async with runtime(settings_for(**extra)) as rt:
        job = await run_one(rt, dev(prompt))
    assert job.status == JobStatus.FAILED
    assert job.error is not None and job.error.code == code, job.error
    if "moderate" in prompt:
        assert job.error.details["stage"] in ("request", "content")
    assert fake.submission_count(prompt) <= 1


async def test_transient_faults_are_retried(
    settings_for: Callable[..., Settings], fake_bfl: FakePair
) -> None:
    fake, _ = fake_bfl
    fake.faults.add("submit", status=429, headers={"Retry-After": "0"}, count=2)
    fake.faults.add("poll", status=502, body="<html>bad gateway</html>")
    fake.faults.add("poll", status=200, body="{not json")
    fake.faults.add("download", status=503)
    async with runtime(settings_for()) as rt:
        job = await run_one(rt, dev("retry me"))
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert fake.submission_count("retry me") == 1


async def test_deadline(settings_for: Callable[..., Settings], fake_bfl: FakePair) -> None:
    fake, _ = fake_bfl
    fake.config.task_duration_s = 30
    async with runtime(settings_for()) as rt:
        started = datetime.now(UTC)
        req = dev("slow")
        req.deadline_s = 0.5
        job = await run_one(rt, req)
    assert job.status == JobStatus.FAILED and job.error is not None
    assert job.error.code == ErrorCode.DEADLINE_EXCEEDED
    assert datetime.now(UTC) - started < timedelta(seconds=5)


def dead_worker_id() -> str:
    """The worker id of a process of this machine that has exited (a killed worker)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return f"{socket.gethostname()[:32]}:{child.pid}:dead00"


async def _crashed_job(
    settings: Settings, prompt: str, *, submit: bool, mark: bool, fake: FakePair
) -> str:
    """Leave a job as a killed worker would: claimed, maybe submitting, maybe with
    its upstream handle stored, lease expired."""
    db = await open_database(settings.db_url)
    try:
        repo = JobRepo(db)
        async with runtime(settings, worker=False) as rt:
            job, _ = await rt.service.submit(dev(prompt))
        [claimed] = await repo.claim(dead_worker_id(), 30, 1, lambda b, m: [(b, 100)])
        if mark:
            await repo.mark_submitting(claimed.job.id, claimed.lease)
        if submit:
            async with httpx2.AsyncClient() as http:
                client = FluxClient(http, fake[1].base_url, TEST_KEY)
                body = FluxDevParams(prompt=prompt, width=256, height=256).upstream_body()
                sub = await client.submit("flux-dev", body)
            await repo.set_upstream(
                claimed.job.id,
                claimed.lease,
                UpstreamHandle(task_id=sub.id, polling_url=sub.polling_url),
                sub.cost,
            )
        async with db.write() as conn:
            await conn.execute(
                jobs.update()
                .where(jobs.c.id == job.id)
                .values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )
        return job.id
    finally:
        await db.dispose()


async def test_reattach_never_resubmits(
    settings_for: Callable[..., Settings], fake_bfl: FakePair, db_url: str
) -> None:
    fake, _ = fake_bfl
    settings = settings_for(database_url=db_url)
    job_id = await _crashed_job(settings, "paid once", submit=True, mark=True, fake=fake_bfl)
    assert fake.submission_count("paid once") == 1
    async with runtime(settings) as rt:
        job = await rt.service.wait_for(job_id, 20)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert fake.submission_count("paid once") == 1
    assert len(job.outputs) == 1


async def test_a_cancel_of_a_job_crashed_mid_submit_says_it_may_be_billed(
    settings_for: Callable[..., Settings], fake_bfl: FakePair
) -> None:
    """The worker died mid-submit and the user canceled: the job used to say "canceled
    before anything was sent to BFL" and cost 0."""
    settings = settings_for()
    job_id = await _crashed_job(
        settings, "cancel maybe sent", submit=False, mark=True, fake=fake_bfl
    )
    async with runtime(settings, worker=False) as rt:
        await rt.service.repo.request_cancel(job_id)  # flagged: the job is running
    async with runtime(settings) as rt:
        job = await rt.service.wait_for(job_id, 20)
        events = [e.message or "" for e in await rt.service.events(job_id)]
    assert job.status == JobStatus.CANCELED
    assert not any("before anything was sent" in m for m in events), events
    assert any("may have accepted and billed it" in m for m in events), events
    assert job.cost == 2.5  # a submit was sent: counted as billed


async def test_crash_mid_submit_is_not_resubmitted(
    settings_for: Callable[..., Settings], fake_bfl: FakePair
) -> None:
    fake, _ = fake_bfl
    settings = settings_for()
    job_id = await _crashed_job(settings, "maybe sent", submit=False, mark=True, fake=fake_bfl)
    async with runtime(settings) as rt:
        job = await rt.service.wait_for(job_id, 20)
    assert job.status == JobStatus.FAILED and job.error is not None
    assert job.error.code == ErrorCode.SUBMIT_INTERRUPTED
    assert fake.submission_count("maybe sent") == 0


async def test_crash_before_submit_is_requeued(
    settings_for: Callable[..., Settings], fake_bfl: FakePair
) -> None:
    fake, _ = fake_bfl
    settings = settings_for()
    job_id = await _crashed_job(settings, "never sent", submit=False, mark=False, fake=fake_bfl)
    async with runtime(settings) as rt:
        job = await rt.service.wait_for(job_id, 20)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.attempts == 2 and fake.submission_count("never sent") == 1


async def _wait_running_upstream(rt: Runtime, job_id: str) -> Job:
    for _ in range(400):
        job = await rt.service.get_job(job_id)
        if job.status == JobStatus.RUNNING and job.upstream is not None:
            return job
        await asyncio.sleep(0.02)
    raise AssertionError("job never reached upstream")


async def test_cancel_running_and_queued(
    settings_for: Callable[..., Settings], fake_bfl: FakePair
) -> None:
    fake, _ = fake_bfl
    fake.config.task_duration_s = 30
    async with runtime(settings_for()) as rt:
        job, _ = await rt.service.submit(dev("cancel me"))
        await _wait_running_upstream(rt, job.id)
        await rt.service.cancel_job(job.id)
        done = await rt.service.wait_for(job.id, 5)
        assert done.status == JobStatus.CANCELED
        events = await rt.service.events(job.id)
        assert "may still" in (events[-1].message or "")
    async with runtime(settings_for(), worker=False) as rt:
        queued, _ = await rt.service.submit(dev("never runs"))
        assert (await rt.service.cancel_job(queued.id)).status == JobStatus.CANCELED
    assert fake.submission_count("never runs") == 0


async def test_shutdown_leaves_jobs_reattachable(
    settings_for: Callable[..., Settings], fake_bfl: FakePair
) -> None:
    fake, _ = fake_bfl
    fake.config.task_duration_s = 1.0
    settings = settings_for()
    async with runtime(settings, grace=0.0) as rt:
        job, _ = await rt.service.submit(dev("survive restart"))
        await _wait_running_upstream(rt, job.id)
    async with runtime(settings, worker=False) as rt:
        left = await rt.service.get_job(job.id)
        assert left.status == JobStatus.RUNNING and left.upstream is not None
    async with runtime(settings) as rt:
        done = await rt.service.wait_for(job.id, 20)
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert fake.submission_count("survive restart") == 1


async def test_two_workers_share_one_database(
    settings_for: Callable[..., Settings], fake_bfl: FakePair, db_url: str
) -> None:
    fake, _ = fake_bfl
    fake.config.task_duration_s = 0.05
    settings = settings_for(database_url=db_url)
    async with runtime(settings, concurrency=4) as a, runtime(settings, concurrency=4) as b:
        ids = []
        for i in range(24):
            rt = a if i % 2 else b
            job, _ = await rt.service.submit(
                FluxRequest(params=FluxPro11Params(prompt=f"shared {i}", width=256, height=256))
            )
            ids.append(job.id)
        finished = [await a.service.wait_for(i, 30) for i in ids]
        events = [await a.service.events(i) for i in ids]
    assert all(j.status == JobStatus.SUCCEEDED for j in finished), [j.error for j in finished]
    assert all(fake.submission_count(f"shared {i}") == 1 for i in range(24))
    claimers = {
        e.message
        for evs in events
        for e in evs
        if e.kind == "transition" and e.status == JobStatus.RUNNING
    }
    assert len(claimers) == 2  # both workers took part


async def test_waiter_sees_a_job_finished_by_another_runtime(
    settings_for: Callable[..., Settings], fake_bfl: FakePair, db_url: str
) -> None:
    """A waiter in a runtime without a worker is woken by the poller when a worker of
    another runtime (another process, in production) finishes the job: the hub of
    the waiting runtime never hears of it. Waits with no timeout of its own, so a
    broken poller hangs it until the guard below fails the test."""
    fake, _ = fake_bfl
    fake.config.task_duration_s = 0.3
    settings = settings_for(database_url=db_url)
    async with runtime(settings, worker=False) as waiter_rt, runtime(settings) as worker_rt:
        job, _ = await waiter_rt.service.submit(dev("finished elsewhere"))
        done = await asyncio.wait_for(waiter_rt.service.wait_for(job.id, None), 15)
        assert done.status == JobStatus.SUCCEEDED, done.error
        assert job.id not in waiter_rt.service.hub.local_jobs
        assert (await worker_rt.service.get_job(job.id)).status == JobStatus.SUCCEEDED
    assert fake.submission_count("finished elsewhere") == 1
