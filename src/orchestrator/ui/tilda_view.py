"""How the Sites pages show imported content: pagination, an import's outcome in
words, which blocks have anything to show. Pure functions (table-tested)."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.domain.tilda import ImportReport, ImportRun, ImportStatus, SiteBlock

PAGE_SIZE = 25


@dataclass(frozen=True)
class Paging:
    first: int  # 1-based number of the first item shown (0 when none)
    last: int
    total: int
    prev_offset: int | None  # None: no previous page
    next_offset: int | None


def paging(total: int, limit: int, offset: int) -> Paging:
    """Where a list of ``total`` items stands when ``limit`` are shown from ``offset``."""
    limit = max(limit, 1)
    offset = max(offset, 0)
    shown = max(min(total - offset, limit), 0)
    return Paging(
        first=offset + 1 if shown else 0,
        last=offset + shown,
        total=total,
        prev_offset=max(offset - limit, 0) if offset > 0 else None,
        next_offset=offset + limit if offset + limit < total else None,
    )


def report_summary(report: ImportReport) -> str:
    """``"7 pages: 2 added, 1 changed, 0 removed, 4 unchanged; 3 new images"``."""
    if report.no_change:
        return f"{report.pages_total} pages: nothing changed"
    text = (
        f"{report.pages_total} pages: {len(report.added)} added, {len(report.changed)} "
        f"changed, {len(report.removed)} removed, {report.unchanged} unchanged"
    )
    extra = []
    if report.assets_added:
        extra.append(f"{report.assets_added} new image{'s' if report.assets_added != 1 else ''}")
    if report.layout_changed:
        extra.append("header or footer changed")
    return text + ("; " + ", ".join(extra) if extra else "")


def run_summary(run: ImportRun) -> str:
    """One line for an import run, whatever its state."""
    if run.status == ImportStatus.SUCCEEDED and run.report is not None:
        return report_summary(run.report)
    if run.status == ImportStatus.FAILED:
        return f"{run.error_code or 'failed'}: {run.error_message or 'no reason given'}"
    p = run.progress
    return f"{p.stage} {p.done}/{p.total}" if p.total else p.stage


def progress_pct(done: int, total: int, status: ImportStatus) -> int:
    """An import's progress bar, 0..100 (100 once it ended well)."""
    if status == ImportStatus.SUCCEEDED:
        return 100
    if total <= 0:
        return 0
    return min(max(round(done * 100 / total), 0), 100)


def has_content(block: SiteBlock) -> bool:
    """Whether a block has texts, links or images to show (else only its header line)."""
    return bool(block.texts or block.links or block.image_asset_ids)
