"""The job path scales with the work, not with the table: the claim reads the queue
through a partial index of the queued jobs, the manifest repair through one of the
succeeded jobs without a manifest, and the counts come from a table the triggers on
``jobs`` keep (checked against a full GROUP BY after every kind of transition, on
SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from tests.integration.test_repo import new_job

from orchestrator.db.engine import Database, open_database
from orchestrator.db.jobs import JobRepo, NewOutput
from orchestrator.db.schema import jobs
from orchestrator.domain.jobs import JobError, JobStatus

groups = lambda b, m: []  # noqa: E731


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = await open_database(db_url)
    yield database
    await database.dispose()


@contextmanager
def captured(db: Database) -> Iterator[list[tuple[str, Any]]]:
    seen: list[tuple[str, Any]] = []

    def before(_c: Any, _cur: Any, sql: str, params: Any, *_a: Any) -> None:
        seen.append((sql, params))

    for eng in db.engines():
        sa.event.listen(eng, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        for eng in db.engines():
            sa.event.remove(eng, "before_cursor_execute", before)


async def plan(db: Database, sql: str, params: Any) -> str:
    def explain(conn: sa.Connection) -> str:
        rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params).all()
        return " | ".join(str(r[-1]) for r in rows)

    return await db.run(explain)


async def truth(db: Database) -> dict[str, dict[str, int]]:
    q = sa.select(jobs.c.backend, jobs.c.status, sa.func.count()).group_by(
        jobs.c.backend, jobs.c.status
    )

    def read(conn: sa.Connection) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for backend, status, n in conn.execute(q).all():
            out.setdefault(backend, {})[status] = int(n)
        return out

    return await db.run(read)


async def test_counts_follow_every_transition(db: Database) -> None:
    repo = JobRepo(db)
    made = [await repo.create(new_job(backend=b)) for b in ("flux", "flux", "flux", "sdxl")]
    assert await repo.counts() == await truth(db) == {"flux": {"queued": 3}, "sdxl": {"queued": 1}}
    claimed = await repo.claim("w", 30, 2, groups, backends=["flux"])
    assert await repo.counts() == await truth(db)
    out = NewOutput(n=0, path="a.png", mime_type="image/png", size_bytes=1, sha256="0" * 64)
    await repo.finish(claimed[0].job.id, claimed[0].lease, JobStatus.SUCCEEDED, outputs=[out])
    err = JobError.model_validate({"code": "internal_error", "message": "x", "details": {}})
    await repo.finish(claimed[1].job.id, claimed[1].lease, JobStatus.FAILED, error=err)
    await repo.request_cancel(made[3][0].id)
    await repo.retry(claimed[1].job.id, "retry-1", default_deadline_s=60, simulated=False)
    [again] = await repo.claim("w", 30, 1, groups, backends=["flux"])
    await repo.requeue(again.job.id, again.lease, "back")
    counts = await repo.counts()
    assert counts == await truth(db)
    assert counts == {
        "flux": {"queued": 2, "succeeded": 1, "failed": 1},
        "sdxl": {"canceled": 1},
    }


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_the_hot_scans_use_partial_indexes(db: Database) -> None:
    repo = JobRepo(db)
    for _ in range(3):
        await repo.create(new_job())
    with captured(db) as seen:
        await repo.claim("w", 30, 1, groups)
        await repo.missing_manifests(older_than_s=0)
        await repo.counts()
    plans = {sql: await plan(db, sql, params) for sql, params in seen if sql.startswith("SELECT")}
    queue = next(p for s, p in plans.items() if "status = 'queued'" in s and "ORDER BY" in s)
    assert "ix_jobs_queued" in queue, queue
    manifests = next(p for s, p in plans.items() if "manifest_at IS NULL" in s)
    assert "ix_jobs_manifest_missing" in manifests, manifests
    counts = next(p for s, p in plans.items() if "job_counts" in s)
    assert "jobs " not in counts.replace("job_counts", ""), counts
