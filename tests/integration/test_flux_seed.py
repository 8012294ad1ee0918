"""FLUX jobs record the seed they were sent (issue 18, "seeds are real").

A FLUX request without a seed used to be stored with ``seed: null`` and sent without
one, so BFL chose a seed nobody recorded: the job page, manifest, API and MCP showed
none, and a retry made a different image. Now a concrete seed is drawn at submit.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from tests.integration.test_engine import dev, run_one, runtime

from orchestrator.config import Settings
from orchestrator.domain.jobs import JobStatus
from orchestrator.testing.fake_bfl import FakeBfl
from orchestrator.testing.serve import ServedApp

FakePair = tuple[FakeBfl, ServedApp]


@pytest.fixture
def settings(settings_for: Callable[..., Settings]) -> Settings:
    return settings_for()


async def test_a_job_without_a_seed_records_and_sends_one_and_a_retry_reuses_it(
    settings: Settings, fake_bfl: FakePair
) -> None:
    fake, _ = fake_bfl
    async with runtime(settings) as rt:
        job = await run_one(rt, dev("a seed of its own"))
        assert job.status == JobStatus.SUCCEEDED, job.error
        seed = job.params.get("seed")
        assert isinstance(seed, int) and 0 <= seed < 2**32, seed
        again = await rt.service.retry_job(job.id)
        redo = await rt.service.wait_for(again.id, 20)
        other = await run_one(rt, dev("a seed of its own"))
    assert redo.status == JobStatus.SUCCEEDED, redo.error
    assert redo.params["seed"] == seed
    sent = [s.body.get("seed") for s in fake.submissions]
    assert sent[:2] == [seed, seed]  # what BFL got is what the job shows, both times
    assert other.params["seed"] != seed  # a new job draws a new one


async def test_a_given_seed_is_kept(settings: Settings, fake_bfl: FakePair) -> None:
    fake, _ = fake_bfl
    async with runtime(settings) as rt:
        job = await run_one(rt, dev("fixed", seed=1234))
    assert job.params["seed"] == 1234
    assert fake.submissions[0].body["seed"] == 1234
