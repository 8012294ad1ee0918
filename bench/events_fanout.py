"""The server-wide event stream under many subscribers: event -> client latency, API latency
and idle CPU of ``orchestrator serve`` with 1,000 clients on ``GET /api/events``, against a
minimal SSE app broadcasting the same events to as many clients (``sse_minimal_app.py``).

Run it from the repository root::

    .venv/bin/python bench/events_fanout.py                  # 1000 subscribers, 3 rounds
    .venv/bin/python bench/events_fanout.py --subscribers 200 --rounds 1
    .venv/bin/python bench/events_fanout.py --postgres postgresql+asyncpg://postgres@127.0.0.1:5432/postgres

A real ``orchestrator serve`` (demo mode: simulated backends, no keys, SQLite in a temporary
folder, auth off on 127.0.0.1) runs as its own process; with a PostgreSQL URL (``--postgres``
or ``BENCH_POSTGRES_URL``; a local server only) a second one runs on a throwaway database
created next to it (and dropped), measured the same way. This process holds the SSE clients
(plain asyncio sockets, one per subscriber; one in ten parses and times what it receives, all
count it, so the client side loads the shared CPUs less) and measures. Each round:

* **baseline**: one subscriber; 20 demo jobs submitted 100 ms apart; every event's
  latency is the time it reached the client minus its ``at`` (written by the server just
  before its commit; one machine, one clock). ``GET /api/jobs?limit=1``, 200 times in a
  row, with no subscriber connected.
* **loaded**: the same with N subscribers connected (and receiving every event).
* **idle CPU**: the server's CPU time (from ``/proc``) over 5 s with N subscribers connected
  and nothing happening, in cores.
* **minimal app**: ``bench/sse_minimal_app.py`` (FastAPI, a queue per client, a
  ``StreamingResponse`` each) with N subscribers: its idle CPU, then the events the one
  subscriber of the SQLite server saw above, replayed at the same moments in the same
  bursts (``POST /emit``), timed the same way.

Figures are printed as min / median / max over the rounds, each loaded figure also as a
ratio against its baseline measured in the same round. Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx2

from _pg import throwaway_postgres

CLI = [sys.executable, "-m", "orchestrator"]
POSTGRES_ENV = "BENCH_POSTGRES_URL"
JOBS = 20
API_CALLS = 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def env_for(root: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BFL_", "COMFY_", "V0_"))}
    config = root / "config" / "orchestrator.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    env.update(
        ORCHESTRATOR_CONFIG=str(config),
        DATA_DIR=str(root / "data"),
        DEMO_MODE="on",
        AUTH_DISABLED="true",
        ORCHESTRATOR_HOST="127.0.0.1",
        ORCHESTRATOR_PORT=str(port),
        LOG_LEVEL="WARNING",
        LOG_FORMAT="json",
    )
    return env


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


class _Client(asyncio.Protocol):
    """One SSE subscriber, as light as a client can be: a callback per read from the
    socket (not a task switch per line), so that the client side loads the shared CPUs
    as little as possible; the timed ones split lines and parse the ``data:`` ones."""

    def __init__(self, owner: Subscribers, path: str, timed: bool) -> None:
        self.owner = owner
        self.path = path
        self.timed = timed
        self.buffer = b""
        self.headers_done = False
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(
            f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
            + b"Accept: text/event-stream\r\n\r\n"
        )

    def data_received(self, data: bytes) -> None:
        now = datetime.now(UTC)
        data = self.buffer + data
        if not self.headers_done:
            head, sep, rest = data.partition(b"\r\n\r\n")
            if not sep:
                self.buffer = data
                return
            assert b" 200 " in head.split(b"\r\n", 1)[0], head
            self.headers_done = True
            self.owner.connected += 1
            if self.owner.connected == self.owner.expected:
                self.owner.ready.set()
            data = rest
        if not self.timed:
            # count; the last 6 bytes come again with the next read, in case a
            # "\ndata: " (7 bytes, so never counted twice) is split between reads
            self.owner.received += data.count(b"\ndata: ")
            self.buffer = data[-6:]
            return
        lines = data.split(b"\n")
        self.buffer = lines.pop()  # an incomplete last line waits for the next read
        for line in lines:
            if line.startswith(b"data: "):
                self.owner.received += 1
                at = datetime.fromisoformat(json.loads(line[6:])["at"])
                self.owner.latencies_ms.append((now - at).total_seconds() * 1000)
                self.owner.ats.append(at)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


@dataclass
class Subscribers:
    port: int
    path: str = "/api/events"
    latencies_ms: list[float] = field(default_factory=list)
    ats: list[datetime] = field(default_factory=list)  # what the timed ones got
    received: int = 0
    clients: list[_Client] = field(default_factory=list)
    connected: int = 0
    expected: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def connect(self, n: int) -> None:
        self.expected = n
        loop = asyncio.get_running_loop()
        for i in range(n):
            # one subscriber in ten is timed (all of them count what they receive)
            timed = i % 10 == 0
            _, client = await loop.create_connection(
                lambda timed=timed: _Client(self, self.path, timed), "127.0.0.1", self.port
            )
            self.clients.append(client)
            if i % 50 == 49:
                await asyncio.sleep(0.05)  # do not flood the accept queue
        async with asyncio.timeout(60):
            await self.ready.wait()

    async def close(self) -> None:
        for c in self.clients:
            if c.transport is not None:
                c.transport.close()
        await asyncio.gather(*(c.closed for c in self.clients), return_exceptions=True)


async def make_events(client: httpx2.AsyncClient) -> None:
    body = {"backend": "flux", "params": {"model": "flux-dev", "prompt": "fan-out", "width": 256}}
    ids = []
    for _ in range(JOBS):
        r = await client.post("/api/generate", json=body)
        r.raise_for_status()
        ids.append(r.json()["id"])
        await asyncio.sleep(0.1)
    for job_id in ids:
        for _ in range(300):
            if (await client.get(f"/api/jobs/{job_id}")).json()["status"] in ("succeeded",):
                break
            await asyncio.sleep(0.05)
    await asyncio.sleep(3)  # the last events reach every client


async def api_latency(client: httpx2.AsyncClient) -> list[float]:
    out = []
    for _ in range(API_CALLS):
        t0 = time.perf_counter()
        (await client.get("/api/jobs?limit=1")).raise_for_status()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Served:
    """One measured server of a round."""

    base_event_p50: float
    base_event_p99: float
    event_p50: float
    event_p99: float
    base_api_p50: float
    base_api_p99: float
    api_p50: float
    api_p99: float
    idle_cores: float
    delivered: float  # events received per subscriber, as a share of the baseline's
    schedule: list[tuple[float, int]] = field(repr=False)  # when the events were written


@dataclass
class Minimal:
    event_p50: float
    event_p99: float
    idle_cores: float
    delivered: float


def bursts(ats: list[datetime]) -> list[tuple[float, int]]:
    """The moments events were written (seconds from the first) and how many at once."""
    out: list[tuple[float, int]] = []
    if not ats:
        return out
    first = min(ats)
    for at in sorted(ats):
        t = (at - first).total_seconds()
        if out and t - out[-1][0] < 0.002:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((t, 1))
    return out


async def replay(client: httpx2.AsyncClient, schedule: list[tuple[float, int]]) -> None:
    t0 = time.monotonic()
    for t, n in schedule:
        delay = t0 + t - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        (await client.post("/emit", params={"n": n})).raise_for_status()
    await asyncio.sleep(3)  # the last events reach every client


async def idle_cpu(pid: int) -> float:
    t0, c0 = time.monotonic(), cpu_seconds(pid)
    await asyncio.sleep(5)
    return (cpu_seconds(pid) - c0) / (time.monotonic() - t0)


async def measure_serve(port: int, pid: int, n: int) -> Served:
    async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        base_api = await api_latency(client)
        one = Subscribers(port)
        await one.connect(1)
        await make_events(client)
        await one.close()
        many = Subscribers(port)
        await many.connect(n)
        idle = await idle_cpu(pid)
        events = asyncio.create_task(make_events(client))
        loaded_api = await api_latency(client)
        await events
        await many.close()
    return Served(
        pct(one.latencies_ms, 0.5),
        pct(one.latencies_ms, 0.99),
        pct(many.latencies_ms, 0.5),
        pct(many.latencies_ms, 0.99),
        pct(base_api, 0.5),
        pct(base_api, 0.99),
        pct(loaded_api, 0.5),
        pct(loaded_api, 0.99),
        idle,
        many.received / n / max(one.received, 1),
        bursts(one.ats),
    )


async def measure_minimal(port: int, pid: int, n: int, served: Served) -> Minimal:
    """The minimal app, with the events ``served``'s one subscriber saw, replayed."""
    async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        plain = Subscribers(port, path="/events")
        await plain.connect(n)
        idle = await idle_cpu(pid)
        await replay(client, served.schedule)
        await plain.close()
    expected = sum(k for _, k in served.schedule)
    return Minimal(
        pct(plain.latencies_ms, 0.5),
        pct(plain.latencies_ms, 0.99),
        idle,
        plain.received / n / max(expected, 1),
    )


