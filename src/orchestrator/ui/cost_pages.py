"""The Costs page (``/ui/costs``): ledger totals for a date range, grouped by day,
backend, model or token, a bar per day, and the daily budgets. Admins set and clear
token budgets from the page through ``PUT/DELETE /api/budgets/tokens/{id}``."""

from __future__ import annotations

from datetime import date
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from orchestrator import ledger
from orchestrator.auth_service import TokenInfo
from orchestrator.domain import auth
from orchestrator.domain.auth import Principal
from orchestrator.domain.costs import CURRENCY, GROUP_KEYS
from orchestrator.services import Service
from orchestrator.ui import ledger_view
from orchestrator.ui.pages import service_of
from orchestrator.ui.panels import NO_STORE
from orchestrator.ui.templating import render

router = APIRouter(prefix="/ui", include_in_schema=False)
DayQ = Annotated[str | None, Query(max_length=10)]
ByQ = Annotated[str | None, Query(max_length=16)]
TokenQ = Annotated[str | None, Query(max_length=64)]


def _principal(request: Request) -> Principal | None:
    p = getattr(request.state, "principal", None)
    return p if isinstance(p, Principal) else None


def _is_admin(request: Request) -> bool:
    p = _principal(request)
    return p is not None and auth.allowed(p, auth.Action.MANAGE_TOKENS)


async def _tokens(service: Service, request: Request) -> list[TokenInfo]:
    """Every token, for admins (who may list them); nobody else sees the list."""
    p = _principal(request)
    if p is None or not _is_admin(request):
        return []
    return await service.tokens.all(principal=p)


async def _names(service: Service, request: Request) -> dict[str, str]:
    """Token names by id: all of them for admins, else the caller's own."""
    names = {t.id: t.name for t in await _tokens(service, request)}
    p = _principal(request)
    if p is not None and p.token_id is not None:
        names.setdefault(p.token_id, p.name)
    return names


def _days(since: str | None, until: str | None) -> tuple[date, date]:
    """The report's first and last day from the query (default: the last 30 days)."""
    return ledger_view.date_range(
        ledger_view.parse_day(since, "since"), ledger_view.parse_day(until, "until"), ledger.today()
    )


@router.get("/costs", response_class=HTMLResponse)
async def costs_page(
    request: Request,
    since: DayQ = None,
    until: DayQ = None,
    by: ByQ = None,
    token: TokenQ = None,
) -> HTMLResponse:
    service = service_of(request)
    first, last = _days(since, until)
    key = ledger_view.group_key(by)
    query = urlencode(
        {"since": first.isoformat(), "until": last.isoformat(), "by": key}
        | ({"token": token} if token else {})
    )
    tokens = [t for t in await _tokens(service, request) if t.revoked_at is None]
    return render(
        request,
        "costs.html",
        {
            "since": first.isoformat(),
            "until": last.isoformat(),
            "by": key,
            "keys": GROUP_KEYS,
            "token": token or "",
            "tokens": tokens,
            "is_admin": _is_admin(request),
            "costs_src": f"/ui/panels/costs?{query}",
            "currency": CURRENCY,
        },
        active="costs",
    )


@router.get("/panels/costs", response_class=HTMLResponse)
async def costs_panel(
    request: Request,
    since: DayQ = None,
    until: DayQ = None,
    by: ByQ = None,
    token: TokenQ = None,
) -> HTMLResponse:
    service = service_of(request)
    first, last = _days(since, until)
    key = ledger_view.group_key(by)
    grouped = await service.ledger.report(
        since=first, until=last, group_by=[key], token_id=token or None
    )
    daily = (
        grouped
        if key == "day"
        else await service.ledger.report(
            since=first, until=last, group_by=["day"], token_id=token or None
        )
    )
    names = await _names(service, request)
    rows = sorted(grouped.rows, key=lambda r: (-r.cost, ledger_view.row_label(r, key, names)))
    if key == "day":
        rows = sorted(grouped.rows, key=lambda r: r.day or first, reverse=True)
    response = render(
        request,
        "panels/costs.html",
        {
            "report": grouped,
            "rows": rows,
            "key": key,
            "label": lambda r: ledger_view.row_label(r, key, names),
            "bars": ledger_view.daily_bars(daily.rows, first, last),
            "currency": CURRENCY,
            "token": token or "",
            "token_name": names.get(token or ""),
        },
    )
    response.headers.update(NO_STORE)
    return response


@router.get("/panels/budgets", response_class=HTMLResponse)
async def budgets_panel(request: Request) -> HTMLResponse:
    service = service_of(request)
    statuses = await service.ledger.budgets()
    response = render(
        request,
        "panels/budgets.html",
        {
            "statuses": statuses,
            "fill": ledger_view.budget_fill,
            "names": await _names(service, request),
            "currency": CURRENCY,
            "is_admin": _is_admin(request),
        },
    )
    response.headers.update(NO_STORE)
    return response
