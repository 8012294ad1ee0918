"""Budgets hold when submitters race, on SQLite as on PostgreSQL (issue 15).

``test_costs.py`` races twenty submits through one runtime. On SQLite that runtime
has one writer thread, so its inserts are serialised whatever the database does: a
budget check that did not run in a transaction serialised with the other guarded
inserts (``BEGIN IMMEDIATE`` on SQLite, the advisory lock on PostgreSQL) was only
ever caught on PostgreSQL. Here two runtimes (two engines, two writer threads: as two
processes would) share one database, each with many concurrent submitters, and the
budget check is slowed down so that any gap between reading the day's spend and
inserting the job is wide open: exactly the jobs that fit get in, never one more.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import date

import pytest
import sqlalchemy as sa
from tests.conftest import TEST_KEY

from orchestrator import errors
from orchestrator.config import Settings
from orchestrator.db import costs as costs_db
from orchestrator.domain import auth
from orchestrator.domain.costs import Spend
from orchestrator.domain.params import FluxDevParams, FluxRequest
from orchestrator.runtime import Runtime, open_runtime
from orchestrator.testing.fake_bfl import FakeBfl
from orchestrator.testing.serve import ServedApp

FLUX_DEV = 2.5  # flux-dev's list price: a budget of 10 has room for four
RUNTIMES = 2
SUBMITTERS = 12  # per runtime


@pytest.fixture
def slow_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The day's spend is read, then the check waits a moment before the job is
    inserted: a check that is not serialised with the other inserts lets every
    racer read the same spend."""
    real = costs_db.spend

    def spend(conn: sa.Connection, day: date, token_id: str | None = None) -> Spend:
        found = real(conn, day, token_id)
        time.sleep(0.01)  # on the database thread, inside the inserting transaction
        return found

    monkeypatch.setattr(costs_db, "spend", spend)


@asynccontextmanager
async def runtimes(settings: Settings) -> AsyncIterator[list[Runtime]]:
    """Several runtimes on the one database, as several processes would be."""
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(open_runtime(settings, run_worker=False))
            for _ in range(RUNTIMES)
        ]


def dev(prompt: str) -> FluxRequest:
    return FluxRequest(params=FluxDevParams(prompt=prompt, width=256, height=256))


async def race(rts: list[Runtime], principal: auth.Principal = auth.LOCAL) -> list[str]:
    """Every runtime's submitters at once; the ids of the jobs that got in. A refusal
    must be a budget refusal (a database error is a failure, not a refusal)."""

    async def one(rt: Runtime, i: int) -> str | None:
        try:
            job, _ = await rt.service.submit(dev(f"race {i}"), principal=principal)
        except errors.BudgetExceeded:
            return None
        return job.id

    results = await asyncio.gather(*(one(rt, i) for i in range(SUBMITTERS) for rt in rts))
    return [job_id for job_id in results if job_id is not None]


@pytest.fixture
def settings_for(
    make_settings: Callable[..., Settings], fake_bfl: tuple[FakeBfl, ServedApp], db_url: str
) -> Callable[..., Settings]:
    _, served = fake_bfl

    def make(**kw: object) -> Settings:
        return make_settings(
            bfl_api_key=TEST_KEY, flux_base_url=served.base_url, database_url=db_url, **kw
        )

    return make


@pytest.mark.usefixtures("slow_check")
async def test_the_global_budget_holds_when_two_runtimes_race(
    settings_for: Callable[..., Settings],
) -> None:
    async with runtimes(settings_for(daily_budget=10)) as rts:
        accepted = await race(rts)
        assert len(accepted) == 4, f"{len(accepted)} jobs of {FLUX_DEV} in a budget of 10"
        for rt in rts:
            [glob] = await rt.service.ledger.budgets()
            assert glob.reserved == 10.0 and glob.remaining == 0.0
        page = await rts[0].service.list_jobs(limit=100)
        assert sorted(j.id for j in page.items) == sorted(accepted)  # refusals leave no row


@pytest.mark.usefixtures("slow_check")
async def test_a_token_budget_holds_when_two_runtimes_race(
    settings_for: Callable[..., Settings],
) -> None:
    async with runtimes(settings_for()) as rts:
        token = (await rts[0].service.tokens.create("racer", auth.Scope.GENERATE)).token
        await rts[0].service.set_token_budget(token.id, 5)
        who = auth.Principal(token_id=token.id, name="t", scope=auth.Scope.GENERATE, via="token")
        accepted = await race(rts, who)
        assert len(accepted) == 2, f"{len(accepted)} jobs of {FLUX_DEV} in a budget of 5"
