"""The ``orchestrator`` command. Every command calls the service layer in-process.

Start-up matters here (``--help`` and one-shot commands should answer at once): this
module imports only what typer needs to build the commands (their option types); the
runtime, the service layer, the web app, uvicorn and the domain models are imported by
the command that uses them. ``tests/integration/test_startup_imports.py`` keeps it so.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from orchestrator.cli_storage import storage_app
from orchestrator.cli_tilda import tilda_app
from orchestrator.cli_tokens import token_app
from orchestrator.domain.jobs import JobStatus

if TYPE_CHECKING:
    import uvicorn

    from orchestrator.config import Settings
    from orchestrator.domain.jobs import Job
    from orchestrator.domain.params import AnyRequest
    from orchestrator.runtime import Runtime

app = typer.Typer(
    help="Durable image and video generation jobs on FLUX and ComfyUI.",
    no_args_is_help=True,
    add_completion=False,
)
generate_app = typer.Typer(help="Queue a generation job.", no_args_is_help=True)
jobs_app = typer.Typer(help="List, show, cancel and retry jobs.", no_args_is_help=True)
config_app = typer.Typer(help="Show and check the configuration.", no_args_is_help=True)
budget_app = typer.Typer(help="Daily budgets (credits per UTC day).", no_args_is_help=True)
app.add_typer(generate_app, name="generate")
app.add_typer(jobs_app, name="jobs")
app.add_typer(config_app, name="config")
app.add_typer(token_app, name="token")
app.add_typer(budget_app, name="budget")
app.add_typer(tilda_app, name="tilda")
app.add_typer(storage_app, name="storage")

out = Console()
err = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")


class Opts:
    def __init__(self, config: Path | None, overrides: dict[str, object]) -> None:
        self.config = config
        self.overrides = overrides


@app.callback()
def _global(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(help="Config file (default: ORCHESTRATOR_CONFIG, else the user config dir)."),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Override DATA_DIR.")] = None,
    database_url: Annotated[str | None, typer.Option(help="Override DATABASE_URL.")] = None,
    log_level: Annotated[str | None, typer.Option(help="Override LOG_LEVEL.")] = None,
) -> None:
    overrides: dict[str, object] = {}
    if data_dir is not None:
        # A path typed on the command line is relative to where it was typed.
        overrides["data_dir"] = data_dir.expanduser().resolve()
    if database_url is not None:
        overrides["database_url"] = database_url
    if log_level is not None:
        overrides["log_level"] = log_level
    ctx.obj = Opts(config, overrides)


def _settings(ctx: typer.Context, *, verbose: bool = False, **more: object) -> Settings:
    from orchestrator import errors, logs
    from orchestrator.config import load_settings

    opts: Opts = ctx.obj
    try:
        settings = load_settings(opts.config, {**opts.overrides, **more})
    except errors.ConfigError as exc:
        err.print("[bold red]Invalid configuration:[/]")
        for p in exc.problems:
            err.print(f"  • {p}")
        raise typer.Exit(2) from None
    # One-shot commands keep the terminal for their own output: INFO lines only
    # from `serve` (or when LOG_LEVEL=DEBUG).
    level = settings.log_level
    if not verbose and level == "INFO":
        level = "WARNING"
    logs.configure(level, settings.log_format, settings.secret_values())
    return settings


def _run(coro: Awaitable[T]) -> T:
    import asyncio

    from orchestrator import errors

    async def main() -> T:
        return await coro

    try:
        return asyncio.run(main())
    except errors.OrchestratorError as exc:
        err.print(f"[bold red]{exc.title}:[/] {exc.detail}")
        raise typer.Exit(1) from None


def _with_runtime(settings: Settings, fn: Callable[[Runtime], Awaitable[T]]) -> T:
    from orchestrator.runtime import open_runtime

    async def go() -> T:
        async with open_runtime(settings, run_worker=False) as rt:
            return await fn(rt)

    return _run(go())


# --- serve ---------------------------------------------------------------------------


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Bind address (ORCHESTRATOR_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (ORCHESTRATOR_PORT).")] = None,
    worker: Annotated[bool, typer.Option(help="Run the job worker in this process.")] = True,
    auth: Annotated[
        bool,
        typer.Option(
            "--auth/--no-auth",
            help="--no-auth: serve without tokens (AUTH_DISABLED; loopback binds only).",
        ),
    ] = True,
) -> None:
    """Serve the HTTP API, web UI and MCP (and run the worker)."""
    import asyncio

    import uvicorn

    from orchestrator import errors, logs
    from orchestrator.api.app import create_app

    settings = _settings(
        ctx, verbose=True, host=host, port=port, auth_disabled=None if auth else True
    )
    application = create_app(
        settings, run_worker=worker and settings.worker_enabled, freeze_gc=True
    )
    config = uvicorn.Config(
        application,
        host=settings.host,
        port=settings.port,
        log_config=None,
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 5,
    )
    logs.get(__name__).info("serving", url=f"http://{settings.host}:{settings.port}")
    server = graceful_server(config)
    try:
        ok = asyncio.run(_serve(server))
    finally:  # uvicorn exits (3) when start-up fails: say why, last
        failed = getattr(application.state, "startup_error", None)
        if isinstance(failed, errors.OrchestratorError):
            err.print(f"[bold red]{failed.title}:[/] {failed.detail}")
    if not ok:
        raise typer.Exit(1)


def graceful_server(config: uvicorn.Config) -> uvicorn.Server:
    """A uvicorn server on which SIGTERM and SIGINT start a graceful shutdown; the
    process then exits 0 (uvicorn's default re-raises the signal after shutting down).
    Defined here, not at import, so that other commands do not import uvicorn."""
    import contextlib
    import signal
    from collections.abc import Iterator

    import uvicorn

    class GracefulServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            previous = {
                sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)
            }
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return GracefulServer(config)


async def _serve(server: uvicorn.Server) -> bool:
    await server.serve()
    return bool(server.started)


# --- worker ----------------------------------------------------------------------------


@app.command("worker")
def worker_command(
    ctx: typer.Context,
    backends: Annotated[
        str | None,
        typer.Option(
            "--backends",
            help="Comma-separated backends whose jobs this worker claims, e.g. flux,sdxl "
            "(default: every enabled backend).",
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, max=10000, help="Jobs run at once (WORKER_CONCURRENCY)."),
    ] = None,
) -> None:
    """Run jobs only, no HTTP server: claim queued jobs from the database and run them.

    Start any number of these next to `serve --no-worker` (one database, each worker
    with its own DATA_DIR if you like). SIGTERM or Ctrl-C stops claiming; jobs in
    flight finish or are handed back within SHUTDOWN_GRACE_S, then it exits 0."""
    from orchestrator.domain.params import BACKENDS

    names: list[str] | None = None
    if backends is not None:
        names = list(dict.fromkeys(n.strip() for n in backends.split(",") if n.strip()))
        unknown = [n for n in names if n not in BACKENDS]
        if unknown or not names:
            err.print(
                f"[bold red]Unknown backend{'s' if len(unknown) > 1 else ''}:[/] "
                f"{', '.join(unknown) or '(none given)'}; "
                f"--backends takes a comma-separated list of {', '.join(BACKENDS)}"
            )
            raise typer.Exit(2)
    more: dict[str, object] = {}
    if concurrency is not None:
        more["worker_concurrency"] = concurrency
    settings = _settings(ctx, verbose=True, **more)
    raise typer.Exit(_run(_work(settings, names)))


async def _work(settings: Settings, names: list[str] | None) -> int:
    import asyncio
    import signal

    from orchestrator import logs
    from orchestrator.engine.worker import WorkerOptions
    from orchestrator.runtime import open_runtime

    log = logs.get(__name__)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        options = WorkerOptions.from_settings(settings, kind="worker", backends=names)
        async with open_runtime(settings, run_worker=True, worker_options=options):
            await stop.wait()
            log.info("stopping the worker", grace_s=settings.shutdown_grace_s)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0


# --- ignite ----------------------------------------------------------------------------


@app.command()
def ignite(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check the database, folders, FLUX key and ComfyUI; exit 1 if an essential check fails.

    Configured [[comfy_processes]] are started for the checks and stopped afterwards
    (`serve` is what keeps them running)."""
    from orchestrator.ignite import IgniteReport
    from orchestrator.runtime import open_runtime

    settings = _settings(ctx)

    async def go() -> IgniteReport:
        async with open_runtime(
            settings, run_worker=False, start_processes=True, wait_processes=True
        ) as rt:
            return await rt.service.ignite()

    result = _run(go())
    if as_json:
        typer.echo(result.model_dump_json())
    else:
        colour = {"ok": "green", "warn": "yellow", "fail": "red"}
        table = Table(title="orchestrator ignite")
        table.add_column("component", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("message", overflow="fold")
        table.add_column("ms", justify="right", no_wrap=True)
        for c in result.checks:
            mark = f"[{colour[c.status]}]{c.status}[/]" + ("" if c.essential else " (optional)")
            ms = "" if c.latency_ms is None else f"{c.latency_ms:.0f}"
            table.add_row(c.component, mark, c.message, ms)
        out.print(table)
        out.print("[green]ready[/]" if result.ok else "[bold red]an essential check failed[/]")
    raise typer.Exit(0 if result.ok else 1)


# --- mcp -------------------------------------------------------------------------------


@app.command("mcp")
def mcp_stdio(ctx: typer.Context) -> None:
    """Serve the MCP server over stdio (for Claude Desktop, Cursor and other clients).

    Uses the same settings and database as `serve`, from any working directory. When
    no `serve` worker is running, this process runs the jobs itself."""
    from orchestrator.mcp_server import run_stdio

    settings = _settings(ctx)  # logs go to stderr: stdout carries the protocol
    _run(run_stdio(settings))


# --- generate --------------------------------------------------------------------------


def _parse_params(pairs: list[str]) -> dict[str, object]:
    params: dict[str, object] = {}
    for pair in pairs:
        if "=" not in pair:
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--param")
        key, raw = pair.split("=", 1)
        try:
            params[key.strip()] = json.loads(raw)
        except ValueError:
            params[key.strip()] = raw
    return params


@generate_app.command("flux")
def generate_flux(
    ctx: typer.Context,
    prompt: Annotated[str, typer.Argument(help="What to generate.")],
    model: Annotated[str, typer.Option(help="BFL model / endpoint.")] = "flux-pro-1.1",
    width: Annotated[int | None, typer.Option(help="Width (multiple of 32).")] = None,
    height: Annotated[int | None, typer.Option(help="Height (multiple of 32).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed.")] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="Any other field, KEY=VALUE.")
    ] = None,
    priority: Annotated[int, typer.Option(help="Higher runs first.")] = 0,
    deadline: Annotated[float | None, typer.Option(help="Deadline, seconds.")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Idempotency key.")] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the result and print its path.")] = False,
) -> None:
    """Queue a FLUX job (and with --wait, run it and print the output path)."""
    from pydantic import TypeAdapter, ValidationError

    from orchestrator.domain.params import FluxParams, FluxRequest

    settings = _settings(ctx)
    raw: dict[str, object] = {"model": model, "prompt": prompt, **_parse_params(param or [])}
    for key, value in (("width", width), ("height", height), ("seed", seed)):
        if value is not None:
            raw[key] = value
    try:
        params = TypeAdapter(FluxParams).validate_python(raw)
        req = FluxRequest(params=params, priority=priority, deadline_s=deadline)
    except ValidationError as exc:
        err.print("[bold red]Invalid parameters:[/]")
        for e in exc.errors():
            loc = ".".join(str(p) for p in e["loc"][1:] if p != "params") or "params"
            err.print(f"  • {loc}: {e['msg']}")
        raise typer.Exit(2) from None
    code = _with_runtime(settings, lambda rt: _generate(rt, req, idempotency_key, wait))
    raise typer.Exit(code)


