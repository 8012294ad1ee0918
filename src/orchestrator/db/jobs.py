"""Queries on jobs, their outputs and events. Every status change goes through
``domain.jobs.transition`` and writes an event in the same transaction.

Writes made by a worker are guarded by its lease (``lease_owner``): a worker that
lost its lease (another process took the job over) changes nothing and gets
:class:`LeaseLost`.
"""

from __future__ import annotations

import base64
import functools
import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from pydantic import JsonValue
from sqlalchemy.exc import IntegrityError

from orchestrator import errors
from orchestrator.db import webhooks as webhooks_db
from orchestrator.db.engine import Database, cancel_safe, db_now
from orchestrator.db.schema import job_counts, job_events, job_outputs, jobs
from orchestrator.domain import limits
from orchestrator.domain.costs import Pricing, final_cost
from orchestrator.domain.jobs import (
    EventKind,
    Job,
    JobError,
    JobOutput,
    JobPage,
    JobStatus,
    UpstreamHandle,
    WebhookEventName,
    transition,
)
from orchestrator.domain.webhooks import WebhookEvent, WebhookPolicy

# A budget check run inside the job-creating transaction; raises to refuse.
Guard = Callable[[sa.Connection], None]
# The same for a retry, given the new job's estimate.
RetryGuard = Callable[[sa.Connection, float], None]


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


class Claims(list[Claimed]):
    """What :meth:`JobRepo.claim` took, and ``backlog``: whether queued jobs were
    left behind (capacity or a limit held them back), so a freed slot is worth
    another claim; without a backlog only a new job can give the worker work."""

    backlog: bool = False


