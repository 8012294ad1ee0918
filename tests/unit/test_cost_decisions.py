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
    text_tokens,
    v0_token_ceiling,
)
from orchestrator.domain.jobs import JobStatus
from orchestrator.errors import ErrorCode

PRICES = Pricing(flux={"flux-dev": 2.5, "flux-pro-1.1": 4.0}, gpu_second=0.5, v0_per_1k_tokens=2)
S, F, C = JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED


@pytest.mark.parametrize(
    ("backend", "model", "expected_gpu_s", "v0_tokens", "want"),
    [
        ("flux", "flux-dev", None, None, 2.5),
        ("flux", "flux-pro-1.1", 9.0, None, 4.0),
        ("flux", "unknown-model", None, None, 0.0),
        # no history yet: the per-backend default (30 GPU-s); it used to be 0, so a first
        # ComfyUI job was never refused by a budget
        ("sdxl", "sdxl", None, None, 15.0),
        ("sdxl", "sdxl", 10.0, None, 5.0),
        ("svd", "svd", 3.0, None, 1.5),
        ("workflow", "mine", 2.0, None, 1.0),
        # v0: a token ceiling (the request's, else the default 8000); it used to be 0
        ("v0", "v0-1.5-md", None, None, 16.0),
        ("v0", "v0-1.5-md", None, 1200, 2.4),
    ],
)
def test_estimate(
    backend: str, model: str, expected_gpu_s: float | None, v0_tokens: int | None, want: float
) -> None:
    got = estimate(backend, model, PRICES, expected_gpu_s, v0_tokens=v0_tokens)
    assert got == pytest.approx(want)


def test_estimates_are_free_at_a_zero_rate() -> None:
    free = Pricing()
    assert estimate("sdxl", "sdxl", free) == 0.0
    assert estimate("v0", "v0-1.5-md", free) == 0.0