def _build(
    make: Callable[[], AnyRequest],
) -> AnyRequest:
    from pydantic import ValidationError

    try:
        return make()
    except ValidationError as exc:
        err.print("[bold red]Invalid parameters:[/]")
        for e in exc.errors():
            loc = ".".join(str(p) for p in e["loc"] if p not in ("params",)) or "params"
            err.print(f"  • {loc}: {e['msg']}")
        raise typer.Exit(2) from None


def _comfy_common(
    raw: dict[str, object],
    seed: int | None,
    steps: int | None,
    cfg: float | None,
    width: int | None,
    height: int | None,
) -> dict[str, object]:
    for key, value in (
        ("seed", seed),
        ("steps", steps),
        ("cfg", cfg),
        ("width", width),
        ("height", height),
    ):
        if value is not None:
            raw[key] = value
    return raw


# Options shared by the ComfyUI text-to-image commands.
NegativeOpt = Annotated[str | None, typer.Option("--negative", help="Negative prompt.")]
SeedOpt = Annotated[int | None, typer.Option("--seed")]
StepsOpt = Annotated[int | None, typer.Option("--steps")]
CfgOpt = Annotated[float | None, typer.Option("--cfg")]
WidthOpt = Annotated[int | None, typer.Option("--width")]
HeightOpt = Annotated[int | None, typer.Option("--height")]
ParamOpt = Annotated[list[str] | None, typer.Option("--param", "-p", help="KEY=VALUE")]
PriorityOpt = Annotated[int, typer.Option("--priority", help="Higher runs first.")]
WaitOpt = Annotated[bool, typer.Option("--wait/--no-wait", help="Wait and print the output paths.")]


