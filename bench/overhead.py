"""How much latency and throughput does Orchestrator cost on top of bare FLUX and ComfyUI clients?

Run it from the repository root::

    .venv/bin/python bench/overhead.py                 # SQLite, N=200, M=1000, both sections
    .venv/bin/python bench/overhead.py --n 50 --m 200  # quicker
    .venv/bin/python bench/overhead.py --only comfy    # just the ComfyUI section
    .venv/bin/python bench/overhead.py --postgres postgresql+asyncpg://postgres@127.0.0.1:5432/x

FLUX section (``--only flux``)
------------------------------
The upstream is the fake BFL API (``orchestrator.testing.fake_bfl``) served by uvicorn on
127.0.0.1 in a thread of this process, configured to be "zero latency": tasks are Ready at
the first poll, no ``Retry-After`` hint, 64x64 images. Everything the numbers show is
therefore client-side cost, plus the fake's own request handling, which both paths pay the
same way (it also shares this process's GIL with whatever is being measured). Two paths are
measured in one run, on the same event loop:

* **direct client**: ``FluxClient`` alone on one shared ``httpx2.AsyncClient``: submit,
  ``get_result`` until Ready, then stream the sample into memory (counted, then dropped).
* **through Orchestrator**: ``open_runtime(..., run_worker=True)`` in this process;
  ``Service.submit(FluxRequest(...))`` then ``Service.wait_for(job_id)``. The job goes
  through the database queue, the worker's claim, the backend's submit/poll/download, the
  output store (file written, metadata embedded, sha256, fsync, moved into place), the
  finish transaction and the JSON manifest. ``FLUX_POLL_INTERVAL_S`` is 0.001 so polling
  does not dominate (the fake is Ready at the first poll anyway).

Latency: N jobs one after another (after a short warm-up); median and p99 per job in
milliseconds, and the median Orchestrator adds. Throughput: M jobs started at once, at most
``--concurrency`` in flight (the worker's concurrency and ``FLUX_MAX_ACTIVE``; the direct
path uses a semaphore of the same size), timed from the first submit to the last job done.
Orchestrator's throughput is measured twice: with one watcher that polls the unfinished
jobs' statuses every 20 ms, which shows what the worker sustains, and with one
``Service.wait_for`` per job, which adds the cost of M in-process waiters.

ComfyUI section (``--only comfy``)
----------------------------------
The upstream is the fake ComfyUI (``orchestrator.testing.fake_comfy``), served the same way
with no node or step delay. Every job is the same trivial prompt, ``EmptyImage`` (64x64) into
``SaveImage``, with the colour changed on every call so ComfyUI's cache never turns a re-run
into a "fully cached" no-op. The fake's output folder is emptied before each path's run (its
``SaveImage`` counter scans the folder). Latency only: one ComfyUI runs one prompt at a time,
so a throughput run would measure the queue of the upstream.

* **direct client**: ``ComfyClient`` on one shared ``httpx2.AsyncClient`` plus one websocket
  opened once: ``POST /prompt`` with our own prompt id, frames read until
  ``executing {node: null}`` for that prompt, ``GET /history/{id}``, then the output file
  streamed from ``/view`` into memory (counted, then dropped).
* **through Orchestrator**: ``COMFY_URL`` pointing at the fake, no BFL key; ``Service.submit(
  ComfyRequest(...))`` then ``Service.wait_for(job_id)``: the database queue, the claim, the
  upstream handle stored before the POST, the websocket routing, ``/history`` and ``/view``,
  the output store and the manifest.

Each section gets its own database: a new SQLite file in a temporary folder by default, or
with ``--postgres URL`` a throwaway database created on that server (through its
``postgres`` database) and dropped at the end. The temporary folder is always removed. Only
127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2
from pydantic import JsonValue
from sqlalchemy.engine import make_url
from websockets.asyncio.client import ClientConnection, connect

from orchestrator import logs
from orchestrator.backends.comfy import ComfyClient, read_history
from orchestrator.backends.flux import FluxClient, Ready
from orchestrator.config import Settings, load_settings
from orchestrator.domain.jobs import JobStatus
from orchestrator.domain.params import ComfyRawParams, ComfyRequest, FluxPro11Params, FluxRequest
from orchestrator.engine.worker import WorkerOptions
from orchestrator.runtime import open_runtime
from orchestrator.services import Service
from orchestrator.testing.fake_bfl import FakeBfl, FakeBflConfig
from orchestrator.testing.fake_comfy import COMFYUI_VERSION, FakeComfy, FakeComfyConfig
from orchestrator.testing.serve import serve_in_thread

MODEL = "flux-pro-1.1"
API_KEY = "bench-overhead-key"
POLL_INTERVAL_S = 0.001
WARMUP = 5
WATCH_INTERVAL_S = 0.02
JOB_TIMEOUT_S = 60.0
PHASE_TIMEOUT_S = 300.0
RUN_TIMEOUT_S = 900.0
PARAMS = FluxPro11Params(prompt="overhead benchmark", width=1024, height=768, seed=1)
COMFY_SIZE = 64
COMFY_PREFIX = "bench"
COMFY_RECONCILE_INTERVAL_S = 5.0
COMFY_HEALTH_INTERVAL_S = 30.0
REAL_COMFY_ROUND_TRIP_MS = 5  # a trivial prompt on a real ComfyUI on this machine (the issue)
SECTIONS = ("flux", "comfy", "all")

_colours = itertools.count(1)


@dataclass(frozen=True)
class Latency:
    label: str
    samples_s: list[float]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_s) * 1000

    @property
    def p99_ms(self) -> float:
        if len(self.samples_s) < 2:
            return self.samples_s[0] * 1000
        return statistics.quantiles(self.samples_s, n=100, method="inclusive")[98] * 1000


@dataclass(frozen=True)
class Throughput:
    label: str
    jobs: int
    concurrency: int
    elapsed_s: float

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.elapsed_s


# --- the two paths, FLUX ------------------------------------------------------------------


async def direct_round_trip(client: FluxClient, body: dict[str, object]) -> int:
    """Submit, poll until Ready, stream the sample; returns the bytes downloaded."""
    sub = await client.submit(MODEL, body)
    while True:
        outcome, _hint = await client.get_result(sub.polling_url)
        if isinstance(outcome, Ready):
            break
        await asyncio.sleep(POLL_INTERVAL_S)
    size = 0
    async for chunk in client.download(outcome.result.sample):
        size += len(chunk)
    if size == 0:
        raise RuntimeError("empty download")
    return size


async def orchestrator_job(service: Service, req: FluxRequest) -> None:
    job, _created = await service.submit(req)
    await expect_succeeded(service, job.id, JOB_TIMEOUT_S)


async def expect_succeeded(service: Service, job_id: str, timeout_s: float) -> None:
    done = await service.wait_for(job_id, timeout_s=timeout_s)
    if done.status is not JobStatus.SUCCEEDED:
        raise RuntimeError(f"job {job_id} ended {done.status.value}: {done.error}")


async def watch_until_done(service: Service, job_ids: list[str], timeout_s: float) -> None:
    """One watcher for many jobs: every ``WATCH_INTERVAL_S``, one query for the statuses
    of the jobs not finished yet."""
    pending = set(job_ids)
    async with asyncio.timeout(timeout_s):
        while pending:
            await asyncio.sleep(WATCH_INTERVAL_S)
            for job_id, (status, _cancel) in (await service.repo.status_of(list(pending))).items():
                if status is JobStatus.SUCCEEDED:
                    pending.discard(job_id)
                elif status.terminal:
                    job = await service.get_job(job_id)
                    raise RuntimeError(f"job {job_id} ended {status.value}: {job.error}")


# --- the two paths, ComfyUI ---------------------------------------------------------------


def comfy_workflow() -> dict[str, dict[str, JsonValue]]:
    """The trivial prompt (an empty image, saved), in a colour not used before in this run,
    so ComfyUI's cache never makes it a "fully cached" no-op."""
    colour = next(_colours) % 0x1000000
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {
                "width": COMFY_SIZE,
                "height": COMFY_SIZE,
                "batch_size": 1,
                "color": colour,
            },
        },
        "2": {
            "class_type": "SaveImage",
            "inputs": {"images": ["1", 0], "filename_prefix": COMFY_PREFIX},
        },
    }


