"""The jobs repository on SQLite and PostgreSQL: the queue's guarantees."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from orchestrator import errors
from orchestrator.db.engine import Database, head_revision, open_database
from orchestrator.db.events import EventLog
from orchestrator.db.jobs import JobRepo, LeaseLost, NewJob, NewOutput
from orchestrator.db.schema import jobs, metadata
from orchestrator.domain.costs import Pricing
from orchestrator.domain.jobs import JobError, JobStatus, UpstreamHandle


def groups(backend: str, model: str) -> Sequence[tuple[str, int]]:
    out = [(backend, 3)]
    if model == "slow":
        out.append((f"{backend}:slow", 1))
    return out


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = await open_database(db_url)
    yield database
    await database.dispose()


def new_job(
    *,
    priority: int = 0,
    model: str = "m",
    key: str | None = None,
    rh: str = "h",
    backend: str = "flux",
) -> NewJob:
    return NewJob(
        id=str(uuid.uuid4()),
        backend=backend,
        model=model,
        params={"prompt": "p"},
        priority=priority,
        deadline_at=datetime.now(UTC) + timedelta(minutes=5),
        idempotency_key=key,
        request_hash=rh,
        simulated=False,
    )


SQLITE_BLIND = ("remove_index", "add_index")
DESC = ("ix_jobs_queued",)


async def test_migrations_match_schema(db: Database) -> None:
    assert await db.current_revision() == head_revision()

    def diff(conn: sa.Connection) -> list[object]:
        found = list(compare_metadata(MigrationContext.configure(conn), metadata))
        if conn.dialect.name == "sqlite":
            # SQLite does not report an index column's direction back (priority DESC):
            # the claim-order index shows as removed and added. Anything else counts.
            found = [d for d in found if not (d[0] in SQLITE_BLIND and d[1].name in DESC)]
        return found

    async with db.read() as conn:
        assert await conn.run_sync(diff) == []
    await db.migrate()  # idempotent


async def test_create_get_and_events(db: Database) -> None:
    repo = JobRepo(db)
    job, created = await repo.create(new_job())
    assert created and job.status == JobStatus.QUEUED and job.attempts == 0
    assert job.created_at.tzinfo is not None
    again = await repo.get(job.id)
    assert again == job
    events = await EventLog(repo.db).of_job(job.id)
    assert [e.kind for e in events] == ["created"]
    with pytest.raises(errors.JobNotFound):
        await repo.get("nope")


async def test_idempotency(db: Database) -> None:
    repo = JobRepo(db)
    first, created = await repo.create(new_job(key="k1", rh="a"))
    same, created2 = await repo.create(new_job(key="k1", rh="a"))
    assert created and not created2 and same.id == first.id
    with pytest.raises(errors.IdempotencyConflict):
        await repo.create(new_job(key="k1", rh="b"))


async def test_claim_order_priority_then_age(db: Database) -> None:
    repo = JobRepo(db)
    low, _ = await repo.create(new_job(priority=0))
    high, _ = await repo.create(new_job(priority=5))
    low2, _ = await repo.create(new_job(priority=0))
    claimed = [c.job for c in await repo.claim("w1", 30, 10, groups)]
    assert [j.id for j in claimed] == [high.id, low.id, low2.id]
    assert all(j.status == JobStatus.RUNNING and j.attempts == 1 for j in claimed)
    assert await repo.claim("w1", 30, 10, groups) == []


async def test_claim_respects_limits_across_owners(db: Database) -> None:
    repo = JobRepo(db)
    for _ in range(5):
        await repo.create(new_job())
    slow = [(await repo.create(new_job(model="slow")))[0].id for _ in range(2)]
    a = await repo.claim("w1", 30, 2, groups)
    b = await repo.claim("w2", 30, 10, groups)
    assert len(a) == 2 and len(b) == 1  # backend-wide limit 3 counted across owners
    assert await repo.claim("w3", 30, 10, groups) == []
    await repo.finish(a[0].job.id, a[0].lease, JobStatus.SUCCEEDED)
    c = await repo.claim("w3", 30, 10, groups)
    assert len(c) == 1
    # oldest first: the five "m" jobs were queued before the "slow" ones
    assert not set(slow) & {x.job.id for x in a + b + c}


async def test_sub_limit_does_not_block_others(db: Database) -> None:
    repo = JobRepo(db)
    s1, _ = await repo.create(new_job(model="slow", priority=9))
    s2, _ = await repo.create(new_job(model="slow", priority=9))
    other, _ = await repo.create(new_job(model="m"))
    claimed = [c.job for c in await repo.claim("w", 30, 10, groups)]
    assert [j.id for j in claimed] == [s1.id, other.id]
    assert s2.id not in {j.id for j in claimed}


async def test_concurrent_claims_never_double_claim(db: Database) -> None:
    repo = JobRepo(db)
    ids = {(await repo.create(new_job(backend="b")))[0].id for _ in range(30)}

    def wide(backend: str, model: str) -> Sequence[tuple[str, int]]:
        return [(backend, 1000)]

    async def claimer(owner: str) -> list[str]:
        got: list[str] = []
        while True:
            batch = await repo.claim(owner, 30, 3, wide)
            if not batch:
                return got
            got.extend(c.job.id for c in batch)

    results = await asyncio.gather(*(claimer(f"w{i}") for i in range(4)))
    flat = [i for r in results for i in r]
    assert len(flat) == len(set(flat)) == 30
    assert set(flat) == ids


async def test_lease_guards_writes_and_takeover(db: Database) -> None:
    repo = JobRepo(db)
    await repo.create(new_job())
    [c1] = await repo.claim("w1", 30, 1, groups)
    job, w1 = c1.job, c1.lease
    await repo.mark_submitting(job.id, w1)
    handle = UpstreamHandle(task_id="t1", polling_url="http://x/p?id=t1")
    await repo.set_upstream(job.id, w1, handle, 4.0)
    with pytest.raises(LeaseLost):
        await repo.set_progress(job.id, "w2", 0.5)
    # not expired yet: nobody takes it
    assert await repo.take_over_expired("w2", 30) == []
    # expire it
    async with db.write() as conn:
        await conn.execute(
            jobs.update()
            .where(jobs.c.id == job.id)
            .values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    [taken] = await repo.take_over_expired("w2", 30)
    assert taken.job.id == job.id and taken.job.upstream == handle
    assert taken.submitting_at is not None and taken.job.cost == 4.0
    assert taken.previous == w1 and taken.lease.startswith("w2#")
    with pytest.raises(LeaseLost):
        await repo.set_progress(job.id, w1, 0.5)
    assert await repo.renew_leases([w1], 30) == {}
    assert await repo.renew_leases([taken.lease], 30) == {taken.lease: False}
    done = await repo.finish(
        job.id,
        taken.lease,
        JobStatus.SUCCEEDED,
        outputs=[NewOutput(n=0, path="a/b.png", mime_type="image/png", size_bytes=3, sha256="x")],
    )
    assert done.status == JobStatus.SUCCEEDED and done.progress == 1.0
    assert [o.url for o in done.outputs] == [f"/api/outputs/{job.id}/0"]
    with pytest.raises(errors.InvalidTransition):
        await repo.finish(job.id, None, JobStatus.FAILED)


async def test_cancel_queued_running_finished(db: Database) -> None:
    repo = JobRepo(db)
    q, _ = await repo.create(new_job())
    canceled = await repo.request_cancel(q.id)
    assert canceled.status == JobStatus.CANCELED
    r, _ = await repo.create(new_job())
    [c] = await repo.claim("w", 30, 5, groups)
    flagged = await repo.request_cancel(r.id)
    assert flagged.status == JobStatus.RUNNING and flagged.cancel_requested
    assert await repo.renew_leases([c.lease], 30) == {c.lease: True}
    with pytest.raises(errors.InvalidTransition):
        await repo.request_cancel(q.id)


async def test_requeue_and_fail(db: Database) -> None:
    repo = JobRepo(db)
    j, _ = await repo.create(new_job())
    [first] = await repo.claim("w", 30, 1, groups)
    await repo.requeue(j.id, first.lease, "test")
    again = await repo.get(j.id)
    assert again.status == JobStatus.QUEUED and again.upstream is None
    [claimed] = await repo.claim("w", 30, 1, groups)
    assert claimed.job.attempts == 2
    # the same worker's earlier claim of this job is fenced off by its token
    with pytest.raises(LeaseLost):
        await repo.set_progress(j.id, first.lease, 0.5)
    failed = await repo.finish(
        j.id,
        claimed.lease,
        JobStatus.FAILED,
        error=JobError(code=errors.ErrorCode.MODERATED, message="no", details={"stage": "request"}),
    )
    assert failed.error is not None and failed.error.code == errors.ErrorCode.MODERATED
    assert failed.error.details == {"stage": "request"}
    kinds = [(e.kind, e.status) for e in await EventLog(repo.db).of_job(j.id)]
    assert kinds[0] == ("created", JobStatus.QUEUED)
    assert kinds[-1] == ("transition", JobStatus.FAILED)


async def test_pagination_and_filters(db: Database) -> None:
    repo = JobRepo(db)
    made = [(await repo.create(new_job()))[0].id for _ in range(7)]
    seen: list[str] = []
    cursor = None
    while True:
        page = await repo.page(limit=3, cursor=cursor)
        seen.extend(j.id for j in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert sorted(seen) == sorted(made) and len(seen) == 7
    assert seen[0] == made[-1]  # newest first
    await repo.request_cancel(made[0])
    only = await repo.page(status=[JobStatus.CANCELED])
    assert [j.id for j in only.items] == [made[0]]
    assert (await repo.page(backend=["other"])).items == []
    with pytest.raises(errors.InvalidRequest):
        await repo.page(cursor="%%%")
    counts = await repo.counts()
    assert counts["flux"] == {"queued": 6, "canceled": 1}


# --- leases: fenced per claim, measured by the database's clock (issue 12) -----------


async def _hold_claim_lock(db: Database, seconds: float, held: asyncio.Event) -> None:
    """Hold what a claim must wait for (SQLite's write lock; PostgreSQL's claim lock)
    for ``seconds``: forced lock contention."""
    async with db.write(claim_lock=True) as conn:
        await conn.execute(sa.select(1))
        held.set()
        await asyncio.sleep(seconds)


async def test_a_lease_is_not_born_expired_after_a_long_lock_wait(db: Database) -> None:
    """A claim that waited for the lock longer than the lease used to write a lease
    that had already run out: another process took the live job over at once."""
    repo = JobRepo(db)
    await repo.create(new_job())
    held = asyncio.Event()
    holder = asyncio.create_task(_hold_claim_lock(db, 2.5, held))
    await held.wait()
    [claimed] = await repo.claim("w1", 2.0, 1, groups)  # waits ~2.5 s for the lock
    await holder
    assert await repo.take_over_expired("w2", 30) == []
    assert await repo.renew_leases([claimed.lease], 2.0) == {claimed.lease: False}


async def test_a_clock_ahead_takes_over_nothing_live(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Leases are measured by the database's clock: a process whose own clock runs
    60 s ahead sees no live lease as expired."""
    repo = JobRepo(db)
    await repo.create(new_job())
    [claimed] = await repo.claim("w1", 30, 1, groups)
    ahead = datetime.now(UTC) + timedelta(seconds=60)
    monkeypatch.setattr("orchestrator.db.jobs.utcnow", lambda: ahead)
    assert await repo.take_over_expired("w-skewed", 30) == []
    assert await repo.renew_leases([claimed.lease], 30) == {claimed.lease: False}


