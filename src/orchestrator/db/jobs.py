"""Queries on jobs, their outputs and events. Every status change goes through
``domain.jobs.transition`` and writes an event in the same transaction.

Writes made by a worker are guarded by its lease (``lease_owner``): a worker that
lost its lease (another process took the job over) changes nothing and gets
:class:`LeaseLost`.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from pydantic import JsonValue
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator import errors
from orchestrator.db import webhooks as webhooks_db
from orchestrator.db.engine import Database, cancel_safe, db_now
from orchestrator.db.schema import job_events, job_outputs, jobs
from orchestrator.domain import limits
from orchestrator.domain.costs import Pricing, final_cost
from orchestrator.domain.jobs import (
    EventKind,
    Job,
    JobError,
    JobEvent,
    JobOutput,
    JobPage,
    JobStatus,
    UpstreamHandle,
    WebhookEventName,
    transition,
)
from orchestrator.domain.webhooks import WebhookEvent, WebhookPolicy

# A budget check run inside the job-creating transaction; raises to refuse.
Guard = Callable[[AsyncConnection], Awaitable[None]]
# The same for a retry: given the old job's backend, model and parameters, returns the
# new estimate.
RetryGuard = Callable[[AsyncConnection, str, str, dict[str, JsonValue]], Awaitable[float]]


class LeaseLost(Exception):
    """The job is no longer ours: another process took it over, or it finished."""


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class NewJob:
    id: str
    backend: str
    model: str
    params: dict[str, JsonValue]
    priority: int
    deadline_at: datetime
    idempotency_key: str | None
    request_hash: str | None
    simulated: bool
    deadline_s: float | None = None
    retry_of: str | None = None
    webhook_url: str | None = None
    webhook_events: Sequence[WebhookEventName] | None = None
    cost_estimate: float | None = None
    token_id: str | None = None


@dataclass(frozen=True)
class NewOutput:
    n: int
    path: str
    mime_type: str
    size_bytes: int
    sha256: str
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None


@dataclass(frozen=True)
class Claimed:
    """A job this worker now holds under ``lease`` (its fencing token), with what
    recovery needs to know when it was taken over: whether a submit had started, and
    the lease it was taken from."""

    job: Job
    lease: str
    submitting_at: datetime | None = None
    previous: str | None = None


class JobRepo:
    """``webhooks``: when given, job transitions queue webhook deliveries in their own
    transaction (see ``db/webhooks.py``); ``on_webhook`` is called after such a
    commit, to wake the delivery loop of this process."""

    def __init__(
        self,
        db: Database,
        *,
        webhooks: WebhookPolicy | None = None,
        on_webhook: Callable[[], None] | None = None,
        pricing: Pricing | None = None,
    ) -> None:
        self.db = db
        self.webhooks = webhooks
        self.on_webhook = on_webhook
        self.pricing = pricing or Pricing()

    def _queued(self, n: int) -> None:
        if n and self.on_webhook is not None:
            self.on_webhook()

    # --- create and read ---------------------------------------------------------
    @cancel_safe
    async def create(self, new: NewJob, guard: Guard | None = None) -> tuple[Job, bool]:
        """Insert a job; returns ``(job, created)``. With an idempotency key already
        used, returns the existing job (``created=False``) when the request hash
        matches, else raises :class:`errors.IdempotencyConflict`. ``guard`` (a budget
        check) runs in the inserting transaction, serialised with every other guarded
        insert, and may raise to refuse the job; it is skipped for a repeated key."""
        now = utcnow()
        try:
            async with self.db.write(claim_lock=guard is not None) as conn:
                if guard is not None and not await _key_used(conn, new.idempotency_key):
                    await guard(conn)
                await conn.execute(
                    jobs.insert().values(
                        id=new.id,
                        backend=new.backend,
                        model=new.model,
                        params=new.params,
                        priority=new.priority,
                        status=JobStatus.QUEUED.value,
                        attempts=0,
                        idempotency_key=new.idempotency_key,
                        request_hash=new.request_hash,
                        simulated=new.simulated,
                        cancel_requested=False,
                        deadline_at=new.deadline_at,
                        created_at=now,
                        updated_at=now,
                        deadline_s=new.deadline_s,
                        retry_of=new.retry_of,
                        webhook_url=new.webhook_url,
                        webhook_events=_events_list(new.webhook_events),
                        cost_estimate=new.cost_estimate,
                        token_id=new.token_id,
                    )
                )
                await _event(conn, new.id, "created", status=JobStatus.QUEUED, at=now)
        except IntegrityError:
            if new.idempotency_key is None:
                raise
            async with self.db.read() as conn:
                row = (
                    await conn.execute(
                        sa.select(jobs).where(jobs.c.idempotency_key == new.idempotency_key)
                    )
                ).one_or_none()
                if row is None:
                    raise
                if row.request_hash != new.request_hash:
                    raise errors.IdempotencyConflict(
                        "this Idempotency-Key was used with a different request body",
                        job_id=row.id,
                    ) from None
                return await _job(conn, row), False
        job = Job(
            id=new.id,
            backend=new.backend,
            model=new.model,
            params=new.params,
            status=JobStatus.QUEUED,
            priority=new.priority,
            idempotency_key=new.idempotency_key,
            simulated=new.simulated,
            deadline_at=new.deadline_at,
            created_at=now,
            updated_at=now,
            retry_of=new.retry_of,
            webhook_url=new.webhook_url,
            webhook_events=_events_list(new.webhook_events),
            cost_estimate=new.cost_estimate,
            token_id=new.token_id,
        )
        return job, True

    @cancel_safe
    async def retry(
        self,
        job_id: str,
        new_id: str,
        *,
        default_deadline_s: float,
        simulated: bool,
        guard: RetryGuard | None = None,
        token_id: str | None = None,
    ) -> Job:
        """A new queued job with a finished job's backend, model, parameters,
        priority, deadline and webhook settings, linked by ``retry_of``; an event on
        each job says so. Only a terminal job can be retried. ``guard`` (a budget
        check, given the old job) runs first in the transaction and may refuse."""
        now = utcnow()
        async with self.db.write(claim_lock=guard is not None) as conn:
            row = (await conn.execute(sa.select(jobs).where(jobs.c.id == job_id))).one_or_none()
            if row is None:
                raise errors.JobNotFound(f"no job with id {job_id!r}", job_id=job_id)
            current = JobStatus(row.status)
            if not current.terminal:
                raise errors.InvalidTransition(
                    f"a {current.value} job cannot be retried; only a finished "
                    "(succeeded, failed or canceled) job can",
                    current=current.value,
                    job_id=job_id,
                )
            deadline_s = row.deadline_s if row.deadline_s is not None else default_deadline_s
            estimate = row.cost_estimate
            if guard is not None:
                estimate = await guard(conn, str(row.backend), str(row.model), dict(row.params))
            await conn.execute(
                jobs.insert().values(
                    id=new_id,
                    backend=row.backend,
                    model=row.model,
                    params=row.params,
                    priority=row.priority,
                    status=JobStatus.QUEUED.value,
                    attempts=0,
                    simulated=simulated,
                    cancel_requested=False,
                    deadline_at=now + timedelta(seconds=deadline_s),
                    created_at=now,
                    updated_at=now,
                    deadline_s=row.deadline_s,
                    retry_of=job_id,
                    webhook_url=row.webhook_url,
                    webhook_events=row.webhook_events,
                    cost_estimate=estimate,
                    token_id=token_id,
                )
            )
            await _event(
                conn,
                new_id,
                "created",
                status=JobStatus.QUEUED,
                at=now,
                message=f"retry of {job_id}",
                data={"retry_of": job_id},
            )
            await _event(
                conn,
                job_id,
                "info",
                at=now,
                message=f"retried as {new_id}",
                data={"retried_as": new_id},
            )
            return await self._get(conn, new_id)

    @cancel_safe
    async def get(self, job_id: str) -> Job:
        async with self.db.read() as conn:
            return await self._get(conn, job_id)

    async def _get(self, conn: AsyncConnection, job_id: str, *, outputs: bool = True) -> Job:
        row = (await conn.execute(sa.select(jobs).where(jobs.c.id == job_id))).one_or_none()
        if row is None:
            raise errors.JobNotFound(f"no job with id {job_id!r}", job_id=job_id)
        return await _job(conn, row, outputs=outputs)

    @cancel_safe
    async def page(
        self,
        *,
        status: Sequence[JobStatus] = (),
        backend: Sequence[str] = (),
        cursor: str | None = None,
        limit: int = 50,
    ) -> JobPage:
        """Newest first, cursor-paginated on (created_at, id)."""
        q = sa.select(jobs)
        if status:
            q = q.where(jobs.c.status.in_([s.value for s in status]))
        if backend:
            q = q.where(jobs.c.backend.in_(list(backend)))
        return await self._paged(q, cursor, limit)

    @cancel_safe
    async def search(
        self,
        *,
        text: str | None = None,
        backend: Sequence[str] = (),
        status: Sequence[JobStatus] = (),
        model: Sequence[str] = (),
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> JobPage:
        """Jobs whose prompt contains ``text`` (case-insensitive), newest first,
        cursor-paginated like :meth:`page`. The prompt is read from the stored
        parameters (``json_extract`` on SQLite, ``->>`` on PostgreSQL)."""
        q = sa.select(jobs)
        if text:
            escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            prompt = jobs.c.params["prompt"].as_string()
            q = q.where(prompt.ilike(f"%{escaped}%", escape="\\"))
        if status:
            q = q.where(jobs.c.status.in_([s.value for s in status]))
        if backend:
            q = q.where(jobs.c.backend.in_(list(backend)))
        if model:
            q = q.where(jobs.c.model.in_(list(model)))
        if created_after is not None:
            q = q.where(jobs.c.created_at >= created_after)
        if created_before is not None:
            q = q.where(jobs.c.created_at < created_before)
        return await self._paged(q, cursor, limit)

    async def _paged(
        self, q: sa.Select[tuple[object, ...]], cursor: str | None, limit: int
    ) -> JobPage:
        if cursor:
            created, last_id = _decode_cursor(cursor)
            q = q.where(
                sa.or_(
                    jobs.c.created_at < created,
                    sa.and_(jobs.c.created_at == created, jobs.c.id < last_id),
                )
            )
        q = q.order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit + 1)
        async with self.db.read() as conn:
            rows = (await conn.execute(q)).all()
            items = [await _job(conn, r, outputs=False) for r in rows[:limit]]
            await _attach_outputs(conn, items)
        next_cursor = None
        if len(rows) > limit:
            last = items[-1]
            next_cursor = _encode_cursor(last.created_at, last.id)
        return JobPage(items=items, next_cursor=next_cursor)

    @cancel_safe
    async def counts(self) -> dict[str, dict[str, int]]:
        """``{backend: {status: n}}``."""
        q = sa.select(jobs.c.backend, jobs.c.status, sa.func.count()).group_by(
            jobs.c.backend, jobs.c.status
        )
        out: dict[str, dict[str, int]] = {}
        async with self.db.read() as conn:
            for backend, status, n in (await conn.execute(q)).all():
                out.setdefault(backend, {})[status] = int(n)
        return out

    @cancel_safe
    async def events(self, job_id: str, after_id: int = 0, limit: int = 500) -> list[JobEvent]:
        q = (
            sa.select(job_events)
            .where(job_events.c.job_id == job_id, job_events.c.id > after_id)
            .order_by(job_events.c.id)
            .limit(limit)
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(q)).all()
        return [_job_event(r) for r in rows]

    @cancel_safe
    async def events_since(self, after_id: int, limit: int = 500) -> list[JobEvent]:
        """Events of every job after ``after_id``, oldest first (the server-wide stream)."""
        q = sa.select(job_events).where(job_events.c.id > after_id).order_by(job_events.c.id)
        async with self.db.read() as conn:
            rows = (await conn.execute(q.limit(limit))).all()
        return [_job_event(r) for r in rows]

    @cancel_safe
    async def events_after(
        self,
        high: int,
        gaps: Sequence[int] = (),
        *,
        job_id: str | None = None,
        limit: int = 1000,
    ) -> list[JobEvent]:
        """Events after ``high`` and those among ``gaps`` (ids below it not seen yet,
        which may commit late: see ``domain/event_cursor.py``), oldest id first; of one
        job, or of all."""
        after = job_events.c.id > high
        where = sa.or_(after, job_events.c.id.in_(list(gaps))) if gaps else after
        q = sa.select(job_events).where(where)
        if job_id is not None:
            q = q.where(job_events.c.job_id == job_id)
        async with self.db.read() as conn:
            rows = (await conn.execute(q.order_by(job_events.c.id).limit(limit))).all()
        return [_job_event(r) for r in rows]

    @cancel_safe
    async def last_event_id(self) -> int:
        """The newest event's id (0 when there is none)."""
        async with self.db.read() as conn:
            value = (await conn.execute(sa.select(sa.func.max(job_events.c.id)))).scalar()
        return int(value or 0)

    @cancel_safe
    async def status_of(self, job_ids: Sequence[str]) -> dict[str, tuple[JobStatus, bool]]:
        """``{id: (status, cancel_requested)}`` for the given ids."""
        if not job_ids:
            return {}
        q = sa.select(jobs.c.id, jobs.c.status, jobs.c.cancel_requested).where(
            jobs.c.id.in_(list(job_ids))
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(q)).all()
        return {r.id: (JobStatus(r.status), bool(r.cancel_requested)) for r in rows}

    # --- cancel ------------------------------------------------------------------
    @cancel_safe
    async def request_cancel(self, job_id: str) -> Job:
        """A queued job is canceled at once; a running one is flagged, and its
        worker finishes the cancel. A finished job cannot be canceled."""
        now = utcnow()
        queued = 0
        async with self.db.write() as conn:
            row = (await conn.execute(sa.select(jobs).where(jobs.c.id == job_id))).one_or_none()
            if row is None:
                raise errors.JobNotFound(f"no job with id {job_id!r}", job_id=job_id)
            current = JobStatus(row.status)
            if current == JobStatus.QUEUED:
                transition(current, JobStatus.CANCELED)
                await conn.execute(
                    jobs.update()
                    .where(jobs.c.id == job_id)
                    .values(
                        status=JobStatus.CANCELED.value,
                        cancel_requested=True,
                        finished_at=now,
                        updated_at=now,
                        lease_owner=None,
                        lease_expires_at=None,
                    )
                )
                await _event(
                    conn,
                    job_id,
                    "transition",
                    status=JobStatus.CANCELED,
                    at=now,
                    message="canceled while queued",
                )
                queued = await webhooks_db.enqueue(
                    conn, self.webhooks, WebhookEvent.COMPLETED, await self._get(conn, job_id), now
                )
            elif current == JobStatus.RUNNING:
                if not row.cancel_requested:
                    await conn.execute(
                        jobs.update()
                        .where(jobs.c.id == job_id)
                        .values(cancel_requested=True, updated_at=now)
                    )
                    await _event(conn, job_id, "info", at=now, message="cancel requested")
            else:
                transition(current, JobStatus.CANCELED)  # raises InvalidTransition
        self._queued(queued)
        return await self.get(job_id)

    # --- the worker's side ----------------------------------------------------------
    @cancel_safe
    async def claim(
        self,
        owner: str,
        lease_s: float,
        capacity: int,
        groups: limits.LimitGroups,
        *,
        backends: Sequence[str] | None = None,
        only_ids: Sequence[str] | None = None,
    ) -> list[Claimed]:
        """Atomically move up to ``capacity`` queued jobs to running, each under a new
        lease token of this owner, highest priority then oldest first, within every
        limit (counted over all processes). Lease times come from the database's
        clock, read once the write lock is held."""
        if capacity <= 0:
            return []
        async with self.db.write(claim_lock=True) as conn:
            cq = sa.select(jobs.c.id, jobs.c.backend, jobs.c.model, jobs.c.started_at).where(
                jobs.c.status == JobStatus.QUEUED.value
            )
            if backends is not None:
                cq = cq.where(jobs.c.backend.in_(list(backends)))
            if only_ids is not None:
                cq = cq.where(jobs.c.id.in_(list(only_ids)))
            cq = cq.order_by(jobs.c.priority.desc(), jobs.c.created_at, jobs.c.id).limit(
                max(capacity * 4, 64)
            )
            crows = (await conn.execute(cq)).all()
            never_started = {r.id for r in crows if r.started_at is None}
            candidates = [limits.Candidate(r.id, r.backend, r.model) for r in crows]
            if not candidates:
                return []
            rq = (
                sa.select(jobs.c.backend, jobs.c.model, sa.func.count())
                .where(jobs.c.status == JobStatus.RUNNING.value)
                .group_by(jobs.c.backend, jobs.c.model)
            )
            running = {(b, m): int(n) for b, m, n in (await conn.execute(rq)).all()}
            chosen = limits.pick(candidates, running, groups, capacity)
            if not chosen:
                return []
            now = await db_now(conn)
            until = now + timedelta(seconds=lease_s)
            leases = {jid: lease_token(owner) for jid in chosen}
            await conn.execute(
                jobs.update()
                .where(jobs.c.id == sa.bindparam("jid"), jobs.c.status == JobStatus.QUEUED.value)
                .values(
                    status=JobStatus.RUNNING.value,
                    lease_owner=sa.bindparam("token"),
                    lease_expires_at=until,
                    attempts=jobs.c.attempts + 1,
                    started_at=sa.func.coalesce(jobs.c.started_at, now),
                    updated_at=now,
                ),
                [{"jid": jid, "token": token} for jid, token in leases.items()],
            )
            rows = (await conn.execute(sa.select(jobs).where(jobs.c.id.in_(chosen)))).all()
            order = {jid: i for i, jid in enumerate(chosen)}
            # A job canceled meanwhile (not under the claim lock) is not ours.
            claimed = [
                Claimed(job=await _job(conn, r, outputs=False), lease=leases[r.id])
                for r in rows
                if r.lease_owner == leases[r.id]
            ]
            if claimed:
                await conn.execute(
                    job_events.insert(),
                    [
                        {
                            "job_id": c.job.id,
                            "at": now,
                            "kind": "transition",
                            "status": JobStatus.RUNNING.value,
                            "message": f"claimed by {owner}",
                            "data": None,
                        }
                        for c in claimed
                    ],
                )
            claimed.sort(key=lambda c: order[c.job.id])
            queued = 0
            for c in claimed:
                if c.job.id in never_started:
                    queued += await webhooks_db.enqueue(
                        conn, self.webhooks, WebhookEvent.STARTED, c.job, now
                    )
        self._queued(queued)
        return claimed

    @cancel_safe
    async def take_over_expired(
        self,
        owner: str,
        lease_s: float,
        *,
        backends: Sequence[str] | None = None,
        only_ids: Sequence[str] | None = None,
        limit: int = 100,
    ) -> list[Claimed]:
        """Jobs left running under a lease that expired (by the database's clock)
        become ours, each under a new lease token: whatever the previous holder still
        tries to write under its old token is refused (:class:`LeaseLost`)."""
        async with self.db.write(claim_lock=True) as conn:
            now = await db_now(conn)
            until = now + timedelta(seconds=lease_s)
            q = sa.select(jobs).where(
                jobs.c.status == JobStatus.RUNNING.value,
                sa.or_(jobs.c.lease_expires_at.is_(None), jobs.c.lease_expires_at < now),
            )
            if backends is not None:
                q = q.where(jobs.c.backend.in_(list(backends)))
            if only_ids is not None:
                q = q.where(jobs.c.id.in_(list(only_ids)))
            q = q.order_by(jobs.c.priority.desc(), jobs.c.created_at).limit(limit)
            rows = (await conn.execute(q)).all()
            if not rows:
                return []
            leases = {r.id: lease_token(owner) for r in rows}
            await conn.execute(
                jobs.update()
                .where(
                    jobs.c.id == sa.bindparam("jid"),
                    jobs.c.status == JobStatus.RUNNING.value,
                    jobs.c.lease_owner.is_not_distinct_from(sa.bindparam("old")),
                    # a renewal that committed since the read keeps the job its holder's
                    sa.or_(jobs.c.lease_expires_at.is_(None), jobs.c.lease_expires_at < now),
                )
                .values(
                    lease_owner=sa.bindparam("token"),
                    lease_expires_at=until,
                    updated_at=now,
                ),
                [{"jid": r.id, "old": r.lease_owner, "token": leases[r.id]} for r in rows],
            )
            mine = set(
                (
                    await conn.execute(
                        sa.select(jobs.c.id).where(jobs.c.lease_owner.in_(list(leases.values())))
                    )
                ).scalars()
            )
            rows = [r for r in rows if r.id in mine]
            if not rows:
                return []
            await conn.execute(
                job_events.insert(),
                [
                    {
                        "job_id": r.id,
                        "at": now,
                        "kind": "info",
                        "status": None,
                        "message": f"lease of {_holder(r.lease_owner)} expired; "
                        f"taken over by {owner}",
                        "data": None,
                    }
                    for r in rows
                ],
            )
            out = []
            for r in rows:
                job = await _job(conn, r, outputs=False)
                out.append(
                    Claimed(
                        job=job,
                        lease=leases[r.id],
                        submitting_at=r.submitting_at,
                        previous=r.lease_owner,
                    )
                )
        return out

    @cancel_safe
    async def renew_leases(self, leases: Sequence[str], lease_s: float) -> dict[str, bool]:
        """Extend these leases (by the database's clock); returns
        ``{lease: cancel_requested}`` for the ones still held. A lease missing from
        the result was lost: its job was taken over, or it finished."""
        if not leases:
            return {}
        async with self.db.write() as conn:
            now = await db_now(conn)
            held = jobs.c.lease_owner.in_(list(leases)), jobs.c.status == JobStatus.RUNNING.value
            await conn.execute(
                jobs.update().where(*held).values(lease_expires_at=now + timedelta(seconds=lease_s))
            )
            rows = (
                await conn.execute(
                    sa.select(jobs.c.lease_owner, jobs.c.cancel_requested).where(*held)
                )
            ).all()
        return {str(r.lease_owner): bool(r.cancel_requested) for r in rows}

    @cancel_safe
    async def release_leases(self, leases: Sequence[str]) -> None:
        """Give jobs back (graceful shutdown): their lease expires now, so the next
        process re-attaches them at once."""
        if not leases:
            return
        async with self.db.write() as conn:
            now = await db_now(conn)
            await conn.execute(
                jobs.update()
                .where(jobs.c.lease_owner.in_(list(leases)))
                .values(lease_expires_at=now - timedelta(seconds=1))
            )

    @cancel_safe
    async def release_owner(self, owner: str) -> int:
        """Expire every lease a (dead) worker held, so its jobs are taken over at once
        instead of after ``LEASE_S``; returns how many."""
        async with self.db.write() as conn:
            now = await db_now(conn)
            res = await conn.execute(
                jobs.update()
                .where(
                    jobs.c.status == JobStatus.RUNNING.value,
                    jobs.c.lease_owner.startswith(owner + "#", autoescape=True),
                )
                .values(lease_expires_at=now - timedelta(seconds=1))
            )
        return int(res.rowcount or 0)

    @cancel_safe
    async def mark_submitting(self, job_id: str, lease: str) -> None:
        """Written just before the upstream submit: if we die between here and
        :meth:`set_upstream`, recovery knows the submit may have happened. Refused
        (:class:`LeaseLost`) once the lease is lost, so a job taken over is never
        submitted by its previous holder."""
        now = utcnow()
        async with self.db.write() as conn:
            await self._guarded(conn, job_id, lease, submitting_at=now, updated_at=now)

    @cancel_safe
    async def set_upstream(
        self, job_id: str, lease: str, handle: UpstreamHandle, cost: float | None
    ) -> None:
        """Record the upstream handle under our lease. When the lease was lost in the
        meantime, the handle is still recorded if the job runs without one (the work
        exists upstream and may be paid: its new holder re-attaches to it instead of
        failing it), and :class:`LeaseLost` is raised after the commit."""
        now = utcnow()
        values: dict[str, object] = {
            "upstream": handle.model_dump(mode="json"),
            "cost": cost,
            "updated_at": now,
        }
        data: dict[str, JsonValue] = {
            "task_id": handle.task_id,
            "instance": handle.instance,
            "cost": cost,
        }
        lost = False
        async with self.db.write() as conn:
            res = await conn.execute(jobs.update().where(*_held(job_id, lease)).values(**values))
            if res.rowcount == 1:
                await _event(
                    conn, job_id, "upstream", at=now, message="submitted upstream", data=data
                )
            else:
                lost = True
                rescued = await conn.execute(
                    jobs.update()
                    .where(
                        jobs.c.id == job_id,
                        jobs.c.status == JobStatus.RUNNING.value,
                        _no_handle(),
                    )
                    .values(**values)
                )
                if rescued.rowcount == 1:
                    await _event(
                        conn,
                        job_id,
                        "upstream",
                        at=now,
                        message="submitted upstream (recorded by the previous holder of the "
                        "lease; the new holder re-attaches)",
                        data=data,
                    )
                else:
                    await self._record_extra_submission(conn, job_id, handle, cost, now)
        if lost:
            raise LeaseLost(job_id)

    async def _record_extra_submission(
        self,
        conn: AsyncConnection,
        job_id: str,
        handle: UpstreamHandle,
        cost: float | None,
        now: datetime,
    ) -> None:
        """A submit whose handle cannot be recorded: the job has another handle, or has
        ended. Upstream accepted (and billed) it all the same, so its cost is added to
        the job's and an event names it. The leases make this impossible; if it ever
        happens, the ledger still shows what was paid."""
        row = (
            await conn.execute(
                sa.select(jobs.c.upstream, jobs.c.backend, jobs.c.model).where(jobs.c.id == job_id)
            )
        ).one_or_none()
        if row is None or (row.upstream or {}).get("task_id") == handle.task_id:
            return
        if row.upstream is None:
            # It ended (e.g. submit_interrupted, counted as billed) before its handle
            # came: the same submission, so keep the handle for the record, no new cost.
            await conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id)
                .values(upstream=handle.model_dump(mode="json"))
            )
            await _event(
                conn,
                job_id,
                "info",
                at=now,
                message=f"upstream accepted the submit after all (task {handle.task_id}), "
                "after the job had ended; it is not followed",
                data={"task_id": handle.task_id, "cost": cost},
            )
            return
        extra = cost
        if extra is None and row.backend == "flux":
            extra = float(self.pricing.flux.get(row.model, 0.0))
        await conn.execute(
            jobs.update()
            .where(jobs.c.id == job_id)
            .values(cost=sa.func.coalesce(jobs.c.cost, 0.0) + (extra or 0.0))
        )
        await _event(
            conn,
            job_id,
            "info",
            at=now,
            message=f"a second upstream task ({handle.task_id}) was submitted for this job and "
            "may be billed; its cost is added to the job's, and it is not followed",
            data={"task_id": handle.task_id, "cost": extra},
        )

    @cancel_safe
    async def set_progress(
        self, job_id: str, lease: str, progress: float | None, message: str | None = None
    ) -> None:
        now = utcnow()
        queued = 0
        async with self.db.write() as conn:
            await self._guarded(conn, job_id, lease, progress=progress, updated_at=now)
            await _event(conn, job_id, "progress", at=now, progress=progress, message=message)
            if progress is not None and await webhooks_db.wants_events(conn, self.webhooks, job_id):
                job = await self._get(conn, job_id, outputs=False)
                queued = await webhooks_db.enqueue(
                    conn, self.webhooks, WebhookEvent.PROGRESS, job, now
                )
        self._queued(queued)

    @cancel_safe
    async def add_event(
        self, job_id: str, kind: EventKind, message: str, data: dict[str, JsonValue] | None = None
    ) -> None:
        async with self.db.write() as conn:
            await _event(conn, job_id, kind, at=utcnow(), message=message, data=data)

    @cancel_safe
    async def requeue(self, job_id: str, lease: str, reason: str) -> None:
        """Back to the queue: nothing was sent upstream, so running it again is safe."""
        now = utcnow()
        async with self.db.write() as conn:
            current = await self._owned_status(conn, job_id, lease)
            transition(current, JobStatus.QUEUED)
            await self._guarded(
                conn,
                job_id,
                lease,
                status=JobStatus.QUEUED.value,
                lease_owner=None,
                lease_expires_at=None,
                submitting_at=None,
                upstream=sa.null(),
                cost=None,
                progress=None,
                updated_at=now,
            )
            await _event(
                conn, job_id, "transition", status=JobStatus.QUEUED, at=now, message=reason
            )

    @cancel_safe
    async def finish(
        self,
        job_id: str,
        lease: str | None,
        status: JobStatus,
        *,
        error: JobError | None = None,
        unless_upstream: bool = False,
        outputs: Sequence[NewOutput] = (),
        message: str | None = None,
        gpu_seconds: float | None = None,
        tokens: int | None = None,
    ) -> Job:
        """Move a job to a terminal state with its outputs or error, in one
        transaction, recording its final cost (``domain/costs.final_cost``).
        ``lease=None`` acts without a lease (a queued job). ``unless_upstream``: refuse
        (:class:`LeaseLost`) if an upstream handle was recorded meanwhile (a job about to
        be failed as ``submit_interrupted`` whose previous holder recorded its handle
        after all: it is re-attached instead)."""
        now = utcnow()
        async with self.db.write() as conn:
            # One read: the status (and lease) to check, and what the final cost needs.
            ledger = (
                await conn.execute(
                    sa.select(
                        jobs.c.status,
                        jobs.c.lease_owner,
                        jobs.c.backend,
                        jobs.c.model,
                        jobs.c.cost,
                        jobs.c.upstream,
                        jobs.c.submitting_at,
                    ).where(jobs.c.id == job_id)
                )
            ).one_or_none()
            if lease is None and ledger is None:
                raise errors.JobNotFound(f"no job with id {job_id!r}", job_id=job_id)
            if lease is not None and (ledger is None or ledger.lease_owner != lease):
                raise LeaseLost(job_id)
            assert ledger is not None
            if unless_upstream and ledger.upstream is not None:
                raise LeaseLost(job_id)
            current = JobStatus(ledger.status)
            transition(current, status)
            values: dict[str, object] = {
                "status": status.value,
                "finished_at": now,
                "updated_at": now,
                "lease_owner": None,
                "lease_expires_at": None,
                "gpu_seconds": gpu_seconds,
                "cost": final_cost(
                    backend=ledger.backend,
                    model=ledger.model,
                    status=status,
                    accepted=ledger.upstream is not None,
                    submit_started=ledger.submitting_at is not None,
                    quoted=ledger.cost,
                    error_code=error.code if error is not None else None,
                    gpu_seconds=gpu_seconds,
                    tokens=tokens,
                    pricing=self.pricing,
                ),
            }
            if status == JobStatus.SUCCEEDED:
                values["progress"] = 1.0
            if error is not None:
                values.update(
                    error_code=error.code.value,
                    error_message=error.message,
                    error_details=error.details or None,
                )
            where = [jobs.c.id == job_id, jobs.c.status == current.value]
            if lease is not None:
                where.append(jobs.c.lease_owner == lease)
            if unless_upstream:
                where.append(_no_handle())
            res = await conn.execute(jobs.update().where(*where).values(**values))
            if res.rowcount != 1:
                raise LeaseLost(job_id)
            if outputs:
                await conn.execute(
                    job_outputs.insert(),
                    [
                        {
                            "job_id": job_id,
                            "n": o.n,
                            "path": o.path,
                            "mime_type": o.mime_type,
                            "size_bytes": o.size_bytes,
                            "sha256": o.sha256,
                            "width": o.width,
                            "height": o.height,
                            "duration_s": o.duration_s,
                            "created_at": now,
                        }
                        for o in outputs
                    ],
                )
            data: dict[str, JsonValue] | None = None
            if error is not None:
                data = {"code": error.code.value, **error.details}
            await _event(
                conn,
                job_id,
                "transition",
                status=status,
                at=now,
                message=message or (error.message if error else None),
                data=data,
            )
            job = await self._get(conn, job_id)
            queued = await webhooks_db.enqueue(
                conn, self.webhooks, WebhookEvent.COMPLETED, job, now
            )
        self._queued(queued)
        return job

    @cancel_safe
    async def mark_manifest_written(self, job_id: str) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                jobs.update().where(jobs.c.id == job_id).values(manifest_at=utcnow())
            )

    @cancel_safe
    async def missing_manifests(self, older_than_s: float, limit: int = 100) -> list[Job]:
        """Succeeded jobs whose manifest was never written (the process died between
        the commit and the file), finished more than ``older_than_s`` ago."""
        before = utcnow() - timedelta(seconds=older_than_s)
        q = (
            sa.select(jobs)
            .where(
                jobs.c.status == JobStatus.SUCCEEDED.value,
                jobs.c.manifest_at.is_(None),
                jobs.c.finished_at < before,
            )
            .order_by(jobs.c.finished_at)
            .limit(limit)
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(q)).all()
            items = [await _job(conn, r, outputs=False) for r in rows]
            await _attach_outputs(conn, items)
        return items

    async def _owned_status(self, conn: AsyncConnection, job_id: str, lease: str) -> JobStatus:
        row = (
            await conn.execute(
                sa.select(jobs.c.status, jobs.c.lease_owner).where(jobs.c.id == job_id)
            )
        ).one_or_none()
        if row is None or row.lease_owner != lease:
            raise LeaseLost(job_id)
        return JobStatus(row.status)

    async def _guarded(
        self, conn: AsyncConnection, job_id: str, lease: str, **values: object
    ) -> None:
        res = await conn.execute(jobs.update().where(*_held(job_id, lease)).values(**values))
        if res.rowcount != 1:
            raise LeaseLost(job_id)


