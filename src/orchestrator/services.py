"""The one Python API every entry point (HTTP routes, UI, MCP tools, CLI) calls,
in-process. Nothing here knows about HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import httpx2
from pydantic import BaseModel, Field, JsonValue, ValidationError

from orchestrator import __version__, errors
from orchestrator.auth_service import Tokens
from orchestrator.backends.base import Backend, BackendHealth
from orchestrator.backends.comfy import ComfyInstance, ComfyPool, InstanceStatus
from orchestrator.backends.user_workflows import UserWorkflow
from orchestrator.backends.v0 import V0Backend
from orchestrator.config import Settings
from orchestrator.db.engine import Database
from orchestrator.db.events import EventLog
from orchestrator.db.jobs import JobRepo, NewJob
from orchestrator.db.tokens import TokenRepo
from orchestrator.db.webhooks import WebhookRepo
from orchestrator.db.workers import WorkerRepo
from orchestrator.domain import auth
from orchestrator.domain.costs import BudgetStatus
from orchestrator.domain.jobs import Job, JobEvent, JobOutput, JobPage, JobStatus
from orchestrator.domain.params import (
    FLUX_LIST_PRICE,
    FLUX_MODELS,
    PARAMS_BY_BACKEND,
    V0_MODELS,
    AnyRequest,
    Sd35Params,
    SvdParams,
    V0Params,
    WorkflowParams,
)
from orchestrator.domain.tilda import SitePageDetail, parse_asset_ref
from orchestrator.domain.webhooks import (
    DeliveryStatus,
    UrlProblem,
    WebhookDelivery,
    WebhookDeliveryPage,
    WebhookPolicy,
    check_url,
)
from orchestrator.engine.events import EventFeed, FeedItem, Subscription
from orchestrator.engine.hub import Hub
from orchestrator.engine.processes import ProcessSupervisor
from orchestrator.engine.waiters import Waiters
from orchestrator.ignite import IgniteReport, report, run_checks
from orchestrator.ledger import Ledger
from orchestrator.storage import InputStore, OutputStore, decode_image_data
from orchestrator.tilda.service import TildaService, resolve_flux_assets

EVENT_POLL_S = 1.0  # how often to look for changes made by other processes


class ModelInfo(BaseModel):
    backend: str
    model: str
    list_price_credits: float | None = None
    max_active: int | None = None
    params_schema: dict[str, JsonValue] = Field(description="JSON Schema of the parameters.")


class WorkerStatus(BaseModel):
    """A registered worker process."""

    id: str
    kind: str = Field(
        description="What runs it: `worker` (orchestrator worker), `serve`, `mcp` or `cli`."
    )
    host: str
    pid: int
    backends: list[str] | None = Field(
        description="The backends whose jobs it claims (null: not recorded)."
    )
    concurrency: int | None = Field(description="Jobs it runs at once (null: not recorded).")
    started_at: datetime
    heartbeat_at: datetime
    heartbeat_age_s: float = Field(description="Seconds since its last heartbeat.")
    state: Literal["live", "gone"] = Field(
        description="`gone`: no heartbeat within LEASE_S (killed, or its machine is "
        "down); the jobs it held are taken over by other workers once their leases expire."
    )


class SystemHealth(BaseModel):
    status: Literal["ok", "degraded"]
    version: str
    demo: bool = Field(description="True when backends are simulated: outputs are not real.")
    database: Literal["ok", "down"]
    database_problem: str | None = Field(
        default=None,
        description="Why the database is down (unreachable; SQLite file deleted or replaced).",
    )
    database_url: str
    workers: int = Field(description="Worker processes seen in the last lease period.")
    worker_processes: list[WorkerStatus] = Field(
        default_factory=list,
        description="Every registered worker process, live ones first, then those gone "
        "(kept for a day).",
    )
    backends: list[BackendHealth]
    queue: dict[str, dict[str, int]]
    notice: str | None = None


def request_hash(req: AnyRequest) -> str:
    canonical = json.dumps(req.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class Service:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        backends: Mapping[str, Backend],
        store: OutputStore,
        hub: Hub,
        *,
        demo: bool,
        inputs: InputStore | None = None,
        comfy: ComfyPool | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.webhook_policy = WebhookPolicy(
            enabled=settings.webhooks_disabled_reason is None,
            global_url=settings.webhook_url,
            max_age_s=settings.webhook_max_age_s,
        )
        self.ledger = Ledger(settings, db)
        self.repo = JobRepo(
            db,
            webhooks=self.webhook_policy,
            on_webhook=hub.webhook_queued,
            pricing=self.ledger.pricing,
        )
        self.webhooks = WebhookRepo(db)
        self.worker_repo = WorkerRepo(db)
        self.tokens = Tokens(TokenRepo(db), session_ttl_s=settings.session_ttl_s)
        self.backends = backends
        self.store = store
        self.hub = hub
        self.waiters = Waiters(self.repo, hub)
        # The event streams' one reader (started by the first subscriber, stopped with
        # the runtime).
        self.feed = EventFeed(EventLog(db), hub)
        self.demo = demo
        self.inputs = inputs or InputStore(settings.data_path / "inputs")
        self.comfy = comfy
        self.processes: ProcessSupervisor | None = None
        self._health_cache: dict[str, tuple[float, BackendHealth]] = {}
        self.tilda = TildaService(settings, db)  # imported Tilda sites (orchestrator.tilda)

    # --- jobs -------------------------------------------------------------------------
    async def submit(
        self,
        req: AnyRequest,
        idempotency_key: str | None = None,
        *,
        principal: auth.Principal = auth.LOCAL,
    ) -> tuple[Job, bool]:
        """Queue a job. Returns ``(job, created)``; ``created`` is False when the
        idempotency key matched an earlier identical request. ``principal``: who asks
        (the job records its token); the default is the local owner (CLI, stdio MCP)."""
        auth.require(principal, auth.submit_action(req.backend))
        backend = self._backend(req.backend)
        if not backend.enabled:
            raise errors.BackendDisabled(
                f"the {req.backend} backend is disabled: {backend.disabled_reason}",
                backend=req.backend,
                reason=backend.disabled_reason,
            )
        if idempotency_key is not None and not (0 < len(idempotency_key) <= 255):
            raise errors.InvalidRequest("Idempotency-Key must be 1 to 255 characters")
        if req.webhook_url is not None:
            self._check_webhook_url(req.webhook_url)
        deadline_s = req.deadline_s or backend.default_deadline_s()
        typed = req.params.resolved() if isinstance(req.params, Sd35Params) else req.params
        params: dict[str, JsonValue] = typed.model_dump(mode="json", exclude={"model"})
        if isinstance(req.params, SvdParams):
            params["init_image"] = await self.store_input(req.params.init_image)
        if req.backend == "flux":
            params = await resolve_flux_assets(params, self.tilda)  # asset:<id> images
        if isinstance(req.params, WorkflowParams):
            params["inputs"] = await self._workflow_inputs(backend, req.params)
        if isinstance(req.params, V0Params) and isinstance(backend, V0Backend):
            params = await backend.check_params(req.params, self.store_input)
        params = backend.prepare(params)
        estimate = await self.ledger.estimate(req.backend, req.model, params)
        new = NewJob(
            id=str(uuid.uuid4()),
            backend=req.backend,
            model=req.model,
            params=params,
            priority=req.priority,
            deadline_at=datetime.now(UTC) + timedelta(seconds=deadline_s),
            idempotency_key=idempotency_key,
            request_hash=request_hash(req),
            simulated=backend.simulated,
            deadline_s=req.deadline_s,
            webhook_url=req.webhook_url,
            webhook_events=req.webhook_events,
            cost_estimate=estimate,
            token_id=principal.token_id,
        )
        job, created = await self.repo.create(new, self.ledger.guard(estimate, principal.token_id))
        if created:
            await self._note_waiting(backend, job.id)
            self.hub.job_queued()
        return job, created

    async def _note_waiting(self, backend: Backend, job_id: str) -> None:
        """A job queued while its backend cannot take it (every ComfyUI instance is
        down, say) says so in its events: it waits, it has not failed."""
        reason = backend.waiting_reason()
        if reason is not None:
            await self.repo.add_event(job_id, "info", reason)

    async def retry_job(self, job_id: str, *, principal: auth.Principal = auth.LOCAL) -> Job:
        """Run a finished job again: a new job (a new attempt) with the same
        backend, model, parameters, priority and webhook settings, and a fresh
        deadline of the same length, linked by ``retry_of``, recorded as created by
        ``principal``. A queued or running job cannot be retried (409)."""
        old = await self.repo.get(job_id)
        auth.require(principal, auth.Action.RETRY_JOB, old.token_id)
        auth.require(principal, auth.submit_action(old.backend))
        if not old.status.terminal:
            raise errors.InvalidTransition(
                f"a {old.status.value} job cannot be retried; only a finished "
                "(succeeded, failed or canceled) job can",
                current=old.status.value,
                job_id=job_id,
            )
        backend = self._backend(old.backend)
        if not backend.enabled:
            raise errors.BackendDisabled(
                f"the {old.backend} backend is disabled: {backend.disabled_reason}",
                backend=old.backend,
                reason=backend.disabled_reason,
            )
        if old.webhook_url is not None:
            self._check_webhook_url(old.webhook_url)
        job = await self.repo.retry(
            job_id,
            str(uuid.uuid4()),
            default_deadline_s=backend.default_deadline_s(),
            simulated=backend.simulated,
            estimate=await self.ledger.estimate(old.backend, old.model, old.params),
            guard=self.ledger.retry_guard(principal.token_id),
            token_id=principal.token_id,
        )
        self.hub.job_queued()
        self.hub.job_changed(job_id)
        return job

    def _check_webhook_url(self, url: str) -> None:
        reason = self.settings.webhooks_disabled_reason
        if reason is not None:
            raise errors.WebhooksDisabled(
                f"this job asks for a webhook, but webhooks are disabled: {reason}. "
                "Set WEBHOOK_SECRET (whsec_ followed by base64) to enable them.",
                reason=reason,
                setting="WEBHOOK_SECRET",
            )
        try:
            check_url(url, allow_private=self.settings.webhook_allow_private)
        except UrlProblem as exc:
            raise errors.InvalidRequest(
                f"webhook_url {exc}",
                errors=[{"loc": ["body", "webhook_url"], "msg": str(exc), "type": "webhook_url"}],
            ) from None

    # --- webhooks -----------------------------------------------------------------------
    async def list_deliveries(
        self,
        *,
        job_id: str | None = None,
        status: Sequence[DeliveryStatus] = (),
        cursor: str | None = None,
        limit: int = 50,
    ) -> WebhookDeliveryPage:
        return await self.webhooks.page(job_id=job_id, status=status, cursor=cursor, limit=limit)

    async def replay_delivery(self, delivery_id: str) -> WebhookDelivery:
        """Send a delivery again (whatever its status): it becomes pending and due
        now, with a fresh WEBHOOK_MAX_AGE_S retry window, and keeps its id (the
        ``webhook-id`` header, so receivers that de-duplicate see the same message)
        and its attempt log."""
        reason = self.settings.webhooks_disabled_reason
        if reason is not None:
            raise errors.WebhooksDisabled(
                f"webhooks are disabled: {reason}", reason=reason, setting="WEBHOOK_SECRET"
            )
        delivery = await self.webhooks.replay(
            delivery_id, datetime.now(UTC), self.settings.webhook_max_age_s
        )
        self.hub.webhook_queued()
        return delivery

    async def _workflow_inputs(
        self, backend: Backend, params: WorkflowParams
    ) -> dict[str, JsonValue]:
        """Validate a user workflow's inputs against its declared schema; store images."""
        registry: dict[str, UserWorkflow] = getattr(backend, "user_workflows", {})
        wf = registry.get(params.name)
        if wf is None:
            raise errors.InvalidRequest(
                f"no user workflow named {params.name!r}",
                errors=[
                    {
                        "loc": ["body", "params", "name"],
                        "msg": "unknown workflow",
                        "type": "unknown_workflow",
                    }
                ],
                available=list[JsonValue](sorted(registry)),
            )
        try:
            typed = wf.params_model().model_validate(params.inputs)
        except ValidationError as exc:
            raise errors.InvalidRequest(
                f"invalid inputs for workflow {params.name}",
                errors=[
                    {
                        "loc": ["body", "params", "inputs", *[str(p) for p in e["loc"]]],
                        "msg": e["msg"],
                        "type": e["type"],
                    }
                    for e in exc.errors()
                ],
            ) from None
        values: dict[str, JsonValue] = typed.model_dump(mode="json")
        for pname in wf.image_params():
            value = values.get(pname)
            if isinstance(value, str):
                values[pname] = await self.store_input(value)
        return values

    async def store_input(self, value: str) -> str:
        """An image given as base64 / data URL, ``output:<job>/<n>`` or an existing
        ``input:`` reference, stored once under DATA_DIR/inputs; returns its reference."""
        if value.startswith("input:"):
            await self.inputs.fetch(value)  # must exist (here or in the output store)
            return value
        if parse_asset_ref(value) is not None:  # an imported Tilda image
            try:
                _asset, data = await self.tilda.asset_bytes(value)
            except errors.SiteNotFound as exc:
                raise errors.InvalidRequest(exc.detail, field="image") from None
        elif value.startswith("output:"):
            job_id, _, n = value.removeprefix("output:").partition("/")
            if not n.isdigit():
                raise errors.InvalidRequest("use output:<job id>/<n>", field="init_image")
            _out, path = await self.output(job_id, int(n))
            data = await asyncio.to_thread(path.read_bytes)
        else:
            data = decode_image_data(value)
        return await self.inputs.store(data)

    async def get_site_page(self, page_id: str) -> SitePageDetail:
        """An imported Tilda page: texts by block, links, images (as assets)."""
        return await self.tilda.get_page(page_id)

    async def asset_path(self, asset_id: str) -> Path:
        """The file of an imported asset (id, or ``asset:<id>``)."""
        _asset, path = await self.tilda.asset_file(parse_asset_ref(asset_id) or asset_id)
        return path

    async def get_job(self, job_id: str) -> Job:
        return await self.repo.get(job_id)

    async def list_jobs(
        self,
        *,
        status: Sequence[JobStatus] = (),
        backend: Sequence[str] = (),
        cursor: str | None = None,
        limit: int = 50,
    ) -> JobPage:
        return await self.repo.page(status=status, backend=backend, cursor=cursor, limit=limit)

    async def search_outputs(
        self,
        *,
        text: str | None = None,
        backend: Sequence[str] = (),
        model: Sequence[str] = (),
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        cursor: str | None = None,
        limit: int = 20,
    ) -> JobPage:
        """Succeeded jobs (with their outputs) whose prompt contains ``text``,
        optionally of some backends (and models) and created in ``[created_after, created_before)``;
        newest first, cursor-paginated."""
        return await self.repo.search(
            text=text or None,
            backend=backend,
            model=model,
            status=[JobStatus.SUCCEEDED],
            created_after=created_after,
            created_before=created_before,
            cursor=cursor,
            limit=limit,
        )

    async def cancel_job(self, job_id: str, *, principal: auth.Principal = auth.LOCAL) -> Job:
        """Cancel a job (below admin, only a job its token created)."""
        owner = (await self.repo.get(job_id)).token_id
        auth.require(principal, auth.Action.CANCEL_JOB, owner)
        job = await self.repo.request_cancel(job_id)
        self.hub.cancel_requested(job_id)
        if job.status.terminal:
            self.hub.job_finished(job)
        else:
            self.hub.job_changed(job_id)
        return job

    async def events(self, job_id: str, after_id: int = 0) -> list[JobEvent]:
        await self.repo.get(job_id)  # 404 for unknown jobs
        return await self.feed.log.of_job(job_id, after_id)

    async def follow_events(self, job_id: str, after_id: int = 0) -> AsyncIterator[JobEvent]:
        """Every event of a job after ``after_id``, live, until the job is finished."""
        async for item in self.follow_job(job_id, str(after_id)):
            yield item.event

    async def follow_job(self, job_id: str, resume: str | None = None) -> AsyncIterator[FeedItem]:
        """A job's events from ``resume`` (a cursor token; None: from the first), live,
        until the job is finished; each with the token to resume after it. A late
        commit (an event whose id is below one already sent) is not skipped. Served by
        the process's one event reader (``engine/events.py``): no query per wake-up."""
        job = await self.repo.get(job_id)  # 404; finished: its events are all written
        async for item in self.feed.follow_job(job_id, resume, finished=job.status.terminal):
            yield item

    async def subscribe_job(self, job_id: str, resume: str | None = None) -> Subscription:
        """Like :meth:`follow_job`, subscribed when this returns, for a response that
        writes the batches itself (``api/sse.py``'s ``EventStreamResponse``, which
        ends it after the job's last transition)."""
        job = await self.repo.get(job_id)  # 404; finished: its events are all written
        return await self.feed.subscribe(resume, job_id=job_id, finished=job.status.terminal)

    async def follow_all_events(self, resume: str | None = None) -> AsyncIterator[list[FeedItem]]:
        """Every job's events from ``resume`` (a cursor token; None: from now on), live,
        forever, in batches of what arrived together: the server-wide stream behind the
        UI's "job finished" notices. One reader per process serves every subscriber
        (``engine/events.py``)."""
        async for items in await self.subscribe_all_events(resume):
            yield items

    async def subscribe_all_events(self, resume: str | None = None) -> Subscription:
        """Like :meth:`follow_all_events`, subscribed when this returns: a stream
        whose headers go out before it is first read misses nothing written after."""
        return await self.feed.subscribe(resume)

    async def wait_for(self, job_id: str, timeout_s: float | None = None) -> Job:
        """Return the job once it is finished (or when ``timeout_s`` passes)."""
        return await self.waiters.wait(job_id, timeout_s)

    async def find_output(self, job_id: str, n: int) -> JobOutput:
        """The record of a job's output ``n`` (404 for an unknown job or output)."""
        job = await self.repo.get(job_id)
        for out in job.outputs:
            if out.n == n:
                return out
        raise errors.OutputNotFound(f"job {job_id} has no output {n}", job_id=job_id, n=n)

    async def output(self, job_id: str, n: int) -> tuple[JobOutput, Path]:
        """The output and a local file with its bytes: the file itself in a local
        store; with an object store, a copy cached by content hash (for thumbnails,
        previews and the MCP resource; downloads stream from the store instead)."""
        out = await self.find_output(job_id, n)
        if not self.store.is_local:
            return out, await self.store.local_copy(out.path, out.sha256)
        path = self.store.resolve(out.path)
        if not path.is_file():
            raise errors.OutputNotFound(f"output {n} of job {job_id} is missing on disk")
        return out, path

    # --- costs and budgets --------------------------------------------------------------
    async def set_token_budget(
        self, token_id: str, daily_limit: float, *, principal: auth.Principal = auth.LOCAL
    ) -> BudgetStatus:
        """Give a token a daily budget, in credits (admin only; the token must exist)."""
        auth.require(principal, auth.Action.MANAGE_TOKENS)
        await self.tokens.repo.get(token_id)  # 404 for an unknown token
        await self.ledger.set_budget(token_id, daily_limit)
        return next(b for b in await self.ledger.budgets() if b.token_id == token_id)

    async def clear_token_budget(
        self, token_id: str, *, principal: auth.Principal = auth.LOCAL
    ) -> None:
        auth.require(principal, auth.Action.MANAGE_TOKENS)
        if not await self.ledger.clear_budget(token_id):
            raise errors.NotFound(f"token {token_id!r} has no budget", token_id=token_id)

    # --- backends, models, health -------------------------------------------------------
    def _backend(self, name: str) -> Backend:
        backend = self.backends.get(name)
        if backend is None:
            raise errors.InvalidRequest(f"unknown backend {name!r}", backend=name)
        return backend

    def models(self, backend: str | None = None) -> list[ModelInfo]:
        out = []
        if backend in (None, "flux") and "flux" in self.backends:
            flux = self.backends["flux"]
            for model, cls in FLUX_MODELS.items():
                limits = flux.limit_groups(model)
                out.append(
                    ModelInfo(
                        backend="flux",
                        model=model,
                        list_price_credits=FLUX_LIST_PRICE.get(model),
                        max_active=min(limit for _k, limit in limits) if limits else None,
                        params_schema=cls.model_json_schema(),
                    )
                )
        wf_backend = self.backends.get("workflow")
        if backend in (None, "workflow") and wf_backend is not None:
            registry: dict[str, UserWorkflow] = getattr(wf_backend, "user_workflows", {})
            for wname, wf in registry.items():
                out.append(
                    ModelInfo(
                        backend="workflow",
                        model=wname,
                        params_schema=wf.params_model().model_json_schema(),
                    )
                )
        for name, pcls in PARAMS_BY_BACKEND.items():
            if name == "workflow":
                continue
            if backend in (None, name) and name in self.backends:
                b = self.backends[name]
                for model in V0_MODELS if name == "v0" else (name,):
                    out.append(
                        ModelInfo(
                            backend=name,
                            model=model,
                            max_active=min(lim for _k, lim in b.limit_groups(model))
                            if b.enabled
                            else None,
                            params_schema=pcls.model_json_schema(),
                        )
                    )
        return out

    def comfy_pool(self) -> ComfyPool:
        if self.comfy is None:
            raise errors.BackendDisabled(
                "ComfyUI is not configured: set COMFY_URL or comfy_instances"
            )
        return self.comfy

    def comfy_instances(self) -> list[InstanceStatus]:
        return self.comfy_pool().statuses()

    def _comfy_instance(self, name: str | None) -> ComfyInstance:
        pool = self.comfy_pool()
        if name is None:
            return next(iter(pool.instances.values()))
        inst = pool.get(name)
        if inst is None:
            raise errors.NotFound(f"no ComfyUI instance named {name!r}", instance=name)
        return inst

    async def comfy_object_info(
        self, instance: str | None, node: str | None
    ) -> dict[str, JsonValue]:
        """An instance's ``/object_info`` (the cached copy when fresh)."""
        inst = self._comfy_instance(instance)
        if node is None and inst.object_info:
            return inst.object_info
        try:
            return await inst.client.object_info(node)
        except httpx2.HTTPError as exc:
            raise errors.UpstreamError(
                errors.ErrorCode.BACKEND_UNAVAILABLE, f"ComfyUI {inst.name}: {exc}"
            ) from exc

    async def comfy_queue(self) -> dict[str, JsonValue]:
        """Each instance's ``/queue`` (or its error)."""
        out: dict[str, JsonValue] = {}
        for inst in self.comfy_pool().instances.values():
            try:
                out[inst.name] = await inst.client.queue_raw()
            except (httpx2.HTTPError, errors.UpstreamError) as exc:
                out[inst.name] = {"error": str(exc) or type(exc).__name__}
        return out

    async def backend_health(self) -> list[BackendHealth]:
        return [await b.health() for b in self.backends.values()]

    async def health(self) -> SystemHealth:
        problem = self.db.file_problem()
        if problem is None:
            try:
                await self.db.ping()
            except Exception as exc:
                problem = f"unreachable: {(str(exc) or type(exc).__name__).splitlines()[0]}"
        db_ok = problem is None
        backends = await self.backend_health()
        queue = await self.repo.counts() if db_ok else {}
        listed = await self.worker_statuses() if db_ok else []
        usable = any(b.status == "ok" for b in backends)
        notice = None
        if self.demo:
            notice = (
                "DEMO MODE: no backend is configured, so jobs run on simulated backends "
                "and produce placeholder images. Set BFL_API_KEY (or COMFY_URL) for real ones."
            )
        return SystemHealth(
            status="ok" if db_ok and usable else "degraded",
            version=__version__,
            demo=self.demo,
            database="ok" if db_ok else "down",
            database_problem=problem,
            database_url=self.settings.masked()["DATABASE_URL"],
            workers=sum(1 for w in listed if w.state == "live"),
            worker_processes=listed,
            backends=backends,
            queue=queue,
            notice=notice,
        )

    async def ignite(self) -> IgniteReport:
        """Check the database, folders, FLUX key, ComfyUI instances and processes."""
        return report(await run_checks(self))

    async def cached_backend_health(self, max_age_s: float = 60.0) -> list[BackendHealth]:
        """Every backend's health; a remote check (FLUX credits) is reused for
        ``max_age_s``, so probes and scrapes do not call BFL each time."""
        now = time.monotonic()
        out = []
        for name, b in self.backends.items():
            hit = self._health_cache.get(name)
            if hit is not None and now - hit[0] < max_age_s:
                out.append(hit[1])
                continue
            h = await b.health()
            if name == "flux" and h.enabled:
                self._health_cache[name] = (now, h)
            out.append(h)
        return out

    async def readiness(self) -> str | None:
        """None when ready to take jobs, else the reason it is not."""
        problem = self.db.file_problem()
        if problem is not None:
            return problem
        try:
            await self.db.ping()
        except Exception:
            return "the database is unreachable"
        backends = await self.cached_backend_health()
        if not any(b.status in ("ok", "degraded") for b in backends):
            reasons = "; ".join(dict.fromkeys(b.reason or b.status for b in backends))
            return f"no backend is usable ({reasons})"
        counts = await self.repo.counts()
        queued = sum(by.get("queued", 0) for by in counts.values())
        limit = self.settings.ready_max_queue
        if queued >= limit:
            return f"{queued} jobs are queued (READY_MAX_QUEUE={limit})"
        return None

    async def worker_statuses(self) -> list[WorkerStatus]:
        """Every registered worker process: live (a heartbeat within ``LEASE_S``) or
        gone."""
        return [
            WorkerStatus(
                id=w.info.id,
                kind=w.info.kind,
                host=w.info.hostname,
                pid=w.info.pid,
                backends=list(w.info.backends) if w.info.backends is not None else None,
                concurrency=w.info.concurrency,
                started_at=w.info.started_at,
                heartbeat_at=w.info.heartbeat_at,
                heartbeat_age_s=round(w.heartbeat_age_s, 3),
                state="live" if w.live else "gone",
            )
            for w in await self.worker_repo.listed(self.settings.lease_s)
        ]

    async def live_workers(self, backend: str | None = None) -> int:
        """Live worker processes; with ``backend``, those that claim its jobs (an
        ``orchestrator worker --backends`` that does not name it never runs them)."""
        live = await self.worker_repo.live(self.settings.lease_s)
        if backend is not None:
            live = [w for w in live if w.backends is None or backend in w.backends]
        return len(live)
