"""How much latency and throughput does Orchestrator cost on top of bare FLUX and ComfyUI clients?

Run it from the repository root::

    .venv/bin/python bench/overhead.py                    # 3 rounds, SQLite (and PostgreSQL if
                                                          # BENCH_POSTGRES_URL is set)
    .venv/bin/python bench/overhead.py --postgres postgresql+asyncpg://postgres@127.0.0.1:5432/postgres
    .venv/bin/python bench/overhead.py --rounds 1 --n 20 --m 100 --batch 100   # quick look
    .venv/bin/python bench/overhead.py --stores postgres --only comfy

Defaults: 3 rounds; N=50 sequential jobs per path for latency (after 5 warm-up jobs); a
500-job batch at concurrency 24; M=300 jobs at concurrency 64 for queue throughput; SQL
counted over 20 FLUX jobs. SQLite only, unless a PostgreSQL URL is given (``--postgres`` or
the environment variable ``BENCH_POSTGRES_URL``): then both stores, or the ones ``--stores``
names. A default run on both stores took about 3 minutes on the 2-core machine this was
written on, and would take about 6 at the per-job cost issue 13 started from: the
Orchestrator side of the batch and throughput runs dominates, so a slower job path makes a
longer run (the header says how long it took).

What it prints: the figures of issue 13's job-path rows, each against its baseline measured
in the same run (the bare client), with min/median/max over the rounds, per store, as one
Markdown summary table::

    | figure | goal | min | median | max | baseline median | ratio median |

followed by one detail table per measurement (every round, both paths). Progress goes to
stderr, tables to stdout.

The rounds
----------
Every figure is an A/B pair measured back to back in the same process and on the same event
loop: the bare client (A) and the same work through Orchestrator (B). Round 1 runs A then B,
round 2 B then A, and so on, so neither path always runs on a warmer (or more loaded)
machine. Every B runs on a fresh database: a new SQLite file (WAL) in a temporary folder, or
a throwaway PostgreSQL database created through the server's ``postgres`` database and
dropped when that measurement ends. Per round and store:

* **FLUX latency**: N jobs one after another, per path; per-job median and p99, and this
  process's CPU time per job (the fakes' included); the figure is the median Orchestrator
  adds (ms) and the ratio of the two medians.
* **SQL per FLUX job**: right after the FLUX latency run, on the same runtime, 20 more jobs
  run one after another while a listener counts what reaches the database (below).
* **ComfyUI latency**: the same for N trivial ComfyUI prompts.
* **Batch**: 500 FLUX jobs started at once, at most 24 in flight (worker concurrency and
  ``FLUX_MAX_ACTIVE``; the direct path uses a semaphore of the same size), each awaited by its
  own ``Service.wait_for``, as a client of the service would; the figure is the wall time
  from the first submit to the last job done, Orchestrator over direct.
* **Queue throughput**: M FLUX jobs started at once, at most ``--concurrency`` in flight,
  awaited by one watcher that queries the unfinished jobs' statuses every 20 ms (what the
  worker sustains, without the cost of M waiters); jobs/s, Orchestrator over direct.

Each Orchestrator measurement starts with 5 warm-up jobs on its fresh runtime; each direct
measurement with 5 warm-up round trips.

The two paths, FLUX
-------------------
The upstream is the fake BFL API (``orchestrator.testing.fake_bfl``) served by uvicorn on
127.0.0.1 in a thread of this process, configured to be "zero latency": tasks are Ready at
the first poll, no ``Retry-After`` hint, 64x64 images. Everything the numbers show is
therefore client-side cost, plus the fake's own request handling, which both paths pay the
same way (it also shares this process's GIL with whatever is being measured). The fake
forgets its tasks before every measurement.

* **direct client**: ``FluxClient`` alone on one shared ``httpx2.AsyncClient``: submit,
  ``get_result`` until Ready, then stream the sample into memory (counted, then dropped).
* **through Orchestrator**: ``open_runtime(..., run_worker=True)`` in this process;
  ``Service.submit(FluxRequest(...))`` then ``Service.wait_for(job_id)``. The job goes
  through the database queue, the worker's claim, the backend's submit/poll/download, the
  output store (file written, metadata embedded, sha256, fsync, moved into place), the
  finish transaction and the JSON manifest. ``FLUX_POLL_INTERVAL_S`` is 0.001 so polling
  does not dominate (the fake is Ready at the first poll anyway).

The two paths, ComfyUI
----------------------
The upstream is the fake ComfyUI (``orchestrator.testing.fake_comfy``), served the same way
with no node or step delay. Every job is the same trivial prompt, ``EmptyImage`` (64x64) into
``SaveImage``, with the colour changed on every call so ComfyUI's cache never turns a re-run
into a "fully cached" no-op. The fake's output folder is emptied before each measurement (its
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

Counting SQL
------------
A SQLAlchemy ``before_cursor_execute`` listener (plus ``begin``/``commit``/``rollback``) on
every synchronous engine the ``Database`` exposes (``Database.engines()`` where it exists,
else ``db.engine.sync_engine``) counts, over the counted jobs: statements (cursor
executions, including ``BEGIN``/``BEGIN IMMEDIATE``/``COMMIT`` when they are sent as SQL),
transactions (``begin`` events, or ``BEGIN`` statements if more), and write transactions:
on SQLite the statements starting with ``BEGIN IMMEDIATE`` (the write lock taken), or the
transactions that executed an INSERT, UPDATE or DELETE where those are more (a write begun
without ``BEGIN IMMEDIATE``); on PostgreSQL the latter. Everything from the first counted
submit to the last counted job done counts: the create, the worker's transactions and its
re-claim after each finish, the waiter's reads, any background task of the runtime.

Only the loopback interface is contacted: the fakes listen on 127.0.0.1, and a PostgreSQL
URL naming another host is refused. The temporary folder is always removed and every
throwaway PostgreSQL database dropped; the run stops by itself (every wait has a timeout,
the whole run 30 minutes). If a measurement fails or times out, the tables show what was
measured before it, marked as stopped early, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import textwrap
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx2
import sqlalchemy as sa
from pydantic import JsonValue
from sqlalchemy import event
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
from orchestrator.testing.serve import ServedApp, serve_in_thread

MODEL = "flux-pro-1.1"
API_KEY = "bench-overhead-key"
POLL_INTERVAL_S = 0.001
WARMUP = 5
WATCH_INTERVAL_S = 0.02
JOB_TIMEOUT_S = 60.0
PHASE_TIMEOUT_S = 300.0
RUN_TIMEOUT_S = 1800.0
PARAMS = FluxPro11Params(prompt="overhead benchmark", width=1024, height=768, seed=1)
COMFY_SIZE = 64
COMFY_PREFIX = "bench"
COMFY_RECONCILE_INTERVAL_S = 5.0
COMFY_HEALTH_INTERVAL_S = 30.0
REAL_COMFY_ROUND_TRIP_MS = 5  # a trivial prompt on a real ComfyUI on this machine (the issue)
SECTIONS = ("flux", "comfy", "all")
STORES = ("sqlite", "postgres")
STORE_NAMES = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
POSTGRES_ENV = "BENCH_POSTGRES_URL"
LATENCY_GOAL_MS = 3.0
BATCH_GOAL_RATIO = 1.10
THROUGHPUT_GOAL_RATIO = 0.8
WRITE_TX_GOAL = 3.0

_colours = itertools.count(1)


@dataclass(frozen=True)
class Latency:
    label: str
    samples_s: list[float]
    cpu_s: float = 0.0  # this process's CPU time over the timed jobs (the fakes' included)

    @property
    def cpu_ms_per_job(self) -> float:
        return self.cpu_s / len(self.samples_s) * 1000

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


# --- counting SQL -------------------------------------------------------------------------

_WROTE = "bench_overhead_wrote"  # key in Connection.info: this transaction wrote
_DML = re.compile(r"\s*(?:WITH\b.*?\)\s*)?(INSERT|UPDATE|DELETE)\b", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class SqlCount:
    """What reached the database over ``jobs`` jobs."""

    jobs: int
    counts: Mapping[str, int]

    def per_job(self, key: str) -> float:
        return self.counts.get(key, 0) / self.jobs

    @property
    def statements(self) -> float:
        return self.per_job("statements")

    @property
    def transactions(self) -> float:
        return max(self.per_job("begin_events"), self.per_job("begin_statements"))

    def write_transactions(self, store: str) -> float:
        """SQLite: the ``BEGIN IMMEDIATE`` statements (the write lock taken), or the
        transactions that executed an INSERT, UPDATE or DELETE where those are more (a
        write begun without ``BEGIN IMMEDIATE``); PostgreSQL: the latter."""
        dml = self.per_job("dml_transactions")
        return max(self.per_job("begin_immediate"), dml) if store == "sqlite" else dml


def database_engines(db: Any) -> list[sa.Engine]:
    """Every synchronous engine the database runs statements on (each once)."""
    engines = getattr(db, "engines", lambda: [db.engine.sync_engine])()
    return list({id(e): e for e in engines}.values())


class SqlCounter:
    """Counts statements and transactions on every engine of a ``Database`` while
    attached (thread-safe: units of work may run in other threads)."""

    def __init__(self, db: Any) -> None:
        self.engines = database_engines(db)
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._listeners: list[tuple[sa.Engine, str, Callable[..., None]]] = [
            (engine, name, fn)
            for engine in self.engines
            for name, fn in (
                ("before_cursor_execute", self._on_statement),
                ("begin", self._on_begin),
                ("commit", self._on_commit),
                ("rollback", self._on_rollback),
            )
        ]

    @contextmanager
    def attached(self) -> Iterator[Counter[str]]:
        for engine, name, fn in self._listeners:
            event.listen(engine, name, fn)
        try:
            yield self._counts
        finally:
            for engine, name, fn in self._listeners:
                event.remove(engine, name, fn)

    def _bump(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._counts[key] += 1

    def _on_statement(
        self,
        conn: sa.Connection,
        _cursor: object,
        statement: str,
        _parameters: object,
        _context: object,
        _executemany: bool,
    ) -> None:
        keys = ["statements"]
        head = statement.lstrip()[:16].upper()
        if head.startswith("BEGIN"):
            keys.append("begin_statements")
            if head.startswith("BEGIN IMMEDIATE"):
                keys.append("begin_immediate")
            conn.info.pop(_WROTE, None)
        elif head.startswith(("COMMIT", "END", "ROLLBACK")):
            keys.append("end_statements")
            self._end(conn)
        elif _DML.match(statement):
            conn.info[_WROTE] = True
        self._bump(*keys)

    def _on_begin(self, conn: sa.Connection) -> None:
        conn.info.pop(_WROTE, None)
        self._bump("begin_events")

    def _on_commit(self, conn: sa.Connection) -> None:
        self._end(conn)
        self._bump("commit_events")

    def _on_rollback(self, conn: sa.Connection) -> None:
        self._end(conn)
        self._bump("rollback_events")

    def _end(self, conn: sa.Connection) -> None:
        if conn.info.pop(_WROTE, False):
            self._bump("dml_transactions")


# --- measuring ----------------------------------------------------------------------------

T = Any  # what one side of an A/B pair returns


async def sequential(label: str, n: int, one_job: Callable[[], Awaitable[object]]) -> Latency:
    for _ in range(WARMUP):
        await one_job()
    samples = []
    cpu_started = time.process_time()
    for _ in range(n):
        started = time.perf_counter()
        await one_job()
        samples.append(time.perf_counter() - started)
    return Latency(label, samples, time.process_time() - cpu_started)


async def direct_throughput(client: FluxClient, m: int, concurrency: int) -> Throughput:
    body = PARAMS.upstream_body()
    gate = asyncio.Semaphore(concurrency)

    async def guarded() -> None:
        async with gate:
            await direct_round_trip(client, body)

    started = time.perf_counter()
    async with asyncio.timeout(PHASE_TIMEOUT_S):
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
        async with asyncio.timeout(PHASE_TIMEOUT_S):
            await asyncio.gather(*(expect_succeeded(service, i, PHASE_TIMEOUT_S) for i in ids))
        label = "Orchestrator, wait_for"
    else:
        await watch_until_done(service, ids, PHASE_TIMEOUT_S)
        label = "Orchestrator, watcher"
    return Throughput(label, m, concurrency, time.perf_counter() - started)


@dataclass
class Bench:
    """The fakes (served once for the whole run) and where each measurement's files go."""

    args: argparse.Namespace
    root: Path
    fake_bfl: FakeBfl
    bfl: ServedApp
    fake_comfy: FakeComfy
    comfy: ServedApp
    db_labels: dict[str, str] = field(default_factory=dict)
    _serial: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @asynccontextmanager
    async def orchestrator(
        self,
        store: str,
        name: str,
        settings: Callable[[Path, str | None, int], Settings],
        concurrency: int,
    ) -> AsyncIterator[Service]:
        """A runtime with its worker, on a fresh database of ``store``."""
        root = self.root / f"{next(self._serial):03d}-{store}-{name}"
        try:
            async with store_database(store, self.args, root) as (db_url, label):
                self.db_labels.setdefault(store, label)
                options = WorkerOptions(
                    concurrency=concurrency, lease_s=30, poll_interval_s=0.05, shutdown_grace_s=5
                )
                async with open_runtime(
                    settings(root, db_url, concurrency), run_worker=True, worker_options=options
                ) as rt:
                    yield rt.service
        finally:
            shutil.rmtree(root, ignore_errors=True)

    # FLUX ---------------------------------------------------------------------------------

    def flux_settings(self, root: Path, db_url: str | None, concurrency: int) -> Settings:
        return flux_settings(root, self.bfl.base_url, db_url, concurrency)

    @asynccontextmanager
    async def flux_client(self) -> AsyncIterator[FluxClient]:
        limits = httpx2.Limits(max_connections=200, max_keepalive_connections=50)
        async with httpx2.AsyncClient(
            timeout=httpx2.Timeout(10.0, read=60.0), limits=limits, follow_redirects=False
        ) as http:
            yield FluxClient(http, self.bfl.base_url, API_KEY)

    async def flux_latency_direct(self) -> Latency:
        async with self.flux_client() as client:
            body = PARAMS.upstream_body()
            self.fake_bfl.reset()  # its submit scans every task it ever saw: start empty
            return await sequential(
                "direct client", self.args.n, lambda: direct_round_trip(client, body)
            )

    async def flux_latency_orchestrator(self, store: str) -> tuple[Latency, SqlCount]:
        """N jobs timed, then ``--count-jobs`` more with the SQL counter attached."""
        async with self.orchestrator(
            store, "flux-latency", self.flux_settings, self.args.concurrency
        ) as service:
            req = FluxRequest(params=PARAMS)
            self.fake_bfl.reset()
            latency = await sequential(
                "through Orchestrator", self.args.n, lambda: orchestrator_job(service, req)
            )
            counter = SqlCounter(service.db)
            with counter.attached() as counts:
                for _ in range(self.args.count_jobs):
                    await orchestrator_job(service, req)
                counted = dict(counts)
            return latency, SqlCount(self.args.count_jobs, counted)

    async def flux_throughput_direct(self, jobs: int, concurrency: int) -> Throughput:
        async with self.flux_client() as client:
            body = PARAMS.upstream_body()
            self.fake_bfl.reset()
            for _ in range(WARMUP):
                await direct_round_trip(client, body)
            return await direct_throughput(client, jobs, concurrency)

    async def flux_throughput_orchestrator(
        self, store: str, jobs: int, concurrency: int, *, wait_each: bool
    ) -> Throughput:
        name = "flux-batch" if wait_each else "flux-queue"
        async with self.orchestrator(store, name, self.flux_settings, concurrency) as service:
            req = FluxRequest(params=PARAMS)
            self.fake_bfl.reset()
            for _ in range(WARMUP):
                await orchestrator_job(service, req)
            return await orchestrator_throughput(service, jobs, concurrency, wait_each=wait_each)

    # ComfyUI ------------------------------------------------------------------------------

    def comfy_settings(self, root: Path, db_url: str | None, concurrency: int) -> Settings:
        return comfy_settings(root, self.comfy.base_url, db_url, concurrency)

    async def comfy_latency_direct(self) -> Latency:
        base_url = self.comfy.base_url
        client_id = uuid.uuid4().hex
        ws_url = f"{base_url.replace('http://', 'ws://', 1)}/ws?clientId={client_id}"
        async with (
            httpx2.AsyncClient(
                timeout=httpx2.Timeout(10.0, read=60.0), follow_redirects=False
            ) as http,
            connect(ws_url, max_size=None) as ws,
        ):
            client = ComfyClient(http, base_url, "bench")
            clear_comfy_outputs(self.fake_comfy)
            return await sequential(
                "direct client",
                self.args.n,
                lambda: comfy_direct_round_trip(client, ws, client_id),
            )

    async def comfy_latency_orchestrator(self, store: str) -> Latency:
        async with self.orchestrator(
            store, "comfy-latency", self.comfy_settings, self.args.concurrency
        ) as service:
            clear_comfy_outputs(self.fake_comfy)
            return await sequential(
                "through Orchestrator", self.args.n, lambda: orchestrator_comfy_job(service)
            )


