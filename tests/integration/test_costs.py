"""The cost ledger end to end: costs recorded per job, totals via API and CLI, and
budgets refusing jobs before anything is spent (also under concurrent submits)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from orchestrator import errors
from orchestrator.api.app import create_app
from orchestrator.cli import app as cli_app
from orchestrator.config import Settings
from orchestrator.domain import auth
from orchestrator.domain.jobs import JobStatus
from orchestrator.domain.params import FluxDevParams, FluxRequest, SdxlParams, SdxlRequest
from orchestrator.engine.worker import WorkerOptions
from orchestrator.runtime import Runtime, open_runtime
from orchestrator.testing.fake_bfl import FakeBfl
from orchestrator.testing.serve import ServedApp

FakePair = tuple[FakeBfl, ServedApp]


@asynccontextmanager
async def runtime(settings: Settings, worker: bool = True) -> AsyncIterator[Runtime]:
    options = WorkerOptions(
        concurrency=8,
        lease_s=settings.lease_s,
        poll_interval_s=settings.worker_poll_interval_s,
        shutdown_grace_s=2.0,
    )
    async with open_runtime(settings, run_worker=worker, worker_options=options) as rt:
        yield rt


def principal(token_id: str, scope: auth.Scope) -> auth.Principal:
    return auth.Principal(token_id=token_id, name="t", scope=scope, via="token")


def dev(prompt: str) -> FluxRequest:
    return FluxRequest(params=FluxDevParams(prompt=prompt, width=256, height=256))


async def test_flux_costs_are_recorded_and_totalled(
    settings_for: Callable[..., Settings], db_url: str
) -> None:
    settings = settings_for(database_url=db_url)
    async with runtime(settings) as rt:
        ids = []
        for i in range(3):
            job, _ = await rt.service.submit(dev(f"costly {i}"))
            assert job.cost_estimate == 2.5  # flux-dev's list price, reserved
            ids.append(job.id)
        for job_id in ids:
            done = await rt.service.wait_for(job_id, 20)
            assert done.status == JobStatus.SUCCEEDED, done.error
            assert done.cost == 2.5  # the fake BFL's quoted cost for flux-dev
        report = await rt.service.ledger.report(group_by=["backend", "model"])
        [row] = report.rows
        assert (row.backend, row.model, row.jobs, row.cost) == ("flux", "flux-dev", 3, 7.5)
        assert report.total == 7.5
        [glob] = await rt.service.ledger.budgets()
        assert glob.scope == "global" and glob.daily_limit is None
        assert glob.spent == 7.5 and glob.reserved == 0


async def test_unbilled_failure_costs_nothing(settings_for: Callable[..., Settings]) -> None:
    async with runtime(settings_for()) as rt:
        job, _ = await rt.service.submit(dev("a cat [moderate:content]"))
        done = await rt.service.wait_for(job.id, 20)
        assert done.status == JobStatus.FAILED
        assert done.cost == 0.0
        assert done.error is not None and done.error.code == errors.ErrorCode.MODERATED


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        ({"status": 403, "body": '{"detail": "Forbidden"}'}, errors.ErrorCode.UPSTREAM_AUTH),
        (
            {"status": 200, "body": '{"id": "x", "status": "Task not found", "result": null}'},
            errors.ErrorCode.TASK_NOT_FOUND,
        ),
    ],
    ids=["poll-403", "task-not-found"],
)
async def test_an_accepted_task_lost_from_sight_is_billed(
    settings_for: Callable[..., Settings],
    fake_bfl: FakePair,
    answer: dict[str, object],
    code: errors.ErrorCode,
) -> None:
    """BFL accepted (and billed) the task; polling it then answers 403 or "Task not
    found". The ledger used to record 0."""
    fake, _ = fake_bfl
    fake.faults.add("poll", count=50, **answer)  # type: ignore[arg-type]
    async with runtime(settings_for()) as rt:
        job, _ = await rt.service.submit(dev(f"lost from sight {code.value}"))
        done = await rt.service.wait_for(job.id, 20)
    assert done.status == JobStatus.FAILED and done.error is not None
    assert done.error.code == code
    assert fake.submission_count(f"lost from sight {code.value}") == 1
    assert done.cost == 2.5  # BFL's quote for flux-dev


async def test_a_deadline_during_the_submit_is_billed(
    settings_for: Callable[..., Settings], fake_bfl: FakePair
) -> None:
    """The deadline cuts a submit BFL has accepted (and billed) but not yet answered:
    no handle is stored, yet the job costs the model's price (issue 12)."""
    fake, _ = fake_bfl
    fake.faults.add("submit", process=True, hang=True)  # accepted, never answered
    async with runtime(settings_for()) as rt:
        req = dev("deadline mid-submit").model_copy(update={"deadline_s": 0.3})
        job, _ = await rt.service.submit(req)
        done = await rt.service.wait_for(job.id, 20)
    assert done.error is not None and done.error.code == errors.ErrorCode.DEADLINE_EXCEEDED
    assert done.upstream is None and fake.submission_count("deadline mid-submit") == 1
    assert done.cost == 2.5