# backend, status, (accepted, submit started), quoted, error code, gpu_s, tokens -> cost
ACC = (True, True)  # upstream accepted: its handle is stored
SENT = (False, True)  # a submit was sent (or may have been), no answer recorded
NONE = (False, False)  # nothing was sent
CASES: list[
    tuple[
        str,
        JobStatus,
        tuple[bool, bool],
        float | None,
        ErrorCode | None,
        float | None,
        int | None,
        float,
    ]
] = [
    # never reached the upstream: free, whatever the backend
    ("flux", F, NONE, None, ErrorCode.INSUFFICIENT_CREDITS, None, None, 0.0),
    ("flux", C, NONE, None, None, None, None, 0.0),
    ("flux", F, NONE, None, ErrorCode.BACKEND_KIND_CHANGED, None, None, 0.0),
    ("sdxl", F, NONE, None, ErrorCode.BACKEND_UNAVAILABLE, 4.0, None, 0.0),
    # FLUX: BFL's quote wins; else the price table
    ("flux", S, ACC, 3.0, None, None, None, 3.0),
    ("flux", S, ACC, None, None, None, None, 2.5),
    # FLUX tasks BFL ended itself without a result (only Ready is charged)
    ("flux", F, ACC, 3.0, ErrorCode.MODERATED, None, None, 0.0),
    ("flux", F, ACC, 3.0, ErrorCode.GENERATION_FAILED, None, None, 0.0),
    # accepted, then lost from sight: BFL billed it (issue 12: were recorded as free)
    ("flux", F, ACC, 3.0, ErrorCode.TASK_NOT_FOUND, None, None, 3.0),
    ("flux", F, ACC, 3.0, ErrorCode.UPSTREAM_AUTH, None, None, 3.0),  # a 403 poll
    ("flux", F, ACC, 3.0, ErrorCode.UPSTREAM_UNAVAILABLE, None, None, 3.0),
    # accepted, uncertain: counted as billed
    ("flux", F, ACC, 3.0, ErrorCode.DEADLINE_EXCEEDED, None, None, 3.0),
    ("flux", F, ACC, None, ErrorCode.RESULT_EXPIRED, None, None, 2.5),
    ("flux", C, ACC, 3.0, None, None, None, 3.0),  # BFL has no cancel
    # a submit was sent but its answer never recorded: billed (issue 12: were free) ...
    ("flux", F, SENT, None, ErrorCode.SUBMIT_INTERRUPTED, None, None, 2.5),
    ("flux", F, SENT, None, ErrorCode.SUBMIT_UNCERTAIN, None, None, 2.5),
    ("flux", F, SENT, None, ErrorCode.DEADLINE_EXCEEDED, None, None, 2.5),
    ("flux", C, SENT, None, None, None, None, 2.5),  # canceled mid-submit
    ("flux", F, SENT, None, ErrorCode.UPSTREAM_ERROR, None, None, 2.5),  # a 5xx answer
    # ... unless BFL refused the submit itself: nothing was started
    ("flux", F, SENT, None, ErrorCode.INSUFFICIENT_CREDITS, None, None, 0.0),
    ("flux", F, SENT, None, ErrorCode.INVALID_PARAMS, None, None, 0.0),
    ("flux", F, SENT, None, ErrorCode.RATE_LIMITED, None, None, 0.0),
    ("flux", F, SENT, None, ErrorCode.UPSTREAM_AUTH, None, None, 0.0),
    ("flux", F, SENT, None, ErrorCode.MODERATED, None, None, 0.0),
    ("flux", F, SENT, None, ErrorCode.UPSTREAM_UNAVAILABLE, None, None, 0.0),  # no connect
    # ComfyUI: GPU-seconds at the rate, whatever the outcome
    ("sdxl", S, ACC, None, None, 12.0, None, 6.0),
    ("sd35", F, ACC, None, ErrorCode.EXECUTION_ERROR, 2.0, None, 1.0),
    ("svd", C, ACC, None, None, None, None, 0.0),
    # v0: tokens at the rate (every attempt's: see backends/v0.py)
    ("v0", S, ACC, None, None, None, 1500, 3.0),
    ("v0", S, ACC, None, None, None, None, 0.0),
    ("v0", F, ACC, None, ErrorCode.STREAM_INTERRUPTED, None, 700, 1.4),
]