async def comfy_direct_round_trip(client: ComfyClient, ws: ClientConnection, client_id: str) -> int:
    """POST the prompt with our own id, read the websocket until its ``executing {node:
    null}``, read its history entry, stream the output; returns the bytes downloaded."""
    prompt_id = str(uuid.uuid4())
    await client.post_prompt(comfy_workflow(), prompt_id, client_id)
    async with asyncio.timeout(JOB_TIMEOUT_S):
        while True:
            raw = await ws.recv()
            if isinstance(raw, bytes):
                continue  # binary previews
            msg = json.loads(raw)
            data = msg.get("data")
            if not isinstance(data, Mapping) or data.get("prompt_id") != prompt_id:
                continue
            kind = msg.get("type")
            if kind in ("execution_error", "execution_interrupted"):
                raise RuntimeError(f"prompt {prompt_id}: {kind} {data}")
            if kind == "executing" and data.get("node") is None:
                break
    entry = await client.history(prompt_id)
    if entry is None:
        raise RuntimeError(f"prompt {prompt_id} is not in the history")
    outcome = read_history(entry)
    if outcome.status != "success" or not outcome.files:
        raise RuntimeError(f"prompt {prompt_id} ended {outcome.status}: {outcome.error}")
    size = 0
    async for chunk in client.view(outcome.files[0].ref):
        size += len(chunk)
    if size == 0:
        raise RuntimeError("empty download")
    return size