@dataclass(frozen=True)
class Pair:
    """One A/B measurement: the bare client and Orchestrator, in one round on one store."""

    store: str
    round: int
    direct_first: bool
    direct: Any  # Latency or Throughput
    orch: Any

    @property
    def order(self) -> str:
        return "direct first" if self.direct_first else "Orchestrator first"


@dataclass
class Results:
    flux: list[Pair] = field(default_factory=list)
    comfy: list[Pair] = field(default_factory=list)
    batch: list[Pair] = field(default_factory=list)
    queue: list[Pair] = field(default_factory=list)
    sql: list[tuple[str, int, SqlCount]] = field(default_factory=list)


async def ab(
    direct_first: bool,
    direct: Callable[[], Awaitable[T]],
    orch: Callable[[], Awaitable[T]],
) -> tuple[T, T]:
    if direct_first:
        a = await direct()
        return a, await orch()
    b = await orch()
    return await direct(), b


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def run_rounds(bench: Bench, res: Results) -> None:
    """Every round, every store, every measurement; results go into ``res`` as they come."""
    args = bench.args
    flux = args.only in ("flux", "all")
    comfy = args.only in ("comfy", "all")
    for rnd in range(1, args.rounds + 1):
        first = rnd % 2 == 1
        for store in args.stores:
            where = f"round {rnd}/{args.rounds}, {STORE_NAMES[store]}"
            if flux:
                d, (o, count) = await ab(
                    first,
                    bench.flux_latency_direct,
                    partial(bench.flux_latency_orchestrator, store),
                )
                res.flux.append(Pair(store, rnd, first, d, o))
                res.sql.append((store, rnd, count))
                progress(
                    f"{where}, FLUX latency: direct {d.median_ms:.2f} ms, Orchestrator "
                    f"{o.median_ms:.2f} ms; {count.statements:.1f} statements, "
                    f"{count.write_transactions(store):.1f} write transactions per job"
                )
            if comfy:
                d, o = await ab(
                    first,
                    bench.comfy_latency_direct,
                    partial(bench.comfy_latency_orchestrator, store),
                )
                res.comfy.append(Pair(store, rnd, first, d, o))
                progress(
                    f"{where}, ComfyUI latency: direct {d.median_ms:.2f} ms, Orchestrator "
                    f"{o.median_ms:.2f} ms"
                )
            if flux:
                for kind, jobs, conc, wait_each, into in (
                    ("batch", args.batch, args.batch_concurrency, True, res.batch),
                    ("queue throughput", args.m, args.concurrency, False, res.queue),
                ):
                    d, o = await ab(
                        first,
                        partial(bench.flux_throughput_direct, jobs, conc),
                        partial(
                            bench.flux_throughput_orchestrator,
                            store,
                            jobs,
                            conc,
                            wait_each=wait_each,
                        ),
                    )
                    into.append(Pair(store, rnd, first, d, o))
                    progress(
                        f"{where}, {kind} ({jobs} jobs, {conc} in flight): direct "
                        f"{d.elapsed_s:.2f} s, Orchestrator {o.elapsed_s:.2f} s"
                    )


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


