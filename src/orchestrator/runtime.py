"""Builds and closes the process's resources — database, HTTP client, backends,
storage, service, worker — for every entry point (``serve``, CLI commands, MCP).
Nothing is built at import time, and little is imported: the functions that build
import what they build, so that a light command (``config check``) that only asks
``demo_enabled`` does not load the database layer, the backends or the service."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from orchestrator import logs

if TYPE_CHECKING:
    import httpx2

    from orchestrator.backends.base import Backend
    from orchestrator.backends.comfy import ComfyInstanceConfig, ComfyPool
    from orchestrator.config import Settings
    from orchestrator.engine.hub import Hub
    from orchestrator.engine.processes import ProcessSupervisor
    from orchestrator.engine.queue_bus import QueueBus
    from orchestrator.engine.webhooks import WebhookDispatcher, WebhookOptions
    from orchestrator.engine.worker import Worker, WorkerOptions
    from orchestrator.metrics import Metrics
    from orchestrator.services import Service
    from orchestrator.storage import InputStore

log = logs.get(__name__)

SIMULATED_BFL_ORIGIN = "http://simulated-bfl.invalid"
SIMULATED_BFL_KEY = "simulated-key"


def demo_enabled(settings: Settings) -> bool:
    if settings.demo_mode == "on":
        return True
    if settings.demo_mode == "off":
        return False
    return (
        settings.bfl_api_key is None
        and settings.comfy_url is None
        and not settings.comfy_instances
        and not settings.comfy_processes
    )


def http_timeout(settings: Settings) -> httpx2.Timeout:
    import httpx2

    return httpx2.Timeout(
        connect=settings.http_connect_timeout_s,
        read=settings.http_read_timeout_s,
        write=settings.http_read_timeout_s,
        pool=settings.http_connect_timeout_s,
    )


def _metrics() -> Metrics:
    from orchestrator.metrics import Metrics

    return Metrics()


@dataclass
class Runtime:
    settings: Settings
    service: Service
    worker: Worker | None
    demo: bool
    webhooks: WebhookDispatcher | None = None
    metrics: Metrics = field(default_factory=_metrics)
    processes: ProcessSupervisor | None = None
    # PostgreSQL: wakes the workers of other processes when a job becomes claimable
    # here, and (in a process that runs a worker) this one's when theirs do
    bus: QueueBus | None = None
    _stack: AsyncExitStack = field(default_factory=AsyncExitStack, repr=False)


async def _build_backends(
    settings: Settings, stack: AsyncExitStack, demo: bool, inputs: InputStore
) -> tuple[dict[str, Backend], ComfyPool | None]:
    import httpx2

    from orchestrator.backends.comfy import ComfyBackend
    from orchestrator.backends.flux import FluxBackend
    from orchestrator.backends.user_workflows import load_user_workflows
    from orchestrator.backends.v0_wiring import build_v0_backend
    from orchestrator.domain.params import COMFY_BACKENDS
    from orchestrator.outbound import AddressGuard

    http = await stack.enter_async_context(
        httpx2.AsyncClient(
            timeout=http_timeout(settings),
            limits=httpx2.Limits(max_connections=200, max_keepalive_connections=50),
            follow_redirects=False,
            headers={"user-agent": "orchestrator"},
        )
    )
    flux_backend = functools.partial(
        FluxBackend,
        max_active=settings.flux_max_active,
        kontext_max_active=settings.flux_kontext_max_active,
        poll_interval_s=settings.flux_poll_interval_s,
        deadline_s=settings.flux_deadline_s,
        key_hosts=settings.flux_key_hosts,
        result_hosts=settings.flux_result_hosts,
        guard=AddressGuard(settings.upstream_allow_private, "UPSTREAM_ALLOW_PRIVATE"),
        max_output_bytes=settings.flux_max_output_mb * 1024 * 1024,
        download_timeout_s=settings.download_timeout_s,
    )
    if settings.bfl_api_key is not None:
        flux = flux_backend(
            http,
            base_url=str(settings.flux_base_url),
            api_key=settings.bfl_api_key.get_secret_value(),
        )
    elif demo:
        from orchestrator.testing.fake_bfl import FakeBfl, FakeBflConfig

        fake = FakeBfl(
            FakeBflConfig(
                api_keys={SIMULATED_BFL_KEY},
                credits=1_000_000.0,
                task_duration_s=2.0,
                label="SIMULATED",
                public_base_url=SIMULATED_BFL_ORIGIN,
            )
        )
        sim_http = await stack.enter_async_context(
            httpx2.AsyncClient(
                transport=httpx2.ASGITransport(app=fake.app),
                timeout=http_timeout(settings),
            )
        )
        flux = flux_backend(
            sim_http, base_url=SIMULATED_BFL_ORIGIN, api_key=SIMULATED_BFL_KEY, simulated=True
        )
    else:
        flux = FluxBackend(http, base_url=str(settings.flux_base_url), api_key=None)
    backends: dict[str, Backend] = {"flux": flux}
    backends["v0"] = await build_v0_backend(
        settings, stack, http, demo=demo, inputs=inputs, http_timeout=http_timeout(settings)
    )
    pool = await _build_comfy_pool(settings, stack, http, demo)
    user_workflows, _problems = load_user_workflows(settings.comfy_workflows_dir)
    for kind in COMFY_BACKENDS:
        backends[kind] = ComfyBackend(
            kind,
            pool,
            inputs,
            deadline_s=settings.comfy_deadline_s,
            reconcile_interval_s=settings.comfy_reconcile_interval_s,
            disabled_reason="COMFY_URL (or comfy_instances, comfy_processes) is not set",
            user_workflows=user_workflows,
            max_output_bytes=settings.comfy_max_output_mb * 1024 * 1024,
            download_timeout_s=settings.download_timeout_s,
        )
    return backends, pool


def comfy_instances(settings: Settings) -> list[ComfyInstanceConfig]:
    from orchestrator.backends.comfy import ComfyInstanceConfig

    out = [
        ComfyInstanceConfig(name=i.name, url=str(i.url), max_in_flight=i.max_in_flight)
        for i in settings.comfy_instances
    ]
    out += [
        ComfyInstanceConfig(name=p.name, url=p.url, max_in_flight=p.max_in_flight)
        for p in settings.comfy_processes
    ]
    if settings.comfy_url is not None:
        out.insert(
            0,
            ComfyInstanceConfig(
                name="default",
                url=str(settings.comfy_url),
                max_in_flight=settings.comfy_max_in_flight,
            ),
        )
    return out


async def _build_comfy_pool(
    settings: Settings, stack: AsyncExitStack, http: httpx2.AsyncClient, demo: bool
) -> ComfyPool | None:
    from orchestrator.backends.comfy import ComfyInstanceConfig, ComfyPool

    configs = comfy_instances(settings)
    simulated = False
    if not configs and demo:
        from orchestrator.testing.fake_comfy import FakeComfy, FakeComfyConfig
        from orchestrator.testing.serve import serve_in_thread

        fake = FakeComfy(FakeComfyConfig(output_dir=settings.data_path / "simulated-comfyui"))
        served = stack.enter_context(serve_in_thread(fake.app, lifespan="on"))
        configs = [ComfyInstanceConfig(name="simulated", url=served.base_url, max_in_flight=2)]
        simulated = True
    if not configs:
        return None
    pool = ComfyPool(
        configs,
        http,
        health_interval_s=settings.comfy_health_interval_s,
        open_timeout_s=settings.http_connect_timeout_s,
        simulated=simulated,
    )
    await pool.start()
    stack.push_async_callback(pool.aclose)
    return pool


@asynccontextmanager
async def open_runtime(
    settings: Settings,
    *,
    run_worker: bool,
    worker_options: WorkerOptions | None = None,
    webhook_options: WebhookOptions | None = None,
    start_processes: bool | None = None,
    wait_processes: bool = False,
) -> AsyncIterator[Runtime]:
    """``start_processes`` (default: ``run_worker``) starts the configured local
    ComfyUI processes, stopped when the runtime closes; ``wait_processes`` waits
    until they are ready (or gave up) before going on."""
    from orchestrator.backends.v0 import V0Backend
    from orchestrator.backends.v0_pages import TildaPages
    from orchestrator.db.engine import open_database
    from orchestrator.engine.hub import Hub
    from orchestrator.engine.processes import ProcessSupervisor
    from orchestrator.engine.worker import Worker, WorkerOptions
    from orchestrator.metrics import Metrics
    from orchestrator.services import Service
    from orchestrator.storage import input_store_for, output_store_for

    demo = demo_enabled(settings)
    async with AsyncExitStack() as stack:
        db = await open_database(settings.db_url)
        stack.push_async_callback(db.dispose)
        inputs = input_store_for(settings)
        supervisor = None
        pool_ref: list[ComfyPool | None] = [None]
        start = run_worker if start_processes is None else start_processes
        if settings.comfy_processes and start:

            async def ready(_name: str) -> None:
                if pool_ref[0] is not None:
                    await pool_ref[0].refresh(force_info=True)

            supervisor = ProcessSupervisor(
                settings.comfy_processes,
                settings.data_path / "logs",
                on_ready=ready,
                run_dir=settings.data_path / "run",
            )
            supervisor.start()
            # closed after the pool and the worker (the stack unwinds in reverse)
            stack.push_async_callback(supervisor.stop)
            if wait_processes:
                await supervisor.wait_ready()
        backends, pool = await _build_backends(settings, stack, demo, inputs)
        pool_ref[0] = pool
        if supervisor is not None and pool is not None:
            # work goes to a supervised process's URL only while the process started
            # there is ready: not to a stranger (or an orphan) answering on its port
            for name, proc in supervisor.processes.items():
                inst = pool.get(name)
                if inst is not None:
                    inst.gate = proc.unavailable_reason
            await pool.refresh()
        for b in backends.values():
            stack.push_async_callback(b.aclose)
        store = output_store_for(settings)
        hub = Hub()
        service = Service(settings, db, backends, store, hub, demo=demo, inputs=inputs, comfy=pool)
        service.processes = supervisor
        stack.push_async_callback(service.feed.stop)
        stack.push_async_callback(service.waiters.close)
        stack.push_async_callback(service.tilda.aclose)  # background Tilda imports
        bus = None
        if service.feed.pg is not None:
            from orchestrator.engine.queue_bus import QueueBus

            # closed before the feed (which closes the connection both use) and
            # after the worker (whose shutdown requeues send a last NOTIFY)
            bus = QueueBus(service.feed.pg, hub)
            bus.start()
            stack.push_async_callback(bus.stop)
        v0 = backends.get("v0")
        if isinstance(v0, V0Backend):
            v0.pages = TildaPages(service.tilda)  # imported pages as v0 context
        metrics = Metrics()
        if demo:
            log.warning(
                "DEMO MODE: no backend is configured; jobs run on SIMULATED backends and "
                "produce placeholder images. Set BFL_API_KEY or COMFY_URL for real generation."
            )
        for b in backends.values():
            if not b.enabled:
                log.warning("backend disabled", backend=b.name, reason=b.disabled_reason)
        # The delivery loop starts before the worker, so it stops after it: events of
        # jobs that finish during the worker's shutdown grace still go out.
        dispatcher = None
        reason = settings.webhooks_disabled_reason
        if reason is not None:
            level = log.warning if settings.webhook_url else log.info
            level("webhooks disabled", reason=reason)
        elif run_worker:
            dispatcher = await _start_webhooks(
                settings, stack, service, hub, webhook_options, metrics
            )
        worker = None
        if run_worker:
            opts = worker_options or WorkerOptions.from_settings(settings)
            _check_claimed(backends, opts)
            if bus is not None:
                await bus.listen()  # listening before the worker's first look at the queue
            worker = Worker(
                service.repo, service.worker_repo, backends, store, hub, opts, metrics=metrics
            )
            await worker.start()
            stack.push_async_callback(worker.stop)
        runtime = Runtime(
            settings=settings,
            service=service,
            worker=worker,
            demo=demo,
            webhooks=dispatcher,
            metrics=metrics,
            processes=supervisor,
            bus=bus,
        )
        runtime._stack = stack
        yield runtime


def _check_claimed(backends: dict[str, Backend], opts: WorkerOptions) -> None:
    """A worker told to claim the jobs of named backends (``worker --backends``)
    must be able to run them: an unknown or disabled one stops it at start."""
    from orchestrator import errors

    for name in opts.backends or ():
        b = backends.get(name)
        if b is None:
            known = ", ".join(backends)
            raise errors.ConfigError([f"unknown backend {name!r} (known: {known})"])
        if not b.enabled:
            raise errors.BackendDisabled(
                f"--backends names {name}, which cannot run here: {b.disabled_reason}",
                backend=name,
                reason=b.disabled_reason,
            )


async def _start_webhooks(
    settings: Settings,
    stack: AsyncExitStack,
    service: Service,
    hub: Hub,
    options: WebhookOptions | None,
    metrics: Metrics,
) -> WebhookDispatcher:
    import httpx2

    from orchestrator.engine.webhooks import WebhookDispatcher

    assert settings.webhook_secret is not None
    http = await stack.enter_async_context(
        httpx2.AsyncClient(
            timeout=httpx2.Timeout(settings.webhook_timeout_s),
            limits=httpx2.Limits(max_connections=100, max_keepalive_connections=20),
            follow_redirects=False,
            trust_env=False,  # no proxy from the environment: targets are checked here
            headers={"user-agent": "orchestrator-webhooks"},
        )
    )
    dispatcher = WebhookDispatcher(
        service.webhooks,
        http,
        hub,
        secret=settings.webhook_secret.get_secret_value(),
        allow_private=settings.webhook_allow_private,
        timeout_s=settings.webhook_timeout_s,
        options=options,
        metrics=metrics,
    )
    await dispatcher.start()
    stack.push_async_callback(dispatcher.stop)
    return dispatcher


async def start_worker(runtime: Runtime, options: WorkerOptions) -> Worker:
    """Start a worker inside an open runtime (one-shot commands restrict it to their
    own jobs with ``options.only_ids``); it stops when the runtime closes."""
    from orchestrator.engine.worker import Worker

    svc = runtime.service
    if runtime.bus is not None:
        await runtime.bus.listen()
    worker = Worker(
        svc.repo, svc.worker_repo, svc.backends, svc.store, svc.hub, options, runtime.metrics
    )
    await worker.start()
    runtime._stack.push_async_callback(worker.stop)
    return worker
