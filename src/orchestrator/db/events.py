"""Reading the job event log (``job_events``): what the event streams and their one
reader per process (``engine/events.py``) ask of the database.

Events are written by the job repository, in the transaction of the change they
record; nothing here writes.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from orchestrator.db.engine import Database, cancel_safe
from orchestrator.db.schema import job_events
from orchestrator.domain.jobs import JobEvent, JobStatus

BATCH = 1000


class EventLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    @cancel_safe
    async def of_job(self, job_id: str, after_id: int = 0, limit: int = 500) -> list[JobEvent]:
        """A job's events after ``after_id``, oldest first."""
        q = (
            sa.select(job_events)
            .where(job_events.c.job_id == job_id, job_events.c.id > after_id)
            .order_by(job_events.c.id)
            .limit(limit)
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(q)).all()
        return [to_event(r) for r in rows]

    @cancel_safe
    async def after(
        self,
        high: int,
        gaps: Sequence[int] = (),
        *,
        job_id: str | None = None,
        limit: int = BATCH,
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
        return [to_event(r) for r in rows]

    @cancel_safe
    async def start(self, window: int) -> tuple[int, list[int]]:
        """Where a reader starting now stands: the newest visible id, and the ids
        among the ``window`` below it that are not visible. Some of those may belong
        to transactions still open (on PostgreSQL an id is taken at insert, visible at
        commit): a reader must watch them as gaps, or it never sees them."""
        newest_q = sa.select(sa.func.max(job_events.c.id)).scalar_subquery()
        # one statement, so one snapshot: the newest id and what is visible below it
        q = sa.select(job_events.c.id).where(job_events.c.id > newest_q - max(window, 1))
        async with self.db.read() as conn:
            seen = set((await conn.execute(q)).scalars())
        if not seen:
            return 0, []
        newest = max(seen)
        low = max(newest - window, 0)
        return newest, [i for i in range(low + 1, newest) if i not in seen]


def to_event(r: sa.Row[tuple[object, ...]]) -> JobEvent:
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
