"""The claim marks a FLUX job as submitting (no transaction of its own for that): a job
the worker ends before its submit must not keep the mark, or the ledger would count a
task nobody sent as billed, and recovery would treat it as possibly paid."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from tests.conftest import TEST_KEY

from orchestrator.config import Settings
from orchestrator.db.jobs import NewJob
from orchestrator.db.schema import jobs
from orchestrator.domain.jobs import JobStatus
from orchestrator.engine.worker import WorkerOptions
from orchestrator.errors import ErrorCode
from orchestrator.runtime import open_runtime
from orchestrator.testing.fake_bfl import FakeBfl
from orchestrator.testing.serve import ServedApp


async def test_a_job_ended_before_its_submit_is_not_billed(
    make_settings: Callable[..., Settings], fake_bfl: tuple[FakeBfl, ServedApp], db_url: str
) -> None:
    fake, served = fake_bfl
    settings = make_settings(
        bfl_api_key=TEST_KEY, flux_base_url=served.base_url, database_url=db_url
    )
    options = WorkerOptions(concurrency=2, lease_s=30, poll_interval_s=0.05)
    async with open_runtime(settings, run_worker=False) as rt:
        repo = rt.service.repo
        late = NewJob(
            id=str(uuid.uuid4()),
            backend="flux",
            model="flux-dev",
            params={"prompt": "too late", "width": 256, "height": 256},
            priority=0,
            deadline_at=datetime.now(UTC) - timedelta(seconds=1),  # already passed
            idempotency_key=None,
            request_hash=None,
            simulated=False,
        )
        await repo.create(late)
    async with open_runtime(settings, run_worker=True, worker_options=options) as rt:
        job = await rt.service.wait_for(late.id, 10)

        def row(conn: sa.Connection) -> sa.Row[tuple[object, ...]]:
            q = sa.select(jobs.c.submitting_at, jobs.c.cost).where(jobs.c.id == late.id)
            return conn.execute(q).one()

        stored = await rt.service.db.run(row)
    await asyncio.sleep(0)
    assert job.status == JobStatus.FAILED and job.error is not None
    assert job.error.code == ErrorCode.DEADLINE_EXCEEDED
    assert fake.submissions == []
    assert stored.submitting_at is None, "the claim's submit mark was left on a job never sent"
    assert not stored.cost, f"a job never sent was counted as billed: {stored.cost}"
