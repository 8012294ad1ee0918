"""How the Costs page shows the ledger: the date range it asks for, a bar per day,
how full a budget is, and a row's label. Pure functions (table-tested)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from orchestrator import errors
from orchestrator.domain.costs import GROUP_KEYS, BudgetStatus, CostRow, GroupKey

DEFAULT_DAYS = 30
NONE = "\u2013"  # an en dash: no value


def parse_day(value: str | None, field: str) -> date | None:
    """``YYYY-MM-DD`` (empty: None); anything else is a 422 naming the field."""
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        raise errors.InvalidRequest(
            f"{field}: a day looks like 2026-01-31, not {value!r}", field=field
        ) from None


def date_range(since: date | None, until: date | None, today: date) -> tuple[date, date]:
    """The range shown: ``until`` defaults to today, ``since`` to 29 days before it."""
    until = until or today
    return since or until - timedelta(days=DEFAULT_DAYS - 1), until


def group_key(value: str | None) -> GroupKey:
    """The grouping asked for (``day`` when absent or unknown)."""
    for key in GROUP_KEYS:
        if value == key:
            return key
    return "day"


@dataclass(frozen=True)
class DayBar:
    day: date
    cost: float
    jobs: int
    pct: int  # height relative to the busiest day, 0..100


def daily_bars(rows: Sequence[CostRow], since: date, until: date) -> list[DayBar]:
    """One bar per day of ``since``..``until`` (days without jobs at 0), scaled to the
    day that cost most. A day with a cost above 0 gets at least 1 %."""
    by_day: dict[date, tuple[float, int]] = {}
    for r in rows:
        if r.day is not None:
            cost, jobs = by_day.get(r.day, (0.0, 0))
            by_day[r.day] = (cost + r.cost, jobs + r.jobs)
    days = [since + timedelta(days=i) for i in range(max((until - since).days + 1, 0))]
    top = max((by_day.get(d, (0.0, 0))[0] for d in days), default=0.0)
    bars: list[DayBar] = []
    for d in days:
        cost, jobs = by_day.get(d, (0.0, 0))
        pct = 0 if top <= 0 or cost <= 0 else max(1, round(cost * 100 / top))
        bars.append(DayBar(d, round(cost, 6), jobs, pct))
    return bars


def budget_fill(status: BudgetStatus) -> tuple[int, int]:
    """(spent, reserved) as percentages of the daily limit, together at most 100;
    (0, 0) without a limit. A limit of 0 with any spend shows full."""
    limit = status.daily_limit
    if limit is None:
        return 0, 0
    if limit <= 0:
        return (100, 0) if status.spent > 0 else ((0, 100) if status.reserved > 0 else (0, 0))
    spent = min(round(status.spent * 100 / limit), 100)
    reserved = min(round(status.reserved * 100 / limit), 100 - spent)
    return max(spent, 0), max(reserved, 0)


def row_label(row: CostRow, key: GroupKey, names: Mapping[str, str]) -> str:
    """What a row of a grouped report is about, with the token's name when known."""
    if key == "day":
        return row.day.isoformat() if row.day else NONE
    if key == "backend":
        return row.backend or NONE
    if key == "model":
        return row.model or NONE
    if row.token_id is None:
        return "no token (local or auth disabled)"
    name = names.get(row.token_id)
    return f"{name} ({row.token_id})" if name else row.token_id
