"""The worker registry (issue 17): each worker process registers its kind, host, pid,
the backends it claims and its concurrency, and heartbeats; the Backends page,
``/api/system/health`` and ``/metrics`` list every one, live or gone (no heartbeat
within LEASE_S)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from datetime import timedelta

import httpx2
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.api.app import create_app
from orchestrator.config import Settings
from orchestrator.db.schema import workers
from orchestrator.db.workers import GONE_KEPT_S, WorkerRepo
from orchestrator.engine.worker import WorkerOptions
from orchestrator.runtime import open_runtime
from orchestrator.testing.serve import serve_in_thread

GONE_ID = "far-away-host:4242:abcdef"


async def _add_gone_worker(repo: WorkerRepo, age_s: float, worker_id: str = GONE_ID) -> None:
    """A worker of another machine that stopped heartbeating ``age_s`` ago (killed:
    it never unregistered)."""
    await repo.register(
        worker_id, "worker", "far-away-host", 4242, backends=["sdxl"], concurrency=8
    )
    async with repo.db.write() as conn:
        row = (
            await conn.execute(sa.select(workers.c.heartbeat_at).where(workers.c.id == worker_id))
        ).scalar_one()
        await conn.execute(
            workers.update()
            .where(workers.c.id == worker_id)
            .values(heartbeat_at=row - timedelta(seconds=age_s))
        )


async def _add_gone_worker_elsewhere(settings: Settings, age_s: float) -> None:
    async with open_runtime(settings, run_worker=False) as other:  # another process
        await _add_gone_worker(other.service.worker_repo, age_s)


async def test_health_lists_live_and_gone_workers_with_their_backends(
    make_settings: Callable[..., Settings], db_url: str
) -> None:
    settings = make_settings(database_url=db_url, demo_mode="on", lease_s=3.0)
    options = WorkerOptions(
        concurrency=3,
        lease_s=3.0,
        poll_interval_s=0.05,
        shutdown_grace_s=1.0,
        kind="worker",
        backends=["flux"],
    )
    async with open_runtime(settings, run_worker=True, worker_options=options) as rt:
        await _add_gone_worker(rt.service.worker_repo, age_s=3 * settings.lease_s)
        health = await rt.service.health()
        assert health.workers == 1  # the gone one does not count
        by_id = {w.id: w for w in health.worker_processes}
        assert rt.worker is not None
        me = by_id[rt.worker.id]
        assert me.state == "live" and me.kind == "worker"
        assert me.backends == ["flux"] and me.concurrency == 3
        assert me.pid == os.getpid() and me.heartbeat_age_s < settings.lease_s
        gone = by_id[GONE_ID]
        assert gone.state == "gone" and gone.host == "far-away-host"
        assert gone.backends == ["sdxl"] and gone.concurrency == 8
        assert gone.heartbeat_age_s >= 3 * settings.lease_s - 0.5
        assert [w.state for w in health.worker_processes] == ["live", "gone"]  # live first
        assert await rt.service.live_workers() == 1


async def test_gone_workers_are_forgotten_after_a_day(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(demo_mode="on")
    async with open_runtime(settings, run_worker=False) as rt:
        repo = rt.service.worker_repo
        await _add_gone_worker(repo, age_s=60, worker_id="recent:1:bbbbbb")
        await _add_gone_worker(repo, age_s=GONE_KEPT_S + 60, worker_id="old:1:aaaaaa")
        assert {w.info.id for w in await repo.listed(settings.lease_s)} == {
            "old:1:aaaaaa",
            "recent:1:bbbbbb",
        }
        await repo.register("new:1:cccccc", "worker", "new", 1)  # a start prunes
        assert {w.info.id for w in await repo.listed(settings.lease_s)} == {
            "recent:1:bbbbbb",
            "new:1:cccccc",
        }


def test_api_metrics_and_backends_page_show_a_gone_worker(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(demo_mode="on", lease_s=3.0)
    app = create_app(settings)
    with (
        serve_in_thread(app, lifespan="on") as served,
        httpx2.Client(base_url=served.base_url, timeout=30) as c,
    ):
        runtime = app.state.runtime
        asyncio.run(_add_gone_worker_elsewhere(settings, age_s=10.0))
        health = c.get("/api/system/health").json()
        states = {w["id"]: w["state"] for w in health["worker_processes"]}
        assert states[GONE_ID] == "gone"
        assert states[runtime.worker.id] == "live"
        assert health["workers"] == 1

        families = {f.name: f for f in text_string_to_metric_families(c.get("/metrics").text)}
        count = {
            (s.labels["kind"], s.labels["state"]): s.value
            for s in families["orchestrator_workers"].samples
        }
        assert count[("worker", "gone")] == 1 and count[("serve", "live")] == 1
        assert count[("worker", "live")] == 0
        claim = {
            s.labels["backend"]: s.value for s in families["orchestrator_worker_backends"].samples
        }
        assert claim["flux"] == 1  # serve's own worker; the gone one (sdxl) is not counted
        assert claim["sdxl"] == 1

        page = c.get("/ui/backends", headers={"Accept": "text/html"}).text
        assert 'id="workers-panel"' in page and 'data-panel-src="/ui/panels/workers"' in page
        panel = c.get("/ui/panels/workers", headers={"Accept": "text/html"}).text
        assert f'data-worker-id="{GONE_ID}" data-state="gone"' in panel
        assert f'data-worker-id="{runtime.worker.id}" data-state="live"' in panel
        assert "far-away-host" in panel and "sdxl" in panel