# --- helpers -------------------------------------------------------------------------

_lease_seq = itertools.count(1)


def lease_token(owner: str) -> str:
    """A new lease token of ``owner`` (a worker id): unique per claim, so that every
    write a worker makes for a job is fenced by the claim it made, not only by the
    process (two claims of one job in one process are told apart too)."""
    return f"{owner}#{next(_lease_seq):x}"


def lease_holder(lease: str) -> str:
    """The worker id a lease token belongs to."""
    return lease.rpartition("#")[0] or lease


def _holder(lease: str | None) -> str:
    return "nobody" if lease is None else lease_holder(lease)


def _no_handle() -> sa.ColumnElement[bool]:
    """No upstream handle: SQL NULL, or a JSON null (what earlier versions wrote when a
    job was requeued)."""
    return sa.or_(jobs.c.upstream.is_(None), sa.cast(jobs.c.upstream, sa.Text) == "null")


def _held(job_id: str, lease: str) -> tuple[sa.ColumnElement[bool], ...]:
    """The fence of every write a lease holder makes."""
    return (
        jobs.c.id == job_id,
        jobs.c.lease_owner == lease,
        jobs.c.status == JobStatus.RUNNING.value,
    )


async def _event(
    conn: AsyncConnection,
    job_id: str,
    kind: EventKind,
    *,
    at: datetime,
    status: JobStatus | None = None,
    progress: float | None = None,
    message: str | None = None,
    data: dict[str, JsonValue] | None = None,
) -> None:
    await conn.execute(
        job_events.insert().values(
            job_id=job_id,
            at=at,
            kind=kind,
            status=status.value if status else None,
            progress=progress,
            message=message,
            data=data,
        )
    )