@dataclass
class Round:
    served: dict[str, Served]  # by store: "SQLite", "PostgreSQL"
    minimal: Minimal


def row(label: str, values: list[float], unit: str = "", digits: int = 1) -> str:
    lo, med, hi = min(values), statistics.median(values), max(values)
    return f"| {label} | {lo:.{digits}f}{unit} | {med:.{digits}f}{unit} | {hi:.{digits}f}{unit} |"


def table(rounds: list[Round], n: int) -> str:
    def col(store: str, name: str) -> list[float]:
        return [getattr(r.served[store], name) for r in rounds]

    def mcol(name: str) -> list[float]:
        return [getattr(r.minimal, name) for r in rounds]

    def ratio(a: list[float], b: list[float]) -> list[float]:
        return [x / y for x, y in zip(a, b, strict=True)]

    lines = [
        f"| figure ({n} subscribers, {len(rounds)} rounds) | min | median | max |",
        "|---|---:|---:|---:|",
        row(f"minimal SSE app: event -> client p50, {n} subscribers (ms)", mcol("event_p50")),
        row(f"minimal SSE app: event -> client p99, {n} subscribers (ms)", mcol("event_p99")),
        row(f"minimal SSE app: idle CPU, {n} subscribers (cores)", mcol("idle_cores"), "", 3),
        row("minimal SSE app: events per subscriber / sent", mcol("delivered"), "", 3),
    ]
    for store in rounds[0].served:
        lines += [
            row(f"{store}: event -> client p50, 1 subscriber (ms)", col(store, "base_event_p50")),
            row(f"{store}: event -> client p99, 1 subscriber (ms)", col(store, "base_event_p99")),
            row(f"{store}: event -> client p50, {n} subscribers (ms)", col(store, "event_p50")),
            row(f"{store}: event -> client p99, {n} subscribers (ms)", col(store, "event_p99")),
            row(
                "  p50 ratio, Orchestrator / minimal app",
                ratio(col(store, "event_p50"), mcol("event_p50")),
                "x",
                2,
            ),
            row(
                "  p99 ratio, Orchestrator / minimal app",
                ratio(col(store, "event_p99"), mcol("event_p99")),
                "x",
                2,
            ),
            row(
                "  p99 ratio, loaded / 1 subscriber",
                ratio(col(store, "event_p99"), col(store, "base_event_p99")),
                "x",
                2,
            ),
            row(f"{store}: GET /api/jobs p50, no subscriber (ms)", col(store, "base_api_p50")),
            row(
                f"{store}: GET /api/jobs p50, {n} subscribers + events (ms)", col(store, "api_p50")
            ),
            row(
                "  p50 ratio, loaded / none",
                ratio(col(store, "api_p50"), col(store, "base_api_p50")),
                "x",
                2,
            ),
            row(
                "  p99 ratio, loaded / none",
                ratio(col(store, "api_p99"), col(store, "base_api_p99")),
                "x",
                2,
            ),
            row(
                f"{store}: idle CPU of serve, {n} subscribers (cores)",
                col(store, "idle_cores"),
                "",
                3,
            ),
            row(f"{store}: events per subscriber / baseline's", col(store, "delivered"), "", 3),
        ]
    return "\n".join(lines)


