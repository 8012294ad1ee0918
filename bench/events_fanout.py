"""The server-wide event stream under many subscribers: event -> client latency, API latency
and idle CPU of ``orchestrator serve`` with 1,000 clients on ``GET /api/events``, against a
minimal SSE app broadcasting the same events to as many clients (``sse_minimal_app.py``).

Run it from the repository root::

    .venv/bin/python bench/events_fanout.py                  # 1000 subscribers, 3 rounds
    .venv/bin/python bench/events_fanout.py --subscribers 200 --rounds 1

A real ``orchestrator serve`` (demo mode: simulated backends, no keys, SQLite in a temporary
folder, auth off on 127.0.0.1) runs as its own process; this process holds the SSE clients
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
  subscriber saw above, replayed at the same moments in the same bursts (``POST /emit``),
  timed the same way.

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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx2

CLI = [sys.executable, "-m", "orchestrator"]
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
class Round:
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
    min_event_p50: float
    min_event_p99: float
    min_idle_cores: float
    min_delivered: float


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


async def one_round(port: int, pid: int, minimal: tuple[int, int], n: int) -> Round:
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
    min_port, min_pid = minimal
    async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{min_port}", timeout=60) as client:
        plain = Subscribers(min_port, path="/events")
        await plain.connect(n)
        min_idle = await idle_cpu(min_pid)
        await replay(client, bursts(one.ats))
        await plain.close()
    per_sub = many.received / n
    return Round(
        pct(one.latencies_ms, 0.5),
        pct(one.latencies_ms, 0.99),
        pct(many.latencies_ms, 0.5),
        pct(many.latencies_ms, 0.99),
        pct(base_api, 0.5),
        pct(base_api, 0.99),
        pct(loaded_api, 0.5),
        pct(loaded_api, 0.99),
        idle,
        per_sub / max(one.received, 1),
        pct(plain.latencies_ms, 0.5),
        pct(plain.latencies_ms, 0.99),
        min_idle,
        plain.received / n / max(one.received, 1),
    )


def row(label: str, values: list[float], unit: str = "", digits: int = 1) -> str:
    lo, med, hi = min(values), statistics.median(values), max(values)
    return f"| {label} | {lo:.{digits}f}{unit} | {med:.{digits}f}{unit} | {hi:.{digits}f}{unit} |"


def table(rounds: list[Round], n: int) -> str:
    def col(name: str) -> list[float]:
        return [getattr(r, name) for r in rounds]

    def ratio(a: str, b: str) -> list[float]:
        return [getattr(r, a) / getattr(r, b) for r in rounds]

    lines = [
        f"| figure ({n} subscribers, {len(rounds)} rounds) | min | median | max |",
        "|---|---:|---:|---:|",
        row("event -> client p50, 1 subscriber (ms)", col("base_event_p50")),
        row("event -> client p99, 1 subscriber (ms)", col("base_event_p99")),
        row(f"event -> client p50, {n} subscribers (ms)", col("event_p50")),
        row(f"event -> client p99, {n} subscribers (ms)", col("event_p99")),
        row(f"  minimal SSE app, p50, {n} subscribers (ms)", col("min_event_p50")),
        row(f"  minimal SSE app, p99, {n} subscribers (ms)", col("min_event_p99")),
        row("  p50 ratio, Orchestrator / minimal app", ratio("event_p50", "min_event_p50"), "x", 2),
        row("  p99 ratio, Orchestrator / minimal app", ratio("event_p99", "min_event_p99"), "x", 2),
        row("  p99 ratio, loaded / 1 subscriber", ratio("event_p99", "base_event_p99"), "x", 2),
        row("GET /api/jobs p50, no subscriber (ms)", col("base_api_p50")),
        row(f"GET /api/jobs p50, {n} subscribers + events (ms)", col("api_p50")),
        row("  p50 ratio, loaded / none", ratio("api_p50", "base_api_p50"), "x", 2),
        row("  p99 ratio, loaded / none", ratio("api_p99", "base_api_p99"), "x", 2),
        row(f"idle CPU of serve, {n} subscribers (cores)", col("idle_cores"), "", 3),
        row(f"  minimal SSE app, {n} subscribers (cores)", col("min_idle_cores"), "", 3),
        row("events per subscriber / baseline's", col("delivered"), "", 3),
        row("  minimal SSE app", col("min_delivered"), "", 3),
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
    port: int, pid: int, minimal: tuple[int, int], args: argparse.Namespace
) -> list[Round]:
    await wait_ready(port)
    await wait_ready(minimal[0], "/docs")
    return [await one_round(port, pid, minimal, args.subscribers) for _ in range(args.rounds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    raise_fd_limit()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        proc = subprocess.Popen(
            [*CLI, "serve"],
            env=env_for(Path(tmp), port),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        min_port = free_port()
        app = Path(__file__).with_name("sse_minimal_app.py")
        minimal = subprocess.Popen(
            [sys.executable, str(app), "--port", str(min_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            rounds = asyncio.run(measure(port, proc.pid, (min_port, minimal.pid), args))
        finally:
            for p in (proc, minimal):
                p.terminate()
                p.wait(30)
    print(f"\nServer-wide event stream fan-out (python {sys.version.split()[0]}, SQLite, demo)\n")
    print(table(rounds, args.subscribers))


if __name__ == "__main__":
    main()