async def orchestrator_comfy_job(service: Service) -> None:
    req = ComfyRequest(params=ComfyRawParams.model_validate({"workflow": comfy_workflow()}))
    job, _created = await service.submit(req)
    await expect_succeeded(service, job.id, JOB_TIMEOUT_S)


def clear_comfy_outputs(fake: FakeComfy) -> None:
    """Empty the fake's output folder: its ``SaveImage`` scans the folder for the next
    counter on every save, so each path starts from the same (empty) folder."""
    for path in fake.output_dir.glob(f"{COMFY_PREFIX}_*"):
        path.unlink()


# --- measuring ----------------------------------------------------------------------------


async def sequential(label: str, n: int, one_job: Callable[[], Awaitable[object]]) -> Latency:
    for _ in range(WARMUP):
        await one_job()
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await one_job()
        samples.append(time.perf_counter() - started)
    return Latency(label, samples)


async def direct_throughput(client: FluxClient, m: int, concurrency: int) -> Throughput:
    body = PARAMS.upstream_body()
    gate = asyncio.Semaphore(concurrency)

    async def guarded() -> None:
        async with gate:
            await direct_round_trip(client, body)

    started = time.perf_counter()
    await asyncio.gather(*(guarded() for _ in range(m)))
    return Throughput("direct client", m, concurrency, time.perf_counter() - started)


async def orchestrator_throughput(
    service: Service, m: int, concurrency: int, *, wait_each: bool
) -> Throughput:
    """Submit ``m`` jobs at once, then wait for all of them: with one ``wait_for`` per
    job (``wait_each``), or with a single watcher polling their statuses."""
    req = FluxRequest(params=PARAMS)
    started = time.perf_counter()
    submitted = await asyncio.gather(*(service.submit(req) for _ in range(m)))
    ids = [job.id for job, _created in submitted]
    if wait_each:
        await asyncio.gather(*(expect_succeeded(service, i, PHASE_TIMEOUT_S) for i in ids))
        label = "Orchestrator, wait_for"
    else:
        await watch_until_done(service, ids, PHASE_TIMEOUT_S)
        label = "Orchestrator, watcher"
    return Throughput(label, m, concurrency, time.perf_counter() - started)


# --- setup --------------------------------------------------------------------------------


def make_settings(root: Path, db_url: str | None, overrides: Mapping[str, object]) -> Settings:
    root.mkdir(parents=True, exist_ok=True)
    config_file = root / "orchestrator.toml"
    config_file.write_text("# written by bench/overhead.py\n", encoding="utf-8")
    data_dir = root / "data"
    return load_settings(
        config_file,
        {
            "data_dir": data_dir,
            "database_url": db_url or f"sqlite+aiosqlite:///{data_dir / 'orchestrator.db'}",
            "demo_mode": "off",
            "auth_disabled": True,  # the loopback benchmark calls the API without a token
            "log_level": "WARNING",
            "log_format": "console",
            **overrides,
        },
    )