async def wait_ready(port: int, path: str = "/healthz") -> None:
    async with httpx2.AsyncClient(timeout=2) as c:
        for _ in range(300):
            with contextlib.suppress(httpx2.TransportError):
                if (await c.get(f"http://127.0.0.1:{port}{path}")).status_code < 500:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError("serve did not start")


async def measure(
    servers: dict[str, tuple[int, int]], minimal: tuple[int, int], args: argparse.Namespace
) -> list[Round]:
    for port, _ in servers.values():
        await wait_ready(port)
    await wait_ready(minimal[0], "/docs")
    rounds = []
    for i in range(args.rounds):
        served = {
            store: await measure_serve(*servers[store], args.subscribers) for store in servers
        }
        first = next(iter(served.values()))  # the minimal app replays SQLite's events
        rounds.append(Round(served, await measure_minimal(*minimal, args.subscribers, first)))
        said = "; ".join(f"{k} p99 {v.event_p99:.1f} ms" for k, v in served.items())
        print(
            f"round {i + 1}: {said}; minimal p99 {rounds[-1].minimal.event_p99:.1f} ms",
            file=sys.stderr,
        )
    return rounds


@contextlib.contextmanager
def process(cmd: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--postgres",
        default=os.environ.get(POSTGRES_ENV) or None,
        help=f"also measure serve on a throwaway database next to this URL (${POSTGRES_ENV})",
    )
    args = parser.parse_args()
    raise_fd_limit()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        servers: dict[str, tuple[int, int]] = {}
        stores: list[tuple[str, str | None]] = [("SQLite", None)]
        if args.postgres:
            stores.append(("PostgreSQL", stack.enter_context(throwaway_postgres(args.postgres))))
        for store, url in stores:
            port = free_port()
            env = env_for(Path(tmp) / store, port)
            if url is not None:
                env["DATABASE_URL"] = url
            servers[store] = (port, stack.enter_context(process([*CLI, "serve"], env)).pid)
        min_port = free_port()
        app = Path(__file__).with_name("sse_minimal_app.py")
        minimal = stack.enter_context(process([sys.executable, str(app), "--port", str(min_port)]))
        rounds = asyncio.run(measure(servers, (min_port, minimal.pid), args))
    print(f"\nEvent stream fan-out (python {sys.version.split()[0]}, demo)\n")
    print(table(rounds, args.subscribers))


if __name__ == "__main__":
    main()
