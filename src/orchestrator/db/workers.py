"""Queries on the workers table: which processes are executing jobs right now."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from orchestrator.db.engine import Database, cancel_safe
from orchestrator.db.jobs import utcnow
from orchestrator.db.schema import workers


@dataclass(frozen=True)
class WorkerInfo:
    id: str
    kind: str
    hostname: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime


class WorkerRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    @cancel_safe
    async def register(self, worker_id: str, kind: str, hostname: str, pid: int) -> None:
        now = utcnow()
        async with self.db.write() as conn:
            await conn.execute(workers.delete().where(workers.c.id == worker_id))
            await conn.execute(
                workers.insert().values(
                    id=worker_id,
                    kind=kind,
                    hostname=hostname,
                    pid=pid,
                    started_at=now,
                    heartbeat_at=now,
                )
            )

    @cancel_safe
    async def heartbeat(self, worker_id: str) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                workers.update().where(workers.c.id == worker_id).values(heartbeat_at=utcnow())
            )

    @cancel_safe
    async def unregister(self, worker_id: str) -> None:
        async with self.db.write() as conn:
            await conn.execute(workers.delete().where(workers.c.id == worker_id))

    @cancel_safe
    async def on_host(self, hostname: str) -> list[WorkerInfo]:
        """Every worker registered from ``hostname``, alive or not."""
        async with self.db.read() as conn:
            rows = (
                await conn.execute(sa.select(workers).where(workers.c.hostname == hostname))
            ).all()
        return [
            WorkerInfo(r.id, r.kind, r.hostname, r.pid, r.started_at, r.heartbeat_at) for r in rows
        ]

    @cancel_safe
    async def live(self, within_s: float, kind: str | None = None) -> list[WorkerInfo]:
        """Workers seen within ``within_s`` seconds (optionally of one kind)."""
        since = utcnow() - timedelta(seconds=within_s)
        q = sa.select(workers).where(workers.c.heartbeat_at >= since)
        if kind is not None:
            q = q.where(workers.c.kind == kind)
        async with self.db.read() as conn:
            rows = (await conn.execute(q)).all()
        return [
            WorkerInfo(r.id, r.kind, r.hostname, r.pid, r.started_at, r.heartbeat_at) for r in rows
        ]
