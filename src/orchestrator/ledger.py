"""The cost ledger as the service uses it: estimates for new jobs, the budget checks
run inside the job-creating transaction, totals and budgets for the API, UI, MCP and
CLI. Decisions live in ``domain/costs.py``, SQL in ``db/costs.py``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Literal

import sqlalchemy as sa
from pydantic import JsonValue

from orchestrator import errors
from orchestrator.config import Settings
from orchestrator.db import costs as costs_db
from orchestrator.db.costs import CostRepo
from orchestrator.db.engine import Database
from orchestrator.db.jobs import Guard, RetryGuard
from orchestrator.domain.costs import (
    COMFY_BACKENDS,
    BudgetStatus,
    CostReport,
    GroupKey,
    Pricing,
    Refusal,
    Spend,
    check_budget,
    estimate,
    v0_token_ceiling,
)
from orchestrator.domain.params import FLUX_LIST_PRICE

MAX_REPORT_DAYS = 366


def pricing_from(settings: Settings) -> Pricing:
    return Pricing(
        flux={**FLUX_LIST_PRICE, **settings.flux_prices},
        gpu_second=settings.comfy_gpu_second_rate,
        v0_per_1k_tokens=settings.v0_credits_per_1k_tokens,
        comfy_default_gpu_s=settings.comfy_estimate_gpu_s,
        v0_default_tokens=settings.v0_estimate_tokens,
    )


def today() -> date:
    return datetime.now(UTC).date()


def _refuse(refusal: Refusal, token_id: str | None) -> errors.BudgetExceeded:
    return errors.BudgetExceeded(
        refusal.message,
        budget=refusal.scope,
        token_id=token_id if refusal.scope == "token" else None,
        daily_limit=refusal.limit,
        spent=round(refusal.spend.spent, 6),
        reserved=round(refusal.spend.reserved, 6),
        estimate=refusal.estimate,
    )


class Ledger:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.repo = CostRepo(db)
        self.pricing = pricing_from(settings)
        self.daily_budget = settings.daily_budget

    async def estimate(
        self, backend: str, model: str, params: Mapping[str, JsonValue] | None = None
    ) -> float:
        """The cost reserved for a new job: FLUX's price; for ComfyUI the recent average
        GPU-seconds of the same model (else ``COMFY_ESTIMATE_GPU_S``) at the rate; for
        v0 a token ceiling (``v0_token_ceiling``) at the rate."""
        expected = None
        if backend in COMFY_BACKENDS and self.pricing.gpu_second > 0:
            expected = await self.repo.average_gpu_seconds(backend, model)
        tokens = None
        if backend == "v0":
            tokens = v0_token_ceiling(params or {}, self.pricing.v0_default_tokens)
        return estimate(backend, model, self.pricing, expected, v0_tokens=tokens)

    def _check(self, conn: sa.Connection, cost: float, token_id: str | None) -> None:
        day = today()
        if self.daily_budget is not None:
            spend = costs_db.spend(conn, day)
            refusal = check_budget("global", self.daily_budget, spend, cost)
            if refusal is not None:
                raise _refuse(refusal, token_id)
        if token_id is not None:
            limit = costs_db.token_budget(conn, token_id)
            if limit is not None:
                spend = costs_db.spend(conn, day, token_id)
                refusal = check_budget("token", limit, spend, cost)
                if refusal is not None:
                    raise _refuse(refusal, token_id)

    def guard(self, cost: float, token_id: str | None) -> Guard | None:
        """The budget check for a new job estimated at ``cost`` (None: nothing to
        check — a free job, or no budget that could apply)."""
        if cost <= 0 or (self.daily_budget is None and token_id is None):
            return None

        def check(conn: sa.Connection) -> None:
            self._check(conn, cost, token_id)

        return check

    def retry_guard(self, token_id: str | None) -> RetryGuard:
        """The budget check of a retry: the new job's estimate (made before the
        transaction) is checked in the transaction that inserts it."""

        def check(conn: sa.Connection, cost: float) -> None:
            if cost > 0:
                self._check(conn, cost, token_id)

        return check

    # --- reports -------------------------------------------------------------------
    async def report(
        self,
        *,
        since: date | None = None,
        until: date | None = None,
        group_by: Sequence[GroupKey] = ("day",),
        token_id: str | None = None,
    ) -> CostReport:
        """Totals of jobs created on ``since``..``until`` (UTC days, inclusive; default
        the last 30 days), grouped by any of day, backend, model and token."""
        until = until or today()
        if until >= date.max:
            raise errors.InvalidRequest("until must be before 9999-12-31", field="until")
        since = since or max(date.min + timedelta(days=29), until) - timedelta(days=29)
        if since > until:
            raise errors.InvalidRequest("since must not be after until", field="since")
        if (until - since).days >= MAX_REPORT_DAYS:
            raise errors.InvalidRequest(
                f"a report covers at most {MAX_REPORT_DAYS} days", field="since"
            )
        keys: list[GroupKey] = list(dict.fromkeys(group_by))
        rows = await self.repo.totals(since, until, keys, token_id)
        return CostReport(
            since=since,
            until=until,
            group_by=keys,
            rows=rows,
            total=round(sum(r.cost for r in rows), 6),
            jobs=sum(r.jobs for r in rows),
        )

    async def budgets(self, token_ids: Sequence[str] = ()) -> list[BudgetStatus]:
        """Today's standing of the global budget and of every token budget (plus
        ``token_ids`` without one, to show their spend)."""
        day = today()
        limits = await self.repo.budgets()
        out = [self._status("global", None, self.daily_budget, day, await self.repo.spend(day))]
        for token_id in sorted(set(limits) | set(token_ids)):
            spend = await self.repo.spend(day, token_id)
            out.append(self._status("token", token_id, limits.get(token_id), day, spend))
        return out

    @staticmethod
    def _status(
        scope: Literal["global", "token"],
        token_id: str | None,
        limit: float | None,
        day: date,
        spend: Spend,
    ) -> BudgetStatus:
        return BudgetStatus(
            scope=scope,
            token_id=token_id,
            daily_limit=limit,
            day=day,
            spent=round(spend.spent, 6),
            reserved=round(spend.reserved, 6),
            remaining=None if limit is None else round(max(limit - spend.total, 0.0), 6),
        )

    async def set_budget(self, token_id: str, daily_limit: float) -> None:
        await self.repo.set_budget(token_id, daily_limit)

    async def clear_budget(self, token_id: str) -> bool:
        return await self.repo.clear_budget(token_id)
