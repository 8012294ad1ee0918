"""The cost ledger's decisions: what a job is estimated to cost before it runs, what
it cost when it ended, and whether a budget lets a new job in. Pure functions,
table-tested; the db layer stores and sums, the service refuses.

One unit throughout: **credits**, BFL's unit (1 credit = US$0.01). FLUX jobs cost
what BFL's submit response says (``cost``), else the model's price in the price
table. ComfyUI jobs cost their GPU-seconds (``execution_start`` to the prompt's last
message, from ComfyUI's history) times a configurable rate, 0 by default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal

from pydantic import BaseModel, Field, JsonValue

from orchestrator.domain.jobs import JobStatus
from orchestrator.errors import ErrorCode

CURRENCY = "credits"

# A task BFL accepted is billed unless BFL itself ended it without a result.
FLUX_TASK_UNBILLED = frozenset({ErrorCode.MODERATED, ErrorCode.GENERATION_FAILED})
# A submit BFL answered with a refusal (or that never connected): nothing was started.
FLUX_SUBMIT_REFUSED = frozenset(
    {
        ErrorCode.INSUFFICIENT_CREDITS,
        ErrorCode.INVALID_PARAMS,
        ErrorCode.RATE_LIMITED,
        ErrorCode.UPSTREAM_AUTH,
        ErrorCode.MODERATED,
        ErrorCode.UPSTREAM_UNAVAILABLE,
    }
)
COMFY_BACKENDS = frozenset({"sdxl", "sd35", "svd", "comfy", "workflow"})
# What a new job reserves until there is a better guess: a ComfyUI prompt's GPU-seconds
# (until its model has history) and a v0 answer's tokens (unless the request caps them).
DEFAULT_COMFY_GPU_S = 30.0
DEFAULT_V0_TOKENS = 8000


@dataclass(frozen=True)
class Pricing:
    """Prices from the settings. ``flux`` maps a FLUX model to credits per image."""

    flux: Mapping[str, float] = field(default_factory=dict)
    gpu_second: float = 0.0
    v0_per_1k_tokens: float = 0.0
    comfy_default_gpu_s: float = DEFAULT_COMFY_GPU_S
    v0_default_tokens: int = DEFAULT_V0_TOKENS


def estimate(
    backend: str,
    model: str,
    pricing: Pricing,
    expected_gpu_s: float | None = None,
    *,
    v0_tokens: int | None = None,
) -> float:
    """What a new job is expected to cost: reserved against budgets until it ends.
    ComfyUI jobs use ``expected_gpu_s`` (the recent average for the model), else the
    per-backend default; v0 jobs ``v0_tokens`` (the request's ceiling), else the
    default. Never 0 where the job will cost something: a zero estimate slips past
    every budget."""
    if backend == "flux":
        return float(pricing.flux.get(model, 0.0))
    if backend in COMFY_BACKENDS:
        seconds = expected_gpu_s if expected_gpu_s else pricing.comfy_default_gpu_s
        return round(seconds * pricing.gpu_second, 6)
    if backend == "v0":
        tokens = v0_tokens if v0_tokens else pricing.v0_default_tokens
        return round(tokens / 1000 * pricing.v0_per_1k_tokens, 6)
    return 0.0


# Rough tokens per character of text, and per image (OpenAI-style tiles), for the
# ceiling reserved before a v0 job runs and for an attempt whose stream broke off
# (a cut stream reports no usage, yet its tokens were generated and billed).
CHARS_PER_TOKEN = 4
TOKENS_PER_IMAGE = 765


def text_tokens(chars: int) -> int:
    return -(-chars // CHARS_PER_TOKEN)


def v0_token_ceiling(params: Mapping[str, JsonValue], default_answer_tokens: int) -> int:
    """Tokens a v0 request may use at most, for its estimate: its prompt (and system
    text and images) plus its answer cap (``max_completion_tokens``, else the default).
    Page context is not known here; the default answer cap is meant to cover it."""
    prompt = sum(len(v) for k in ("prompt", "system") if isinstance(v := params.get(k), str))
    images = params.get("images")
    n_images = len(images) if isinstance(images, list) else 0
    cap = params.get("max_completion_tokens")
    answer = cap if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0 else None
    return text_tokens(prompt) + TOKENS_PER_IMAGE * n_images + (answer or default_answer_tokens)


def final_cost(
    *,
    backend: str,
    model: str,
    status: JobStatus,
    accepted: bool,
    submit_started: bool,
    quoted: float | None,
    error_code: ErrorCode | None,
    gpu_seconds: float | None,
    tokens: int | None,
    pricing: Pricing,
) -> float:
    """What a job that ended in ``status`` cost. ``accepted``: the upstream accepted the
    work (its handle was stored); ``submit_started``: a submit was sent, or may have
    been, even if no answer was recorded; ``quoted``: BFL's ``cost`` from the submit
    response. Whatever may have been billed counts as billed, so budgets err on the
    safe side: only a refusal of the submit itself, or a task BFL ended without a
    result, is free."""
    if not (accepted or submit_started):
        return 0.0
    if backend == "flux":
        price = float(quoted if quoted is not None else pricing.flux.get(model, 0.0))
        failed = status == JobStatus.FAILED
        if accepted:
            return 0.0 if failed and error_code in FLUX_TASK_UNBILLED else price
        return 0.0 if failed and error_code in FLUX_SUBMIT_REFUSED else price
    if backend in COMFY_BACKENDS:
        return round((gpu_seconds or 0.0) * pricing.gpu_second, 6)
    if backend == "v0":
        return round((tokens or 0) / 1000 * pricing.v0_per_1k_tokens, 6)
    return float(quoted or 0.0)


def gpu_seconds(messages: Sequence[JsonValue]) -> float | None:
    """GPU time of a ComfyUI prompt from its history's ``status.messages``: from
    ``execution_start`` to the last message with a timestamp (success, error or
    interruption). None when the timestamps are missing."""
    start: float | None = None
    end: float | None = None
    for message in messages:
        if not (isinstance(message, list) and len(message) == 2):
            continue
        kind, data = message
        if not isinstance(data, dict):
            continue
        stamp = data.get("timestamp")
        if not isinstance(stamp, int | float) or isinstance(stamp, bool):
            continue
        if kind == "execution_start" and start is None:
            start = float(stamp)
        elif start is not None:
            end = float(stamp)
    if start is None or end is None or end < start:
        return None
    return round((end - start) / 1000.0, 3)


# --- budgets ---------------------------------------------------------------------------
class Spend(BaseModel):
    """One budget's day so far: ``spent`` by jobs that ended, ``reserved`` by the
    estimates of jobs still queued or running."""

    spent: float = 0.0
    reserved: float = 0.0

    @property
    def total(self) -> float:
        return self.spent + self.reserved


@dataclass(frozen=True)
class Refusal:
    scope: Literal["global", "token"]
    limit: float
    spend: Spend
    estimate: float

    @property
    def message(self) -> str:
        who = "the global daily budget" if self.scope == "global" else "this token's daily budget"
        return (
            f"this job (estimated {self.estimate:g} {CURRENCY}) would exceed {who} of "
            f"{self.limit:g} {CURRENCY}: {self.spend.spent:g} spent today and "
            f"{self.spend.reserved:g} reserved by unfinished jobs"
        )


def check_budget(
    scope: Literal["global", "token"], limit: float | None, spend: Spend, estimate: float
) -> Refusal | None:
    """None when a job estimated at ``estimate`` fits under ``limit`` (None: no budget).
    A job that costs nothing is never refused; one that lands exactly on the limit is
    let in."""
    if limit is None or estimate <= 0:
        return None
    if spend.total + estimate > limit + 1e-9:
        return Refusal(scope, limit, spend, estimate)
    return None


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """A budget day is a UTC calendar day: ``[00:00, next 00:00)``."""
    start = datetime.combine(day, time(0), tzinfo=UTC)
    return start, start + timedelta(days=1)


# --- totals ----------------------------------------------------------------------------
GroupKey = Literal["day", "backend", "model", "token"]
GROUP_KEYS: tuple[GroupKey, ...] = ("day", "backend", "model", "token")


class CostRow(BaseModel):
    day: date | None = Field(default=None, description="UTC day the jobs were created.")
    backend: str | None = None
    model: str | None = None
    token_id: str | None = Field(default=None, description="The token that created the jobs.")
    jobs: int = Field(description="Jobs in this group (any status).")
    cost: float = Field(description=f"Sum of the jobs' costs, in {CURRENCY}.")
    gpu_seconds: float = Field(description="Sum of ComfyUI GPU-seconds.")


class CostReport(BaseModel):
    currency: str = CURRENCY
    since: date
    until: date = Field(description="Inclusive.")
    group_by: list[GroupKey]
    rows: list[CostRow]
    total: float
    jobs: int


class BudgetStatus(BaseModel):
    scope: Literal["global", "token"]
    token_id: str | None = None
    daily_limit: float | None = Field(description=f"{CURRENCY} per UTC day; null: no budget.")
    day: date
    spent: float
    reserved: float
    remaining: float | None


class BudgetSet(BaseModel):
    # strict: a JSON true/false is not a number (it was taken as 1/0)
    daily_limit: float = Field(ge=0, le=1e9, strict=True, description=f"{CURRENCY} per UTC day.")