async def test_a_first_comfy_job_is_held_to_the_budget(
    make_settings: Callable[..., Settings],
) -> None:
    """A ComfyUI model with no history used to be estimated at 0, so its first job
    slipped past any budget."""
    settings = make_settings(demo_mode="on", comfy_gpu_second_rate=1.0, daily_budget=10)
    async with runtime(settings, worker=False) as rt:
        req = SdxlRequest(params=SdxlParams(prompt="a kiln", width=512, height=512, steps=2))
        with pytest.raises(errors.BudgetExceeded) as info:
            await rt.service.submit(req)
    assert info.value.extra["estimate"] == 30.0


async def test_global_budget_refuses_before_anything_is_spent(
    settings_for: Callable[..., Settings], fake_bfl: FakePair, db_url: str
) -> None:
    """DAILY_BUDGET=6 with flux-dev at 2.5: two jobs fit, the third is refused with a
    402 problem, and the fake BFL never sees it."""
    fake, _ = fake_bfl
    settings = settings_for(database_url=db_url, daily_budget=6)
    app = create_app(settings)
    transport = httpx2.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client,
    ):
        body = {"backend": "flux", "params": {"model": "flux-dev", "prompt": "p", "width": 256}}
        accepted = []
        for _ in range(2):
            r = await client.post("/api/generate", json=body)
            assert r.status_code == 202, r.text
            accepted.append(r.json()["id"])
        r = await client.post("/api/generate", json=body)
        assert r.status_code == 402, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        problem = r.json()
        assert problem["type"].endswith("budget-exceeded")
        assert problem["budget"] == "global" and problem["daily_limit"] == 6
        assert problem["estimate"] == 2.5
        assert "global daily budget of 6 credits" in problem["detail"]
        rt: Runtime = app.state.runtime
        for job_id in accepted:
            assert (await rt.service.wait_for(job_id, 20)).status == JobStatus.SUCCEEDED
        # Still refused once the two have run (5 spent + 2.5 > 6), and so is a retry.
        r = await client.post("/api/generate", json=body)
        assert r.status_code == 402
        r = await client.post(f"/api/jobs/{accepted[0]}/retry")
        assert r.status_code == 402 and r.json()["estimate"] == 2.5
        # Only the two accepted jobs ever reached BFL.
        assert len(fake.submissions) == 2
        page = await rt.service.list_jobs()
        assert len(page.items) == 2  # refused jobs leave no row
        r = await client.get("/api/budgets")
        assert r.status_code == 200
        [glob] = r.json()
        assert glob["spent"] == 5.0 and glob["remaining"] == 1.0


async def test_budget_holds_under_concurrent_submits(
    settings_for: Callable[..., Settings], db_url: str
) -> None:
    """Twenty submits at once against room for four: exactly four get in (the check
    runs inside the serialised insert, so none slips past)."""
    settings = settings_for(database_url=db_url, daily_budget=10)
    async with runtime(settings, worker=False) as rt:

        async def one(i: int) -> bool:
            try:
                await rt.service.submit(dev(f"race {i}"))
            except errors.BudgetExceeded:
                return False
            return True

        results = await asyncio.gather(*(one(i) for i in range(20)))
        assert sum(results) == 4
        [glob] = await rt.service.ledger.budgets()
        assert glob.reserved == 10.0 and glob.remaining == 0.0


async def test_token_budget_refuses_that_token_only(
    settings_for: Callable[..., Settings], db_url: str
) -> None:
    settings = settings_for(database_url=db_url)
    async with runtime(settings, worker=False) as rt:
        tight = (await rt.service.tokens.create("tight", auth.Scope.GENERATE)).token
        free = (await rt.service.tokens.create("free", auth.Scope.GENERATE)).token
        tight_p = principal(tight.id, auth.Scope.GENERATE)
        free_p = principal(free.id, auth.Scope.GENERATE)
        status = await rt.service.set_token_budget(tight.id, 5)
        assert status.daily_limit == 5 and status.remaining == 5
        for _ in range(2):
            await rt.service.submit(dev("tight"), principal=tight_p)
        with pytest.raises(errors.BudgetExceeded) as info:
            await rt.service.submit(dev("tight"), principal=tight_p)
        assert info.value.extra["budget"] == "token"
        assert info.value.extra["token_id"] == tight.id
        for _ in range(3):  # the other token has no budget
            await rt.service.submit(dev("free"), principal=free_p)
        # An idempotent repeat of an accepted job is not a new spend.
        key_job, created = await rt.service.submit(dev("again"), "k1", principal=free_p)
        await rt.service.set_token_budget(free.id, 0)
        same, created2 = await rt.service.submit(dev("again"), "k1", principal=free_p)
        assert created and not created2 and same.id == key_job.id
        report = await rt.service.ledger.report(group_by=["token"])
        by_token = {r.token_id: (r.jobs, r.cost) for r in report.rows}
        # queued jobs have no final cost yet; their estimates are reserved
        assert by_token == {tight.id: (2, 0.0), free.id: (4, 0.0)}
        budgets = {b.token_id: b for b in await rt.service.ledger.budgets()}
        assert budgets[tight.id].reserved == 5.0 and budgets[tight.id].remaining == 0.0
        await rt.service.clear_token_budget(tight.id)
        await rt.service.submit(dev("tight"), principal=tight_p)
        with pytest.raises(errors.NotFound):
            await rt.service.set_token_budget("no-such-token", 1)
        with pytest.raises(errors.Forbidden):
            await rt.service.set_token_budget(
                free.id, 1, principal=principal(free.id, auth.Scope.READ)
            )