def _text_to_image(
    ctx: typer.Context,
    make: Callable[[dict[str, object]], AnyRequest],
    base: dict[str, object],
    *,
    negative: str | None,
    seed: int | None,
    steps: int | None,
    cfg: float | None,
    width: int | None,
    height: int | None,
    param: list[str] | None,
    wait: bool,
) -> None:
    settings = _settings(ctx)
    raw = _comfy_common({**base, **_parse_params(param or [])}, seed, steps, cfg, width, height)
    if negative is not None:
        raw["negative_prompt"] = negative
    req = _build(lambda: make(raw))
    raise typer.Exit(_with_runtime(settings, lambda rt: _generate(rt, req, None, wait)))


@generate_app.command("sdxl")
def generate_sdxl(
    ctx: typer.Context,
    prompt: Annotated[str, typer.Argument(help="What to generate.")],
    negative: NegativeOpt = None,
    seed: SeedOpt = None,
    steps: StepsOpt = None,
    cfg: CfgOpt = None,
    width: WidthOpt = None,
    height: HeightOpt = None,
    param: ParamOpt = None,
    priority: PriorityOpt = 0,
    wait: WaitOpt = False,
) -> None:
    """Queue an SDXL text-to-image job on ComfyUI."""
    from orchestrator.domain.params import SdxlParams, SdxlRequest

    _text_to_image(
        ctx,
        lambda raw: SdxlRequest(params=SdxlParams.model_validate(raw), priority=priority),
        {"prompt": prompt},
        negative=negative,
        seed=seed,
        steps=steps,
        cfg=cfg,
        width=width,
        height=height,
        param=param,
        wait=wait,
    )