class JobRepo:
    """``webhooks``: when given, job transitions queue webhook deliveries in their own
    transaction (see ``db/webhooks.py``); ``on_webhook`` is called after such a
    commit, to wake the delivery loop of this process.

    Every method is one unit of work (``Database.run``): one synchronous function
    in one transaction, one hop to the database thread."""

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

        def insert(conn: sa.Connection) -> None:
            if guard is not None and not _key_used(conn, new.idempotency_key):
                guard(conn)
            conn.execute(
                _JOB_INSERT,
                {
                    "id": new.id,
                    "backend": new.backend,
                    "model": new.model,
                    "params": new.params,
                    "priority": new.priority,
                    "status": JobStatus.QUEUED.value,
                    "attempts": 0,
                    "idempotency_key": new.idempotency_key,
                    "request_hash": new.request_hash,
                    "simulated": new.simulated,
                    "cancel_requested": False,
                    "deadline_at": new.deadline_at,
                    "created_at": now,
                    "updated_at": now,
                    "deadline_s": new.deadline_s,
                    "retry_of": new.retry_of,
                    "webhook_url": new.webhook_url,
                    "webhook_events": _events_list(new.webhook_events),
                    "cost_estimate": new.cost_estimate,
                    "token_id": new.token_id,
                },
            )
            _event(conn, new.id, "created", status=JobStatus.QUEUED, at=now)

        def existing(conn: sa.Connection) -> Job | None:
            row = conn.execute(
                sa.select(jobs).where(jobs.c.idempotency_key == new.idempotency_key)
            ).one_or_none()
            if row is None:
                return None
            if row.request_hash != new.request_hash:
                raise errors.IdempotencyConflict(
                    "this Idempotency-Key was used with a different request body",
                    job_id=row.id,
                )
            return _with_outputs(conn, _job(row))

        try:
            await self.db.run(insert, write=True, claim_lock=guard is not None)
        except IntegrityError:
            if new.idempotency_key is None:
                raise
            found = await self.db.run(existing)
            if found is None:
                raise
            return found, False
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
        estimate: float | None = None,
        guard: RetryGuard | None = None,
        token_id: str | None = None,
    ) -> Job:
        """A new queued job with a finished job's backend, model, parameters,
        priority, deadline and webhook settings, linked by ``retry_of``; an event on
        each job says so. Only a terminal job can be retried. ``estimate`` is the new
        job's reserved cost (default: the old job's); ``guard`` (a budget check of
        it) runs first in the transaction and may refuse."""
        now = utcnow()

        def insert(conn: sa.Connection) -> Job:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).one_or_none()
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
            cost = row.cost_estimate if estimate is None else estimate
            if guard is not None:
                guard(conn, cost or 0.0)
            conn.execute(
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
                    cost_estimate=cost,
                    token_id=token_id,
                )
            )
            _event(
                conn,
                new_id,
                "created",
                status=JobStatus.QUEUED,
                at=now,
                message=f"retry of {job_id}",
                data={"retry_of": job_id},
            )
            _event(
                conn,
                job_id,
                "info",
                at=now,
                message=f"retried as {new_id}",
                data={"retried_as": new_id},
            )
            return _get(conn, new_id)

        return await self.db.run(insert, write=True, claim_lock=guard is not None)

    @cancel_safe
    async def get(self, job_id: str) -> Job:
        """A job with its outputs, in one query."""
        return await self.db.run(lambda conn: _get(conn, job_id))

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

        def read(conn: sa.Connection) -> tuple[list[Job], bool]:
            rows = conn.execute(q).all()
            items = [_job(r) for r in rows[:limit]]
            _attach_outputs(conn, items)
            return items, len(rows) > limit

        items, more = await self.db.run(read)
        next_cursor = None
        if more:
            last = items[-1]
            next_cursor = _encode_cursor(last.created_at, last.id)
        return JobPage(items=items, next_cursor=next_cursor)

    @cancel_safe
    async def counts(self) -> dict[str, dict[str, int]]:
        """``{backend: {status: n}}``, from the counts the triggers on ``jobs`` keep
        (no scan of the table)."""
        q = sa.select(job_counts.c.backend, job_counts.c.status, job_counts.c.n).where(
            job_counts.c.n > 0
        )

        def read(conn: sa.Connection) -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {}
            for backend, status, n in conn.execute(q).all():
                out.setdefault(backend, {})[status] = int(n)
            return out

        return await self.db.run(read)

    @cancel_safe
    async def status_of(self, job_ids: Sequence[str]) -> dict[str, tuple[JobStatus, bool]]:
        """``{id: (status, cancel_requested)}`` for the given ids."""
        if not job_ids:
            return {}
        q = sa.select(jobs.c.id, jobs.c.status, jobs.c.cancel_requested).where(
            jobs.c.id.in_(list(job_ids))
        )

        def read(conn: sa.Connection) -> dict[str, tuple[JobStatus, bool]]:
            rows = conn.execute(q).all()
            return {r.id: (JobStatus(r.status), bool(r.cancel_requested)) for r in rows}

        return await self.db.run(read)

    # --- cancel ------------------------------------------------------------------
    @cancel_safe
    async def request_cancel(self, job_id: str) -> Job:
        """A queued job is canceled at once; a running one is flagged, and its
        worker finishes the cancel. A finished job cannot be canceled."""
        now = utcnow()

        def cancel(conn: sa.Connection) -> tuple[Job, int]:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).one_or_none()
            if row is None:
                raise errors.JobNotFound(f"no job with id {job_id!r}", job_id=job_id)
            current = JobStatus(row.status)
            queued = 0
            if current == JobStatus.QUEUED:
                transition(current, JobStatus.CANCELED)
                conn.execute(
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
                _event(
                    conn,
                    job_id,
                    "transition",
                    status=JobStatus.CANCELED,
                    at=now,
                    message="canceled while queued",
                )
                queued = webhooks_db.enqueue(
                    conn, self.webhooks, WebhookEvent.COMPLETED, _get(conn, job_id), now
                )
            elif current == JobStatus.RUNNING:
                if not row.cancel_requested:
                    conn.execute(
                        jobs.update()
                        .where(jobs.c.id == job_id)
                        .values(cancel_requested=True, updated_at=now)
                    )
                    _event(conn, job_id, "info", at=now, message="cancel requested")
            else:
                transition(current, JobStatus.CANCELED)  # raises InvalidTransition
            return _get(conn, job_id), queued

        job, queued = await self.db.run(cancel, write=True)
        self._queued(queued)
        return job

    # --- the worker's side ----------------------------------------------------------
    @cancel_safe
    async def has_queued(
        self,
        backends: Sequence[str] | None = None,
        only_ids: Sequence[str] | None = None,
        skip_ids: Sequence[str] = (),
    ) -> bool:
        """Whether any job waits in the queue (a read: what an idle worker's poll
        asks before it takes the claim lock)."""
        q = sa.select(jobs.c.id).where(_is(JobStatus.QUEUED))
        if backends is not None:
            q = q.where(jobs.c.backend.in_(list(backends)))
        if only_ids is not None:
            q = q.where(jobs.c.id.in_(list(only_ids)))
        if skip_ids:
            q = q.where(jobs.c.id.not_in(list(skip_ids)))
        return await self.db.run(lambda conn: conn.execute(q.limit(1)).first() is not None)

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
        submits_at_once: Callable[[str], bool] | None = None,
        manifests: Sequence[str] = (),
        skip_ids: Sequence[str] = (),
    ) -> Claims:
        """Atomically move up to ``capacity`` queued jobs to running, each under a new
        lease token of this owner, highest priority then oldest first, within every
        limit (counted over all processes). Lease times come from the database's
        clock, read once the write lock is held.

        ``submits_at_once(backend)``: jobs of a backend that submits right away (no
        handle planned first) are marked as submitting in this transaction (what
        :meth:`mark_submitting` would write next). ``manifests``: jobs whose manifest
        was written meanwhile, recorded in this transaction too. ``skip_ids``: queued
        jobs this worker set aside for now (waiting for an instance of their backend)."""
        if capacity <= 0:
            return Claims()

        def take(conn: sa.Connection) -> tuple[Claims, int]:
            if manifests:
                _manifests_written(conn, manifests)
            window = max(capacity * 4, 64)
            cq = _claim_candidates(
                conn.dialect.name, backends is not None, only_ids is not None, bool(skip_ids)
            )
            crows = conn.execute(
                cq,
                {
                    "window": window,
                    "backends": list(backends or ()),
                    "ids": list(only_ids or ()),
                    "skip": list(skip_ids),
                },
            ).all()
            out = Claims()
            if not crows:
                return out, 0
            never_started = {r.id for r in crows if r.started_at is None}
            candidates = [limits.Candidate(r.id, r.backend, r.model) for r in crows]
            running: dict[tuple[str, str], int] = {}
            if any(groups(c.backend, c.model) for c in candidates):
                running = {(b, m): int(n) for b, m, n in conn.execute(_RUNNING_COUNTS).all()}
            chosen = limits.pick(candidates, running, groups, capacity)
            out.backlog = len(chosen) < len(crows) or len(crows) == window
            if not chosen:
                return out, 0
            now = _as_utc(crows[0][-1])
            until = now + timedelta(seconds=lease_s)
            leases = {jid: lease_token(owner) for jid in chosen}
            backend_of = {r.id: r.backend for r in crows}
            at_once = {
                jid: now
                if submits_at_once is not None and submits_at_once(backend_of[jid])
                else None
                for jid in chosen
            }
            conn.execute(
                _CLAIM_UPDATE,
                [
                    {"jid": j, "token": leases[j], "sub": at_once[j], "until": until, "now": now}
                    for j in chosen
                ],
            )
            rows = conn.execute(_SELECT_JOBS, {"ids": chosen}).all()
            order = {jid: i for i, jid in enumerate(chosen)}
            # A job canceled meanwhile (not under the claim lock) is not ours.
            mine = [r for r in rows if r.lease_owner == leases[r.id]]
            mine.sort(key=lambda r: order[r.id])
            out.extend(
                Claimed(job=_job(r), lease=leases[r.id], submitting_at=r.submitting_at)
                for r in mine
            )
            if not out:
                return out, 0
            conn.execute(
                _EVENT_INSERT,
                [
                    {
                        "job_id": c.job.id,
                        "at": now,
                        "kind": "transition",
                        "status": JobStatus.RUNNING.value,
                        "progress": None,
                        "message": f"claimed by {owner}",
                        "data": None,
                    }
                    for c in out
                ],
            )
            queued = 0
            for c in out:
                if c.job.id in never_started:
                    queued += webhooks_db.enqueue(
                        conn, self.webhooks, WebhookEvent.STARTED, c.job, now
                    )
            return out, queued

        claimed, queued = await self.db.run(take, write=True, claim_lock=True)
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

        def take(conn: sa.Connection) -> list[Claimed]:
            now = db_now(conn)
            until = now + timedelta(seconds=lease_s)
            q = sa.select(jobs).where(
                _is(JobStatus.RUNNING),
                sa.or_(jobs.c.lease_expires_at.is_(None), jobs.c.lease_expires_at < now),
            )
            if backends is not None:
                q = q.where(jobs.c.backend.in_(list(backends)))
            if only_ids is not None:
                q = q.where(jobs.c.id.in_(list(only_ids)))
            q = q.order_by(jobs.c.priority.desc(), jobs.c.created_at).limit(limit)
            rows = conn.execute(q).all()
            if not rows:
                return []
            leases = {r.id: lease_token(owner) for r in rows}
            conn.execute(
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
                conn.execute(
                    sa.select(jobs.c.id).where(jobs.c.lease_owner.in_(list(leases.values())))
                ).scalars()
            )
            rows = [r for r in rows if r.id in mine]
            if not rows:
                return []
            conn.execute(
                _EVENT_INSERT,
                [
                    {
                        "job_id": r.id,
                        "at": now,
                        "kind": "info",
                        "status": None,
                        "progress": None,
                        "message": f"lease of {_holder(r.lease_owner)} expired; "
                        f"taken over by {owner}",
                        "data": None,
                    }
                    for r in rows
                ],
            )
            return [
                Claimed(
                    job=_job(r),
                    lease=leases[r.id],
                    submitting_at=r.submitting_at,
                    previous=r.lease_owner,
                )
                for r in rows
            ]

        return await self.db.run(take, write=True, claim_lock=True)

    @cancel_safe
    async def renew_leases(
        self, leases: Sequence[str], lease_s: float, *, manifests: Sequence[str] = ()
    ) -> dict[str, bool]:
        """Extend these leases (by the database's clock); returns
        ``{lease: cancel_requested}`` for the ones still held. A lease missing from
        the result was lost: its job was taken over, or it finished. ``manifests``:
        jobs whose manifest was written meanwhile, recorded in this transaction."""
        if not leases and not manifests:
            return {}

        def renew(conn: sa.Connection) -> dict[str, bool]:
            if manifests:
                _manifests_written(conn, manifests)
            if not leases:
                return {}
            now = db_now(conn)
            held = jobs.c.lease_owner.in_(list(leases)), jobs.c.status == JobStatus.RUNNING.value
            conn.execute(
                jobs.update().where(*held).values(lease_expires_at=now + timedelta(seconds=lease_s))
            )
            rows = conn.execute(
                sa.select(jobs.c.lease_owner, jobs.c.cancel_requested).where(*held)
            ).all()
            return {str(r.lease_owner): bool(r.cancel_requested) for r in rows}

        return await self.db.run(renew, write=True)

    @cancel_safe
    async def release_leases(self, leases: Sequence[str]) -> None:
        """Give jobs back (graceful shutdown): their lease expires now, so the next
        process re-attaches them at once."""
        if not leases:
            return

        def release(conn: sa.Connection) -> None:
            now = db_now(conn)
            conn.execute(
                jobs.update()
                .where(jobs.c.lease_owner.in_(list(leases)))
                .values(lease_expires_at=now - timedelta(seconds=1))
            )

        await self.db.run(release, write=True)

    @cancel_safe
    async def release_owner(self, owner: str) -> int:
        """Expire every lease a (dead) worker held, so its jobs are taken over at once
        instead of after ``LEASE_S``; returns how many."""

        def release(conn: sa.Connection) -> int:
            now = db_now(conn)
            res = conn.execute(
                jobs.update()
                .where(
                    jobs.c.status == JobStatus.RUNNING.value,
                    jobs.c.lease_owner.startswith(owner + "#", autoescape=True),
                )
                .values(lease_expires_at=now - timedelta(seconds=1))
            )
            return int(res.rowcount or 0)

        return await self.db.run(release, write=True)

    @cancel_safe
    async def mark_submitting(self, job_id: str, lease: str) -> None:
        """Written just before the upstream submit: if we die between here and
        :meth:`set_upstream`, recovery knows the submit may have happened. Refused
        (:class:`LeaseLost`) once the lease is lost, so a job taken over is never
        submitted by its previous holder."""
        now = utcnow()
        await self.db.run(
            lambda conn: _guarded(conn, job_id, lease, submitting_at=now, updated_at=now),
            write=True,
        )

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

        def record(conn: sa.Connection) -> bool:
            res = _update_held(conn, job_id, lease, values)
            if res.rowcount == 1:
                _event(conn, job_id, "upstream", at=now, message="submitted upstream", data=data)
                return False
            rescued = conn.execute(
                jobs.update()
                .where(
                    jobs.c.id == job_id,
                    jobs.c.status == JobStatus.RUNNING.value,
                    _no_handle(),
                )
                .values(**values)
            )
            if rescued.rowcount == 1:
                _event(
                    conn,
                    job_id,
                    "upstream",
                    at=now,
                    message="submitted upstream (recorded by the previous holder of the "
                    "lease; the new holder re-attaches)",
                    data=data,
                )
            else:
                self._record_extra_submission(conn, job_id, handle, cost, now)
            return True

        if await self.db.run(record, write=True):
            raise LeaseLost(job_id)

    def _record_extra_submission(
        self,
        conn: sa.Connection,
        job_id: str,
        handle: UpstreamHandle,
        cost: float | None,
        now: datetime,
    ) -> None:
        """A submit whose handle cannot be recorded: the job has another handle, or has
        ended. Upstream accepted (and billed) it all the same, so its cost is added to
        the job's and an event names it. The leases make this impossible; if it ever
        happens, the ledger still shows what was paid."""
        row = conn.execute(
            sa.select(jobs.c.upstream, jobs.c.backend, jobs.c.model).where(jobs.c.id == job_id)
        ).one_or_none()
        if row is None or (row.upstream or {}).get("task_id") == handle.task_id:
            return
        if row.upstream is None:
            # It ended (e.g. submit_interrupted, counted as billed) before its handle
            # came: the same submission, so keep the handle for the record, no new cost.
            conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id)
                .values(upstream=handle.model_dump(mode="json"))
            )
            _event(
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
        conn.execute(
            jobs.update()
            .where(jobs.c.id == job_id)
            .values(cost=sa.func.coalesce(jobs.c.cost, 0.0) + (extra or 0.0))
        )
        _event(
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

        def record(conn: sa.Connection) -> int:
            _guarded(conn, job_id, lease, progress=progress, updated_at=now)
            _event(conn, job_id, "progress", at=now, progress=progress, message=message)
            if progress is not None and webhooks_db.wants_events(conn, self.webhooks, job_id):
                job = _get(conn, job_id, outputs=False)
                return webhooks_db.enqueue(conn, self.webhooks, WebhookEvent.PROGRESS, job, now)
            return 0

        self._queued(await self.db.run(record, write=True))

    @cancel_safe
    async def add_event(
        self, job_id: str, kind: EventKind, message: str, data: dict[str, JsonValue] | None = None
    ) -> None:
        at = utcnow()
        await self.db.run(
            lambda conn: _event(conn, job_id, kind, at=at, message=message, data=data),
            write=True,
        )

    @cancel_safe
    async def note_queued(self, backends: Sequence[str], message: str) -> int:
        """An ``info`` event on every queued job of ``backends`` (e.g. "waiting for a
        ComfyUI instance"), in one statement; returns how many jobs got it."""
        if not backends:
            return 0
        at = utcnow()
        return await self.db.run(
            lambda conn: (
                conn.execute(
                    _NOTE_QUEUED, {"backends": list(backends), "at": at, "message": message}
                ).rowcount
            ),
            write=True,
        )

    @cancel_safe
    async def queued_past_deadline(self, backends: Sequence[str], limit: int = 100) -> list[str]:
        """Queued jobs of ``backends`` whose deadline has passed (on the database's
        clock), oldest deadline first: nothing will take them while their backend is
        down, so the worker claims them only to fail them ``deadline_exceeded``."""
        if not backends:
            return []
        return await self.db.run(
            lambda conn: [
                str(r[0])
                for r in conn.execute(
                    _QUEUED_PAST_DEADLINE,
                    {"backends": list(backends), "n": limit, "now": utcnow()},
                ).all()
            ]
        )

    @cancel_safe
    async def requeue(self, job_id: str, lease: str, reason: str, *, counts: bool = True) -> None:
        """Back to the queue: nothing was sent upstream, so running it again is safe.
        ``counts=False``: the claim's try is given back (``attempts`` goes down by one),
        for a requeue that is not the job's doing (its backend is down)."""
        now = utcnow()

        def back(conn: sa.Connection) -> None:
            current = _owned_status(conn, job_id, lease)
            if not counts:
                conn.execute(_GIVE_BACK_TRY, {"jid": job_id})
            transition(current, JobStatus.QUEUED)
            _guarded(
                conn,
                job_id,
                lease,
                status=JobStatus.QUEUED.value,
                lease_owner=None,
                lease_expires_at=None,
                submitting_at=None,
                upstream=_NULL,
                cost=None,
                progress=None,
                updated_at=now,
            )
            _event(conn, job_id, "transition", status=JobStatus.QUEUED, at=now, message=reason)

        await self.db.run(back, write=True)

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
        never_submitted: bool = False,
    ) -> Job:
        """Move a job to a terminal state with its outputs or error, in one
        transaction, recording its final cost (``domain/costs.final_cost``).
        ``lease=None`` acts without a lease (a queued job). ``unless_upstream``: refuse
        (:class:`LeaseLost`) if an upstream handle was recorded meanwhile (a job about to
        be failed as ``submit_interrupted`` whose previous holder recorded its handle
        after all: it is re-attached instead). ``never_submitted``: the lease holder
        knows no submit was started (a job marked submitting at its claim, ended
        before the submit): its mark is cleared and nothing is counted as billed."""
        now = utcnow()

        def end(conn: sa.Connection) -> tuple[Job, int]:
            # One read: the status (and lease) to check, and what the final cost needs.
            ledger = conn.execute(_FINISH_LEDGER, {"jid": job_id}).one_or_none()
            if lease is None and ledger is None:
                raise errors.JobNotFound(f"no job with id {job_id!r}", job_id=job_id)
            if lease is not None and (ledger is None or ledger.lease_owner != lease):
                raise LeaseLost(job_id)
            assert ledger is not None
            if unless_upstream and ledger.upstream is not None:
                raise LeaseLost(job_id)
            current = JobStatus(ledger.status)
            transition(current, status)
            unsent = never_submitted and ledger.upstream is None
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
                    submit_started=ledger.submitting_at is not None and not unsent,
                    quoted=ledger.cost,
                    error_code=error.code if error is not None else None,
                    gpu_seconds=gpu_seconds,
                    tokens=tokens,
                    pricing=self.pricing,
                ),
            }
            if unsent:
                values["submitting_at"] = None
            if status == JobStatus.SUCCEEDED:
                values["progress"] = 1.0
            if error is not None:
                values.update(
                    error_code=error.code.value,
                    error_message=error.message,
                    error_details=error.details or None,
                )
            stmt = _finish_update(lease is not None, unless_upstream, tuple(sorted(values)))
            params = {f"v_{k}": v for k, v in values.items()}
            params.update(jid=job_id, current=current.value, lease=lease)
            row = conn.execute(stmt, params).one_or_none()
            if row is None:
                raise LeaseLost(job_id)
            job = _job(row)
            if outputs:
                conn.execute(
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
            if status == JobStatus.SUCCEEDED:
                job.outputs = [_new_output(job_id, o) for o in sorted(outputs, key=_by_n)]
            data: dict[str, JsonValue] | None = None
            if error is not None:
                data = {"code": error.code.value, **error.details}
            _event(
                conn,
                job_id,
                "transition",
                status=status,
                at=now,
                message=message or (error.message if error else None),
                data=data,
            )
            queued = webhooks_db.enqueue(conn, self.webhooks, WebhookEvent.COMPLETED, job, now)
            return job, queued

        job, queued = await self.db.run(end, write=True)
        self._queued(queued)
        return job

    @cancel_safe
    async def mark_manifests_written(self, job_ids: Sequence[str]) -> None:
        """Record that these jobs' manifests were written (one transaction for all;
        the worker also passes them to its next claim or lease renewal instead)."""
        if job_ids:
            await self.db.run(lambda conn: _manifests_written(conn, job_ids), write=True)

    @cancel_safe
    async def missing_manifests(
        self, older_than_s: float, limit: int = 100, *, exclude: Sequence[str] = ()
    ) -> list[Job]:
        """Succeeded jobs whose manifest was never written (the process died between
        the commit and the file), finished more than ``older_than_s`` ago; but not
        ``exclude`` (written, not yet recorded). Served by a partial index on the
        succeeded jobs without a manifest."""
        before = utcnow() - timedelta(seconds=older_than_s)
        q = (
            sa.select(jobs)
            .where(
                _is(JobStatus.SUCCEEDED),
                jobs.c.manifest_at.is_(None),
                jobs.c.finished_at < before,
            )
            .order_by(jobs.c.finished_at)
            .limit(limit + len(exclude))
        )
        skip = set(exclude)

        def read(conn: sa.Connection) -> list[Job]:
            items = [_job(r) for r in conn.execute(q).all() if r.id not in skip][:limit]
            _attach_outputs(conn, items)
            return items

        return await self.db.run(read)


_OUTPUT_COLUMNS = (
    "n",
    "path",
    "mime_type",
    "size_bytes",
    "sha256",
    "width",
    "height",
    "duration_s",
)


# --- prepared statements ---------------------------------------------------------------
# Built once: building a statement (and its cache key) costs SQLAlchemy more than
# running it; a prepared one is compiled once and its key is memoized.

_NULL = sa.null()
_JOB_INSERT = jobs.insert()
_EVENT_INSERT = job_events.insert()
_GIVE_BACK_TRY = (
    jobs.update()
    .where(jobs.c.id == sa.bindparam("jid"), jobs.c.attempts > 0)
    .values(attempts=jobs.c.attempts - 1)
)
_QUEUED_PAST_DEADLINE = (
    sa.select(jobs.c.id)
    .where(
        jobs.c.status == JobStatus.QUEUED.value,
        jobs.c.backend.in_(sa.bindparam("backends", expanding=True)),
        # the deadline was set on the submitting process's clock, and the worker
        # judges it on its own (as when it starts a job): the same clock here
        jobs.c.deadline_at < sa.bindparam("now", type_=jobs.c.deadline_at.type),
    )
    .order_by(jobs.c.deadline_at)
    .limit(sa.bindparam("n", type_=sa.Integer))
)
_NOTE_QUEUED = job_events.insert().from_select(
    ["job_id", "at", "kind", "message"],
    sa.select(
        jobs.c.id,
        sa.bindparam("at", type_=job_events.c.at.type),
        sa.literal("info"),
        sa.bindparam("message", type_=sa.String),
    ).where(
        jobs.c.status == JobStatus.QUEUED.value,
        jobs.c.backend.in_(sa.bindparam("backends", expanding=True)),
    ),
)
_SELECT_JOB = sa.select(jobs).where(jobs.c.id == sa.bindparam("jid"))
_SELECT_JOBS = sa.select(jobs).where(jobs.c.id.in_(sa.bindparam("ids", expanding=True)))
_SELECT_JOB_AND_OUTPUTS = (
    sa.select(jobs, *[job_outputs.c[c].label(f"o_{c}") for c in _OUTPUT_COLUMNS])
    .select_from(
        jobs.outerjoin(
            job_outputs,
            sa.and_(
                job_outputs.c.job_id == jobs.c.id,
                jobs.c.status == JobStatus.SUCCEEDED.value,
            ),
        )
    )
    .where(jobs.c.id == sa.bindparam("jid"))
    .order_by(job_outputs.c.n)
)
_FINISH_LEDGER = sa.select(
    jobs.c.status,
    jobs.c.lease_owner,
    jobs.c.backend,
    jobs.c.model,
    jobs.c.cost,
    jobs.c.upstream,
    jobs.c.submitting_at,
).where(jobs.c.id == sa.bindparam("jid"))
_RUNNING_COUNTS = (
    sa.select(jobs.c.backend, jobs.c.model, sa.func.count())
    .where(jobs.c.status == sa.literal_column("'running'"))
    .group_by(jobs.c.backend, jobs.c.model)
)
_CLAIM_UPDATE = (
    jobs.update()
    .where(jobs.c.id == sa.bindparam("jid"), jobs.c.status == JobStatus.QUEUED.value)
    .values(
        status=JobStatus.RUNNING.value,
        lease_owner=sa.bindparam("token"),
        lease_expires_at=sa.bindparam("until", type_=jobs.c.lease_expires_at.type),
        attempts=jobs.c.attempts + 1,
        started_at=sa.func.coalesce(
            jobs.c.started_at, sa.bindparam("now", type_=jobs.c.started_at.type)
        ),
        submitting_at=sa.bindparam("sub", type_=jobs.c.submitting_at.type),
        updated_at=sa.bindparam("now", type_=jobs.c.updated_at.type),
    )
)
_MANIFESTS_WRITTEN = (
    jobs.update()
    .where(jobs.c.id.in_(sa.bindparam("ids", expanding=True)))
    .values(manifest_at=sa.bindparam("at", type_=jobs.c.manifest_at.type))
)


@functools.cache
# SQLAlchemy's statement and result types are generic over the row's column types;
# Any where a row's shape is not worth spelling out (the caller reads it by name).
def _claim_candidates(
    dialect: str, by_backend: bool, by_id: bool, skipping: bool = False
) -> sa.Select[Any]:
    clock = (
        sa.func.strftime("%Y-%m-%d %H:%M:%f", "now")
        if dialect == "sqlite"
        else sa.func.clock_timestamp()
    )
    q = sa.select(
        jobs.c.id, jobs.c.backend, jobs.c.model, jobs.c.started_at, clock.label("db_now")
    ).where(jobs.c.status == sa.literal_column("'queued'"))
    if by_backend:
        q = q.where(jobs.c.backend.in_(sa.bindparam("backends", expanding=True)))
    if by_id:
        q = q.where(jobs.c.id.in_(sa.bindparam("ids", expanding=True)))
    if skipping:
        q = q.where(jobs.c.id.not_in(sa.bindparam("skip", expanding=True)))
    return q.order_by(jobs.c.priority.desc(), jobs.c.created_at, jobs.c.id).limit(
        sa.bindparam("window", type_=sa.Integer)
    )


def _setting(keys: tuple[str, ...], nulls: tuple[str, ...]) -> dict[str, Any]:  # UPDATE .values()
    out: dict[str, Any] = {k: sa.bindparam(f"v_{k}", type_=jobs.c[k].type) for k in keys}
    out.update({k: _NULL for k in nulls})
    return out


@functools.cache
def _held_update(keys: tuple[str, ...], nulls: tuple[str, ...]) -> sa.Update:
    return (
        jobs.update()
        .where(
            jobs.c.id == sa.bindparam("jid"),
            jobs.c.lease_owner == sa.bindparam("lease"),
            jobs.c.status == JobStatus.RUNNING.value,
        )
        .values(_setting(keys, nulls))
    )


@functools.cache
def _finish_update(with_lease: bool, unless_upstream: bool, keys: tuple[str, ...]) -> sa.Update:
    where = [jobs.c.id == sa.bindparam("jid"), jobs.c.status == sa.bindparam("current")]
    if with_lease:
        where.append(jobs.c.lease_owner == sa.bindparam("lease"))
    if unless_upstream:
        where.append(_no_handle())
    return jobs.update().where(*where).values(_setting(keys, ())).returning(*jobs.c)


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


def _is(status: JobStatus) -> sa.ColumnElement[bool]:
    """``status = '<status>'`` with the value written into the SQL, not bound: how
    SQLite (and PostgreSQL, for a generic plan) can use a partial index whose
    condition names that status (``ix_jobs_queued``, ...)."""
    return jobs.c.status == sa.literal_column(f"'{status.value}'")


def _held(job_id: str, lease: str) -> tuple[sa.ColumnElement[bool], ...]:
    """The fence of every write a lease holder makes."""
    return (
        jobs.c.id == job_id,
        jobs.c.lease_owner == lease,
        jobs.c.status == JobStatus.RUNNING.value,
    )


def _guarded(conn: sa.Connection, job_id: str, lease: str, **values: object) -> None:
    if _update_held(conn, job_id, lease, values).rowcount != 1:
        raise LeaseLost(job_id)


def _update_held(
    conn: sa.Connection, job_id: str, lease: str, values: dict[str, object]
) -> sa.CursorResult[Any]:
    """``UPDATE jobs SET <values> WHERE`` the lease holds it (a prepared statement per
    set of columns: building one costs more than running it)."""
    nulls = tuple(sorted(k for k, v in values.items() if v is _NULL))
    keys = tuple(sorted(k for k in values if k not in nulls))
    params: dict[str, object] = {f"v_{k}": values[k] for k in keys}
    params.update(jid=job_id, lease=lease)
    return conn.execute(_held_update(keys, nulls), params)


def _owned_status(conn: sa.Connection, job_id: str, lease: str) -> JobStatus:
    row = conn.execute(_FINISH_LEDGER, {"jid": job_id}).one_or_none()
    if row is None or row.lease_owner != lease:
        raise LeaseLost(job_id)
    return JobStatus(row.status)


def _as_utc(value: object) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


def _manifests_written(conn: sa.Connection, job_ids: Sequence[str]) -> None:
    conn.execute(_MANIFESTS_WRITTEN, {"ids": list(job_ids), "at": utcnow()})


def _event(
    conn: sa.Connection,
    job_id: str,
    kind: EventKind,
    *,
    at: datetime,
    status: JobStatus | None = None,
    progress: float | None = None,
    message: str | None = None,
    data: dict[str, JsonValue] | None = None,
) -> None:
    conn.execute(
        _EVENT_INSERT,
        {
            "job_id": job_id,
            "at": at,
            "kind": kind,
            "status": status.value if status else None,
            "progress": progress,
            "message": message,
            "data": data,
        },
    )


def _key_used(conn: sa.Connection, key: str | None) -> bool:
    if key is None:
        return False
    found = conn.execute(sa.select(jobs.c.id).where(jobs.c.idempotency_key == key))
    return found.first() is not None


def _events_list(events: Sequence[WebhookEventName] | None) -> list[WebhookEventName] | None:
    return None if events is None else list(events)


def _output_of(job_id: str, m: Mapping[Any, Any], prefix: str = "") -> JobOutput:  # a row mapping
    n = int(m[prefix + "n"])
    return JobOutput(
        n=n,
        path=str(m[prefix + "path"]),
        url=f"/api/outputs/{job_id}/{n}",
        mime_type=str(m[prefix + "mime_type"]),
        size_bytes=int(m[prefix + "size_bytes"]),
        sha256=str(m[prefix + "sha256"]),
        width=m[prefix + "width"],
        height=m[prefix + "height"],
        duration_s=m[prefix + "duration_s"],
    )


def _new_output(job_id: str, o: NewOutput) -> JobOutput:
    return _output_of(job_id, {c: getattr(o, c) for c in _OUTPUT_COLUMNS})


def _by_n(o: NewOutput) -> int:
    return o.n


def _get(conn: sa.Connection, job_id: str, *, outputs: bool = True) -> Job:
    """A job (with its outputs, from the same query: an outer join, a row per
    output)."""
    if not outputs:
        row = conn.execute(_SELECT_JOB, {"jid": job_id}).one_or_none()
        if row is None:
            raise errors.JobNotFound(f"no job with id {job_id!r}", job_id=job_id)
        return _job(row)
    rows = conn.execute(_SELECT_JOB_AND_OUTPUTS, {"jid": job_id}).all()
    if not rows:
        raise errors.JobNotFound(f"no job with id {job_id!r}", job_id=job_id)
    job = _job(rows[0])
    if job.status == JobStatus.SUCCEEDED:
        job.outputs = [
            _output_of(job_id, r._mapping, "o_") for r in rows if r._mapping["o_n"] is not None
        ]
    return job


def _with_outputs(conn: sa.Connection, job: Job) -> Job:
    _attach_outputs(conn, [job])
    return job


def _job(row: sa.Row[tuple[object, ...]]) -> Job:
    """A job from its row (without its outputs)."""
    m = row._mapping
    error = None
    if m["error_code"]:
        error = JobError(
            code=errors.ErrorCode(m["error_code"]),
            message=str(m["error_message"] or ""),
            details=m["error_details"] or {},
        )
    return Job(
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


def _attach_outputs(conn: sa.Connection, items: list[Job]) -> None:
    ids = [j.id for j in items if j.status == JobStatus.SUCCEEDED]
    if not ids:
        return
    rows = conn.execute(
        sa.select(job_outputs)
        .where(job_outputs.c.job_id.in_(ids))
        .order_by(job_outputs.c.job_id, job_outputs.c.n)
    ).all()
    by_job: dict[str, list[JobOutput]] = {}
    for r in rows:
        by_job.setdefault(str(r.job_id), []).append(_output_of(str(r.job_id), r._mapping))
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