async def test_comfy_jobs_cost_gpu_seconds(
    make_settings: Callable[..., Settings], tmp_path: object
) -> None:
    """Demo mode's ComfyUI fake stamps its history messages; at 2 credits per
    GPU-second the job costs exactly that times its recorded GPU-seconds."""
    settings = make_settings(demo_mode="on", comfy_gpu_second_rate=2.0)
    async with runtime(settings) as rt:
        req = SdxlRequest(params=SdxlParams(prompt="a kiln", width=512, height=512, steps=2))
        job, _ = await rt.service.submit(req)
        assert job.cost_estimate == 60.0  # no history yet: COMFY_ESTIMATE_GPU_S (30) at 2
        done = await rt.service.wait_for(job.id, 30)
        assert done.status == JobStatus.SUCCEEDED, done.error
        assert done.gpu_seconds is not None and done.gpu_seconds > 0
        assert done.cost == pytest.approx(round(done.gpu_seconds * 2.0, 6))
        second, _ = await rt.service.submit(req)
        assert second.cost_estimate == pytest.approx(round(done.gpu_seconds * 2.0, 6))


async def test_costs_api_and_cli(settings_for: Callable[..., Settings], tmp_path: object) -> None:
    settings = settings_for()
    async with runtime(settings) as rt:
        job, _ = await rt.service.submit(dev("for the report"))
        assert (await rt.service.wait_for(job.id, 20)).cost == 2.5
    app = create_app(settings, run_worker=False)
    transport = httpx2.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client,
    ):
        r = await client.get("/api/costs", params=[("by", "day"), ("by", "model")])
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["currency"] == "credits" and doc["total"] == 2.5
        assert doc["group_by"] == ["day", "model"]
        assert doc["rows"][0]["model"] == "flux-dev"
        r = await client.get("/api/costs", params={"by": "colour"})
        assert r.status_code == 422
        r = await client.get("/api/costs", params={"until": "0001-01-01"})
        assert r.status_code == 200 and r.json()["since"] == "0001-01-01"
        for bad in ("0", "2026-1-1", "yesterday", "9999-12-31"):
            r = await client.get("/api/costs", params={"until": bad})
            assert r.status_code == 422, bad
        r = await client.get("/api/costs", params={"since": "2026-02-01", "until": "2026-01-01"})
        assert r.status_code == 422
    env = {
        "ORCHESTRATOR_CONFIG": str(settings.config_file),
        "DATA_DIR": str(settings.data_path),
        "DEMO_MODE": "off",
    }
    runner = CliRunner()
    res = await asyncio.to_thread(
        runner.invoke, cli_app, ["costs", "--by", "backend", "--json"], env=env
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["rows"][0]["backend"] == "flux" and doc["rows"][0]["cost"] == 2.5
    res = await asyncio.to_thread(runner.invoke, cli_app, ["costs", "--by", "model"], env=env)
    assert res.exit_code == 0 and "flux-dev" in res.stdout and "total: 2.5 credits" in res.stdout
    res = await asyncio.to_thread(runner.invoke, cli_app, ["costs", "--by", "colour"], env=env)
    assert res.exit_code == 2
    res = await asyncio.to_thread(runner.invoke, cli_app, ["budget", "list", "--json"], env=env)
    assert res.exit_code == 0 and json.loads(res.stdout)[0]["scope"] == "global"


async def test_retries_and_phases_are_counted(
    settings_for: Callable[..., Settings], fake_bfl: FakePair
) -> None:
    """A poll answered 503 twice is retried (stamina) and counted by its cause."""
    fake, _ = fake_bfl
    fake.faults.add("poll", status=503, count=2)
    async with runtime(settings_for()) as rt:
        job, _ = await rt.service.submit(dev("retry me"))
        assert (await rt.service.wait_for(job.id, 20)).status == JobStatus.SUCCEEDED
        families = {f.name: f for f in text_string_to_metric_families(rt.metrics.render().decode())}
    retries = [
        s for s in families["orchestrator_upstream_retries"].samples if s.name.endswith("_total")
    ]
    assert sum(s.value for s in retries) == 2
    assert {s.labels["error"] for s in retries} == {"TransientUpstreamError"}