@generate_app.command("sd35")
def generate_sd35(
    ctx: typer.Context,
    prompt: Annotated[str, typer.Argument(help="What to generate.")],
    variant: Annotated[str, typer.Option(help="large, large-turbo or medium.")] = "large",
    negative: NegativeOpt = None,
    seed: SeedOpt = None,
    steps: StepsOpt = None,
    cfg: CfgOpt = None,
    width: WidthOpt = None,
    height: HeightOpt = None,
    param: ParamOpt = None,
    priority: PriorityOpt = 0,
    wait: WaitOpt = False,
) -> None:
    """Queue an SD3.5 text-to-image job on ComfyUI."""
    from orchestrator.domain.params import Sd35Params, Sd35Request

    _text_to_image(
        ctx,
        lambda raw: Sd35Request(params=Sd35Params.model_validate(raw), priority=priority),
        {"prompt": prompt, "variant": variant},
        negative=negative,
        seed=seed,
        steps=steps,
        cfg=cfg,
        width=width,
        height=height,
        param=param,
        wait=wait,
    )


@generate_app.command("svd")
def generate_svd(
    ctx: typer.Context,
    init_image: Annotated[
        Path, typer.Option(help="The first frame (PNG, JPEG, WEBP), or asset:<id>.")
    ],
    frames: Annotated[int | None, typer.Option(help="Video frames.")] = None,
    fps: Annotated[int | None, typer.Option(help="Conditioning fps.")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    steps: Annotated[int | None, typer.Option()] = None,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="KEY=VALUE")] = None,
    priority: Annotated[int, typer.Option()] = 0,
    wait: Annotated[bool, typer.Option(help="Wait and print the output paths.")] = False,
) -> None:
    """Queue a Stable Video Diffusion image-to-video job on ComfyUI."""
    from orchestrator.domain.params import SvdParams, SvdRequest

    settings = _settings(ctx)
    image = str(init_image)
    if not image.startswith("asset:"):  # else an imported Tilda image
        try:
            image = base64.b64encode(init_image.expanduser().read_bytes()).decode()
        except OSError as exc:
            err.print(f"[bold red]Cannot read {init_image}:[/] {exc.strerror}")
            raise typer.Exit(2) from None
    raw = _comfy_common(
        {"init_image": image, **_parse_params(param or [])},
        seed,
        steps,
        None,
        None,
        None,
    )
    if frames is not None:
        raw["frames"] = frames
    if fps is not None:
        raw["fps"] = fps
    req = _build(lambda: SvdRequest(params=SvdParams.model_validate(raw), priority=priority))
    raise typer.Exit(_with_runtime(settings, lambda rt: _generate(rt, req, None, wait)))


