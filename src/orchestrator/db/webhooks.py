"""The webhook outbox: queries on ``webhook_deliveries`` and ``webhook_attempts``.

Rows are inserted by :func:`enqueue` *inside* the transaction of the job transition
that causes them (``db/jobs.py``), so an event is queued if and only if its
transition committed. :class:`WebhookRepo` is the delivery side: deliveries due now
are claimed under a lease (the same pattern as jobs: ``claim_lock`` serialises
claimers across processes), every attempt is recorded, and a delivery ends
``succeeded`` or, past its ``expires_at``, ``failed``.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from pydantic import JsonValue
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator import errors
from orchestrator.db.engine import Database, cancel_safe
from orchestrator.db.schema import jobs, webhook_attempts, webhook_deliveries
from orchestrator.domain.jobs import Job
from orchestrator.domain.webhooks import (
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookDeliveryPage,
    WebhookEvent,
    WebhookPolicy,
    payload,
    progress_due,
    targets,
)

ERROR_MAX_CHARS = 1000


@dataclass(frozen=True)
class DueDelivery:
    """A delivery this process now holds a lease on."""

    id: str
    job_id: str
    event: str
    url: str
    payload: dict[str, JsonValue]
    attempts: int
    expires_at: datetime


# --- the producer side: called inside job transitions ---------------------------------


def enqueue(
    conn: sa.Connection,
    policy: WebhookPolicy | None,
    event: WebhookEvent,
    job: Job,
    at: datetime,
) -> int:
    """Queue ``event`` for ``job`` to every target that wants it, in the caller's
    transaction. Returns the number of rows inserted."""
    if policy is None:
        return 0
    urls = targets(policy, event, job.webhook_url, job.webhook_events)
    if not urls:
        return 0
    if event == WebhookEvent.PROGRESS:
        sent, last_at = _progress_sent(conn, job.id)
        if not progress_due(sent, last_at, at, has_progress=job.progress is not None):
            return 0
    body = payload(event, job, at)
    expires = at + timedelta(seconds=policy.max_age_s)
    conn.execute(
        webhook_deliveries.insert(),
        [
            {
                "id": f"msg_{uuid.uuid4().hex}",
                "job_id": job.id,
                "event": event.value,
                "url": url,
                "payload": body,
                "status": DeliveryStatus.PENDING.value,
                "attempts": 0,
                "next_attempt_at": at,
                "expires_at": expires,
                "created_at": at,
            }
            for url in urls
        ],
    )
    return len(urls)


def wants_events(conn: sa.Connection, policy: WebhookPolicy | None, job_id: str) -> bool:
    """Cheap pre-check for hot paths: could this job have any target at all?"""
    if policy is None or not policy.enabled:
        return False
    if policy.global_url:
        return True
    row = conn.execute(sa.select(jobs.c.webhook_url).where(jobs.c.id == job_id)).one_or_none()
    return row is not None and row.webhook_url is not None


def _progress_sent(conn: sa.Connection, job_id: str) -> tuple[int, datetime | None]:
    """How many ``job.progress`` events were queued for a job (all targets of one
    event share its ``created_at``), and when the last one was."""
    row = conn.execute(
        sa.select(
            sa.func.count(sa.distinct(webhook_deliveries.c.created_at)),
            sa.func.max(webhook_deliveries.c.created_at),
        ).where(
            webhook_deliveries.c.job_id == job_id,
            webhook_deliveries.c.event == WebhookEvent.PROGRESS.value,
        )
    ).one()
    last: datetime | None = row[1]
    return int(row[0] or 0), last


# --- the delivery side ------------------------------------------------------------------


class WebhookRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    @cancel_safe
    async def claim_due(
        self,
        owner: str,
        lease_s: float,
        capacity: int,
        now: datetime,
        *,
        busy: Collection[tuple[str, str]] = (),
    ) -> list[DueDelivery]:
        """Lease up to ``capacity`` pending deliveries due at ``now``, oldest first,
        at most one per (job, target) and none for a (job, target) that has a
        delivery in flight anywhere — so one receiver gets one job's events in
        order whenever they succeed in order."""
        if capacity <= 0:
            return []
        d = webhook_deliveries
        until = now + timedelta(seconds=lease_s)
        pending = d.c.status == DeliveryStatus.PENDING.value
        due = sa.and_(
            pending,
            d.c.next_attempt_at <= now,
            sa.or_(d.c.lease_expires_at.is_(None), d.c.lease_expires_at <= now),
        )
        # A read first: an idle outbox never takes the write (claim) lock.
        async with self.db.read() as conn:
            if (await conn.execute(sa.select(d.c.id).where(due).limit(1))).first() is None:
                return []
        async with self.db.write(claim_lock=True) as conn:
            in_flight = {
                (r.job_id, r.url)
                for r in (
                    await conn.execute(
                        sa.select(d.c.job_id, d.c.url)
                        .where(pending, d.c.lease_expires_at > now)
                        .distinct()
                    )
                ).all()
            }
            taken = set(busy) | in_flight
            rows = (
                await conn.execute(
                    sa.select(d)
                    .where(due)
                    .order_by(d.c.next_attempt_at, d.c.created_at, d.c.id)
                    .limit(max(capacity * 4, 64))
                )
            ).all()
            chosen = []
            for r in rows:
                key = (r.job_id, r.url)
                if key in taken:
                    continue
                taken.add(key)
                chosen.append(r)
                if len(chosen) >= capacity:
                    break
            if not chosen:
                return []
            await conn.execute(
                d.update()
                .where(d.c.id.in_([r.id for r in chosen]))
                .values(lease_owner=owner, lease_expires_at=until)
            )
        return [
            DueDelivery(
                id=r.id,
                job_id=r.job_id,
                event=r.event,
                url=r.url,
                payload=r.payload,
                attempts=int(r.attempts),
                expires_at=r.expires_at,
            )
            for r in chosen
        ]

    @cancel_safe
    async def record_attempt(
        self,
        delivery_id: str,
        owner: str,
        *,
        at: datetime,
        latency_ms: float | None,
        status_code: int | None,
        error: str | None,
        outcome: DeliveryStatus,
        next_attempt_at: datetime | None,
    ) -> bool:
        """Record one attempt and its outcome (``pending`` with ``next_attempt_at``
        to retry). Returns False, changing nothing, if the lease was lost."""
        d = webhook_deliveries
        err = error[:ERROR_MAX_CHARS] if error else None
        async with self.db.write() as conn:
            res = await conn.execute(
                d.update()
                .where(
                    d.c.id == delivery_id,
                    d.c.lease_owner == owner,
                    d.c.status == DeliveryStatus.PENDING.value,
                )
                .values(
                    status=outcome.value,
                    attempts=d.c.attempts + 1,
                    next_attempt_at=next_attempt_at if outcome == DeliveryStatus.PENDING else None,
                    last_attempt_at=at,
                    last_status_code=status_code,
                    last_error=err,
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )
            if res.rowcount != 1:
                return False
            await conn.execute(
                webhook_attempts.insert().values(
                    delivery_id=delivery_id,
                    at=at,
                    latency_ms=latency_ms,
                    status_code=status_code,
                    error=err,
                )
            )
        return True

    @cancel_safe
    async def release(self, owner: str, delivery_ids: Sequence[str]) -> None:
        """Give unfinished deliveries back (shutdown): due again at once, anywhere."""
        if not delivery_ids:
            return
        d = webhook_deliveries
        async with self.db.write() as conn:
            await conn.execute(
                d.update()
                .where(d.c.id.in_(list(delivery_ids)), d.c.lease_owner == owner)
                .values(lease_owner=None, lease_expires_at=None)
            )

    @cancel_safe
    async def replay(self, delivery_id: str, now: datetime, max_age_s: float) -> WebhookDelivery:
        """Send a delivery again: back to ``pending``, due now, with a fresh retry
        window. It keeps its id (the ``webhook-id`` header) and its attempt log, as
        Standard Webhooks asks of a message that is re-sent."""
        d = webhook_deliveries
        async with self.db.write() as conn:
            res = await conn.execute(
                d.update()
                .where(d.c.id == delivery_id)
                .values(
                    status=DeliveryStatus.PENDING.value,
                    next_attempt_at=now,
                    expires_at=now + timedelta(seconds=max_age_s),
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )
            if res.rowcount != 1:
                raise errors.DeliveryNotFound(
                    f"no webhook delivery with id {delivery_id!r}", delivery_id=delivery_id
                )
            return (await _load(conn, sa.select(d).where(d.c.id == delivery_id)))[0]

    @cancel_safe
    async def get(self, delivery_id: str) -> WebhookDelivery:
        d = webhook_deliveries
        async with self.db.read() as conn:
            found = await _load(conn, sa.select(d).where(d.c.id == delivery_id))
        if not found:
            raise errors.DeliveryNotFound(
                f"no webhook delivery with id {delivery_id!r}", delivery_id=delivery_id
            )
        return found[0]

    @cancel_safe
    async def page(
        self,
        *,
        job_id: str | None = None,
        status: Sequence[DeliveryStatus] = (),
        cursor: str | None = None,
        limit: int = 50,
    ) -> WebhookDeliveryPage:
        """Newest first, cursor-paginated on (created_at, id), each with its attempts."""
        d = webhook_deliveries
        q = sa.select(d)
        if job_id is not None:
            q = q.where(d.c.job_id == job_id)
        if status:
            q = q.where(d.c.status.in_([s.value for s in status]))
        if cursor:
            created, last_id = _decode_cursor(cursor)
            q = q.where(
                sa.or_(
                    d.c.created_at < created,
                    sa.and_(d.c.created_at == created, d.c.id < last_id),
                )
            )
        q = q.order_by(d.c.created_at.desc(), d.c.id.desc()).limit(limit + 1)
        async with self.db.read() as conn:
            items = await _load(conn, q)
        next_cursor = None
        if len(items) > limit:
            items = items[:limit]
            next_cursor = _encode_cursor(items[-1].created_at, items[-1].id)
        return WebhookDeliveryPage(items=items, next_cursor=next_cursor)


async def _load(conn: AsyncConnection, q: sa.Select[tuple[object, ...]]) -> list[WebhookDelivery]:
    rows = (await conn.execute(q)).all()
    if not rows:
        return []
    ids = [r.id for r in rows]
    log: dict[str, list[WebhookAttempt]] = {}
    arows = (
        await conn.execute(
            sa.select(webhook_attempts)
            .where(webhook_attempts.c.delivery_id.in_(ids))
            .order_by(webhook_attempts.c.id)
        )
    ).all()
    for a in arows:
        log.setdefault(a.delivery_id, []).append(
            WebhookAttempt(
                at=a.at, latency_ms=a.latency_ms, status_code=a.status_code, error=a.error
            )
        )
    return [
        WebhookDelivery(
            id=r.id,
            job_id=r.job_id,
            event=WebhookEvent(r.event),
            url=r.url,
            payload=r.payload,
            status=DeliveryStatus(r.status),
            attempts=int(r.attempts),
            next_attempt_at=r.next_attempt_at,
            expires_at=r.expires_at,
            created_at=r.created_at,
            last_attempt_at=r.last_attempt_at,
            last_status_code=r.last_status_code,
            last_error=r.last_error,
            attempt_log=log.get(r.id, []),
        )
        for r in rows
    ]


def _encode_cursor(created: datetime, delivery_id: str) -> str:
    raw = json.dumps([created.isoformat(), delivery_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, delivery_id = json.loads(raw)
        return datetime.fromisoformat(created), str(delivery_id)
    except (ValueError, TypeError) as exc:
        raise errors.InvalidRequest("malformed cursor", field="cursor") from exc
