"""Queries on the workers table: the registry of the processes that execute jobs
(``serve`` with its worker, ``orchestrator worker``, an MCP or CLI process running
one), each with the backends it claims, its concurrency and its last heartbeat.

Heartbeats and ages are measured by the database's clock, like leases: a worker on a
machine whose clock is off is neither shown gone while it beats nor live after it
stopped."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from orchestrator.db.engine import Database, cancel_safe, db_now
from orchestrator.db.schema import workers

# A worker that stopped heartbeating without unregistering (killed, its machine
# gone) stays listed as gone this long, then its row is deleted by the next start.
GONE_KEPT_S = 86_400.0


@dataclass(frozen=True)
class WorkerInfo:
    id: str
    kind: str
    hostname: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    # None: registered before the registry recorded them
    backends: tuple[str, ...] | None = None
    concurrency: int | None = None


@dataclass(frozen=True)
class WorkerSeen:
    """A registered worker as the registry sees it now: ``live`` when it beat within
    the window asked for, and the seconds since its last heartbeat."""

    info: WorkerInfo
    live: bool
    heartbeat_age_s: float


def _info(r: sa.Row[tuple[object, ...]]) -> WorkerInfo:
    m = r._mapping
    raw = m["backends"]
    backends = tuple(str(b) for b in raw) if isinstance(raw, list) else None
    return WorkerInfo(
        id=m["id"],
        kind=m["kind"],
        hostname=m["hostname"],
        pid=m["pid"],
        started_at=m["started_at"],
        heartbeat_at=m["heartbeat_at"],
        backends=backends,
        concurrency=m["concurrency"],
    )


class WorkerRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    @cancel_safe
    async def register(
        self,
        worker_id: str,
        kind: str,
        hostname: str,
        pid: int,
        *,
        backends: Sequence[str] | None = None,
        concurrency: int | None = None,
    ) -> None:
        """Register (or re-register) a worker; rows of workers gone for longer than
        ``GONE_KEPT_S`` are deleted on the way."""

        def go(conn: sa.Connection) -> None:
            now = db_now(conn)
            conn.execute(workers.delete().where(workers.c.id == worker_id))
            conn.execute(
                workers.delete().where(
                    workers.c.heartbeat_at < now - timedelta(seconds=GONE_KEPT_S)
                )
            )
            conn.execute(
                workers.insert().values(
                    id=worker_id,
                    kind=kind,
                    hostname=hostname,
                    pid=pid,
                    started_at=now,
                    heartbeat_at=now,
                    backends=list(backends) if backends is not None else None,
                    concurrency=concurrency,
                )
            )

        await self.db.run(go, write=True)

    @cancel_safe
    async def heartbeat(self, worker_id: str) -> None:
        def go(conn: sa.Connection) -> None:
            conn.execute(
                workers.update().where(workers.c.id == worker_id).values(heartbeat_at=db_now(conn))
            )

        await self.db.run(go, write=True)

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
        return [_info(r) for r in rows]

    @cancel_safe
    async def live(self, within_s: float, kind: str | None = None) -> list[WorkerInfo]:
        """Workers seen within ``within_s`` seconds (optionally of one kind)."""
        return [
            s.info for s in await self.listed(within_s) if s.live and kind in (None, s.info.kind)
        ]

    @cancel_safe
    async def listed(self, live_within_s: float) -> list[WorkerSeen]:
        """Every registered worker, live (beat within ``live_within_s``) or gone,
        live ones first, then by kind and host."""

        def go(conn: sa.Connection) -> list[WorkerSeen]:
            now = db_now(conn)
            rows = conn.execute(sa.select(workers)).all()
            out = []
            for r in rows:
                info = _info(r)
                age = max((now - info.heartbeat_at).total_seconds(), 0.0)
                out.append(WorkerSeen(info, age <= live_within_s, age))
            out.sort(key=lambda s: (not s.live, s.info.kind, s.info.hostname, s.info.pid))
            return out

        return await self.db.run(go, write=False)
