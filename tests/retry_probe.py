"""Observe the waits stamina really asks for (issue 15).

The suite runs stamina in testing mode (tests/conftest.py ``fast_retries``): no waits at
all, so a client that ignored ``Retry-After`` or used the wrong ``wait_max`` looked the
same as a correct one. `real_backoff` turns testing mode off, records every wait through
stamina's instrumentation hook (``RetryDetails.wait_for``) and replaces stamina's sleep
with one that does not sleep, so tests stay fast and still see the schedule.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import stamina
import stamina._core
import stamina.instrumentation


@dataclass(frozen=True)
class Wait:
    """One scheduled retry: what caused it and how long stamina waits before it."""

    caused_by: type[BaseException]
    seconds: float


@contextmanager
def real_backoff(
    monkeypatch: pytest.MonkeyPatch, *, max_jitter: bool = False
) -> Iterator[list[Wait]]:
    """Real retry schedules without real sleeps. ``max_jitter``: stamina's random jitter
    takes its upper bound, so the exponential schedule is the worst case, exactly."""
    waits: list[Wait] = []

    def hook(details: stamina.instrumentation.RetryDetails) -> None:
        waits.append(Wait(type(details.caused_by), details.wait_for))

    async def no_sleep(_delay: float) -> None:
        await asyncio.sleep(0)

    # stamina's async retry loop looks its sleep up here each time it starts
    monkeypatch.setattr(stamina._core, "_smart_sleep", no_sleep)
    if max_jitter:
        monkeypatch.setattr(stamina._core.random, "uniform", lambda _a, b: b)
        assert random.uniform(0, 1.0) == 1.0
    stamina.instrumentation.set_on_retry_hooks(
        [*stamina.instrumentation.get_on_retry_hooks(), hook]
    )
    stamina.set_testing(False)
    try:
        yield waits
    finally:
        stamina.set_testing(True, attempts=5, cap=True)  # what conftest's fast_retries set
        # remove only this hook: others (the metrics hook) may have been added meanwhile
        stamina.instrumentation.set_on_retry_hooks(
            [h for h in stamina.instrumentation.get_on_retry_hooks() if h is not hook]
        )