async def test_a_handle_recorded_after_the_lease_was_lost_is_kept(db: Database) -> None:
    """The previous holder submitted (and paid) before noticing it lost the lease: its
    handle is still recorded, and the new holder may not fail the job as interrupted."""
    repo = JobRepo(db)
    await repo.create(new_job())
    [c1] = await repo.claim("w1", 30, 1, groups)
    await repo.mark_submitting(c1.job.id, c1.lease)
    await repo.release_leases([c1.lease])  # expire it
    [c2] = await repo.take_over_expired("w2", 30)
    assert c2.submitting_at is not None and c2.job.upstream is None
    handle = UpstreamHandle(task_id="paid", polling_url="http://x/p?id=paid")
    with pytest.raises(LeaseLost):
        await repo.set_upstream(c1.job.id, c1.lease, handle, 4.0)
    assert (await repo.get(c1.job.id)).upstream == handle
    err = JobError(code=errors.ErrorCode.SUBMIT_INTERRUPTED, message="x")
    with pytest.raises(LeaseLost):
        await repo.finish(c1.job.id, c2.lease, JobStatus.FAILED, error=err, unless_upstream=True)
    # the new holder re-attaches and finishes it; the old one can write nothing more
    with pytest.raises(LeaseLost):
        await repo.mark_submitting(c1.job.id, c1.lease)
    done = await repo.finish(c1.job.id, c2.lease, JobStatus.SUCCEEDED)
    assert done.status == JobStatus.SUCCEEDED and done.cost == 4.0


