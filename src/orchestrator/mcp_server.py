"""The MCP server: tools and resources for AI agents, thin adapters over the service
layer (``services.Service``), served over stdio (``orchestrator mcp``) and streamable
HTTP (mounted at ``/mcp`` by ``orchestrator serve``).

``build_mcp(get_service)`` builds the server; ``get_service`` returns the service of
the process's one runtime (the FastAPI app's, or the one ``run_stdio`` opens).
Failures a caller can act on become ``ToolError`` text (field paths for invalid
parameters); anything else is logged and reported generically by the SDK.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from mcp.server.lowlevel.helper_types import ReadResourceContents
from mcp.server.mcpserver import Context, Image, MCPServer
from mcp.server.mcpserver.exceptions import (
    ResourceError,
    ResourceNotFoundError,
    ToolError,
)
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import ResourceLink, TextContent
from PIL import Image as PILImage
from pydantic import AnyUrl, BaseModel, Field, JsonValue, TypeAdapter, ValidationError

from orchestrator import __version__, errors, logs
from orchestrator.backends.user_workflows import UserWorkflow
from orchestrator.config import Settings
from orchestrator.domain import auth
from orchestrator.domain.costs import CostReport, GroupKey
from orchestrator.domain.jobs import Job, JobError, JobStatus
from orchestrator.domain.params import (
    BACKENDS,
    COMFY_BACKENDS,
    FLUX_MODELS,
    PARAMS_BY_BACKEND,
    AnyRequest,
    GenerateRequest,
)
from orchestrator.domain.tilda import SitePageDetail, SitePagePage
from orchestrator.ignite import IgniteReport
from orchestrator.services import ModelInfo, Service

log = logs.get(__name__)

PREVIEW_MAX_BYTES = 1_000_000
NO_WORKER = (
    "no worker that runs this backend's jobs is running: the job stays queued until one starts"
)
PREVIEW_DEFAULT_PX = 1024
INSTRUCTIONS = """\
Durable image and video generation jobs (FLUX on the BFL API; SDXL, SD3.5, Stable Video
Diffusion and raw or user workflows on ComfyUI). Call list_models for the backends and
the JSON Schema of each one's params, then generate (wait=true streams progress until
the job is done). get_output returns a preview image plus a link to the full file
(output://<job id>/<n>). Jobs survive restarts; the same idempotency_key returns the
same job. Imported Tilda website pages: list_site_pages, then get_site_page for texts and
images; an image's asset id, written asset:<id>, is accepted as image_prompt,
input_image or init_image."""

_REQUEST = TypeAdapter[AnyRequest](GenerateRequest)

ServiceGetter = Callable[[], Service]


# --- structured outputs -------------------------------------------------------------------


class OutputRef(BaseModel):
    n: int = Field(description="0-based index of the output within the job.")
    uri: str = Field(description="MCP resource with the full file: output://<job id>/<n>.")
    url: str = Field(description="HTTP path of the file on the orchestrator server.")
    http_url: str | None = Field(
        default=None, description="Absolute HTTP URL of the file (when called over HTTP)."
    )
    file_path: str | None = Field(
        default=None, description="Local path of the file (when called over stdio)."
    )
    mime_type: str
    size_bytes: int
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None


class JobSummary(BaseModel):
    id: str
    backend: str
    model: str
    status: JobStatus
    progress: float | None = Field(default=None, description="0..1 when known.")
    prompt: str | None = None
    priority: int
    idempotency_key: str | None = None
    error: JobError | None = None
    outputs: list[OutputRef] = Field(default_factory=list)
    simulated: bool = Field(description="Ran on a simulated (demo) backend: placeholder output.")
    cancel_requested: bool = False
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    retry_of: str | None = None
    replayed: bool | None = Field(
        default=None,
        description="generate only: true when the idempotency_key returned an earlier job.",
    )
    note: str | None = None


class JobList(BaseModel):
    items: list[JobSummary]
    next_cursor: str | None = Field(default=None, description="Pass as cursor for more.")


class BackendStatus(BaseModel):
    name: str
    enabled: bool
    simulated: bool
    status: Literal["ok", "degraded", "down", "disabled"]
    reason: str | None = None
    latency_ms: float | None = None
    details: dict[str, JsonValue] = Field(default_factory=dict)
    limits: dict[str, int] = Field(
        default_factory=dict, description="Active jobs allowed at once, per limit group."
    )
    load: dict[str, int] = Field(
        default_factory=dict, description="Jobs of this backend per status (queued, running…)."
    )


class BackendsReport(BaseModel):
    demo: bool = Field(description="True when backends are simulated: outputs are not real.")
    workers: int = Field(description="Worker processes executing jobs right now.")
    notice: str | None = None
    backends: list[BackendStatus]


class ModelList(BaseModel):
    models: list[ModelInfo]


class WorkflowInfo(BaseModel):
    backend: str = Field(description="The backend to pass to generate.")
    name: str
    description: str
    params_schema: dict[str, JsonValue] = Field(
        description="JSON Schema of generate's params for this workflow."
    )


class WorkflowList(BaseModel):
    workflows: list[WorkflowInfo]


# --- helpers -----------------------------------------------------------------------------


# A tool's context. The SDK's Context is generic over the server's session and
# lifespan types; tools use neither (they reach the service through get_service).
Ctx = Context[Any, Any]

# A tool's ``params`` and a request body: JSON objects whose shape each backend's
# pydantic model checks (a JsonValue here would not satisfy the SDK's schema output).
JsonObject = dict[str, Any]


@contextlib.contextmanager
def _tool_errors() -> Iterator[None]:
    """Domain errors become ToolError text (the client sees it; no traceback)."""
    try:
        yield
    except errors.OrchestratorError as exc:
        raise ToolError(f"{exc.title}: {exc.detail}") from None


def _validation_message(exc: ValidationError, body: JsonObject) -> str:
    backend = body.get("backend")
    params = body.get("params")
    model = params.get("model") if isinstance(params, dict) else None
    lines = []
    for e in exc.errors():
        loc = [str(p) for p in e["loc"]]
        if loc and loc[0] == backend:
            loc = loc[1:]
        if len(loc) > 1 and loc[0] == "params" and loc[1] == model:
            loc = [loc[0], *loc[2:]]
        msg = e["msg"]
        if e["type"] == "union_tag_not_found":  # the discriminator itself is missing
            loc.append(str((e.get("ctx") or {}).get("discriminator", "")).strip("'"))
            msg = "Field required"
        lines.append(f"  - {'.'.join(p for p in loc if p) or 'request'}: {msg}")
    return "Invalid parameters:\n" + "\n".join(lines)


def _base_url(ctx: Ctx | None) -> str | None:
    if ctx is None:
        return None
    try:
        request = ctx.request_context.request
    except ValueError:
        return None
    base = getattr(request, "base_url", None)
    return None if base is None else str(base).rstrip("/")


def principal_of(ctx: Ctx | None) -> auth.Principal:
    """Who calls a tool. Over HTTP: the principal the auth middleware put on the
    request that carried the call (``request.state.principal``). Over stdio or in
    memory there is no HTTP request: the local owner."""
    if ctx is None:
        return auth.LOCAL
    try:
        request = ctx.request_context.request
    except ValueError:
        return auth.LOCAL
    if request is None:
        return auth.LOCAL
    principal = getattr(getattr(request, "state", None), "principal", None)
    if isinstance(principal, auth.Principal):
        return principal
    raise ToolError("not authenticated: send Authorization: Bearer <token>")


def _local_file(service: Service, relative: str) -> str | None:
    """The output's path when outputs are local files; None in an object store (the
    output:// resource and the HTTP URL still reach it)."""
    path = service.store.local_file(relative)
    return None if path is None else str(path)


def summarize(
    service: Service,
    job: Job,
    *,
    base_url: str | None = None,
    replayed: bool | None = None,
    note: str | None = None,
) -> JobSummary:
    prompt = job.params.get("prompt")
    outputs = [
        OutputRef(
            n=o.n,
            uri=f"output://{job.id}/{o.n}",
            url=o.url,
            http_url=f"{base_url}{o.url}" if base_url else None,
            file_path=None if base_url else _local_file(service, o.path),
            mime_type=o.mime_type,
            size_bytes=o.size_bytes,
            width=o.width,
            height=o.height,
            duration_s=o.duration_s,
        )
        for o in job.outputs
    ]
    return JobSummary(
        id=job.id,
        backend=job.backend,
        model=job.model,
        status=job.status,
        progress=job.progress,
        prompt=prompt if isinstance(prompt, str) else None,
        priority=job.priority,
        idempotency_key=job.idempotency_key,
        error=job.error,
        outputs=outputs,
        simulated=job.simulated,
        cancel_requested=job.cancel_requested,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        retry_of=job.retry_of,
        replayed=replayed,
        note=note,
    )


async def backends_report(service: Service) -> BackendsReport:
    health = await service.health()
    out = []
    for b in health.backends:
        backend = service.backends.get(b.name)
        limits: dict[str, int] = {}
        if backend is not None and backend.enabled:
            models = list(FLUX_MODELS) if b.name == "flux" else [b.name]
            for m in models:
                limits.update(dict(backend.limit_groups(m)))
        out.append(
            BackendStatus(
                **b.model_dump(),
                limits=limits,
                load=health.queue.get(b.name, {}),
            )
        )
    return BackendsReport(
        demo=health.demo, workers=health.workers, notice=health.notice, backends=out
    )


def workflows(service: Service) -> list[WorkflowInfo]:
    descriptions = {
        "sdxl": "SDXL text-to-image (ComfyUI template).",
        "sd35": "SD3.5 text-to-image; variant large, large-turbo or medium.",
        "svd": "Stable Video Diffusion image-to-video (init_image: base64 or output:<job>/<n>).",
        "comfy": "Any raw API-format ComfyUI workflow, run as given.",
    }
    out = []
    for kind in COMFY_BACKENDS:
        backend = service.backends.get(kind)
        if backend is None or kind == "workflow":
            continue
        out.append(
            WorkflowInfo(
                backend=kind,
                name=kind,
                description=descriptions.get(kind, ""),
                params_schema=PARAMS_BY_BACKEND[kind].model_json_schema(),
            )
        )
    wf_backend = service.backends.get("workflow")
    registry: dict[str, UserWorkflow] = getattr(wf_backend, "user_workflows", {})
    for name, wf in sorted(registry.items()):
        schema = wf.params_model().model_json_schema()
        out.append(
            WorkflowInfo(
                backend="workflow",
                name=name,
                description=wf.description,
                params_schema={
                    "type": "object",
                    "properties": {
                        "name": {"const": name},
                        "inputs": schema,
                    },
                    "required": ["name"],
                },
            )
        )
    return out


def make_preview(path: Path, max_px: int) -> tuple[bytes, Literal["jpeg", "png"]]:
    """The first frame, at most ``max_px`` on its longer side and about 1 MB: JPEG,
    or PNG when the image has transparency."""
    with PILImage.open(path) as im:
        im.seek(0)
        frame = im.copy()
    alpha = frame.mode in ("RGBA", "LA", "PA") or "transparency" in frame.info
    frame = frame.convert("RGBA" if alpha else "RGB")
    size = max_px
    while True:
        thumb = frame.copy()
        thumb.thumbnail((size, size))
        buf = io.BytesIO()
        if alpha:
            thumb.save(buf, format="PNG", optimize=True)
        else:
            thumb.save(buf, format="JPEG", quality=85)
        data = buf.getvalue()
        if len(data) <= PREVIEW_MAX_BYTES or size <= 64:
            return data, "png" if alpha else "jpeg"
        size = max(64, int(size * 0.7))


class _Progress:
    """Progress notifications that only ever rise, within 0..1."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.last = -1.0
        self.last_message: str | None = None

    async def report(self, value: float | None, message: str | None) -> None:
        target = self.last if value is None else min(1.0, max(0.0, value))
        if target <= self.last:
            if message == self.last_message or self.last >= 0.999:
                return
            target = min(0.999, self.last + 0.001)  # a new message: nudge upward
        if math.isclose(target, self.last):
            return
        self.last = target
        self.last_message = message
        await self.ctx.report_progress(target, 1.0, message)


# --- the server -------------------------------------------------------------------------


class OrchestratorMCP(MCPServer):
    """``output://`` reads carry each file's own MIME type (templates have one fixed
    type), so they are answered here."""

    # **kwargs: MCPServer's own options, passed through untouched
    def __init__(self, get_service: ServiceGetter, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._get_service = get_service

    async def read_resource(
        self, uri: AnyUrl | str, context: Ctx | None = None
    ) -> Any:  # as the overridden MCPServer.read_resource declares
        text = str(uri)
        if text.startswith("output://"):
            return await self._read_output(text)
        return await super().read_resource(uri, context)

    async def _read_output(self, uri: str) -> Iterable[ReadResourceContents]:
        job_id, _, n = uri.removeprefix("output://").partition("/")
        if not job_id or not n.isdigit():
            raise ResourceNotFoundError(f"use output://<job id>/<n>, not {uri}")
        try:
            out, path = await self._get_service().output(job_id, int(n))
        except errors.NotFound as exc:
            raise ResourceNotFoundError(exc.detail) from None
        except errors.OrchestratorError as exc:
            raise ResourceError(exc.detail) from None
        data = await asyncio.to_thread(path.read_bytes)
        return [ReadResourceContents(content=data, mime_type=out.mime_type)]


def build_mcp(get_service: ServiceGetter) -> OrchestratorMCP:
    mcp = OrchestratorMCP(
        get_service, name="orchestrator", version=__version__, instructions=INSTRUCTIONS
    )

    @mcp.tool()
    async def generate(
        backend: Annotated[str, Field(description=f"One of: {', '.join(BACKENDS)}.")],
        params: Annotated[
            JsonObject,
            Field(
                description="The backend's parameters (see list_models); for flux, "
                "params.model picks the BFL model, e.g. "
                '{"model": "flux-pro-1.1", "prompt": "a red fox"}.'
            ),
        ],
        ctx: Ctx,
        priority: Annotated[int, Field(ge=-1000, le=1000)] = 0,
        deadline_s: Annotated[float | None, Field(gt=0, le=86_400)] = None,
        idempotency_key: Annotated[str | None, Field(min_length=1, max_length=255)] = None,
        wait: Annotated[
            bool, Field(description="Wait until the job is done, sending progress.")
        ] = False,
        timeout_s: Annotated[
            float, Field(gt=0, le=3600, description="With wait: stop waiting after this long.")
        ] = 600.0,
    ) -> JobSummary:
        """Queue an image or video generation job. Returns the job (with wait=true,
        once it is finished, with its outputs). The same idempotency_key with the same
        request returns the same job instead of a new one."""
        service = get_service()
        body: JsonObject = {"backend": backend, "params": params, "priority": priority}
        if deadline_s is not None:
            body["deadline_s"] = deadline_s
        if backend not in BACKENDS:
            raise ToolError(f"unknown backend {backend!r}; use one of: {', '.join(BACKENDS)}")
        try:
            req = _REQUEST.validate_json(json.dumps(body))
        except ValidationError as exc:
            raise ToolError(_validation_message(exc, body)) from None
        with _tool_errors():
            job, created = await service.submit(req, idempotency_key, principal=principal_of(ctx))
            note = None
            if wait and not job.status.terminal:
                job, note = await _wait(service, job, ctx, timeout_s)
            elif not job.status.terminal and await service.live_workers(job.backend) == 0:
                note = NO_WORKER
        return summarize(service, job, base_url=_base_url(ctx), replayed=not created, note=note)

    @mcp.tool()
    async def get_job(job_id: str, ctx: Ctx) -> JobSummary:
        """One job: status, progress, error, and outputs when it succeeded."""
        service = get_service()
        with _tool_errors():
            job = await service.get_job(job_id)
        return summarize(service, job, base_url=_base_url(ctx))

    @mcp.tool()
    async def list_jobs(
        ctx: Ctx,
        status: list[JobStatus] | None = None,
        backend: list[str] | None = None,
        cursor: str | None = None,
        limit: Annotated[int, Field(ge=1, le=200)] = 20,
    ) -> JobList:
        """Jobs, newest first, optionally filtered by status and backend; pass
        next_cursor back as cursor for the next page."""
        service = get_service()
        with _tool_errors():
            page = await service.list_jobs(
                status=status or (), backend=backend or (), cursor=cursor, limit=limit
            )
        base = _base_url(ctx)
        return JobList(
            items=[summarize(service, j, base_url=base) for j in page.items],
            next_cursor=page.next_cursor,
        )

    @mcp.tool()
    async def cancel_job(job_id: str, ctx: Ctx) -> JobSummary:
        """Cancel a job. A queued job is canceled at once; a running one by its worker
        (cancel_requested). BFL has no cancel: a submitted FLUX task may still be billed."""
        service = get_service()
        with _tool_errors():
            job = await service.cancel_job(job_id, principal=principal_of(ctx))
        return summarize(service, job, base_url=_base_url(ctx))

    @mcp.tool()
    async def list_backends() -> BackendsReport:
        """Every backend with its health, limits (active jobs allowed) and load (jobs
        per status), plus the number of live workers and whether this is demo mode."""
        with _tool_errors():
            return await backends_report(get_service())

    @mcp.tool()
    async def list_models(backend: str | None = None) -> ModelList:
        """What each backend can run, with the JSON Schema of its params."""
        if backend is not None and backend not in BACKENDS:
            raise ToolError(f"unknown backend {backend!r}; use one of: {', '.join(BACKENDS)}")
        with _tool_errors():
            return ModelList(models=get_service().models(backend))

    @mcp.tool()
    async def ignite(ctx: Ctx) -> IgniteReport:
        """Check everything and start what is configured to be started: database,
        data folders and free space, the FLUX key and credit balance, each ComfyUI
        instance (version, devices, memory, template nodes and model files), the v0
        key, and local ComfyUI processes. ``ok`` is false if anything essential failed."""
        with _tool_errors():
            auth.require(principal_of(ctx), auth.Action.IGNITE)
            return await get_service().ignite()

    @mcp.tool()
    async def cost_report(
        since: date | None = None,
        until: date | None = None,
        group_by: list[GroupKey] | None = None,
    ) -> CostReport:
        """What generation cost, in credits (1 credit = US$0.01), for jobs created on
        UTC days ``since``..``until`` (default: the last 30 days), grouped by any of
        day, backend, model and token (default: day)."""
        with _tool_errors():
            return await get_service().ledger.report(
                since=since, until=until, group_by=group_by or ["day"]
            )

    @mcp.tool()
    async def list_workflows() -> WorkflowList:
        """The ComfyUI job kinds (sdxl, sd35, svd, comfy) and the user workflows from
        COMFY_WORKFLOWS_DIR (backend "workflow"), with parameter schemas."""
        return WorkflowList(workflows=workflows(get_service()))

    @mcp.tool()
    async def search_outputs(
        ctx: Ctx,
        query: Annotated[
            str | None, Field(max_length=500, description="Text the prompt contains.")
        ] = None,
        backend: list[str] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        cursor: str | None = None,
        limit: Annotated[int, Field(ge=1, le=100)] = 20,
    ) -> JobList:
        """Finished jobs with outputs whose prompt contains the query text
        (case-insensitive), optionally by backend and creation date; newest first."""
        service = get_service()
        with _tool_errors():
            page = await service.search_outputs(
                text=query,
                backend=backend or (),
                created_after=created_after,
                created_before=created_before,
                cursor=cursor,
                limit=limit,
            )
        base = _base_url(ctx)
        return JobList(
            items=[summarize(service, j, base_url=base) for j in page.items],
            next_cursor=page.next_cursor,
        )

    @mcp.tool()
    async def list_site_pages(
        site_id: Annotated[str | None, Field(max_length=64, description="A site id.")] = None,
        query: Annotated[
            str | None,
            Field(max_length=200, description="Text in the title, alias or block texts."),
        ] = None,
        limit: Annotated[int, Field(ge=1, le=200)] = 20,
        offset: Annotated[int, Field(ge=0)] = 0,
    ) -> SitePagePage:
        """Pages imported from Tilda website exports (all sites, or one), optionally
        those containing the query text; with total, for paging by offset."""
        with _tool_errors():
            return await get_service().tilda.list_pages(
                site_id=site_id, text=query, limit=limit, offset=offset
            )

    @mcp.tool()
    async def get_site_page(page_id: str) -> SitePageDetail:
        """One imported page: SEO fields, its blocks in order (catalogue code, texts
        with line breaks, links, image asset ids), the shared header and footer blocks,
        and its images (use asset:<id> as an image input of generate)."""
        with _tool_errors():
            return await get_service().get_site_page(page_id)

    @mcp.tool(structured_output=False)
    async def get_output(
        job_id: str,
        ctx: Ctx,
        n: Annotated[int, Field(ge=0)] = 0,
        max_px: Annotated[int, Field(ge=64, le=2048)] = PREVIEW_DEFAULT_PX,
    ) -> list[Image | TextContent | ResourceLink]:
        """An output of a finished job: a preview image (at most max_px on its longer
        side, about 1 MB; the first frame of a video), or the text of a text output (v0
        code, at most 200,000 characters), plus a link to the full file."""
        service = get_service()
        with _tool_errors():
            out, path = await service.output(job_id, n)
        if out.mime_type.startswith("text/"):
            text = await asyncio.to_thread(path.read_text, "utf-8", "replace")
            link = ResourceLink(
                type="resource_link",
                name=f"{job_id}-{n}",
                uri=f"output://{job_id}/{n}",
                mime_type=out.mime_type,
                size=out.size_bytes,
            )
            return [TextContent(type="text", text=text[:200_000]), link]
        try:
            data, fmt = await asyncio.to_thread(make_preview, path, max_px)
        except (OSError, ValueError) as exc:
            raise ToolError(f"output {n} of job {job_id} cannot be previewed: {exc}") from None
        base = _base_url(ctx)
        where = f"{base}{out.url}" if base else service.store.location(out.path)
        link = ResourceLink(
            type="resource_link",
            name=f"{job_id}-{n}",
            uri=f"output://{job_id}/{n}",
            mime_type=out.mime_type,
            size=out.size_bytes,
            description=f"The full file ({out.mime_type}, {out.size_bytes} bytes): {where}",
        )
        return [Image(data=data, format=fmt), link]

    @mcp.resource("job://{job_id}", mime_type="application/json")
    async def job_resource(job_id: str) -> str:
        """A job as JSON (parameters, status, events summary, outputs)."""
        try:
            job = await get_service().get_job(job_id)
        except errors.NotFound as exc:
            raise ResourceNotFoundError(exc.detail) from None
        return job.model_dump_json(indent=2)

    @mcp.resource("output://{job_id}/{n}", mime_type="application/octet-stream")
    async def output_resource(job_id: str, n: str) -> bytes:
        """The full output file (image or video), with its own MIME type."""
        raise ResourceError("served by OrchestratorMCP.read_resource")  # pragma: no cover

    @mcp.resource("backends://status", mime_type="application/json")
    async def backends_resource() -> str:
        """Backends: health, limits and load (as the list_backends tool)."""
        return (await backends_report(get_service())).model_dump_json(indent=2)

    return mcp


async def _wait(service: Service, job: Job, ctx: Ctx, timeout_s: float) -> tuple[Job, str | None]:
    progress = _Progress(ctx)
    await progress.report(job.progress or 0.0, f"{job.backend}/{job.model} {job.status.value}")
    note = None
    if await service.live_workers(job.backend) == 0:
        note = NO_WORKER
    try:
        async with asyncio.timeout(timeout_s):
            async for ev in service.follow_events(job.id):
                message = ev.message
                if ev.status is not None:
                    message = f"{job.backend}/{job.model} {ev.status.value}"
                    if ev.status.terminal:
                        await progress.report(1.0, message)
                        continue
                await progress.report(ev.progress, message)
    except TimeoutError:
        note = f"still {job.status.value} after {timeout_s:g} s: call get_job later"
    job = await service.get_job(job.id)
    if job.status.terminal:
        note = None
    elif note and job.status != JobStatus.QUEUED:
        note = f"still {job.status.value} after {timeout_s:g} s: call get_job later"
    return job, note


# --- transports ---------------------------------------------------------------------------

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def transport_security(settings: Settings) -> TransportSecuritySettings:
    """DNS-rebinding protection for a loopback bind (as the SDK does by default),
    accepting the configured host too; off when serving on another address."""
    if settings.host not in _LOOPBACK:
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=hosts,
        allowed_origins=[f"http://{h}" for h in hosts],
    )


async def run_stdio(settings: Settings) -> None:
    """``orchestrator mcp``: serve over stdin/stdout. When no worker process is live
    (no ``serve`` running), this process runs one, so the server works standalone;
    otherwise it only queues and reads, and the running worker executes. Leases keep
    two processes from running the same job either way."""
    from orchestrator.engine.worker import WorkerOptions
    from orchestrator.runtime import open_runtime, start_worker

    async with open_runtime(settings, run_worker=False) as rt:
        options = WorkerOptions.from_settings(settings, kind="mcp")

        async def ensure_worker() -> None:
            # Checked again every lease period: if the serve process goes away, this
            # process starts executing the queue itself.
            while True:
                if await rt.service.live_workers() == 0:
                    log.info("no worker is running: the MCP server runs one")
                    await start_worker(rt, options)
                    return
                await asyncio.sleep(settings.lease_s)

        server = build_mcp(lambda: rt.service)
        watcher = asyncio.create_task(ensure_worker())
        try:
            await server.run_stdio_async()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


__all__: Sequence[str] = ("build_mcp", "run_stdio", "transport_security")
