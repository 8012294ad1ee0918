"""``orchestrator tilda import|sites|pages|page|asset``: import a Tilda website export
in-process (with a progress bar) and look at what was imported."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

if TYPE_CHECKING:  # imported by the commands: `orchestrator --help` stays light
    from orchestrator.domain.tilda import ImportRun
    from orchestrator.runtime import Runtime

tilda_app = typer.Typer(help="Import Tilda website exports; browse sites and pages.")


@tilda_app.command("import")
def tilda_import(
    ctx: typer.Context,
    path: Annotated[
        Path | None,
        typer.Argument(help="Export folder or zip (default: TILDA_DUMP_PATH)."),
    ] = None,
    api: Annotated[
        bool,
        typer.Option(
            "--api",
            help="Fetch the project through the Tilda API (TILDA_PUBLIC_KEY, "
            "TILDA_SECRET_KEY, TILDA_PROJECT_ID) instead of reading an export.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run as JSON.")] = False,
) -> None:
    """Import an export (pages, block texts, images). Running it again on the same
    export changes nothing; a newer export reports added, changed and removed pages."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from orchestrator import cli
    from orchestrator.domain.tilda import ImportStatus

    settings = cli._settings(ctx)
    source: Path | None = None
    if not api:
        source = path.expanduser().resolve() if path is not None else settings.tilda_dump_path
        if source is None:
            cli.err.print("[bold red]Give a PATH, or set TILDA_DUMP_PATH.[/]")
            raise typer.Exit(2)

    async def go(rt: Runtime) -> ImportRun:
        columns = (
            TextColumn("{task.description:<8}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=cli.err, transient=True) as bar:
            task = bar.add_task("reading", total=None)

            def on_progress(stage: str, done: int, total: int) -> None:
                bar.update(task, description=stage, completed=done, total=total or None)

            if api:
                from orchestrator.tilda.api_client import import_from_api

                return await import_from_api(rt.service.tilda, on_progress=on_progress)
            assert source is not None
            return await rt.service.tilda.import_path(source, on_progress=on_progress)

    run = cli._with_runtime(settings, go)
    if as_json:
        typer.echo(run.model_dump_json())
    else:
        _print_run(run)
    raise typer.Exit(0 if run.status == ImportStatus.SUCCEEDED else 1)


def _print_run(run: ImportRun) -> None:
    from orchestrator import cli
    from orchestrator.domain.tilda import ImportStatus

    if run.status != ImportStatus.SUCCEEDED or run.report is None:
        cli.err.print(f"[bold red]Import failed ({run.error_code}):[/] {run.error_message}")
        return
    r = run.report
    table = Table("pages", "added", "changed", "removed", "unchanged", "images", "new files")
    table.add_row(
        str(r.pages_total),
        str(len(r.added)),
        str(len(r.changed)),
        str(len(r.removed)),
        str(r.unchanged),
        str(r.assets_total),
        str(r.assets_added),
    )
    cli.out.print(table)
    if r.no_change:
        cli.out.print("Nothing changed since the last import.")
    for name in r.missing_images:
        cli.err.print(f"[yellow]missing image:[/] {name}")
    for w in r.warnings:
        cli.err.print(f"[yellow]warning:[/] {w}")
    cli.err.print(f"[dim]site {r.site_id}, import {run.id}[/]")


@tilda_app.command("sites")
def tilda_sites(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Imported sites."""
    from orchestrator import cli

    settings = cli._settings(ctx)
    sites = cli._with_runtime(settings, lambda rt: rt.service.tilda.list_sites())
    if as_json:
        typer.echo("[" + ",".join(s.model_dump_json() for s in sites) + "]")
        return
    table = Table("id", "name", "project", "pages", "images", "imported")
    for s in sites:
        table.add_row(
            s.id,
            s.name,
            s.tilda_project_id or "",
            str(s.page_count),
            str(s.asset_count),
            s.imported_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    cli.out.print(table)


@tilda_app.command("pages")
def tilda_pages(
    ctx: typer.Context,
    site: Annotated[str | None, typer.Option(help="A site id.")] = None,
    query: Annotated[str | None, typer.Option("--query", "-q", help="Text to find.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Imported pages."""
    from orchestrator import cli

    settings = cli._settings(ctx)
    page = cli._with_runtime(
        settings,
        lambda rt: rt.service.tilda.list_pages(
            site_id=site, text=query, limit=limit, offset=offset
        ),
    )
    if as_json:
        typer.echo(page.model_dump_json())
        return
    table = Table("id", "tilda id", "alias", "title", "role", "blocks", "images", "indexed")
    for p in page.items:
        table.add_row(
            p.id,
            p.tilda_page_id,
            ("/" if p.is_home else "") + (p.alias or ""),
            p.title,
            p.role,
            str(p.block_count),
            str(p.image_count),
            "yes" if p.indexable else "no",
        )
    cli.out.print(table)
    cli.err.print(f"[dim]{len(page.items)} of {page.total}[/]")


@tilda_app.command("page")
def tilda_page(ctx: typer.Context, page_id: str) -> None:
    """One imported page (blocks, texts, images) as JSON."""
    from orchestrator import cli

    settings = cli._settings(ctx)
    detail = cli._with_runtime(settings, lambda rt: rt.service.get_site_page(page_id))
    cli.out.print_json(detail.model_dump_json())


@tilda_app.command("asset")
def tilda_asset(ctx: typer.Context, asset_id: str) -> None:
    """Print the file path of an imported image (use asset:<id> as an image input)."""
    from orchestrator import cli

    settings = cli._settings(ctx)
    path = cli._with_runtime(settings, lambda rt: rt.service.asset_path(asset_id))
    typer.echo(str(path))