@generate_app.command("comfy")
def generate_comfy(
    ctx: typer.Context,
    workflow: Annotated[Path, typer.Option(help="An API-format workflow JSON file.")],
    priority: Annotated[int, typer.Option()] = 0,
    wait: Annotated[bool, typer.Option(help="Wait and print the output paths.")] = False,
) -> None:
    """Run a raw API-format ComfyUI workflow as a job."""
    from orchestrator.domain.params import ComfyRawParams, ComfyRequest

    settings = _settings(ctx)
    try:
        doc = json.loads(workflow.expanduser().read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        err.print(f"[bold red]Cannot read workflow {workflow}:[/] {exc}")
        raise typer.Exit(2) from None
    if isinstance(doc, dict) and "prompt" in doc and isinstance(doc["prompt"], dict):
        doc = doc["prompt"]
    req = _build(
        lambda: ComfyRequest(
            params=ComfyRawParams.model_validate({"workflow": doc}), priority=priority
        )
    )
    raise typer.Exit(_with_runtime(settings, lambda rt: _generate(rt, req, None, wait)))


@generate_app.command("workflow")
def generate_workflow(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A user workflow in COMFY_WORKFLOWS_DIR.")],
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="A declared parameter, KEY=VALUE.")
    ] = None,
    image: Annotated[
        list[str] | None,
        typer.Option(help="An image parameter from a file, KEY=PATH."),
    ] = None,
    priority: Annotated[int, typer.Option()] = 0,
    wait: Annotated[bool, typer.Option(help="Wait and print the output paths.")] = False,
) -> None:
    """Run one of your own workflows (a job kind per file in COMFY_WORKFLOWS_DIR)."""
    from orchestrator.domain.params import WorkflowParams, WorkflowRequest

    settings = _settings(ctx)
    inputs: dict[str, object] = _parse_params(param or [])
    for pair in image or []:
        key, _, path = pair.partition("=")
        try:
            inputs[key] = base64.b64encode(Path(path).expanduser().read_bytes()).decode()
        except OSError as exc:
            err.print(f"[bold red]Cannot read {path}:[/] {exc.strerror}")
            raise typer.Exit(2) from None
    req = _build(
        lambda: WorkflowRequest(
            params=WorkflowParams.model_validate({"name": name, "inputs": inputs}),
            priority=priority,
        )
    )
    raise typer.Exit(_with_runtime(settings, lambda rt: _generate(rt, req, None, wait)))


