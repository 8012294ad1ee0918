"""``orchestrator storage migrate``: copy the local output folder and job manifests
into the S3 output store that ``OUTPUT_STORE_URL`` names, idempotently."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from typing import Annotated

import typer

storage_app = typer.Typer(
    help="The output store: migrate a local store to S3.", no_args_is_help=True
)


@storage_app.command("migrate")
def storage_migrate(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be copied; copy nothing.")
    ] = False,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Uploads at once.")] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Copy OUTPUT_DIR (finished outputs; not partial downloads), JOBS_DIR (job
    manifests), DATA_DIR/inputs (uploaded input images) and DATA_DIR/assets (imported
    Tilda assets) to the bucket of OUTPUT_STORE_URL (s3://bucket/prefix: prefix/outputs/,
    prefix/jobs/, prefix/inputs/, prefix/assets/). Objects already there with the same
    size are skipped, so it can be run again at any time, e.g. once more after the last
    local job finished.
    Exit code 1 when a file could not be copied."""
    from orchestrator import cli
    from orchestrator.object_store import LocalObjectStore, S3ObjectStore, copy_store
    from orchestrator.storage import PARTIAL_DIR
    from orchestrator.tilda.importer import ASSETS_DIR, STAGING_DIR

    settings = cli._settings(ctx)
    s3 = settings.output_store_s3
    if s3 is None:
        cli.err.print(
            "[bold red]OUTPUT_STORE_URL is not an s3:// URL:[/] set OUTPUT_STORE_URL="
            "s3://bucket/prefix (and AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY) to say where to copy the local store."
        )
        raise typer.Exit(2)
    creds = settings.s3_credentials
    pairs = {
        "outputs": (
            LocalObjectStore(settings.output_path, hidden=(PARTIAL_DIR,)),
            S3ObjectStore(s3.child("outputs"), creds),
        ),
        "manifests": (
            LocalObjectStore(settings.jobs_path),
            S3ObjectStore(s3.child("jobs"), creds),
        ),
        "inputs": (
            LocalObjectStore(settings.data_path / "inputs"),
            S3ObjectStore(s3.child("inputs"), creds),
        ),
        "assets": (
            LocalObjectStore(settings.data_path / ASSETS_DIR, hidden=(STAGING_DIR,)),
            S3ObjectStore(s3.child("assets"), creds),
        ),
    }

    async def go() -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {}
        for name, (source, target) in pairs.items():
            report = await copy_store(source, target, dry_run=dry_run, concurrency=concurrency)
            out[name] = asdict(report)
        return out

    try:
        reports = asyncio.run(go())
    except OSError as exc:
        cli.err.print(f"[bold red]the output store is unavailable:[/] {exc}")
        raise typer.Exit(1) from None
    failed = 0
    for name, r in reports.items():
        errors = r.pop("errors") or []
        assert isinstance(errors, list)
        failed += len(errors)
        for line in errors:
            cli.err.print(f"[red]not copied[/] {name}/{line}")
    if as_json:
        typer.echo(json.dumps(reports))
    else:
        verb = "would copy" if dry_run else "copied"
        for name, r in reports.items():
            typer.echo(
                f"{name}: {r['copied']} {'to copy' if dry_run else 'copied'}, "
                f"{r['skipped']} skipped, {r['failed']} failed ({r['bytes']} bytes {verb})"
            )
        typer.echo(f"to {s3}")
    if failed:
        raise typer.Exit(1)
