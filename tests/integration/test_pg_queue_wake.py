"""PostgreSQL as the bus (issue 17): an idle ``orchestrator worker`` in another process
wakes the moment a job is queued (NOTIFY on ``orchestrator_queue``), not at its next
poll. The worker here polls every 30 s; every job below must start long before a poll
could have fired, so only the NOTIFY can have woken it.

Queued two ways: by a runtime in this test process (what ``serve --no-worker`` does),
and by a one-shot ``orchestrator generate`` process that exits right after queueing
(its NOTIFY must go out before it exits)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from tests.conftest import TEST_KEY
from tests.integration.test_cli import clean_environ, run
from tests.integration.test_worker_command import started
from tests.reliability.test_crash_recovery import pg_url

from orchestrator.config import Settings
from orchestrator.domain.jobs import Job
from orchestrator.domain.params import FluxDevParams, FluxRequest
from orchestrator.runtime import Runtime, open_runtime
from orchestrator.testing.fake_bfl import FakeBfl
from orchestrator.testing.serve import ServedApp

__all__ = ["pg_url"]  # the fixture, re-used

pytestmark = pytest.mark.postgres

POLL_S = 30.0
JOBS = 3


async def _started_within(rt: Runtime, job_id: str, limit_s: float) -> Job:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        job = await rt.service.get_job(job_id)
        if job.started_at is not None:
            return job
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} did not start within {limit_s} s: no wake-up")


async def test_an_idle_worker_process_wakes_when_another_process_queues(
    tmp_path: Path,
    pg_url: str,
    make_settings: Callable[..., Settings],
    fake_bfl: tuple[FakeBfl, ServedApp],
) -> None:
    fake, served = fake_bfl
    env = clean_environ(
        ORCHESTRATOR_CONFIG=str(tmp_path / "worker.toml"),
        DATA_DIR=str(tmp_path / "worker-data"),
        DATABASE_URL=pg_url,
        DEMO_MODE="off",
        BFL_API_KEY=TEST_KEY,
        FLUX_BASE_URL=served.base_url,
        FLUX_POLL_INTERVAL_S="0.05",
        WORKER_POLL_INTERVAL_S=str(POLL_S),
        LOG_FORMAT="json",
        LOG_LEVEL="INFO",
    )
    settings = make_settings(
        database_url=pg_url, bfl_api_key=TEST_KEY, flux_base_url=served.base_url
    )
    args = ["worker", "--backends", "flux"]
    with started(args, env, tmp_path / "worker.log") as worker:
        worker.wait_log("worker started")
        t0 = time.monotonic()
        async with open_runtime(settings, run_worker=False) as rt:
            claimed: list[Job] = []
            for i in range(JOBS):
                req = FluxRequest(params=FluxDevParams(prompt=f"wake {i}", width=256, height=256))
                job, _ = await rt.service.submit(req)
                claimed.append(await _started_within(rt, job.id, 10.0))
            # and from a process that exits right after queueing
            cli_env = {**env, "DATA_DIR": str(tmp_path / "cli-data")}
            r = run(["generate", "flux", "from the cli", "--model", "flux-dev"], tmp_path, cli_env)
            assert r.returncode == 0, r.stderr
            claimed.append(await _started_within(rt, r.stdout.strip().splitlines()[-1], 10.0))
            elapsed = time.monotonic() - t0
            # every job started before the worker's first poll could have fired
            assert elapsed < POLL_S, f"{elapsed:.1f} s: the jobs waited for a poll"
            for job in claimed:
                assert isinstance(job.started_at, datetime)
                assert (job.started_at - job.created_at).total_seconds() < 10.0
        assert worker.stop() == 0
    assert len(fake.submissions) == JOBS + 1
