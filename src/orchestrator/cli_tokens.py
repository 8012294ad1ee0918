"""``orchestrator token create|list|revoke``: API tokens, managed in-process as the
machine's owner (the local admin principal)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from orchestrator.domain.auth import Scope

if TYPE_CHECKING:  # imported by the commands: `orchestrator --help` stays light
    from orchestrator.auth_service import NewToken, TokenInfo

token_app = typer.Typer(help="API tokens: create (shown once), list, revoke.", no_args_is_help=True)


@token_app.command("create")
def token_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="What the token is for (1-64 characters).")],
    scope: Annotated[
        Scope, typer.Option(help="read: see; generate: also submit and cancel its own jobs; admin.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create a token and print it. It is shown only now: only its hash is stored."""
    from orchestrator import cli

    settings = cli._settings(ctx)
    made: NewToken = cli._with_runtime(settings, lambda rt: rt.service.tokens.create(name, scope))
    if as_json:
        typer.echo(made.model_dump_json())
    else:
        typer.echo(made.secret)
    t = made.token
    cli.err.print(
        f"[green]created[/] token {t.id} ({t.name}, {t.scope.value}). "
        "It is shown only once: store it now. Use it as `Authorization: Bearer <token>` "
        "or log in to the web UI with it."
    )


@token_app.command("list")
def token_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every token (revoked ones too), with its display prefix, never the secret."""
    from orchestrator import cli

    settings = cli._settings(ctx)
    tokens: list[TokenInfo] = cli._with_runtime(settings, lambda rt: rt.service.tokens.all())
    if as_json:
        typer.echo(json.dumps([t.model_dump(mode="json") for t in tokens]))
        return
    table = Table("id", "name", "scope", "prefix", "created", "last used", "revoked")
    for t in tokens:
        table.add_row(
            t.id,
            t.name,
            t.scope.value,
            t.prefix + "…",
            t.created_at.strftime("%Y-%m-%d %H:%M"),
            t.last_used_at.strftime("%Y-%m-%d %H:%M") if t.last_used_at else "",
            t.revoked_at.strftime("%Y-%m-%d %H:%M") if t.revoked_at else "",
        )
    cli.out.print(table)
    if not tokens:
        cli.err.print("[dim]no tokens yet: `orchestrator token create --name N --scope admin`[/]")


@token_app.command("revoke")
def token_revoke(
    ctx: typer.Context, token_id: Annotated[str, typer.Argument(help="The token's id.")]
) -> None:
    """Revoke a token: its web UI sessions end; a running server refuses it within
    TOKEN_CACHE_TTL_S (5 s), the time it may keep a verified token."""
    from orchestrator import cli

    settings = cli._settings(ctx)
    t: TokenInfo = cli._with_runtime(settings, lambda rt: rt.service.tokens.revoke(token_id))
    cli.out.print(f"{t.id} ({t.name}): revoked")
