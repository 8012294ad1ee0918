"""Scale-out on PostgreSQL: jobs/s with 1, 2 and 4 ``orchestrator worker`` processes
behind one ``orchestrator serve --no-worker``, and event latency (a worker writes an
event -> an SSE client on the API process receives it), each against the baseline of
one ``orchestrator serve`` running its own worker, measured in the same round.

Run it from the repository root::

    .venv/bin/python bench/scale.py                     # 3 rounds, 300 jobs a run
    .venv/bin/python bench/scale.py --rounds 1 --n 100  # quick look
    .venv/bin/python bench/scale.py --postgres postgresql+asyncpg://postgres@127.0.0.1:5432/postgres

Every run gets a throwaway PostgreSQL database (created on the server of ``--postgres``
or ``BENCH_POSTGRES_URL``, dropped afterwards; a local server only) and new processes:
a zero-latency fake BFL (tasks ready at once, no Retry-After, no active-task limit that
could bind), the API process and the workers, each worker with its own data folder.
The client opens ``/api/events`` on the API process, then submits the N FLUX jobs
through the API (32 at a time) and waits for the last ``succeeded`` over SSE.

* **jobs/s**: N over the time from the first submit to the last job's ``succeeded``
  event at the client.
* **event latency**: for every event received, receive time minus the event's ``at``
  (stamped by the process that wrote it; all processes share this machine's clock),
  p50 and p99 per run: under the batch (a saturated fleet), and then for 20 jobs run
  one at a time, each followed on ``/api/jobs/{id}/events`` (the latency a client of
  the API node sees of a worker on another machine when nothing queues).

Figures are min / median / max over the rounds; each ratio is taken in its round
against the baseline run of that round (one ``serve`` with its worker in-process), so a
drift of the machine hits both sides alike. All processes share this machine's cores:
on 2 cores more worker processes compete with the API, PostgreSQL and the fake for the
same CPU, and the table shows what that costs rather than what more machines would give.
Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _pg import throwaway_postgres
from startup import free_port, orchestrator_cmd

BFL_KEY = "bench-scale-key-0123456789abcdef"
CONCURRENT_SUBMITS = 32
RUN_TIMEOUT_S = 300.0
IDLE_JOBS = 20


def clean_env(**extra: str) -> dict[str, str]:
    drop = ("BFL_", "COMFY_", "V0_", "TILDA_", "ORCHESTRATOR_", "DATABASE_", "DATA_DIR", "FLUX_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(extra)
    return env


@dataclass
class Run:
    label: str
    jobs_per_s: float
    p50_ms: float  # event latency under the batch
    p99_ms: float
    idle_p50_ms: float  # event latency of one job at a time
    idle_p99_ms: float


@dataclass
class Fleet:
    root: Path
    database_url: str
    bfl_url: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    url: str = ""

    def env(self, data: str, **extra: str) -> dict[str, str]:
        config = self.root / "config" / "orchestrator.toml"
        config.parent.mkdir(parents=True, exist_ok=True)
        return clean_env(
            ORCHESTRATOR_CONFIG=str(config),
            DATA_DIR=str(self.root / data),
            DATABASE_URL=self.database_url,
            AUTH_DISABLED="true",
            DEMO_MODE="off",
            BFL_API_KEY=BFL_KEY,
            FLUX_BASE_URL=self.bfl_url,
            FLUX_MAX_ACTIVE="256",
            FLUX_POLL_INTERVAL_S="0.01",
            LOG_LEVEL="WARNING",
            LOG_FORMAT="json",
            **extra,
        )

    def spawn(self, args: list[str], env: dict[str, str], name: str) -> None:
        log = (self.root / f"{name}.log").open("wb")
        self.procs.append(
            subprocess.Popen(
                [*orchestrator_cmd(), *args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        log.close()

    def start(self, workers: int) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        host = {"ORCHESTRATOR_HOST": "127.0.0.1", "ORCHESTRATOR_PORT": str(port)}
        if workers == 0:  # the baseline: one process with its own worker
            self.spawn(["serve"], self.env("api", **host, WORKER_CONCURRENCY="64"), "api")
        else:
            self.spawn(["serve", "--no-worker"], self.env("api", **host), "api")
            for i in range(workers):
                args = ["worker", "--concurrency", "64"]
                self.spawn(args, self.env(f"worker{i}"), f"worker{i}")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@contextlib.contextmanager
def fake_bfl(root: Path) -> Iterator[str]:
    port = free_port()
    log = (root / "fake-bfl.log").open("wb")
    args = ["fake-bfl", "--port", str(port), "--key", BFL_KEY, "--duration", "0"]
    proc = subprocess.Popen(
        [*orchestrator_cmd(), *args], env=clean_env(), stdout=log, stderr=subprocess.STDOUT
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx2.TransportError):
                if httpx2.get(url + "/_fake/state", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"the fake BFL did not start (see {root / 'fake-bfl.log'})")
            time.sleep(0.05)
        httpx2.post(
            url + "/_fake/config",
            json={"credits": 10_000_000, "poll_retry_after_s": 0, "active_limit": 100_000},
            timeout=5,
        ).raise_for_status()
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=15)


async def wait_ready(url: str, workers: int) -> None:
    deadline = time.monotonic() + 90
    async with httpx2.AsyncClient(base_url=url, timeout=5) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx2.TransportError):
                r = await client.get("/api/system/health")
                if r.status_code == 200 and int(r.json().get("workers", 0)) >= max(1, workers):
                    return
            await asyncio.sleep(0.1)
    raise SystemExit(f"{url} did not come up with {workers} worker(s)")


async def measure(url: str, n: int, label: str) -> Run:
    run = os.urandom(4).hex()
    latencies: list[float] = []
    succeeded: set[str] = set()
    ids: set[str] = set()
    all_done = asyncio.Event()
    opened = asyncio.Event()

    async def follow() -> None:
        timeout = httpx2.Timeout(10.0, read=RUN_TIMEOUT_S)
        async with (
            httpx2.AsyncClient(base_url=url, timeout=timeout) as client,
            client.stream("GET", "/api/events") as r,
        ):
            opened.set()
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                got = time.time()
                event = json.loads(line[6:])
                at = datetime.fromisoformat(event["at"]).timestamp()
                latencies.append((got - at) * 1000)
                if event.get("status") == "succeeded":
                    succeeded.add(event["job_id"])
                    if len(ids) == n and ids <= succeeded:
                        all_done.set()
                        return

    follower = asyncio.create_task(follow())
    await asyncio.wait_for(opened.wait(), 30)
    limiter = asyncio.Semaphore(CONCURRENT_SUBMITS)
    async with httpx2.AsyncClient(base_url=url, timeout=30) as client:

        async def submit(i: int) -> None:
            body = {
                "backend": "flux",
                "params": {"model": "flux-dev", "prompt": f"scale {run} {i}", "steps": 4},
            }
            async with limiter:
                r = await client.post("/api/generate", json=body)
                r.raise_for_status()
                ids.add(r.json()["id"])

        start = time.monotonic()
        await asyncio.gather(*(submit(i) for i in range(n)))
        if ids <= succeeded:
            all_done.set()
        await asyncio.wait_for(all_done.wait(), RUN_TIMEOUT_S)
        elapsed = time.monotonic() - start
    follower.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await follower
    q = statistics.quantiles(latencies, n=100)
    idle = await one_at_a_time(url, run)
    qi = statistics.quantiles(idle, n=100)
    return Run(label, n / elapsed, q[49], q[98], qi[49], qi[98])


async def one_at_a_time(url: str, run: str, jobs: int = IDLE_JOBS) -> list[float]:
    """Event latencies of ``jobs`` jobs run one after another on an idle fleet: what
    a client of the API node sees of a worker's progress when nothing queues."""
    latencies: list[float] = []
    timeout = httpx2.Timeout(10.0, read=RUN_TIMEOUT_S)
    async with httpx2.AsyncClient(base_url=url, timeout=timeout) as client:
        for i in range(jobs):
            body = {
                "backend": "flux",
                "params": {"model": "flux-dev", "prompt": f"idle {run} {i}", "steps": 4},
            }
            r = await client.post("/api/generate", json=body)
            r.raise_for_status()
            job_id = r.json()["id"]
            async with client.stream("GET", f"/api/jobs/{job_id}/events") as events:
                async for line in events.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    got = time.time()
                    event = json.loads(line[6:])
                    at = datetime.fromisoformat(event["at"]).timestamp()
                    if event["kind"] != "created":  # written by the API itself
                        latencies.append((got - at) * 1000)
                    if event.get("status") in ("succeeded", "failed", "canceled"):
                        break
    return latencies


