"""The FastAPI application: ``create_app(settings)``. Resources live in the lifespan."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

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
from orchestrator.api.middleware import BodyLimitMiddleware, RequestIdMiddleware
from orchestrator.config import Settings
from orchestrator.engine.webhooks import WebhookOptions
from orchestrator.engine.worker import WorkerOptions
from orchestrator.mcp_server import build_mcp, transport_security
from orchestrator.runtime import Runtime, open_runtime
from orchestrator.ui import login

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
) -> FastAPI:
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
            # A mounted app's own lifespan never runs: the MCP sessions live here,
            # inside the runtime they use, and end before it closes.
            async with mcp.session_manager.run():
                yield

    app = FastAPI(
        title="Orchestrator",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    # Every route, public ones listed in api/auth.py excepted, needs a credential.
    auth.install(app, settings, lambda: get_runtime(app).service.tokens)
    app.add_middleware(  # Tilda export zips may be larger than other bodies
        BodyLimitMiddleware,
        per_path={"/api/tilda/import": settings.tilda_max_total_mb * 1024 * 1024},
    )
    app.add_middleware(RequestIdMiddleware)
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
    mcp = build_mcp(lambda: get_runtime(app).service)
    mcp_app = mcp.streamable_http_app(transport_security=transport_security(settings))
    app.router.routes.extend(mcp_app.routes)
    return app


def get_runtime(app: FastAPI) -> Runtime:
    runtime: Runtime = app.state.runtime
    return runtime