def flux_settings(root: Path, base_url: str, db_url: str | None, concurrency: int) -> Settings:
    return make_settings(
        root,
        db_url,
        {
            "bfl_api_key": API_KEY,
            "flux_base_url": base_url,
            "flux_poll_interval_s": POLL_INTERVAL_S,
            "flux_max_active": concurrency,
            "worker_concurrency": concurrency,
            "comfy_url": "",  # blank means none, whatever the environment says
            "comfy_instances": [],
        },
    )


def comfy_settings(root: Path, base_url: str, db_url: str | None, concurrency: int) -> Settings:
    return make_settings(
        root,
        db_url,
        {
            "bfl_api_key": "",  # blank means none, whatever the environment says
            "comfy_url": base_url,
            "comfy_instances": [],
            "comfy_reconcile_interval_s": COMFY_RECONCILE_INTERVAL_S,
            "comfy_health_interval_s": COMFY_HEALTH_INTERVAL_S,
            "worker_concurrency": concurrency,
        },
    )


def worker_options(args: argparse.Namespace) -> WorkerOptions:
    return WorkerOptions(
        concurrency=args.concurrency, lease_s=30, poll_interval_s=0.05, shutdown_grace_s=5
    )


def section_database(
    args: argparse.Namespace, root: Path
) -> AbstractAsyncContextManager[tuple[str | None, str]]:
    """A database of its own for one section: a throwaway PostgreSQL database, or a new
    SQLite file under ``root``."""
    if args.postgres:
        return throwaway_postgres(args.postgres)
    return _sqlite(root / "data" / "orchestrator.db")


