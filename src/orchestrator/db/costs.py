"""The cost ledger's SQL: sums of job costs (what was spent, what unfinished jobs
reserve), totals grouped by day / backend / model / token, and per-token budgets."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa

from orchestrator.db.engine import Database, cancel_safe
from orchestrator.db.schema import jobs, token_budgets
from orchestrator.domain.costs import CostRow, GroupKey, Spend, day_bounds
from orchestrator.domain.jobs import JobStatus

ACTIVE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


# a SQL expression whose Python type differs per dialect (text or date)
def _day_expr(conn_dialect: str) -> sa.ColumnElement[Any]:
    # SQLite stores the timestamp as text: date() takes its first ten characters.
    if conn_dialect == "sqlite":
        return sa.func.date(jobs.c.created_at)
    return sa.cast(jobs.c.created_at, sa.Date)


def spend(conn: sa.Connection, day: date, token_id: str | None = None) -> Spend:
    """A UTC day's spend, of one token's jobs or (``token_id=None``) of all jobs:
    ``spent`` by jobs that ended, ``reserved`` by unfinished jobs (their quoted cost
    when BFL sent one, else their estimate)."""
    start, end = day_bounds(day)
    active = jobs.c.status.in_(ACTIVE)
    spent = sa.func.coalesce(
        sa.func.sum(sa.case((active, 0.0), else_=sa.func.coalesce(jobs.c.cost, 0.0))), 0.0
    )
    reserved = sa.func.coalesce(
        sa.func.sum(
            sa.case((active, sa.func.coalesce(jobs.c.cost, jobs.c.cost_estimate, 0.0)), else_=0.0)
        ),
        0.0,
    )
    query = sa.select(spent.label("spent"), reserved.label("reserved")).where(
        jobs.c.created_at >= start, jobs.c.created_at < end
    )
    if token_id is not None:
        query = query.where(jobs.c.token_id == token_id)
    row = conn.execute(query).one()
    return Spend(spent=float(row.spent), reserved=float(row.reserved))


def token_budget(conn: sa.Connection, token_id: str) -> float | None:
    row = conn.execute(
        sa.select(token_budgets.c.daily_limit).where(token_budgets.c.token_id == token_id)
    ).one_or_none()
    return None if row is None else float(row.daily_limit)


class CostRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def spend(self, day: date, token_id: str | None = None) -> Spend:
        return await self.db.run(lambda conn: spend(conn, day, token_id))

    async def average_gpu_seconds(self, backend: str, model: str, last: int = 20) -> float | None:
        """Mean GPU-seconds of the model's last ``last`` jobs that recorded any."""
        recent = (
            sa.select(jobs.c.gpu_seconds)
            .where(
                jobs.c.backend == backend,
                jobs.c.model == model,
                jobs.c.gpu_seconds.is_not(None),
            )
            .order_by(jobs.c.created_at.desc())
            .limit(last)
            .subquery()
        )
        async with self.db.read() as conn:
            value = (await conn.execute(sa.select(sa.func.avg(recent.c.gpu_seconds)))).scalar()
        return None if value is None else float(value)

    async def totals(
        self,
        since: date,
        until: date,
        group_by: Sequence[GroupKey],
        token_id: str | None = None,
    ) -> list[CostRow]:
        """Jobs created on UTC days ``since``..``until`` (inclusive), summed per group."""
        start, _ = day_bounds(since)
        _, end = day_bounds(until)
        async with self.db.read() as conn:
            day = _day_expr(conn.dialect.name).label("day")
            columns: dict[GroupKey, sa.ColumnElement[Any]] = {
                "day": day,
                "backend": jobs.c.backend,
                "model": jobs.c.model,
                "token": jobs.c.token_id,
            }
            keys = [columns[k] for k in group_by]
            query = (
                sa.select(
                    *keys,
                    sa.func.count().label("jobs"),
                    sa.func.coalesce(sa.func.sum(jobs.c.cost), 0.0).label("cost"),
                    sa.func.coalesce(sa.func.sum(jobs.c.gpu_seconds), 0.0).label("gpu"),
                )
                .where(jobs.c.created_at >= start, jobs.c.created_at < end)
                .group_by(*keys)
                .order_by(*keys)
            )
            if token_id is not None:
                query = query.where(jobs.c.token_id == token_id)
            rows = (await conn.execute(query)).all()
        out: list[CostRow] = []
        for row in rows:
            m = row._mapping
            raw_day = m["day"] if "day" in group_by else None
            out.append(
                CostRow(
                    day=_as_date(raw_day),
                    backend=m["backend"] if "backend" in group_by else None,
                    model=m["model"] if "model" in group_by else None,
                    token_id=m["token_id"] if "token" in group_by else None,
                    jobs=int(m["jobs"]),
                    cost=round(float(m["cost"]), 6),
                    gpu_seconds=round(float(m["gpu"]), 3),
                )
            )
        return out

    # --- per-token budgets ---------------------------------------------------------
    async def budgets(self) -> dict[str, float]:
        async with self.db.read() as conn:
            rows = (await conn.execute(sa.select(token_budgets))).all()
        return {r.token_id: float(r.daily_limit) for r in rows}

    async def token_budget(self, token_id: str) -> float | None:
        return await self.db.run(lambda conn: token_budget(conn, token_id))

    @cancel_safe
    async def set_budget(self, token_id: str, daily_limit: float) -> None:
        now = datetime.now(UTC)
        async with self.db.write() as conn:
            res = await conn.execute(
                token_budgets.update()
                .where(token_budgets.c.token_id == token_id)
                .values(daily_limit=daily_limit, updated_at=now)
            )
            if res.rowcount == 0:
                await conn.execute(
                    token_budgets.insert().values(
                        token_id=token_id, daily_limit=daily_limit, updated_at=now
                    )
                )

    @cancel_safe
    async def clear_budget(self, token_id: str) -> bool:
        async with self.db.write() as conn:
            res = await conn.execute(
                token_budgets.delete().where(token_budgets.c.token_id == token_id)
            )
        return bool(res.rowcount)


def _as_date(value: object) -> date | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])
