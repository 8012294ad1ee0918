"""The cost ledger's pure decisions: estimates, final costs, GPU-seconds from ComfyUI
history messages, and budget checks."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from pydantic import JsonValue

from orchestrator.domain.costs import (
    Pricing,
    Spend,
    check_budget,
    day_bounds,
    estimate,
    final_cost,
    gpu_seconds,
)
from orchestrator.domain.jobs import JobStatus
from orchestrator.errors import ErrorCode

PRICES = Pricing(flux={"flux-dev": 2.5, "flux-pro-1.1": 4.0}, gpu_second=0.5, v0_per_1k_tokens=2)
S, F, C = JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED


@pytest.mark.parametrize(
    ("backend", "model", "expected_gpu_s", "want"),
    [
        ("flux", "flux-dev", None, 2.5),
        ("flux", "flux-pro-1.1", 9.0, 4.0),
        ("flux", "unknown-model", None, 0.0),
        ("sdxl", "sdxl", None, 0.0),  # no history yet: nothing to reserve
        ("sdxl", "sdxl", 10.0, 5.0),
        ("svd", "svd", 3.0, 1.5),
        ("workflow", "mine", 2.0, 1.0),
        ("v0", "v0-1.5-md", None, 0.0),
    ],
)
def test_estimate(backend: str, model: str, expected_gpu_s: float | None, want: float) -> None:
    assert estimate(backend, model, PRICES, expected_gpu_s) == want


# backend, status, submitted, quoted, error code, gpu_s, tokens -> cost
CASES: list[
    tuple[str, JobStatus, bool, float | None, ErrorCode | None, float | None, int | None, float]
] = [
    # never reached the upstream: free, whatever the backend
    ("flux", F, False, None, ErrorCode.INSUFFICIENT_CREDITS, None, None, 0.0),
    ("flux", C, False, None, None, None, None, 0.0),
    ("sdxl", F, False, None, ErrorCode.BACKEND_UNAVAILABLE, 4.0, None, 0.0),
    # FLUX: BFL's quote wins; else the price table
    ("flux", S, True, 3.0, None, None, None, 3.0),
    ("flux", S, True, None, None, None, None, 2.5),
    # FLUX failures BFL does not bill (only Ready is charged)
    ("flux", F, True, 3.0, ErrorCode.MODERATED, None, None, 0.0),
    ("flux", F, True, 3.0, ErrorCode.GENERATION_FAILED, None, None, 0.0),
    ("flux", F, True, 3.0, ErrorCode.TASK_NOT_FOUND, None, None, 0.0),
    # uncertain: counted as billed
    ("flux", F, True, 3.0, ErrorCode.DEADLINE_EXCEEDED, None, None, 3.0),
    ("flux", F, True, None, ErrorCode.RESULT_EXPIRED, None, None, 2.5),
    ("flux", C, True, 3.0, None, None, None, 3.0),  # BFL has no cancel
    # ComfyUI: GPU-seconds at the rate, whatever the outcome
    ("sdxl", S, True, None, None, 12.0, None, 6.0),
    ("sd35", F, True, None, ErrorCode.EXECUTION_ERROR, 2.0, None, 1.0),
    ("svd", C, True, None, None, None, None, 0.0),
    # v0: tokens at the rate
    ("v0", S, True, None, None, None, 1500, 3.0),
    ("v0", S, True, None, None, None, None, 0.0),
]


@pytest.mark.parametrize(
    ("backend", "status", "submitted", "quoted", "code", "gpu_s", "tokens", "want"), CASES
)
def test_final_cost(
    backend: str,
    status: JobStatus,
    submitted: bool,
    quoted: float | None,
    code: ErrorCode | None,
    gpu_s: float | None,
    tokens: int | None,
    want: float,
) -> None:
    model = "flux-dev" if backend == "flux" else backend
    got = final_cost(
        backend=backend,
        model=model,
        status=status,
        submitted=submitted,
        quoted=quoted,
        error_code=code,
        gpu_seconds=gpu_s,
        tokens=tokens,
        pricing=PRICES,
    )
    assert got == pytest.approx(want)


def test_free_comfy_by_default() -> None:
    got = final_cost(
        backend="sdxl",
        model="sdxl",
        status=S,
        submitted=True,
        quoted=None,
        error_code=None,
        gpu_seconds=30.0,
        tokens=None,
        pricing=Pricing(),
    )
    assert got == 0.0


def _msg(kind: str, ts: object) -> JsonValue:
    return [kind, {"prompt_id": "p", "timestamp": ts}]  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("messages", "want"),
    [
        ([_msg("execution_start", 1000), _msg("execution_success", 3500)], 2.5),
        (
            [
                _msg("execution_start", 1000),
                _msg("execution_cached", 1100),
                _msg("execution_error", 1900),
            ],
            0.9,
        ),
        ([_msg("execution_start", 1000), _msg("execution_interrupted", 1250)], 0.25),
        ([_msg("execution_start", 1000)], None),  # never ended
        ([_msg("execution_success", 3000)], None),  # no start
        ([_msg("execution_start", 5000), _msg("execution_success", 3000)], None),  # clock went back
        ([_msg("execution_start", "x"), _msg("execution_success", 3000)], None),
        ([_msg("execution_start", True), _msg("execution_success", 3000)], None),
        (["junk", ["execution_start"], ["execution_start", "not a dict"]], None),
        ([], None),
    ],
)
def test_gpu_seconds(messages: list[JsonValue], want: float | None) -> None:
    assert gpu_seconds(messages) == want


@pytest.mark.parametrize(
    ("limit", "spent", "reserved", "cost", "refused"),
    [
        (None, 1e9, 0, 5, False),  # no budget
        (10, 0, 0, 10, False),  # exactly on the limit is let in
        (10, 6, 0, 4, False),
        (10, 6, 0, 4.5, True),
        (10, 2, 5, 4, True),  # reserved by unfinished jobs counts
        (10, 20, 0, 0, False),  # a free job is never refused
        (0, 0, 0, 0.01, True),  # a zero budget refuses anything that costs
    ],
)
def test_check_budget(
    limit: float | None, spent: float, reserved: float, cost: float, refused: bool
) -> None:
    spend = Spend(spent=spent, reserved=reserved)
    refusal = check_budget("token", limit, spend, cost)
    assert (refusal is not None) == refused
    if refusal is not None:
        assert "this token's daily budget" in refusal.message
        assert f"{cost:g}" in refusal.message


def test_global_refusal_names_the_global_budget() -> None:
    refusal = check_budget("global", 5, Spend(spent=5), 1)
    assert refusal is not None and "global daily budget of 5 credits" in refusal.message


def test_day_bounds_are_utc_midnights() -> None:
    start, end = day_bounds(date(2026, 11, 27))
    assert start == datetime(2026, 11, 27, tzinfo=UTC)
    assert end == datetime(2026, 11, 28, tzinfo=UTC)