@generate_app.command("v0")
def generate_v0(
    ctx: typer.Context,
    prompt: Annotated[str, typer.Argument(help="The page to build.")],
    page: Annotated[
        str | None, typer.Option(help="An imported site page id, as context (texts, images).")
    ] = None,
    image: Annotated[
        list[str] | None, typer.Option(help="An image input: a file, or asset:<id>.")
    ] = None,
    model: Annotated[str, typer.Option(help="v0-1.5-md or v0-1.5-lg.")] = "v0-1.5-md",
    output_format: Annotated[
        str, typer.Option("--format", help="tsx (a page component) or md (the answer).")
    ] = "tsx",
    system: Annotated[str | None, typer.Option(help="Extra system instructions.")] = None,
    priority: Annotated[int, typer.Option()] = 0,
    wait: Annotated[bool, typer.Option(help="Wait and print the output paths.")] = False,
) -> None:
    """Generate page code with v0 from a prompt and, optionally, an imported page."""
    from orchestrator.domain.params import V0Params, V0Request

    settings = _settings(ctx)
    images: list[str] = []
    for value in image or []:
        if value.startswith("asset:"):
            images.append(value)
            continue
        try:
            images.append(base64.b64encode(Path(value).expanduser().read_bytes()).decode())
        except OSError as exc:
            err.print(f"[bold red]Cannot read {value}:[/] {exc.strerror}")
            raise typer.Exit(2) from None
    fields: dict[str, object] = {
        "prompt": prompt,
        "model": model,
        "output_format": output_format,
        "images": images,
    }
    if page is not None:
        fields["site_page_id"] = page
    if system is not None:
        fields["system"] = system
    req = _build(lambda: V0Request(params=V0Params.model_validate(fields), priority=priority))
    raise typer.Exit(_with_runtime(settings, lambda rt: _generate(rt, req, None, wait)))


async def _generate(rt: Runtime, req: AnyRequest, key: str | None, wait: bool) -> int:
    from orchestrator.engine.worker import WorkerOptions
    from orchestrator.runtime import start_worker

    job, _created = await rt.service.submit(req, key)
    if rt.demo:
        err.print("[yellow]DEMO MODE: simulated backend, placeholder output.[/]")
    if not wait:
        typer.echo(job.id)
        if await rt.service.live_workers(job.backend) == 0:
            err.print(
                f"[dim]No worker that runs {job.backend} jobs is running: the job stays "
                "queued until `orchestrator serve` or `orchestrator worker` runs "
                "(or use --wait).[/]"
            )
        return 0
    if await rt.service.live_workers(job.backend) == 0:
        await start_worker(
            rt,
            WorkerOptions(
                concurrency=1,
                lease_s=rt.settings.lease_s,
                poll_interval_s=0.2,
                kind="cli",
                only_ids=[job.id],
            ),
        )
    job = await _follow(rt, job)
    return _report(rt, job)


async def _follow(rt: Runtime, job: Job) -> Job:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task(f"{job.backend}/{job.model} queued", total=1.0)
        async for ev in rt.service.follow_events(job.id):
            if ev.status is not None:
                progress.update(task, description=f"{job.backend}/{job.model} {ev.status.value}")
            if ev.progress is not None:
                progress.update(task, completed=ev.progress)
    return await rt.service.get_job(job.id)


def _report(rt: Runtime, job: Job) -> int:
    if job.status == JobStatus.SUCCEEDED:
        for o in job.outputs:
            typer.echo(rt.service.store.location(o.path))  # a path, or an s3:// URL
        return 0
    if job.error is not None:
        err.print(f"[bold red]{job.status.value}[/] {job.error.code.value}: {job.error.message}")
    else:
        err.print(f"[bold]{job.status.value}[/]")
    return 1


# --- jobs ------------------------------------------------------------------------------


