"""The database cost of one job, pinned: SQL statements and write transactions per
FLUX job, from the submit to ``wait_for`` returning, counted with a SQLAlchemy event
listener on every engine the database runs statements on.

A regression (a write split in two again, a re-read per wake, an empty re-claim
after every finish) shows up here as a count, never as a timing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from tests.conftest import TEST_KEY

from orchestrator.config import Settings
from orchestrator.db.engine import Database
from orchestrator.domain.jobs import JobStatus
from orchestrator.domain.params import FluxDevParams, FluxRequest
from orchestrator.engine.worker import WorkerOptions
from orchestrator.runtime import open_runtime
from orchestrator.testing.fake_bfl import FakeBfl
from orchestrator.testing.serve import ServedApp

WRITES = ("INSERT", "UPDATE", "DELETE")

# What one FLUX job may cost, measured over several jobs in a row (create, claim
# with the submit mark, the upstream handle, the finish with its outputs, events and
# the manifest mark, and the waiter).
MAX_WRITE_TRANSACTIONS_PER_JOB = 4  # the API's create + at most 3 on the worker path
# + one read: the waiter's first look (the end comes from the hub); no empty re-claim
MAX_TRANSACTIONS_PER_JOB = 5.5
MAX_STATEMENTS_PER_JOB = 17  # was 26 (and 38 with BEGIN/COMMIT), 13 transactions


@dataclass
class Counts:
    statements: int = 0
    write_transactions: int = 0
    transactions: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    _wrote: set[int] = field(default_factory=set)

    def statement(self, conn: sa.Connection, sql: str) -> None:
        head = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else ""
        if head in ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE"):
            return  # transaction control is counted as transactions
        self.statements += 1
        self.kinds[head] = self.kinds.get(head, 0) + 1
        if head in WRITES:
            self._wrote.add(id(conn))

    def ended(self, conn: sa.Connection) -> None:
        self.transactions += 1
        if id(conn) in self._wrote:
            self._wrote.discard(id(conn))
            self.write_transactions += 1


def engines_of(db: Database) -> list[sa.Engine]:
    return db.engines()


@contextmanager
def counting(db: Database) -> Iterator[Counts]:
    counts = Counts()

    def before(conn: sa.Connection, _cur: Any, sql: str, *_a: Any) -> None:
        counts.statement(conn, sql)

    def ended(conn: sa.Connection) -> None:
        counts.ended(conn)

    engines = engines_of(db)
    for eng in engines:
        sa.event.listen(eng, "before_cursor_execute", before)
        sa.event.listen(eng, "commit", ended)
        sa.event.listen(eng, "rollback", ended)
    try:
        yield counts
    finally:
        for eng in engines:
            sa.event.remove(eng, "before_cursor_execute", before)
            sa.event.remove(eng, "commit", ended)
            sa.event.remove(eng, "rollback", ended)


@pytest.fixture
def flux_settings(
    make_settings: Callable[..., Settings], fake_bfl: tuple[FakeBfl, ServedApp], db_url: str
) -> Settings:
    fake, served = fake_bfl
    fake.config.task_duration_s = 0.0
    return make_settings(
        bfl_api_key=TEST_KEY,
        flux_base_url=served.base_url,
        database_url=db_url,
        flux_poll_interval_s=0.01,
        lease_s=600,  # no lease renewal inside the measurement
        worker_poll_interval_s=30,  # no idle claim poll inside the measurement
    )


async def test_sql_statements_and_write_transactions_per_flux_job(
    flux_settings: Settings, fake_bfl: tuple[FakeBfl, ServedApp]
) -> None:
    fake, _ = fake_bfl
    n = 8
    options = WorkerOptions(concurrency=4, lease_s=600, poll_interval_s=30)
    async with open_runtime(flux_settings, run_worker=True, worker_options=options) as rt:
        svc = rt.service

        async def one(i: int) -> None:
            req = FluxRequest(params=FluxDevParams(prompt=f"budget {i}", width=256, height=256))
            job, _ = await svc.submit(req)
            done = await svc.wait_for(job.id, 20)
            assert done.status == JobStatus.SUCCEEDED, done.error

        await one(-1)  # warm-up: first-use reads (pricing, budgets) are not per job
        await asyncio.sleep(0.2)
        with counting(svc.db) as counts:
            for i in range(n):
                await one(i)
            await asyncio.sleep(0.3)  # what the worker does right after a finish counts too
    assert len(fake.submissions) == n + 1, "each job is submitted once"
    per_job_writes = counts.write_transactions / n
    per_job_statements = counts.statements / n
    report = (
        f"per job: {per_job_statements:.1f} statements, {per_job_writes:.1f} write "
        f"transactions, {counts.transactions / n:.1f} transactions; by kind {counts.kinds}"
    )
    print(report)
    assert per_job_writes <= MAX_WRITE_TRANSACTIONS_PER_JOB, report
    assert per_job_statements <= MAX_STATEMENTS_PER_JOB, report
    assert counts.transactions / n <= MAX_TRANSACTIONS_PER_JOB, report
