"""The cost ledger: totals per day, backend, model and token; daily budgets."""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status
from pydantic import BeforeValidator

from orchestrator.api.deps import PrincipalDep, ServiceDep
from orchestrator.api.problems import Problem
from orchestrator.domain.costs import BudgetSet, BudgetStatus, CostReport, GroupKey

router = APIRouter(prefix="/api", tags=["costs"])
PROBLEMS: dict[int | str, dict[str, object]] = {
    404: {"model": Problem, "description": "No such token"},
    422: {"model": Problem, "description": "Invalid request"},
}
TokenId = Annotated[str, Path(min_length=1, max_length=64)]


def _iso_day(value: object) -> object:
    """Only ``YYYY-MM-DD`` (pydantic would also take a Unix timestamp such as ``0``)."""
    if isinstance(value, str) and not ISO_DAY.fullmatch(value):
        raise ValueError("a day is YYYY-MM-DD")
    return value


ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
Day = Annotated[date, BeforeValidator(_iso_day)]
Since = Annotated[
    Day | None,
    Query(description="First UTC day (default: 29 days ago); at most 366 days before until."),
]
Until = Annotated[Day | None, Query(description="Last UTC day, inclusive (default: today).")]
OnlyToken = Annotated[str | None, Query(max_length=64, description="Only this token's jobs.")]


@router.get("/costs", responses=PROBLEMS, summary="Cost totals, grouped")
async def costs(
    service: ServiceDep,
    since: Since = None,
    until: Until = None,
    by: Annotated[
        list[GroupKey] | None,
        Query(description="Group by any of day, backend, model, token (repeat the parameter)."),
    ] = None,
    token_id: OnlyToken = None,
) -> CostReport:
    """Costs are in credits (1 credit = US$0.01): BFL's ``cost`` for FLUX jobs (else
    the model's price), GPU-seconds times ``COMFY_GPU_SECOND_RATE`` for ComfyUI jobs.
    Jobs count on the UTC day they were created."""
    return await service.ledger.report(
        since=since, until=until, group_by=by or ["day"], token_id=token_id
    )


@router.get("/budgets", summary="Daily budgets and today's spend")
async def budgets(service: ServiceDep) -> list[BudgetStatus]:
    """The global budget (``DAILY_BUDGET``) and every token budget, with what was
    spent today (UTC) and what unfinished jobs reserve."""
    return await service.ledger.budgets()


@router.put("/budgets/tokens/{token_id}", responses=PROBLEMS, summary="Set a token's budget")
async def set_token_budget(
    token_id: TokenId, body: BudgetSet, service: ServiceDep, principal: PrincipalDep
) -> BudgetStatus:
    return await service.set_token_budget(token_id, body.daily_limit, principal=principal)


@router.delete(
    "/budgets/tokens/{token_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=PROBLEMS,
    summary="Remove a token's budget",
)
async def clear_token_budget(
    token_id: TokenId, service: ServiceDep, principal: PrincipalDep
) -> Response:
    await service.clear_token_budget(token_id, principal=principal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
