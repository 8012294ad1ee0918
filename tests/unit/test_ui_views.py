"""The Sites and Costs pages' pure decisions: pagination, an import's outcome in
words, progress, the cost range and grouping, bars per day, budget fill, labels."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from orchestrator import errors
from orchestrator.domain.costs import BudgetStatus, CostRow, GroupKey
from orchestrator.domain.tilda import (
    ImportProgress,
    ImportReport,
    ImportRun,
    ImportStatus,
    SiteBlock,
    SiteTextField,
)
from orchestrator.ui import ledger_view, tilda_view
from orchestrator.ui.tilda_view import Paging

D = date(2026, 3, 10)


@pytest.mark.parametrize(
    ("total", "limit", "offset", "expected"),
    [
        (0, 25, 0, Paging(0, 0, 0, None, None)),
        (7, 25, 0, Paging(1, 7, 7, None, None)),
        (25, 25, 0, Paging(1, 25, 25, None, None)),
        (26, 25, 0, Paging(1, 25, 26, None, 25)),
        (26, 25, 25, Paging(26, 26, 26, 0, None)),
        (80, 25, 30, Paging(31, 55, 80, 5, 55)),
        (10, 25, 40, Paging(0, 40, 10, 15, None)),  # past the end: nothing shown
        (10, 0, -3, Paging(1, 1, 10, None, 1)),  # nonsense clamped
    ],
)
def test_paging(total: int, limit: int, offset: int, expected: Paging) -> None:
    assert tilda_view.paging(total, limit, offset) == expected


@pytest.mark.parametrize(
    ("report", "text"),
    [
        (
            ImportReport(site_id="s", pages_total=7, added=list("abcdefg"), assets_added=9),
            "7 pages: 7 added, 0 changed, 0 removed, 0 unchanged; 9 new images",
        ),
        (ImportReport(site_id="s", pages_total=7, unchanged=7), "7 pages: nothing changed"),
        (
            ImportReport(
                site_id="s",
                pages_total=7,
                added=["x"],
                changed=["y"],
                removed=["z"],
                unchanged=5,
                assets_added=1,
                layout_changed=True,
            ),
            "7 pages: 1 added, 1 changed, 1 removed, 5 unchanged; 1 new image, "
            "header or footer changed",
        ),
    ],
)
def test_report_summary(report: ImportReport, text: str) -> None:
    assert tilda_view.report_summary(report) == text


def _run(status: ImportStatus, **kw: object) -> ImportRun:
    return ImportRun.model_validate(
        {"id": "r", "status": status, "source": "x.zip", "created_at": datetime.now(UTC), **kw}
    )


@pytest.mark.parametrize(
    ("run", "text"),
    [
        (_run(ImportStatus.QUEUED), "queued"),
        (
            _run(ImportStatus.RUNNING, progress=ImportProgress(stage="parsing", done=3, total=7)),
            "parsing 3/7",
        ),
        (
            _run(ImportStatus.FAILED, error_code="archive_unsafe", error_message="zip slip"),
            "archive_unsafe: zip slip",
        ),
        (_run(ImportStatus.FAILED), "failed: no reason given"),
        (
            _run(ImportStatus.SUCCEEDED, report=ImportReport(site_id="s", pages_total=1)),
            "1 pages: nothing changed",
        ),
    ],
)
def test_run_summary(run: ImportRun, text: str) -> None:
    assert tilda_view.run_summary(run) == text


@pytest.mark.parametrize(
    ("done", "total", "status", "pct"),
    [
        (0, 0, ImportStatus.RUNNING, 0),
        (3, 7, ImportStatus.RUNNING, 43),
        (9, 7, ImportStatus.RUNNING, 100),
        (0, 0, ImportStatus.SUCCEEDED, 100),
        (2, 7, ImportStatus.FAILED, 29),
    ],
)
def test_progress_pct(done: int, total: int, status: ImportStatus, pct: int) -> None:
    assert tilda_view.progress_pct(done, total, status) == pct


@pytest.mark.parametrize(
    ("block", "shown"),
    [
        (SiteBlock(record_id="1", position=0), False),
        (SiteBlock(record_id="1", position=0, image_asset_ids=["ab"]), True),
        (
            SiteBlock(
                record_id="1", position=0, texts=[SiteTextField(field="t", text="a", html="a")]
            ),
            True,
        ),
    ],
)
def test_has_content(block: SiteBlock, shown: bool) -> None:
    assert tilda_view.has_content(block) is shown


# --- costs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("2026-03-10", D)],
)
def test_parse_day(value: str | None, expected: date | None) -> None:
    assert ledger_view.parse_day(value, "since") == expected


@pytest.mark.parametrize("value", ["yesterday", "0", "2026-13-01", "10.03.2026"])
def test_parse_day_refuses(value: str) -> None:
    with pytest.raises(errors.InvalidRequest, match="since"):
        ledger_view.parse_day(value, "since")


@pytest.mark.parametrize(
    ("since", "until", "expected"),
    [
        (None, None, (date(2026, 2, 9), D)),
        (date(2026, 3, 1), None, (date(2026, 3, 1), D)),
        (None, date(2026, 1, 30), (date(2026, 1, 1), date(2026, 1, 30))),
        (date(2026, 1, 1), date(2026, 1, 2), (date(2026, 1, 1), date(2026, 1, 2))),
    ],
)
def test_date_range(since: date | None, until: date | None, expected: tuple[date, date]) -> None:
    assert ledger_view.date_range(since, until, D) == expected


@pytest.mark.parametrize(
    ("value", "key"),
    [(None, "day"), ("", "day"), ("backend", "backend"), ("token", "token"), ("x", "day")],
)
def test_group_key(value: str | None, key: GroupKey) -> None:
    assert ledger_view.group_key(value) == key


def _row(day: date | None, cost: float, jobs: int = 1, **kw: str | None) -> CostRow:
    return CostRow(day=day, cost=cost, jobs=jobs, gpu_seconds=0.0, **kw)  # type: ignore[arg-type]


def test_daily_bars_fill_gaps_and_scale_to_the_busiest_day() -> None:
    rows = [
        _row(date(2026, 3, 8), 10.0, 2),
        _row(date(2026, 3, 10), 2.5),
        _row(date(2026, 3, 10), 2.5),  # rows of one day (another grouping) add up
        _row(date(2026, 3, 9), 0.01),
    ]
    bars = ledger_view.daily_bars(rows, date(2026, 3, 7), D)
    assert [(b.day.day, b.cost, b.jobs, b.pct) for b in bars] == [
        (7, 0.0, 0, 0),
        (8, 10.0, 2, 100),
        (9, 0.01, 1, 1),  # tiny but above 0: still visible
        (10, 5.0, 2, 50),
    ]


@pytest.mark.parametrize(
    ("rows", "pcts"),
    [
        ([], [0, 0]),
        ([_row(D, 0.0, 3)], [0, 0]),  # free jobs (ComfyUI at rate 0): no bar, no division
        ([_row(None, 5.0)], [0, 0]),  # rows without a day are not placed
    ],
)
def test_daily_bars_without_costs(rows: list[CostRow], pcts: list[int]) -> None:
    assert [b.pct for b in ledger_view.daily_bars(rows, date(2026, 3, 9), D)] == pcts


def _budget(limit: float | None, spent: float, reserved: float) -> BudgetStatus:
    return BudgetStatus(
        scope="token",
        token_id="t",
        daily_limit=limit,
        day=D,
        spent=spent,
        reserved=reserved,
        remaining=None,
    )


@pytest.mark.parametrize(
    ("limit", "spent", "reserved", "fill"),
    [
        (None, 5.0, 0.0, (0, 0)),
        (100.0, 0.0, 0.0, (0, 0)),
        (100.0, 25.0, 10.0, (25, 10)),
        (100.0, 90.0, 30.0, (90, 10)),  # together at most 100
        (100.0, 150.0, 5.0, (100, 0)),
        (0.0, 0.0, 0.0, (0, 0)),
        (0.0, 1.0, 0.0, (100, 0)),
        (0.0, 0.0, 2.0, (0, 100)),
    ],
)
def test_budget_fill(
    limit: float | None, spent: float, reserved: float, fill: tuple[int, int]
) -> None:
    assert ledger_view.budget_fill(_budget(limit, spent, reserved)) == fill


@pytest.mark.parametrize(
    ("row", "key", "label"),
    [
        (_row(D, 1.0), "day", "2026-03-10"),
        (_row(None, 1.0, backend="flux"), "backend", "flux"),
        (_row(None, 1.0), "backend", "\u2013"),
        (_row(None, 1.0, model="flux-dev"), "model", "flux-dev"),
        (_row(None, 1.0, token_id="abc"), "token", "ci-bot (abc)"),
        (_row(None, 1.0, token_id="zzz"), "token", "zzz"),
        (_row(None, 1.0), "token", "no token (local or auth disabled)"),
    ],
)
def test_row_label(row: CostRow, key: GroupKey, label: str) -> None:
    assert ledger_view.row_label(row, key, {"abc": "ci-bot"}) == label