@jobs_app.command("list")
def jobs_list(
    ctx: typer.Context,
    status: Annotated[list[JobStatus] | None, typer.Option(help="Filter by status.")] = None,
    backend: Annotated[list[str] | None, typer.Option(help="Filter by backend.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List jobs, newest first."""
    settings = _settings(ctx)
    page = _with_runtime(
        settings,
        lambda rt: rt.service.list_jobs(status=status or (), backend=backend or (), limit=limit),
    )
    if as_json:
        out.print_json(page.model_dump_json())
        return
    table = Table("id", "status", "backend", "model", "progress", "created", "error")
    for j in page.items:
        table.add_row(
            j.id,
            j.status.value,
            j.backend,
            j.model,
            f"{j.progress:.0%}" if j.progress is not None else "",
            j.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            j.error.code.value if j.error else "",
        )
    out.print(table)


@jobs_app.command("show")
def jobs_show(ctx: typer.Context, job_id: str) -> None:
    """Show one job as JSON."""
    settings = _settings(ctx)
    job = _with_runtime(settings, lambda rt: rt.service.get_job(job_id))
    out.print_json(job.model_dump_json())


@jobs_app.command("cancel")
def jobs_cancel(ctx: typer.Context, job_id: str) -> None:
    """Cancel a job."""
    settings = _settings(ctx)
    job = _with_runtime(settings, lambda rt: rt.service.cancel_job(job_id))
    state = "cancel requested" if job.status == JobStatus.RUNNING else job.status.value
    out.print(f"{job.id}: {state}")


@jobs_app.command("retry")
def jobs_retry(ctx: typer.Context, job_id: str) -> None:
    """Run a finished job again as a new job; prints the new job's id."""
    settings = _settings(ctx)
    job = _with_runtime(settings, lambda rt: rt.service.retry_job(job_id))
    typer.echo(job.id)
    err.print(f"[dim]queued as a retry of {job_id}[/]")


# --- config ----------------------------------------------------------------------------


@config_app.command("show")
def config_show(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the resolved settings, secrets masked."""
    settings = _settings(ctx)
    values = settings.masked()
    if as_json:
        typer.echo(json.dumps({"config_file": str(settings.config_file), "settings": values}))
        return
    table = Table(title=f"config file: {settings.config_file}")
    table.add_column("setting", no_wrap=True)
    table.add_column("value", overflow="fold")
    for name, value in values.items():
        table.add_row(name, value)
    out.print(table)


@config_app.command("check")
def config_check(ctx: typer.Context) -> None:
    """Validate the settings; exit 2 on problems."""
    settings = _settings(ctx)
    from orchestrator.runtime import demo_enabled

    notes = []
    if settings.bfl_api_key is None:
        notes.append("flux backend disabled: BFL_API_KEY is not set")
    if demo_enabled(settings):
        notes.append("demo mode: backends are simulated")
    if settings.webhooks_disabled_reason is not None:
        notes.append(f"webhooks disabled: {settings.webhooks_disabled_reason}")
    if settings.auth_disabled:
        notes.append("authentication disabled (AUTH_DISABLED): no token needed on this loopback")
    for n in notes:
        out.print(f"[yellow]note:[/] {n}")
    out.print("[green]configuration OK[/]")


# --- fakes -------------------------------------------------------------------------------


# --- costs and budgets ------------------------------------------------------------------


@app.command("costs")
def costs(
    ctx: typer.Context,
    since: Annotated[
        datetime | None, typer.Option(formats=["%Y-%m-%d"], help="First UTC day.")
    ] = None,
    until: Annotated[
        datetime | None, typer.Option(formats=["%Y-%m-%d"], help="Last UTC day (inclusive).")
    ] = None,
    by: Annotated[
        list[str] | None,
        typer.Option(help="Group by day, backend, model or token (repeatable; default day)."),
    ] = None,
    token: Annotated[str | None, typer.Option(help="Only this token's jobs.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """What generation cost, in credits (1 credit = US$0.01); default the last 30 days."""
    from orchestrator.domain.costs import GROUP_KEYS

    keys = by or ["day"]
    bad = [k for k in keys if k not in GROUP_KEYS]
    if bad:
        err.print(f"[red]unknown --by {bad}; use {', '.join(GROUP_KEYS)}[/]")
        raise typer.Exit(2)
    settings = _settings(ctx)
    report = _with_runtime(
        settings,
        lambda rt: rt.service.ledger.report(
            since=since.date() if since else None,
            until=until.date() if until else None,
            group_by=[k for k in GROUP_KEYS if k in keys],
            token_id=token,
        ),
    )
    if as_json:
        out.print_json(report.model_dump_json())
        return
    table = Table(title=f"costs {report.since} .. {report.until} ({report.currency})")
    for key in report.group_by:
        table.add_column(key)
    table.add_column("jobs", justify="right")
    table.add_column("cost", justify="right")
    table.add_column("GPU s", justify="right")
    for row in report.rows:
        cells = {
            "day": str(row.day),
            "backend": row.backend or "",
            "model": row.model or "",
            "token": row.token_id or "(none)",
        }
        table.add_row(
            *(cells[k] for k in report.group_by),
            str(row.jobs),
            f"{row.cost:g}",
            f"{row.gpu_seconds:g}",
        )
    out.print(table)
    out.print(f"total: {report.total:g} {report.currency} over {report.jobs} jobs")


@budget_app.command("list")
def budget_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The global budget and token budgets, with today's spend."""
    settings = _settings(ctx)
    rows = _with_runtime(settings, lambda rt: rt.service.ledger.budgets())
    if as_json:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in rows]))
        return
    table = Table("budget", "daily limit", "spent", "reserved", "remaining", title=str(rows[0].day))
    for r in rows:
        name = "global" if r.scope == "global" else f"token {r.token_id}"
        limit = "none" if r.daily_limit is None else f"{r.daily_limit:g}"
        remaining = "" if r.remaining is None else f"{r.remaining:g}"
        table.add_row(name, limit, f"{r.spent:g}", f"{r.reserved:g}", remaining)
    out.print(table)


@budget_app.command("set")
def budget_set(
    ctx: typer.Context,
    token_id: Annotated[str, typer.Argument(help="The token's id (see `token list`).")],
    daily: Annotated[float, typer.Option(min=0, help="Credits per UTC day.")],
) -> None:
    """Give a token a daily budget (the global one is the DAILY_BUDGET setting)."""
    settings = _settings(ctx)

    _with_runtime(settings, lambda rt: rt.service.set_token_budget(token_id, daily))
    out.print(f"token {token_id}: {daily:g} credits per day")


@budget_app.command("clear")
def budget_clear(
    ctx: typer.Context,
    token_id: Annotated[str, typer.Argument(help="The token's id.")],
) -> None:
    """Remove a token's daily budget."""
    settings = _settings(ctx)
    if not _with_runtime(settings, lambda rt: rt.service.ledger.clear_budget(token_id)):
        err.print(f"token {token_id} has no budget")
        raise typer.Exit(1)
    out.print(f"token {token_id}: no budget")


@app.command("fake-bfl", hidden=True)
def fake_bfl(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8100,
    key: Annotated[str, typer.Option(help="Accepted x-key.")] = "test-key",
    duration: Annotated[float, typer.Option(help="Seconds per task.")] = 2.0,
) -> None:
    """Run the fake BFL API (for tests and manual checks)."""
    import uvicorn

    from orchestrator.testing.fake_bfl import FakeBfl, FakeBflConfig

    fake = FakeBfl(
        FakeBflConfig(
            api_keys={key}, task_duration_s=duration, public_base_url=f"http://{host}:{port}"
        )
    )
    uvicorn.run(fake.app, host=host, port=port, log_config=None)


@app.command("fake-comfy", hidden=True)
def fake_comfy(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8188,
    base_dir: Annotated[Path | None, typer.Option(help="Folder for output/input/temp.")] = None,
    node_delay: Annotated[float, typer.Option(help="Seconds per node.")] = 0.01,
) -> None:
    """Run the fake ComfyUI server (for tests and manual checks)."""
    import uvicorn

    from orchestrator.testing.fake_comfy import FakeComfy, FakeComfyConfig

    fake = FakeComfy(FakeComfyConfig(base_dir=base_dir, node_delay_s=node_delay))
    uvicorn.run(fake.app, host=host, port=port, log_config=None, lifespan="on")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