async def test_release_owner_expires_every_lease_of_a_dead_worker(db: Database) -> None:
    repo = JobRepo(db)
    for _ in range(3):
        await repo.create(new_job())
    dead = await repo.claim("host:41:abc", 300, 2, groups)
    alive = await repo.claim("host:4:abc", 300, 1, groups)
    assert await repo.release_owner("host:41:abc") == 2
    taken = await repo.take_over_expired("w2", 30)
    assert {c.job.id for c in taken} == {c.job.id for c in dead}
    assert alive[0].job.id not in {c.job.id for c in taken}


async def test_a_second_submission_is_recorded_with_its_cost(db: Database) -> None:
    """Should a job ever be submitted twice, the ledger shows both."""
    repo = JobRepo(db)
    await repo.create(new_job())
    [c1] = await repo.claim("w1", 30, 1, groups)
    await repo.mark_submitting(c1.job.id, c1.lease)
    await repo.release_leases([c1.lease])
    [c2] = await repo.take_over_expired("w2", 30)
    first = UpstreamHandle(task_id="first", polling_url="http://x/p?id=first")
    await repo.set_upstream(c2.job.id, c2.lease, first, 2.5)
    second = UpstreamHandle(task_id="second", polling_url="http://x/p?id=second")
    with pytest.raises(LeaseLost):
        await repo.set_upstream(c1.job.id, c1.lease, second, 4.0)
    job = await repo.get(c1.job.id)
    assert job.upstream == first and job.cost == 6.5
    assert any(
        "second upstream task (second)" in (e.message or "")
        for e in await EventLog(repo.db).of_job(job.id)
    )
    done = await repo.finish(job.id, c2.lease, JobStatus.SUCCEEDED)
    assert done.cost == 6.5


