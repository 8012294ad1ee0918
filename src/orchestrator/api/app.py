"""The FastAPI application: ``create_app(settings)``. Resources live in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse, RedirectResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from orchestrator import __version__, errors, ui
from orchestrator.api import (
    auth,
    problems,
    routes_comfy,
    routes_costs,
    routes_events,
    routes_flux,
    routes_jobs,
    routes_ops,
    routes_system,
    routes_tilda,
    routes_tokens,
    routes_webhooks,
)
from orchestrator.api.host_guard import HostGuardMiddleware, allow_list
from orchestrator.api.middleware import BodyLimitMiddleware, RequestIdMiddleware
from orchestrator.config import Settings
from orchestrator.engine.webhooks import WebhookOptions
from orchestrator.engine.worker import WorkerOptions
from orchestrator.runtime import Runtime, open_runtime
from orchestrator.ui import login

if TYPE_CHECKING:
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

    from orchestrator.services import Service

DESCRIPTION = """
Durable image and video generation jobs on FLUX and on a pool of ComfyUI servers
(SDXL, SD3.5, Stable Video Diffusion, or any raw workflow).

* Errors are RFC 9457 problem documents (`application/problem+json`).
* `POST /api/generate` accepts an `Idempotency-Key` header.
* Jobs can report to a URL as signed Standard Webhooks (`webhook_url`,
  `webhook_events`; needs `WEBHOOK_SECRET`); see `/api/webhooks/deliveries`.
* **Cancel and FLUX**: BFL has no cancel endpoint. Cancelling a FLUX job that was
  already submitted stops polling and marks the job canceled, but BFL may still finish
  the task and bill it.
"""


def create_app(
    settings: Settings,
    *,
    run_worker: bool | None = None,
    worker_options: WorkerOptions | None = None,
    webhook_options: WebhookOptions | None = None,
    freeze_gc: bool = False,
) -> FastAPI:
    """``freeze_gc`` (``serve``: one app per process): once started, move what start-up
    allocated out of the garbage collector's sight."""
    worker = settings.worker_enabled if run_worker is None else run_worker

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            try:
                runtime = await stack.enter_async_context(
                    open_runtime(
                        settings,
                        run_worker=worker,
                        worker_options=worker_options,
                        webhook_options=webhook_options,
                    )
                )
            except errors.OrchestratorError as exc:
                # Why it could not start (e.g. a corrupt database file), for `serve`
                # to say in one line after the server's start-up traceback.
                app.state.startup_error = exc
                raise
            app.state.runtime = runtime
            await auth.announce(settings, runtime.service.tokens)
            # What start-up allocated lives as long as the app: out of the collector's
            # sight, a full collection under load takes a few ms instead of 80-130 ms
            # (what set the p99 of GET /api/jobs/{id} at 64 connections).
            if freeze_gc:
                gc.collect()
                gc.freeze()
            # The MCP sessions (started by the first MCP request) live inside the
            # runtime they use, and end before it closes.
            mcp.open()
            try:
                yield
            finally:
                await mcp.aclose()

    app = FastAPI(
        title="Orchestrator",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # Metrics are Prometheus' (/metrics); FastAPI's own OpenTelemetry hooks read
        # the environment on every request (6% of a GET's CPU samples).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    # Every route, public ones listed in api/auth.py excepted, needs a credential.
    auth.install(app, settings, lambda: get_runtime(app).service.tokens)
    app.add_middleware(  # Tilda export zips may be larger than other bodies
        BodyLimitMiddleware,
        per_path={"/api/tilda/import": settings.tilda_max_total_mb * 1024 * 1024},
    )
    app.add_middleware(RequestIdMiddleware)
    allowed = allow_list(settings.host, settings.allowed_hosts.split(","))
    if allowed is not None:  # outermost: a foreign Host is refused before anything runs
        app.add_middleware(HostGuardMiddleware, allowed=allowed)
    problems.install(app)
    problems.document(app)
    auth.document(app)
    app.include_router(routes_jobs.router)
    app.include_router(routes_flux.router)
    app.include_router(routes_comfy.router)
    app.include_router(routes_system.router)
    app.include_router(routes_system.models_router)
    app.include_router(routes_webhooks.router)
    app.include_router(routes_ops.router)
    app.include_router(routes_tokens.router)
    app.include_router(login.router)
    app.include_router(routes_costs.router)
    app.include_router(routes_events.router)
    app.include_router(routes_tilda.router)
    ui.install(app)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    # MCP over streamable HTTP at /mcp, calling this app's service in-process. Its
    # route joins the app's own routes (rather than a catch-all mount at "/"), so
    # unknown paths still get the app's problem+json 404.
    mcp = LazyMCP(settings, lambda: get_runtime(app).service)
    app.state.mcp = mcp
    app.router.routes.append(Route("/mcp", endpoint=mcp))
    return app


class LazyMCP:
    """The ASGI endpoint at ``/mcp``: builds the MCP server and starts its session
    manager on the first MCP request, not at start-up. Importing the MCP SDK costs
    about half a second and 20 MB, which a server never called over MCP need not pay.

    The session manager runs in a task of its own (with a fresh context, so no
    request's log bindings leak into it) until ``aclose``, which the app's lifespan
    calls before the runtime closes."""

    def __init__(self, settings: Settings, get_service: Callable[[], Service]) -> None:
        self._settings = settings
        self._get_service = get_service
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._endpoint: ASGIApp | None = None
        self._starting: tuple[ASGIApp, asyncio.Future[None]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = True  # until the lifespan opens it

    def open(self) -> None:
        """Ready for a new lifespan (each one gets its own MCP server)."""
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._endpoint = None
        self._starting = None
        self._task = None
        self._closed = False

    @property
    def started(self) -> bool:
        """Whether an MCP request built the MCP server in this lifespan."""
        return self._endpoint is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self._endpoint or await self._start()
        if endpoint is None:  # outside the app's lifespan (or shutting down)
            response = PlainTextResponse("MCP is not running", status_code=503)
            await response(scope, receive, send)
            return
        await endpoint(scope, receive, send)

    async def _start(self) -> ASGIApp | None:
        async with self._lock:
            if self._closed:
                return None
            if self._starting is None:
                from orchestrator.mcp_server import build_mcp, transport_security

                server = build_mcp(self._get_service)
                mcp_app = server.streamable_http_app(
                    transport_security=transport_security(self._settings)
                )
                started = asyncio.get_running_loop().create_future()
                self._starting = (mcp_app.router, started)
                self._task = asyncio.create_task(
                    self._run(server.session_manager, started),
                    name="mcp-sessions",
                    context=contextvars.Context(),
                )
            router, started = self._starting
            # shielded: a first caller that goes away leaves the start to the next one
            await asyncio.shield(started)
            self._endpoint = router
            return router

    async def _run(
        self, manager: StreamableHTTPSessionManager, started: asyncio.Future[None]
    ) -> None:
        try:
            async with manager.run():
                started.set_result(None)
                await self._stop.wait()
        except BaseException as exc:
            if started.done():
                raise
            if isinstance(exc, asyncio.CancelledError):
                started.cancel()
                raise
            started.set_exception(exc)

    async def aclose(self) -> None:
        """Stop the MCP sessions (a no-op if MCP was never used)."""
        async with self._lock:
            self._closed = True
            self._endpoint = None
            self._stop.set()
            task, self._task = self._task, None
        if task is not None:
            await task


def get_runtime(app: FastAPI) -> Runtime:
    runtime: Runtime = app.state.runtime
    return runtime