@pytest.mark.parametrize(
    ("backend", "status", "sent", "quoted", "code", "gpu_s", "tokens", "want"), CASES
)
def test_final_cost(
    backend: str,
    status: JobStatus,
    sent: tuple[bool, bool],
    quoted: float | None,
    code: ErrorCode | None,
    gpu_s: float | None,
    tokens: int | None,
    want: float,
) -> None:
    model = "flux-dev" if backend == "flux" else backend
    accepted, submit_started = sent
    got = final_cost(
        backend=backend,
        model=model,
        status=status,
        accepted=accepted,
        submit_started=submit_started,
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
        accepted=True,
        submit_started=True,
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
        # malformed entries are skipped, not the end of the list
        (["junk", _msg("execution_start", 1000), _msg("execution_success", 3500)], 2.5),
        (
            [
                ["execution_start", "not a dict"],
                _msg("execution_start", 1000),
                _msg("execution_success", 3500),
            ],
            2.5,
        ),
        (
            [
                _msg("execution_cached", "x"),
                _msg("execution_start", 1000),
                _msg("execution_success", 3500),
            ],
            2.5,
        ),
        # only execution_start starts the clock, and only the first one
        ([_msg("execution_cached", 500), _msg("execution_success", 3500)], None),
        (
            [
                _msg("execution_start", 1000),
                _msg("execution_start", 2000),
                _msg("execution_success", 3500),
            ],
            2.5,
        ),
        ([_msg("execution_start", 1000), _msg("execution_success", 1000)], 0.0),
        ([_msg("execution_start", 1000), _msg("execution_success", 2234.56)], 1.235),  # ms
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
        (0.6, 0.1, 0.2, 0.3, False),  # 0.1 + 0.2 + 0.3 > 0.6 in floats: noise is let in
        (10, 0, 0, 10 + 1e-9, False),  # the tolerance is 1e-9 credits, inclusive
        (10, 0, 0, 10 + 3e-9, True),
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


def test_unknown_backends_cost_what_was_quoted() -> None:
    """A backend the ledger does not know: no estimate, and the upstream's quote (if
    any) as the final cost."""
    assert estimate("mystery", "m", PRICES, 10.0, v0_tokens=1000) == 0.0

    def cost(backend: str, model: str, quoted: float | None) -> float:
        return final_cost(
            backend=backend,
            model=model,
            status=S,
            accepted=True,
            submit_started=True,
            quoted=quoted,
            error_code=None,
            gpu_seconds=10.0,
            tokens=1000,
            pricing=PRICES,
        )

    assert cost("mystery", "m", 3.0) == 3.0
    assert cost("mystery", "m", None) == 0.0
    # a FLUX model missing from the price table, with no quote: free, not an error
    assert cost("flux", "flux-unlisted", None) == 0.0


def test_costs_are_rounded_to_a_millionth_of_a_credit() -> None:
    odd = Pricing(gpu_second=0.1234567, v0_per_1k_tokens=1.2345678)
    assert estimate("sdxl", "sdxl", odd, 1.0) == 0.123457
    assert estimate("v0", "v0-1.5-md", odd, v0_tokens=1000) == 1.234568

    def cost(backend: str, gpu_s: float | None, tokens: int | None, pricing: Pricing) -> float:
        return final_cost(
            backend=backend,
            model=backend,
            status=S,
            accepted=True,
            submit_started=True,
            quoted=None,
            error_code=None,
            gpu_seconds=gpu_s,
            tokens=tokens,
            pricing=pricing,
        )

    assert cost("sdxl", 1.0, None, odd) == 0.123457
    assert cost("sdxl", 3.3, None, PRICES) == 1.65
    assert cost("v0", None, 1000, odd) == 1.234568


@pytest.mark.parametrize(
    ("chars", "tokens"), [(0, 0), (1, 1), (3, 1), (4, 1), (5, 2), (8, 2), (9, 3)]
)
def test_text_tokens_round_up(chars: int, tokens: int) -> None:
    assert text_tokens(chars) == tokens


@pytest.mark.parametrize(
    ("params", "ceiling"),
    [
        # prompt and system text (4 characters a token, rounded up) + the default answer
        ({"prompt": "x" * 10}, 3 + 1000),
        ({"prompt": "abcd", "system": "abcde"}, 3 + 1000),
        ({"system": "abcde"}, 2 + 1000),
        ({"prompt": 12345}, 1000),  # not text: no tokens
        ({}, 1000),
        # images: 765 tokens each
        ({"prompt": "abcd", "images": ["a", "b"]}, 1 + 2 * 765 + 1000),
        ({"prompt": "abcd", "images": "a"}, 1 + 1000),  # not a list
        # the request's answer cap replaces the default
        ({"prompt": "abcd", "max_completion_tokens": 1200}, 1 + 1200),
        ({"prompt": "abcd", "max_completion_tokens": 1}, 1 + 1),
        ({"prompt": "abcd", "images": ["a"], "max_completion_tokens": 50}, 1 + 765 + 50),
        # a cap that is no positive int is ignored
        ({"prompt": "abcd", "max_completion_tokens": 0}, 1 + 1000),
        ({"prompt": "abcd", "max_completion_tokens": -5}, 1 + 1000),
        ({"prompt": "abcd", "max_completion_tokens": True}, 1 + 1000),
        ({"prompt": "abcd", "max_completion_tokens": "1200"}, 1 + 1000),
        ({"prompt": "abcd", "max_completion_tokens": None}, 1 + 1000),
    ],
)
def test_v0_token_ceiling(params: dict[str, JsonValue], ceiling: int) -> None:
    assert v0_token_ceiling(params, 1000) == ceiling