@asynccontextmanager
async def throwaway_postgres(url: str) -> AsyncIterator[tuple[str | None, str]]:
    """Create a fresh database next to ``url``'s; yields its URL and a description."""
    import asyncpg

    base = make_url(url).set(drivername="postgresql+asyncpg")
    if base.host not in (None, "127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"refusing to use a non-local PostgreSQL host: {base.host}")
    admin_dsn = base.set(drivername="postgresql", database="postgres").render_as_string(
        hide_password=False
    )
    name = f"orch_bench_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        version = await conn.fetchval("SHOW server_version")
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield (
            base.set(database=name).render_as_string(hide_password=False),
            f"PostgreSQL {version} on {base.host}:{base.port or 5432} (throwaway db {name})",
        )
    finally:
        conn = await asyncpg.connect(admin_dsn, timeout=10)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


# --- report -------------------------------------------------------------------------------


def latency_table(direct: Latency, orch: Latency) -> str:
    width = max(22, len(direct.label), len(orch.label))
    rows = [
        f"| {'path':<{width}} | jobs | median ms | p99 ms | added median ms |",
        f"|{'-' * (width + 2)}|-----:|----------:|-------:|----------------:|",
    ]
    for lat in (direct, orch):
        added = "-" if lat is direct else f"{orch.median_ms - direct.median_ms:+.2f}"
        rows.append(
            f"| {lat.label:<{width}} | {len(lat.samples_s):>4} | {lat.median_ms:>9.2f} "
            f"| {lat.p99_ms:>6.2f} | {added:>15} |"
        )
    return "\n".join(rows)


def throughput_table(direct: Throughput, *orch: Throughput) -> str:
    rows = [
        "| path                   | jobs | in flight | wall s | jobs/s | vs direct |",
        "|------------------------|-----:|----------:|-------:|-------:|----------:|",
    ]
    for t in (direct, *orch):
        share = "-" if t is direct else f"{t.jobs_per_s / direct.jobs_per_s:.0%}"
        rows.append(
            f"| {t.label:<22} | {t.jobs:>4} | {t.concurrency:>9} | {t.elapsed_s:>6.2f} "
            f"| {t.jobs_per_s:>6.1f} | {share:>9} |"
        )
    return "\n".join(rows)


def footnote(text: str) -> None:
    print(textwrap.fill(text, width=92))


# --- the FLUX section ---------------------------------------------------------------------


async def measure_direct(
    args: argparse.Namespace, fake: FakeBfl, base_url: str
) -> tuple[Latency, Throughput]:
    limits = httpx2.Limits(max_connections=200, max_keepalive_connections=50)
    async with httpx2.AsyncClient(
        timeout=httpx2.Timeout(10.0, read=60.0), limits=limits, follow_redirects=False
    ) as http:
        client = FluxClient(http, base_url, API_KEY)
        body = PARAMS.upstream_body()
        fake.reset()  # the fake's submit scans every task it ever saw: start each phase empty
        latency = await sequential("direct client", args.n, lambda: direct_round_trip(client, body))
        fake.reset()
        for _ in range(WARMUP):
            await direct_round_trip(client, body)
        throughput = await direct_throughput(client, args.m, args.concurrency)
    return latency, throughput


async def measure_orchestrator(
    args: argparse.Namespace, fake: FakeBfl, settings: Settings
) -> tuple[Latency, list[Throughput]]:
    async with open_runtime(settings, run_worker=True, worker_options=worker_options(args)) as rt:
        req = FluxRequest(params=PARAMS)
        fake.reset()
        latency = await sequential(
            "through Orchestrator", args.n, lambda: orchestrator_job(rt.service, req)
        )
        throughputs = []
        for wait_each in (False, True):
            fake.reset()
            throughputs.append(
                await orchestrator_throughput(
                    rt.service, args.m, args.concurrency, wait_each=wait_each
                )
            )
    return latency, throughputs


async def flux_section(args: argparse.Namespace, root: Path) -> None:
    fake = FakeBfl(
        FakeBflConfig(
            api_keys={API_KEY},
            credits=1e12,
            task_duration_s=0.0,
            poll_retry_after_s=0,
            image_size=(64, 64),
            active_limit=100_000,
            kontext_max_limit=100_000,
        )
    )
    with serve_in_thread(fake.app, host="127.0.0.1") as served:
        fake.public_base_url = served.base_url
        async with section_database(args, root) as (db_url, db_label):
            settings = flux_settings(root, served.base_url, db_url, args.concurrency)
            print("# FLUX")
            print()
            print(f"database: {db_label}")
            print(
                f"fake BFL: {served.base_url}, uvicorn in a thread of this process; Ready at "
                f"the first poll, 64x64 JPEG samples"
            )
            print()
            direct_lat, direct_tp = await measure_direct(args, fake, served.base_url)
            orch_lat, orch_tps = await measure_orchestrator(args, fake, settings)

    print(f"## Latency: {args.n} sequential jobs per path (after {WARMUP} warm-up jobs)")
    print()
    print(latency_table(direct_lat, orch_lat))
    print()
    footnote(
        "Direct client: submit, get_result until Ready, the sample streamed into memory "
        "(nothing written). Orchestrator: Service.submit + Service.wait_for; the same HTTP "
        "calls plus the database queue, the claim, every state transition, and writing "
        "the output to disk (metadata embedded, sha256, fsync, rename) plus a JSON "
        "manifest: that disk work is part of its cost and the direct path does none of it. "
        f"FLUX_POLL_INTERVAL_S={POLL_INTERVAL_S} so polling does not dominate (the fake is "
        "Ready at the first poll anyway)."
    )
    print()
    print(f"## Throughput: {args.m} jobs started at once, at most {args.concurrency} in flight")
    print()
    print(throughput_table(direct_tp, *orch_tps))
    print()
    footnote(
        "Timed from the first submit to the last job finished. Direct: asyncio.gather behind "
        f"a semaphore of {args.concurrency} (after {WARMUP} warm-up round trips). "
        "Orchestrator: all jobs submitted at once with Service.submit (worker concurrency "
        f"and FLUX_MAX_ACTIVE = {args.concurrency}), then awaited by one watcher querying "
        f"the unfinished jobs' statuses every {WATCH_INTERVAL_S * 1000:.0f} ms ('watcher'), "
        "or by one Service.wait_for per job ('wait_for'; each waiter also re-reads its job "
        "from the database about once a second). Same note on disk writes as above."
    )


# --- the ComfyUI section ------------------------------------------------------------------


async def measure_comfy_direct(args: argparse.Namespace, fake: FakeComfy, base_url: str) -> Latency:
    client_id = uuid.uuid4().hex
    ws_url = f"{base_url.replace('http://', 'ws://', 1)}/ws?clientId={client_id}"
    async with (
        httpx2.AsyncClient(timeout=httpx2.Timeout(10.0, read=60.0), follow_redirects=False) as http,
        connect(ws_url, max_size=None) as ws,
    ):
        client = ComfyClient(http, base_url, "bench")
        clear_comfy_outputs(fake)
        return await sequential(
            "comfy direct client",
            args.n,
            lambda: comfy_direct_round_trip(client, ws, client_id),
        )


async def measure_comfy_orchestrator(
    args: argparse.Namespace, fake: FakeComfy, settings: Settings
) -> Latency:
    async with open_runtime(settings, run_worker=True, worker_options=worker_options(args)) as rt:
        clear_comfy_outputs(fake)
        return await sequential(
            "comfy through Orchestrator", args.n, lambda: orchestrator_comfy_job(rt.service)
        )


async def comfy_section(args: argparse.Namespace, root: Path) -> None:
    fake = FakeComfy(
        FakeComfyConfig(base_dir=root / "fake-comfy", node_delay_s=0.0, step_delay_s=0.0)
    )
    with serve_in_thread(fake.app, host="127.0.0.1", lifespan="on") as served:
        async with section_database(args, root) as (db_url, db_label):
            settings = comfy_settings(root, served.base_url, db_url, args.concurrency)
            print("# ComfyUI")
            print()
            print(f"database: {db_label}")
            print(
                f"fake ComfyUI {COMFYUI_VERSION}: {served.base_url}, uvicorn in a thread of this "
                f"process; no node or step delay, EmptyImage {COMFY_SIZE}x{COMFY_SIZE} -> "
                "SaveImage (PNG)"
            )
            print()
            direct_lat = await measure_comfy_direct(args, fake, served.base_url)
            orch_lat = await measure_comfy_orchestrator(args, fake, settings)

    print(f"## Latency: {args.n} sequential prompts per path (after {WARMUP} warm-up prompts)")
    print()
    print(latency_table(direct_lat, orch_lat))
    print()
    footnote(
        "Direct client: POST /prompt with our own prompt id, one websocket (opened once) read "
        "until executing {node: null} for that prompt, GET /history/{id}, the output streamed "
        "from /view into memory (nothing written). Orchestrator: Service.submit(ComfyRequest) "
        "+ Service.wait_for; the same calls plus the database queue, the claim, every state "
        "transition, the upstream handle stored before the POST, and writing the output to "
        "disk (metadata embedded, sha256, fsync, rename) plus a JSON manifest. The fake's own "
        "cost (validating the prompt, rendering and saving the PNG, the events, /view) is in "
        "both rows, and it runs in this process, sharing its GIL. For scale: a real ComfyUI "
        f"on this machine does this trivial prompt's round trip in about "
        f"{REAL_COMFY_ROUND_TRIP_MS} ms (figure from the issue, not measured here). The "
        "colour changes on every call, so no prompt is served from ComfyUI's cache. No "
        "throughput table: a ComfyUI instance runs one prompt at a time."
    )


# --- main ---------------------------------------------------------------------------------


async def run(args: argparse.Namespace, root: Path) -> None:
    print(
        f"python {platform.python_version()} ({platform.python_implementation()}), "
        f"{os.cpu_count()} CPUs, {platform.platform()}"
    )
    print()
    sections = []
    if args.only in ("flux", "all"):
        sections.append(flux_section)
    if args.only in ("comfy", "all"):
        sections.append(comfy_section)
    for i, section in enumerate(sections):
        if i:
            print()
        await section(args, root / section.__name__)
        sys.stdout.flush()


@asynccontextmanager
async def _sqlite(path: Path) -> AsyncIterator[tuple[str | None, str]]:
    yield None, f"SQLite file {path.name} in a temp folder (WAL)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=200, help="sequential jobs per path")
    parser.add_argument("--m", type=int, default=1000, help="jobs in the FLUX throughput run")
    parser.add_argument("--concurrency", type=int, default=64, help="jobs in flight")
    parser.add_argument(
        "--only", choices=SECTIONS, default="all", help="which section to run (default: all)"
    )
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="run Orchestrator on throwaway databases on this local PostgreSQL server",
    )
    args = parser.parse_args(argv)
    if args.n < 1 or args.m < 1 or not 1 <= args.concurrency <= 1000:
        parser.error("--n and --m must be positive, --concurrency between 1 and 1000")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logs.configure("ERROR", "console")  # hide start-up warnings
    with tempfile.TemporaryDirectory(prefix="orch-bench-") as tmp:
        asyncio.run(asyncio.wait_for(run(args, Path(tmp)), RUN_TIMEOUT_S))


if __name__ == "__main__":
    main()