async def test_a_handle_that_comes_after_the_end_is_kept_without_new_cost(db: Database) -> None:
    repo = JobRepo(db, pricing=Pricing(flux={"m": 2.5}))
    await repo.create(new_job())
    [c1] = await repo.claim("w1", 30, 1, groups)
    await repo.mark_submitting(c1.job.id, c1.lease)
    await repo.release_leases([c1.lease])
    [c2] = await repo.take_over_expired("w2", 30)
    err = JobError(code=errors.ErrorCode.SUBMIT_INTERRUPTED, message="x")
    failed = await repo.finish(c2.job.id, c2.lease, JobStatus.FAILED, error=err)
    assert failed.cost == 2.5  # a submit was sent: counted as billed
    late = UpstreamHandle(task_id="late", polling_url="http://x/p?id=late")
    with pytest.raises(LeaseLost):
        await repo.set_upstream(c1.job.id, c1.lease, late, 4.0)
    job = await repo.get(c1.job.id)
    assert job.upstream == late and job.cost == failed.cost


async def test_a_requeued_job_taken_over_mid_submit_can_be_failed(db: Database) -> None:
    """A requeue stored the cleared handle as JSON null, which 'upstream IS NULL' does not
    match: failing the job as submit_interrupted (unless a handle came) was refused for
    ever, and the job was taken over again and again (found by the crash suite)."""
    repo = JobRepo(db)
    await repo.create(new_job())
    [c1] = await repo.claim("w1", 30, 1, groups)
    await repo.requeue(c1.job.id, c1.lease, "nothing ran")
    [c2] = await repo.claim("w2", 30, 1, groups)
    await repo.mark_submitting(c2.job.id, c2.lease)
    await repo.release_leases([c2.lease])
    [c3] = await repo.take_over_expired("w3", 30)
    err = JobError(code=errors.ErrorCode.SUBMIT_INTERRUPTED, message="x")
    failed = await repo.finish(
        c3.job.id, c3.lease, JobStatus.FAILED, error=err, unless_upstream=True
    )
    assert failed.status == JobStatus.FAILED
    # and a handle recorded by a lost holder after a requeue is kept
    await repo.create(new_job())
    [d1] = await repo.claim("w1", 30, 1, groups)
    await repo.requeue(d1.job.id, d1.lease, "nothing ran")
    [d2] = await repo.claim("w2", 30, 1, groups)
    await repo.mark_submitting(d2.job.id, d2.lease)
    await repo.release_leases([d2.lease])
    [d3] = await repo.take_over_expired("w3", 30)
    handle = UpstreamHandle(task_id="paid", polling_url="http://x/p?id=paid")
    with pytest.raises(LeaseLost):
        await repo.set_upstream(d2.job.id, d2.lease, handle, 4.0)
    assert (await repo.get(d3.job.id)).upstream == handle