def _job_event(r: sa.Row[tuple[object, ...]]) -> JobEvent:
    m = r._mapping
    return JobEvent(
        id=m["id"],
        job_id=m["job_id"],
        at=m["at"],
        kind=m["kind"],
        status=JobStatus(m["status"]) if m["status"] else None,
        progress=m["progress"],
        message=m["message"],
        data=m["data"] or {},
    )


async def _key_used(conn: AsyncConnection, key: str | None) -> bool:
    if key is None:
        return False
    found = await conn.execute(sa.select(jobs.c.id).where(jobs.c.idempotency_key == key))
    return found.first() is not None


def _events_list(events: Sequence[WebhookEventName] | None) -> list[WebhookEventName] | None:
    return None if events is None else list(events)


def _output(row: sa.Row[tuple[object, ...]]) -> JobOutput:
    m = row._mapping
    return JobOutput(
        n=int(m["n"]),
        path=str(m["path"]),
        url=f"/api/outputs/{m['job_id']}/{m['n']}",
        mime_type=str(m["mime_type"]),
        size_bytes=int(m["size_bytes"]),
        sha256=str(m["sha256"]),
        width=m["width"],
        height=m["height"],
        duration_s=m["duration_s"],
    )


async def _job(conn: AsyncConnection, row: sa.Row[tuple[object, ...]], outputs: bool = True) -> Job:
    m = row._mapping
    error = None
    if m["error_code"]:
        error = JobError(
            code=errors.ErrorCode(m["error_code"]),
            message=str(m["error_message"] or ""),
            details=m["error_details"] or {},
        )
    job = Job(
        id=str(m["id"]),
        backend=str(m["backend"]),
        model=str(m["model"]),
        params=m["params"],
        status=JobStatus(m["status"]),
        priority=int(m["priority"]),
        progress=m["progress"],
        attempts=int(m["attempts"]),
        idempotency_key=m["idempotency_key"],
        error=error,
        upstream=UpstreamHandle.model_validate(m["upstream"]) if m["upstream"] else None,
        cost=m["cost"],
        cost_estimate=m["cost_estimate"],
        gpu_seconds=m["gpu_seconds"],
        simulated=bool(m["simulated"]),
        cancel_requested=bool(m["cancel_requested"]),
        deadline_at=m["deadline_at"],
        created_at=m["created_at"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        updated_at=m["updated_at"],
        retry_of=m["retry_of"],
        webhook_url=m["webhook_url"],
        webhook_events=m["webhook_events"],
        token_id=m["token_id"],
    )
    if outputs:
        await _attach_outputs(conn, [job])
    return job


async def _attach_outputs(conn: AsyncConnection, items: list[Job]) -> None:
    ids = [j.id for j in items if j.status == JobStatus.SUCCEEDED]
    if not ids:
        return
    rows = (
        await conn.execute(
            sa.select(job_outputs)
            .where(job_outputs.c.job_id.in_(ids))
            .order_by(job_outputs.c.job_id, job_outputs.c.n)
        )
    ).all()
    by_job: dict[str, list[JobOutput]] = {}
    for r in rows:
        by_job.setdefault(str(r.job_id), []).append(_output(r))
    for j in items:
        j.outputs = by_job.get(j.id, [])


def _encode_cursor(created: datetime, job_id: str) -> str:
    raw = json.dumps([created.isoformat(), job_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, job_id = json.loads(raw)
        return datetime.fromisoformat(created), str(job_id)
    except (ValueError, TypeError) as exc:
        raise errors.InvalidRequest("malformed cursor", field="cursor") from exc
