"""Whole FLUX jobs against the strict fake BFL, counting what it saw (issue 15).

Each test here was written against a mutant of flux.py that the suite used to let
through: the key sent along to the signed sample URL, the re-poll for a fresh sample
URL deleted, and ``Retry-After`` on a 429 ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx2
import pytest
from tests.conftest import TEST_KEY
from tests.integration.test_engine import dev, run_one, runtime
from tests.retry_probe import Wait, real_backoff

from orchestrator import errors
from orchestrator.config import Settings
from orchestrator.domain.jobs import JobStatus
from orchestrator.testing.fake_bfl import FakeBfl
from orchestrator.testing.serve import ServedApp

FakePair = tuple[FakeBfl, ServedApp]


def assert_key_only_where_it_belongs(fake: FakeBfl, served: ServedApp) -> None:
    """Every submit and poll carried the key; no download did (a signed URL needs none,
    and the delivery host must never see it)."""
    keyed = fake.requests_of("submit") + fake.requests_of("poll")
    assert keyed and all(r.headers.get("x-key") == TEST_KEY for r in keyed)
    downloads = fake.requests_of("download")
    assert downloads and not any(r.has_key for r in downloads), [r.headers for r in downloads]
    state = httpx2.get(f"{served.base_url}/_fake/state").json()  # the same, out of process
    assert state["requests_with_key"]["download"] == 0
    assert state["requests_with_key"]["poll"] == state["requests"]["poll"] >= 1
    assert state["requests_with_key"]["submit"] == state["requests"]["submit"] == 1


async def test_the_key_goes_to_submits_and_polls_never_to_downloads(
    settings_for: Callable[..., Settings], fake_bfl: FakePair
) -> None:
    fake, served = fake_bfl
    async with runtime(settings_for()) as rt:
        job = await run_one(rt, dev("keyed where it belongs"))
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert fake.submission_count("keyed where it belongs") == 1
    assert fake.downloads == 1 and len(fake.requests_of("download")) == 1
    assert_key_only_where_it_belongs(fake, served)


async def test_an_expired_sample_url_is_replaced_by_polling_again(
    settings_for: Callable[..., Settings], fake_bfl: FakePair
) -> None:
    """The first download arrives after its signed URL expired (the fake's clock jumps
    past ``se`` as it arrives): the job succeeds only if the backend asks BFL for a
    fresh URL, as real BFL hands out a new one on every poll."""
    fake, served = fake_bfl
    fake.faults.add("download", advance_s=fake.config.sample_ttl_s + 1)
    async with runtime(settings_for()) as rt:
        job = await run_one(rt, dev("downloaded late"))
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert len(job.outputs) == 1
    seen = fake.requests
    first, second = (i for i, r in enumerate(seen) if r.kind == "download")
    assert seen[first].target != seen[second].target  # a fresh URL...
    assert any(r.kind == "poll" for r in seen[first + 1 : second])  # ...from a new poll
    assert fake.downloads == 1  # the expired URL served nothing
    assert fake.submission_count("downloaded late") == 1  # a fresh URL, never a new task
    assert_key_only_where_it_belongs(fake, served)


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Wait]]:
    with real_backoff(monkeypatch) as recorded:
        yield recorded


async def test_a_429_storm_waits_as_long_as_retry_after_says(
    settings_for: Callable[..., Settings], fake_bfl: FakePair, waits: list[Wait]
) -> None:
    """The storm in test_faults.py says ``Retry-After: 0``, which a client ignoring the
    header passes too. Here BFL asks for 2 s (submits) and 3 s (polls), and the waits
    stamina schedules must be exactly those (stamina's sleep is replaced, so it is fast)."""
    fake, _ = fake_bfl
    busy = '{"detail":"Rate limit exceeded: you have reached your limit of 24 active tasks."}'
    fake.faults.add("submit", status=429, body=busy, headers={"Retry-After": "2"}, count=3)
    fake.faults.add("poll", status=429, headers={"Retry-After": "3"}, count=2)
    async with runtime(settings_for()) as rt:
        job = await run_one(rt, dev("told to wait"))
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert [(w.caused_by, w.seconds) for w in waits] == [
        (errors.RateLimited, 2.0),
        (errors.RateLimited, 2.0),
        (errors.RateLimited, 2.0),
        (errors.RateLimited, 3.0),
        (errors.RateLimited, 3.0),
    ]
    assert len(fake.requests_of("submit")) == 4
    assert fake.submission_count("told to wait") == 1