def one(root: Path, pg: str, bfl_url: str, workers: int, n: int) -> Run:
    label = "serve (worker in-process)" if workers == 0 else f"API + {workers} worker(s)"
    with throwaway_postgres(pg) as database_url:
        fleet = Fleet(root / f"w{workers}-{os.urandom(3).hex()}", database_url, bfl_url)
        fleet.root.mkdir(parents=True)
        try:
            fleet.start(workers)
            asyncio.run(wait_ready(fleet.url, workers))
            return asyncio.run(measure(fleet.url, n, label))
        finally:
            fleet.stop()


def row(label: str, values: list[float], digits: int = 1, unit: str = "") -> str:
    lo, med, hi = min(values), statistics.median(values), max(values)
    return f"| {label} | {lo:.{digits}f}{unit} | {med:.{digits}f}{unit} | {hi:.{digits}f}{unit} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=300, help="FLUX jobs per run")
    parser.add_argument("--workers", default="1,2,4", help="worker counts to compare")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("BENCH_POSTGRES_URL")
        or "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres",
    )
    args = parser.parse_args()
    counts = [int(c) for c in args.workers.split(",")]
    started = time.monotonic()
    runs: dict[int, list[Run]] = {c: [] for c in [0, *counts]}
    with tempfile.TemporaryDirectory(prefix="orch-scale-") as tmp:
        root = Path(tmp)
        with fake_bfl(root) as bfl_url:
            for r in range(args.rounds):
                for c in [0, *counts]:
                    got = one(root, args.postgres, bfl_url, c, args.n)
                    runs[c].append(got)
                    print(
                        f"round {r + 1}: {got.label}: {got.jobs_per_s:.1f} jobs/s, "
                        f"event p50 {got.p50_ms:.1f} ms, p99 {got.p99_ms:.1f} ms",
                        file=sys.stderr,
                    )
    base = runs[0]
    print(
        f"\n{args.n} FLUX jobs a run, zero-latency fake BFL, PostgreSQL, {args.rounds} rounds, "
        f"{os.cpu_count()} cores, {time.monotonic() - started:.0f} s\n"
    )
    print("| figure | min | median | max |")
    print("|---|---|---|---|")
    print(row("baseline jobs/s: serve with its worker", [x.jobs_per_s for x in base]))
    print(row("baseline event p50 (ms)", [x.p50_ms for x in base]))
    print(row("baseline event p99 (ms)", [x.p99_ms for x in base]))
    print(row("baseline event p50, one job at a time (ms)", [x.idle_p50_ms for x in base]))
    print(row("baseline event p99, one job at a time (ms)", [x.idle_p99_ms for x in base]))
    for c in counts:
        rs = runs[c]
        pairs = list(zip(rs, base, strict=True))
        print(row(f"API + {c} worker(s): jobs/s", [x.jobs_per_s for x in rs]))
        print(row("  x baseline", [x.jobs_per_s / b.jobs_per_s for x, b in pairs], 2, "x"))
        print(row("  event p50 (ms)", [x.p50_ms for x in rs]))
        print(row("  event p50 x baseline", [x.p50_ms / b.p50_ms for x, b in pairs], 2, "x"))
        print(row("  event p99 (ms)", [x.p99_ms for x in rs]))
        print(row("  event p99 x baseline", [x.p99_ms / b.p99_ms for x, b in pairs], 2, "x"))
        print(row("  one at a time: event p50 (ms)", [x.idle_p50_ms for x in rs]))
        print(row("  one at a time: event p99 (ms)", [x.idle_p99_ms for x in rs]))
        idle = [x.idle_p99_ms / b.idle_p99_ms for x, b in pairs]
        print(row("  one at a time: event p99 x baseline", idle, 2, "x"))


if __name__ == "__main__":
    main()