def store_database(
    store: str, args: argparse.Namespace, root: Path
) -> AbstractAsyncContextManager[tuple[str | None, str]]:
    """A fresh database for one measurement: a throwaway PostgreSQL database, or a new
    SQLite file under ``root``."""
    if store == "postgres":
        return throwaway_postgres(args.postgres)
    return _sqlite(root / "data" / "orchestrator.db")


@asynccontextmanager
async def _sqlite(path: Path) -> AsyncIterator[tuple[str | None, str]]:
    yield None, "SQLite (WAL), a new file in a temporary folder per measurement"


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
            f"PostgreSQL {version} on {base.host}:{base.port or 5432}, a throwaway database "
            "per measurement",
        )
    finally:
        conn = await asyncpg.connect(admin_dsn, timeout=10)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


# --- report -------------------------------------------------------------------------------


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: Sequence[int]) -> str:
    """A Markdown table, padded; the columns in ``left`` left-aligned, the rest right."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = (
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(
        "-" * (w + 2) if i in left else "-" * (w + 1) + ":" for i, w in enumerate(widths)
    )
    return "\n".join([line(headers), rule + "|", *(line(r) for r in rows)])


def footnote(text: str) -> None:
    print(textwrap.fill(text, width=92, break_on_hyphens=False))


@dataclass(frozen=True)
class Row:
    """One line of the summary: a figure per round, its baseline and ratio per round."""

    figure: str
    goal: str
    values: list[float]
    fmt: Callable[[float], str]
    baselines: list[float] | None = None
    base_fmt: Callable[[float], str] | None = None
    ratios: list[float] | None = None
    ratio_fmt: Callable[[float], str] = "{:.2f}".format
    # Whether the goal is met, given the median figure and the median ratio.
    met: Callable[[float, float | None], bool] | None = None

    def cells(self) -> list[str]:
        med = statistics.median(self.values)
        base = "-"
        if self.baselines and self.base_fmt:
            base = self.base_fmt(statistics.median(self.baselines))
        ratio = self.ratio_fmt(statistics.median(self.ratios)) if self.ratios else "-"
        return [
            self.figure,
            self.goal,
            self.fmt(min(self.values)),
            self.fmt(med),
            self.fmt(max(self.values)),
            base,
            ratio,
        ]

    def verdict(self) -> bool | None:
        if self.met is None:
            return None
        ratio = statistics.median(self.ratios) if self.ratios else None
        return self.met(statistics.median(self.values), ratio)


def ms(v: float) -> str:
    return f"{v:.2f} ms"


def added_ms(v: float) -> str:
    return f"{v:+.2f} ms"


def times(v: float) -> str:
    return f"{v:.2f}x"


def seconds(v: float) -> str:
    return f"{v:.2f} s"


def rate(v: float) -> str:
    return f"{v:.1f} jobs/s"


def count(v: float) -> str:
    return f"{v:.1f}"


def summary_rows(args: argparse.Namespace, res: Results) -> list[Row]:
    rows: list[Row] = []

    def by_store(pairs: list[Pair]) -> Iterator[tuple[str, list[Pair]]]:
        for store in args.stores:
            mine = [p for p in pairs if p.store == store]
            if mine:
                yield STORE_NAMES[store], mine

    for title, pairs in (("FLUX", res.flux), ("ComfyUI", res.comfy)):
        for name, mine in by_store(pairs):
            rows.append(
                Row(
                    f"added latency per {title} job vs the bare client, {name}",
                    f"≤ {LATENCY_GOAL_MS:g} ms",
                    [p.orch.median_ms - p.direct.median_ms for p in mine],
                    added_ms,
                    [p.direct.median_ms for p in mine],
                    ms,
                    [p.orch.median_ms / p.direct.median_ms for p in mine],
                    times,
                    lambda med, _r: med <= LATENCY_GOAL_MS,
                )
            )
    for name, mine in by_store(res.batch):
        rows.append(
            Row(
                f"{args.batch}-job batch at concurrency {args.batch_concurrency}, wall vs "
                f"direct, {name}",
                f"≤ {BATCH_GOAL_RATIO:.2f}",
                [p.orch.elapsed_s for p in mine],
                seconds,
                [p.direct.elapsed_s for p in mine],
                seconds,
                [p.orch.elapsed_s / p.direct.elapsed_s for p in mine],
                "{:.2f}".format,
                lambda _m, r: r is not None and r <= BATCH_GOAL_RATIO,
            )
        )
    for name, mine in by_store(res.queue):
        rows.append(
            Row(
                f"queue throughput ({args.m} jobs, {args.concurrency} in flight), {name}",
                f"≥ {THROUGHPUT_GOAL_RATIO:g}x direct",
                [p.orch.jobs_per_s for p in mine],
                rate,
                [p.direct.jobs_per_s for p in mine],
                rate,
                [p.orch.jobs_per_s / p.direct.jobs_per_s for p in mine],
                times,
                lambda _m, r: r is not None and r >= THROUGHPUT_GOAL_RATIO,
            )
        )
    for store in args.stores:
        counts = [c for s, _r, c in res.sql if s == store]
        if not counts:
            continue
        name = STORE_NAMES[store]
        rows += [
            Row(
                f"SQL statements per FLUX job (submit, worker, waiter), {name}",
                "-",
                [c.statements for c in counts],
                count,
            ),
            Row(f"transactions per FLUX job, {name}", "-", [c.transactions for c in counts], count),
            Row(
                f"write transactions per FLUX job, {name}",
                f"≤ {WRITE_TX_GOAL:g}",
                [c.write_transactions(store) for c in counts],
                count,
                met=lambda med, _r: med <= WRITE_TX_GOAL,
            ),
        ]
    return rows


def print_summary(args: argparse.Namespace, res: Results) -> None:
    rows = summary_rows(args, res)
    if not rows:
        return
    rounds = len({p.round for p in res.flux + res.comfy} | {r for _s, r, _c in res.sql})
    print(f"## Summary: min / median / max over {rounds} round(s), Orchestrator vs the bare client")
    print()
    print(
        md_table(
            ["figure", "goal", "min", "median", "max", "baseline median", "ratio median"],
            [r.cells() for r in rows],
            left=(0, 1),
        )
    )
    print()
    judged = [(r, r.verdict()) for r in rows if r.verdict() is not None]
    missed = [r for r, ok in judged if not ok]
    print(f"Goals met by the median: {len(judged) - len(missed)} of {len(judged)} rows.")
    if missed:
        print("Missed:")
        for r in missed:
            _f, goal, _min, med, _max, _base, ratio = r.cells()
            also = "" if ratio == "-" else f" (ratio {ratio})"
            print(f"- {r.figure}: {med}{also}, goal {goal}")
    print()
    footnote(
        "min/median/max: the figure in each round (latency: the Orchestrator median minus "
        "the direct median in that round; batch: Orchestrator's wall time; throughput: "
        "Orchestrator's jobs/s; SQL: per job). Baseline median: the bare client's figure, "
        "median over the rounds. Ratio median: the median over the rounds of each round's "
        "Orchestrator / direct (latency: the medians per job; batch: wall times; throughput: "
        "jobs/s). Goals are judged on the median figure, or on the ratio median where the "
        "goal is a ratio."
    )


def by_store_then_round(pairs: list[Pair]) -> list[Pair]:
    return sorted(pairs, key=lambda p: (STORES.index(p.store), p.round))


def latency_details(title: str, pairs: list[Pair]) -> None:
    print(f"## {title}")
    print()
    rows = [
        [
            STORE_NAMES[p.store],
            str(p.round),
            p.order,
            str(len(p.orch.samples_s)),
            f"{p.direct.median_ms:.2f}",
            f"{p.direct.p99_ms:.2f}",
            f"{p.orch.median_ms:.2f}",
            f"{p.orch.p99_ms:.2f}",
            f"{p.orch.median_ms - p.direct.median_ms:+.2f}",
            f"{p.orch.median_ms / p.direct.median_ms:.2f}x",
            f"{p.direct.cpu_ms_per_job:.2f}",
            f"{p.orch.cpu_ms_per_job:.2f}",
        ]
        for p in by_store_then_round(pairs)
    ]
    headers = [
        "store",
        "round",
        "order",
        "jobs",
        "direct median ms",
        "direct p99 ms",
        "Orch. median ms",
        "Orch. p99 ms",
        "added ms",
        "ratio",
        "direct CPU ms/job",
        "Orch. CPU ms/job",
    ]
    print(md_table(headers, rows, left=(0, 2)))
    print()


def throughput_details(title: str, pairs: list[Pair]) -> None:
    print(f"## {title}")
    print()
    rows = [
        [
            STORE_NAMES[p.store],
            str(p.round),
            p.order,
            str(p.orch.jobs),
            str(p.orch.concurrency),
            f"{p.direct.elapsed_s:.2f}",
            f"{p.direct.jobs_per_s:.1f}",
            f"{p.orch.elapsed_s:.2f}",
            f"{p.orch.jobs_per_s:.1f}",
            f"{p.orch.elapsed_s / p.direct.elapsed_s:.2f}",
            f"{p.orch.jobs_per_s / p.direct.jobs_per_s:.2f}x",
        ]
        for p in by_store_then_round(pairs)
    ]
    headers = [
        "store",
        "round",
        "order",
        "jobs",
        "in flight",
        "direct wall s",
        "direct jobs/s",
        "Orch. wall s",
        "Orch. jobs/s",
        "wall ratio",
        "jobs/s ratio",
    ]
    print(md_table(headers, rows, left=(0, 2)))
    print()


def sql_details(res: Results) -> None:
    print("## SQL per FLUX job (Orchestrator path)")
    print()
    rows = []
    for store, rnd, c in sorted(res.sql, key=lambda x: (STORES.index(x[0]), x[1])):
        rows.append(
            [
                STORE_NAMES[store],
                str(rnd),
                str(c.jobs),
                f"{c.statements:.1f}",
                f"{c.transactions:.1f}",
                f"{c.per_job('begin_statements'):.1f}",
                f"{c.per_job('begin_immediate'):.1f}",
                f"{c.per_job('commit_events') + c.per_job('end_statements'):.1f}",
                f"{c.per_job('rollback_events'):.1f}",
                f"{c.per_job('dml_transactions'):.1f}",
                f"{c.write_transactions(store):.1f}",
            ]
        )
    headers = [
        "store",
        "round",
        "jobs",
        "statements",
        "transactions",
        "BEGIN stmts",
        "BEGIN IMMEDIATE",
        "commits",
        "rollbacks",
        "tx with DML",
        "write tx",
    ]
    print(md_table(headers, rows, left=(0,)))
    print()
    footnote(
        "All per job, over the jobs counted right after the timed FLUX latency run (one after "
        "another, on the same runtime), on every engine of the Database; everything from the "
        "first submit to the last job done counts: the create, the worker's transactions (and "
        "its re-claims), the waiter's reads, any background task. statements: cursor "
        "executions (BEGIN counts when the engine sends it as SQL, as on SQLite). "
        "transactions: begin events (or BEGIN statements, if more). commits: commit events "
        "plus COMMIT/END/ROLLBACK sent as SQL. tx with DML: transactions that executed an "
        "INSERT, UPDATE or DELETE. write tx: SQLite, BEGIN IMMEDIATE statements, or tx with "
        "DML where those are more (a write begun without BEGIN IMMEDIATE); PostgreSQL, tx "
        "with DML."
    )
    print()


def print_details(args: argparse.Namespace, res: Results) -> None:
    if res.flux:
        latency_details(
            f"FLUX latency: {args.n} sequential jobs per path (after {WARMUP} warm-up jobs)",
            res.flux,
        )
        footnote(
            "Direct client: submit, get_result until Ready, the sample streamed into memory "
            "(nothing written). Orchestrator: Service.submit + Service.wait_for; the same HTTP "
            "calls plus the database queue, the claim, every state transition, and writing "
            "the output to disk (metadata embedded, sha256, fsync, rename) plus a JSON "
            "manifest: that disk work is part of its cost and the direct path does none of it. "
            "CPU ms/job: this process's CPU time (all threads, the fake's included) over the "
            "timed jobs, per job."
        )
        print()
    if res.comfy:
        latency_details(
            f"ComfyUI latency: {args.n} sequential prompts per path "
            f"(after {WARMUP} warm-up prompts)",
            res.comfy,
        )
        footnote(
            "Direct client: POST /prompt with our own prompt id, one websocket (opened once) "
            "read until executing {node: null} for that prompt, GET /history/{id}, the output "
            "streamed from /view into memory. Orchestrator: Service.submit(ComfyRequest) + "
            "Service.wait_for: the same calls plus the queue, the claim, the upstream handle "
            "stored before the POST, the output store and the manifest. The fake's own cost is "
            "in both rows, and it runs in this process, sharing its GIL. For scale: a real "
            f"ComfyUI on this machine does this prompt's round trip in about "
            f"{REAL_COMFY_ROUND_TRIP_MS} ms (figure from the issue, not measured here). "
            "CPU ms/job as above."
        )
        print()
    if res.batch:
        throughput_details(
            f"Batch: {args.batch} jobs started at once, at most {args.batch_concurrency} in "
            "flight, one wait_for per job",
            res.batch,
        )
        footnote(
            "Timed from the first submit to the last job finished. Direct: asyncio.gather "
            "behind a semaphore. Orchestrator: all jobs submitted with Service.submit (worker "
            "concurrency and FLUX_MAX_ACTIVE = the jobs in flight), each awaited by its own "
            "Service.wait_for."
        )
        print()
    if res.queue:
        throughput_details(
            f"Queue throughput: {args.m} jobs started at once, at most {args.concurrency} in "
            f"flight, one watcher",
            res.queue,
        )
        footnote(
            "As the batch, but Orchestrator's jobs are awaited by one watcher querying the "
            f"unfinished jobs' statuses every {WATCH_INTERVAL_S * 1000:.0f} ms: what the "
            "worker sustains, without the cost of one waiter per job."
        )
        print()
    if res.sql:
        sql_details(res)


# --- main ---------------------------------------------------------------------------------


async def run(args: argparse.Namespace, root: Path) -> bool:
    """Measure, then print; False when a measurement failed (what came before is printed)."""
    started = time.perf_counter()
    fake_bfl = FakeBfl(
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
    fake_comfy = FakeComfy(
        FakeComfyConfig(base_dir=root / "fake-comfy", node_delay_s=0.0, step_delay_s=0.0)
    )
    with (
        serve_in_thread(fake_bfl.app, host="127.0.0.1") as bfl,
        serve_in_thread(fake_comfy.app, host="127.0.0.1", lifespan="on") as comfy,
    ):
        fake_bfl.public_base_url = bfl.base_url
        bench = Bench(args, root, fake_bfl, bfl, fake_comfy, comfy)
        results = Results()
        failure: BaseException | None = None
        try:
            async with asyncio.timeout(RUN_TIMEOUT_S):
                await run_rounds(bench, results)
        except Exception as exc:  # print what was measured before it, then fail
            failure = exc
            progress("stopped early:")
            traceback.print_exc(file=sys.stderr)

    print("# Orchestrator overhead vs the bare clients")
    print()
    print(
        f"python {platform.python_version()} ({platform.python_implementation()}), "
        f"{os.cpu_count()} CPUs, {platform.platform()}"
    )
    for store in args.stores:
        print(f"{STORE_NAMES[store]}: {bench.db_labels.get(store, '-')}")
    print(
        "fake BFL and fake ComfyUI "
        f"{COMFYUI_VERSION}: uvicorn in threads of this process on 127.0.0.1, zero latency "
        "(Ready at the first poll; no node or step delay), 64x64 images"
    )
    print(
        f"{args.rounds} round(s), A/B interleaved (odd rounds direct first, even rounds "
        f"Orchestrator first), each Orchestrator measurement on a fresh database; "
        f"N={args.n}, batch {args.batch}@{args.batch_concurrency}, M={args.m}@"
        f"{args.concurrency}, SQL counted over {args.count_jobs} jobs; "
        f"took {time.perf_counter() - started:.0f} s"
    )
    print()
    if failure is not None:
        print(f"**Stopped early** ({type(failure).__name__}: {failure}): partial results.")
        print()
    print_summary(args, results)
    print()
    print_details(args, results)
    sys.stdout.flush()
    return failure is None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds (default 3)")
    parser.add_argument(
        "--n", type=int, default=50, help="sequential jobs per path for latency (default 50)"
    )
    parser.add_argument(
        "--m", type=int, default=300, help="jobs in the queue throughput run (default 300)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=64,
        help="jobs in flight in the queue throughput run (default 64)",
    )
    parser.add_argument("--batch", type=int, default=500, help="jobs in the batch (default 500)")
    parser.add_argument(
        "--batch-concurrency", type=int, default=24, help="jobs in flight in the batch (default 24)"
    )
    parser.add_argument(
        "--count-jobs",
        type=int,
        default=20,
        help="FLUX jobs run with the SQL counter attached (default 20)",
    )
    parser.add_argument(
        "--only", choices=SECTIONS, default="all", help="which section to run (default: all)"
    )
    parser.add_argument(
        "--postgres",
        metavar="URL",
        default=os.environ.get(POSTGRES_ENV) or None,
        help="a local PostgreSQL server to create throwaway databases on "
        f"(default: ${POSTGRES_ENV})",
    )
    parser.add_argument(
        "--stores",
        metavar="LIST",
        help="comma-separated, from sqlite,postgres (default: both when a PostgreSQL URL is "
        "given, else sqlite)",
    )
    args = parser.parse_args(argv)
    if args.stores is None:
        args.stores = list(STORES) if args.postgres else ["sqlite"]
    else:
        args.stores = [s.strip() for s in args.stores.split(",") if s.strip()]
        unknown = sorted(set(args.stores) - set(STORES))
        if unknown or not args.stores:
            parser.error(f"--stores: choose from {','.join(STORES)}")
        args.stores = [s for s in STORES if s in args.stores]
    if "postgres" in args.stores and not args.postgres:
        parser.error(f"--stores postgres needs --postgres URL or ${POSTGRES_ENV}")
    if min(args.rounds, args.n, args.m, args.batch, args.count_jobs) < 1:
        parser.error("--rounds, --n, --m, --batch and --count-jobs must be positive")
    if not (1 <= args.concurrency <= 1000 and 1 <= args.batch_concurrency <= 1000):
        parser.error("--concurrency and --batch-concurrency must be between 1 and 1000")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logs.configure("ERROR", "console")  # hide start-up warnings
    with tempfile.TemporaryDirectory(prefix="orch-bench-") as tmp:
        if not asyncio.run(run(args, Path(tmp))):
            sys.exit(1)


if __name__ == "__main__":
    main()
