"""The queue bus on PostgreSQL (issue 17), in-process: several runtimes on one
database stand for several processes (each has its own wake-up connection).

* a concurrency slot freed while jobs waited wakes the workers of the others;
* a listener whose connection was cut listens again (and looks at the queue);
* on SQLite there is no bus (polling only)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from tests.conftest import TEST_KEY, _reset_pg

from orchestrator.config import Settings
from orchestrator.domain.params import FluxDevParams, FluxRequest
from orchestrator.engine.worker import WorkerOptions
from orchestrator.runtime import Runtime, open_runtime
from orchestrator.testing.fake_bfl import FakeBfl
from orchestrator.testing.serve import ServedApp


@pytest.fixture
async def pg(pg_database: str) -> str:
    """The session's PostgreSQL database, emptied: no job of an earlier test is left
    queued for the workers here to claim."""
    await _reset_pg(pg_database)
    return pg_database


async def _until(pred: Callable[[], bool], timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"condition not met in {timeout_s} s")


@asynccontextmanager
async def _runtime(
    settings: Settings, worker: WorkerOptions | None = None
) -> AsyncIterator[Runtime]:
    async with open_runtime(settings, run_worker=worker is not None, worker_options=worker) as rt:
        yield rt


def _req(prompt: str) -> FluxRequest:
    return FluxRequest(params=FluxDevParams(prompt=prompt, width=256, height=256))


@pytest.mark.postgres
async def test_a_slot_freed_with_jobs_waiting_wakes_the_other_processes(
    make_settings: Callable[..., Settings],
    pg: str,
    fake_bfl: tuple[FakeBfl, ServedApp],
) -> None:
    fake, served = fake_bfl
    fake.config.task_duration_s = 0.5
    settings = make_settings(
        database_url=pg,
        bfl_api_key=TEST_KEY,
        flux_base_url=served.base_url,
        worker_poll_interval_s=30.0,
    )
    one = WorkerOptions(concurrency=1, lease_s=5.0, poll_interval_s=30.0, kind="worker")
    async with _runtime(settings) as api, _runtime(settings, one) as worker:
        assert api.bus is not None and worker.bus is not None
        await api.bus.listen()  # stands for a worker process that could not claim yet
        first, _ = await api.service.submit(_req("first"))
        second, _ = await api.service.submit(_req("second"))
        await _until(lambda: worker.bus is not None and worker.bus.heard >= 1)  # woken
        await _until(lambda: worker.worker is not None and worker.worker.in_flight == 1)
        assert api.bus.heard == 0  # queueing and claiming woke nobody else
        # the first job ends with the second waiting: its slot is free for any process
        await _until(lambda: api.bus is not None and api.bus.heard >= 1)
        assert (await api.service.get_job(first.id)).status.terminal
        assert (await api.service.wait_for(second.id, 20.0)).status.value == "succeeded"


@pytest.mark.postgres
async def test_a_listener_whose_connection_was_cut_listens_again(
    make_settings: Callable[..., Settings], pg: str
) -> None:
    settings = make_settings(database_url=pg, demo_mode="on")
    async with _runtime(settings) as sender, _runtime(settings) as receiver:
        assert sender.bus is not None and receiver.bus is not None
        await receiver.bus.listen()
        assert receiver.bus.listening
        receiver.service.hub.queue_changed.clear()
        sender.service.hub.job_queued()
        await _until(receiver.service.hub.queue_changed.is_set)
        assert receiver.bus.heard == 1

        # the server drops the listening connection
        conn = receiver.bus.pg._conn
        pid = conn.get_server_pid()
        admin = await asyncpg.connect(pg.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        await _until(lambda: receiver.bus is not None and not receiver.bus.listening)
        receiver.service.hub.queue_changed.clear()
        await _until(lambda: receiver.bus is not None and receiver.bus.listening)
        assert receiver.service.hub.queue_changed.is_set()  # it looks at the queue once

        receiver.service.hub.queue_changed.clear()
        sender.service.hub.job_queued()
        await _until(receiver.service.hub.queue_changed.is_set)
        assert receiver.bus.heard == 2


async def test_no_bus_on_sqlite(make_settings: Callable[..., Settings]) -> None:
    async with _runtime(make_settings(demo_mode="on")) as rt:
        assert rt.bus is None


@pytest.mark.postgres
async def test_a_wake_from_another_process_reads_before_it_claims(
    make_settings: Callable[..., Settings], pg: str
) -> None:
    """Another process's NOTIFY (a slot freed there, say) may find nothing to claim
    here: the woken worker looks with a read first, as a poll does, rather than take
    the claim lock for nothing; a job queued there is still claimed at once."""
    settings = make_settings(database_url=pg, demo_mode="on")
    opts = WorkerOptions(concurrency=4, lease_s=5.0, poll_interval_s=30.0, kind="worker")
    async with _runtime(settings) as other, _runtime(settings, opts) as here:
        assert here.worker is not None and here.bus is not None
        claims = 0
        claim = here.worker.repo.claim

        async def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal claims
            claims += 1
            return await claim(*args, **kwargs)

        here.worker.repo.claim = counted  # type: ignore[method-assign]
        await asyncio.sleep(0.2)  # the worker's first look is done
        for _ in range(5):
            other.service.hub.slot_freed()
            heard = here.bus.heard
            await _until(lambda h=heard: here.bus is not None and here.bus.heard > h)
            await asyncio.sleep(0.05)
        assert claims == 0
        job, _ = await other.service.submit(_req("claimed at once"))
        assert (await other.service.wait_for(job.id, 20.0)).status.value == "succeeded"
        assert claims >= 1


@pytest.mark.postgres
async def test_jobs_handed_back_at_shutdown_are_taken_over_at_once_elsewhere(
    make_settings: Callable[..., Settings],
    pg: str,
    fake_bfl: tuple[FakeBfl, ServedApp],
) -> None:
    """A worker that stops while a job runs upstream releases its lease; the idle
    worker of another process re-attaches at once (NOTIFY orchestrator_released), not
    at its next recovery scan (every LEASE_S / 2 = 15 s here)."""
    fake, served = fake_bfl
    fake.config.task_duration_s = 2.0
    settings = make_settings(database_url=pg, bfl_api_key=TEST_KEY, flux_base_url=served.base_url)

    def opts() -> WorkerOptions:
        return WorkerOptions(
            concurrency=4, lease_s=30.0, poll_interval_s=30.0, shutdown_grace_s=0.0, kind="worker"
        )

    async with contextlib.AsyncExitStack() as first_stack:
        first = await first_stack.enter_async_context(_runtime(settings, opts()))
        assert first.worker is not None
        job, _ = await first.service.submit(_req("handed back"))
        await _until(lambda: len(fake.submissions) == 1)
        await asyncio.sleep(0.2)  # the handle is recorded
        assert first.worker.in_flight == 1
        async with _runtime(settings, opts()) as other:  # starts while the job runs
            assert other.worker is not None
            await asyncio.sleep(0.2)
            assert other.worker.in_flight == 0
            await first_stack.aclose()  # the first process stops
            stopped = time.monotonic()
            # its job was left running upstream
            done = await other.service.wait_for(job.id, 12.0)
            took = time.monotonic() - stopped
            assert done.status.value == "succeeded", done
            assert took < 8.0, f"{took:.1f} s: the job waited for a recovery scan"
            assert len(fake.submissions) == 1  # re-attached, not sent again
