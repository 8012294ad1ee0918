"""``GET /api/jobs/{id}`` under load, against a minimal FastAPI app reading one SQLite row.

Run it from the repository root::

    .venv/bin/python bench/get_job.py                      # 64 connections, 5000 requests, 3 rounds
    .venv/bin/python bench/get_job.py --n 1000 --rounds 1  # a quick look
    .venv/bin/python bench/get_job.py --postgres postgresql+asyncpg://postgres@127.0.0.1:5432/postgres

Three processes, all on 127.0.0.1, each with its own GIL:

* **orchestrator**: a real ``orchestrator serve`` (demo mode: simulated backends, no keys;
  SQLite in a temporary folder; auth on; the worker running, as it does by default). Two
  tokens are made with ``orchestrator token create`` before it starts: a generate token
  submits one demo job (and waits until it has succeeded, with its outputs); a read token
  then reads it with ``Authorization: Bearer``.
* **minimal**: ``bench/minimal_app.py``, one FastAPI route reading one row by id from a
  SQLite file, served by uvicorn with the same settings as ``serve``. Its row holds the
  job document the orchestrator returned, so both answer with the same bytes.
* **load**: this script again (``--load``), a plain asyncio HTTP/1.1 client (keep-alive,
  one connection per task: much lighter than an HTTP library, so that the client is not
  what limits the minimal app). It opens C connections, sends a warm-up, then N requests
  spread over the C connections, and reports req/s and the latency percentiles.

With a PostgreSQL URL (``--postgres`` or the environment variable ``BENCH_POSTGRES_URL``; a
local server only), a second ``orchestrator serve`` runs on a throwaway database created
next to it (dropped at the end), and is measured in every round too, against the same
minimal app (which stays on SQLite: it is the baseline of the goal).

Each round measures every server, one after the other (the order alternates between rounds),
and the table gives min / median / max over the rounds, with each round's ratios
(orchestrator / minimal) computed within that round. "server CPU per request" is the
server's user+system CPU time (from ``/proc``) over the warm-up and the measured requests.
Goal (issue 13): req/s ratio >= 0.6, p99 ratio <= 3.

The header names uvicorn's event loop and HTTP parser, which it picks itself (uvloop and
httptools when they can be imported; ``serve`` and the minimal app alike). To try them
without putting them in the project's environment: ``pip install --target DIR uvloop
httptools``, then run the bench with ``PYTHONPATH=DIR``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2

from _pg import throwaway_postgres

HERE = Path(__file__).resolve().parent
CLI = [sys.executable, "-m", "orchestrator"]
POSTGRES_ENV = "BENCH_POSTGRES_URL"
MINIMAL = "minimal app"
JOB = {"backend": "flux", "params": {"model": "flux-dev", "prompt": "a lighthouse", "width": 256}}


# --- the load generator (a process of its own) ------------------------------------------


@dataclass
class Load:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    bad: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


class Conn:
    """One keep-alive HTTP/1.1 connection that sends the same GET again and again."""

    def __init__(self, port: int, request: bytes) -> None:
        self.port = port
        self.request = request
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def get(self) -> int:
        """Send the request, read the whole response; its status."""
        if self.writer is None or self.reader is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = None
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
            elif name == b"transfer-encoding":
                raise RuntimeError("chunked responses are not expected here")
        if length is None:
            raise RuntimeError(f"no content-length in {head!r}")
        await self.reader.readexactly(length)
        if close:
            await self.close()
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def drive(conns: list[Conn], n: int, latencies: list[float] | None) -> int:
    """``n`` requests spread over the connections (each sends its next one as soon as it has
    its answer); the number of answers that were not 200."""
    left = n
    bad = 0

    async def worker(conn: Conn) -> None:
        nonlocal left, bad
        while left > 0:
            left -= 1
            started = time.perf_counter()
            status = await conn.get()
            if latencies is not None:
                latencies.append((time.perf_counter() - started) * 1000)
            if status != 200:
                bad += 1

    await asyncio.gather(*(worker(c) for c in conns))
    return bad


async def load(port: int, path: str, token: str | None, n: int, warmup: int, c: int) -> Load:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Accept: application/json\r\n\r\n"
    ).encode()
    conns = [Conn(port, request) for _ in range(c)]
    await asyncio.gather(*(x.open() for x in conns))
    try:
        bad = await drive(conns, warmup, None)
        latencies: list[float] = []
        started = time.perf_counter()
        bad += await drive(conns, n, latencies)
        seconds = time.perf_counter() - started
    finally:
        await asyncio.gather(*(x.close() for x in conns))
    return Load(n, seconds, pct(latencies, 0.50), pct(latencies, 0.99), bad)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --- the servers ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serve_env(root: Path, port: int, database_url: str | None = None) -> dict[str, str]:
    drop = ("BFL_", "COMFY_", "V0_", "AUTH_", "DATABASE_", "ORCHESTRATOR_", "DATA_DIR", "DEMO_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    config = root / "config" / "orchestrator.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    env.update(
        ORCHESTRATOR_CONFIG=str(config),
        DATA_DIR=str(root / "data"),
        DEMO_MODE="on",
        ORCHESTRATOR_HOST="127.0.0.1",
        ORCHESTRATOR_PORT=str(port),
        LOG_LEVEL="WARNING",
        LOG_FORMAT="json",
    )
    if database_url:
        env["DATABASE_URL"] = database_url
    return env


def make_token(env: dict[str, str], name: str, scope: str) -> str:
    out = subprocess.run(
        [*CLI, "token", "create", "--name", name, "--scope", scope, "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    secret: str = json.loads(out.stdout)["secret"]
    return secret


def wait_for(url: str, headers: dict[str, str] | None = None) -> None:
    with httpx2.Client(timeout=2, headers=headers) as c:
        for _ in range(600):
            with contextlib.suppress(httpx2.TransportError):
                if c.get(url).status_code == 200:
                    return
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200")


def finished_job(port: int, gen: str, read: str) -> tuple[str, bytes]:
    """Submit one demo job, wait until it has succeeded; its id and document."""
    base = f"http://127.0.0.1:{port}"
    with httpx2.Client(base_url=base, timeout=30) as c:
        r = c.post("/api/generate", json=JOB, headers={"Authorization": f"Bearer {gen}"})
        r.raise_for_status()
        job_id: str = r.json()["id"]
        for _ in range(600):
            r = c.get(f"/api/jobs/{job_id}", headers={"Authorization": f"Bearer {read}"})
            r.raise_for_status()
            if r.json()["status"] == "succeeded":
                return job_id, r.content
            time.sleep(0.05)
    raise RuntimeError(f"job {job_id} did not succeed")


@contextlib.contextmanager
def process(
    args: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server; on a failure, the end of what it wrote to stderr is shown."""
    with log.open("wb") as sink:
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=sink)
    try:
        yield proc
    except BaseException:
        print(f"--- end of {log.name} ---", file=sys.stderr)
        print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class Target:
    name: str
    port: int
    path: str
    token: str | None
    pid: int


@dataclass
class Measured:
    load: Load
    cpu_ms_per_request: float


def measure(t: Target, args: argparse.Namespace) -> Measured:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--load", "--port", str(t.port)]
    cmd += ["--path", t.path, "--n", str(args.n), "--warmup", str(args.warmup)]
    cmd += ["--concurrency", str(args.concurrency)]
    env = dict(os.environ)
    if t.token:
        env["GET_JOB_BENCH_TOKEN"] = t.token  # not on a command line others can read
    c0 = cpu_seconds(t.pid)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=600)
    cpu = cpu_seconds(t.pid) - c0
    doc = json.loads(out.stdout)
    result = Load(**doc)
    if result.bad:
        raise RuntimeError(f"{t.name}: {result.bad} answers were not 200")
    return Measured(result, cpu * 1000 / (args.n + args.warmup))


# --- the table --------------------------------------------------------------------------


def row(label: str, values: list[float], digits: int = 1, unit: str = "") -> str:
    lo, med, hi = min(values), statistics.median(values), max(values)
    return f"| {label} | {lo:.{digits}f}{unit} | {med:.{digits}f}{unit} | {hi:.{digits}f}{unit} |"


def table(rounds: list[dict[str, Measured]], args: argparse.Namespace) -> str:
    def col(name: str, f: str) -> list[float]:
        out = []
        for r in rounds:
            m = r[name]
            out.append(m.cpu_ms_per_request if f == "cpu" else getattr(m.load, f))
        return out

    def ratio(name: str, f: str) -> list[float]:
        return [a / b for a, b in zip(col(name, f), col(MINIMAL, f), strict=True)]

    head = f"{args.concurrency} connections, {args.n} requests, {len(rounds)} rounds"
    lines = [
        f"| GET /api/jobs/{{id}} vs minimal app ({head}) | min | median | max |",
        "|---|---:|---:|---:|",
        row(f"{MINIMAL} req/s", col(MINIMAL, "rps"), 0),
        row(f"{MINIMAL} p50 (ms)", col(MINIMAL, "p50_ms")),
        row(f"{MINIMAL} p99 (ms)", col(MINIMAL, "p99_ms")),
        row(f"{MINIMAL} server CPU per request (ms)", col(MINIMAL, "cpu"), 2),
    ]
    for name in [n for n in rounds[0] if n != MINIMAL]:
        lines += [
            row(f"{name} req/s", col(name, "rps"), 0),
            row(f"**req/s ratio** {name} / minimal (goal >= 0.6)", ratio(name, "rps"), 2, "x"),
            row(f"{name} p50 (ms)", col(name, "p50_ms")),
            row(f"{name} p99 (ms)", col(name, "p99_ms")),
            row(f"**p99 ratio** {name} / minimal (goal <= 3)", ratio(name, "p99_ms"), 2, "x"),
            row(f"{name} server CPU per request (ms)", col(name, "cpu"), 2),
        ]
    return "\n".join(lines)


def stack_name() -> str:
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return f"python {sys.version.split()[0]}, uvicorn loop={loop} http={http}"


def orchestrator(
    stack: contextlib.ExitStack, name: str, root: Path, database_url: str | None
) -> tuple[Target, bytes]:
    """Start ``orchestrator serve`` with a finished demo job; the target reading it, and the
    job's document."""
    root.mkdir(parents=True)
    port = free_port()
    env = serve_env(root, port, database_url)
    gen = make_token(env, "bench submit", "generate")
    read = make_token(env, "bench read", "read")
    proc = stack.enter_context(process([*CLI, "serve"], root / "serve.log", env))
    wait_for(f"http://127.0.0.1:{port}/healthz")
    job_id, body = finished_job(port, gen, read)
    return Target(name, port, f"/api/jobs/{job_id}", read, proc.pid), body


def run(args: argparse.Namespace) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="orchestrator-get-job-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        root = Path(tmp)
        orch, body = orchestrator(stack, "orchestrator (SQLite)", root / "sqlite", None)
        targets = [orch]
        if args.postgres:
            url = stack.enter_context(throwaway_postgres(args.postgres))
            targets.append(orchestrator(stack, "orchestrator (PostgreSQL)", root / "pg", url)[0])
        job_id = orch.path.rsplit("/", 1)[1]
        items = root / "items.sqlite3"
        with contextlib.closing(sqlite3.connect(items)) as db, db:
            db.execute("CREATE TABLE items (id TEXT PRIMARY KEY, body TEXT NOT NULL)")
            db.execute("INSERT INTO items VALUES (?, ?)", (job_id, body.decode()))
        mport = free_port()
        minimal_cmd = [sys.executable, str(HERE / "minimal_app.py")]
        minimal_cmd += ["--db", str(items), "--port", str(mport)]
        mini = stack.enter_context(process(minimal_cmd, root / "minimal.log"))
        wait_for(f"http://127.0.0.1:{mport}/items/{job_id}")
        targets.append(Target(MINIMAL, mport, f"/items/{job_id}", None, mini.pid))
        rounds: list[dict[str, Measured]] = []
        for i in range(args.rounds):
            order = targets if i % 2 == 0 else targets[::-1]
            got = {t.name: measure(t, args) for t in order}
            rounds.append({t.name: got[t.name] for t in targets})
            said = "; ".join(
                f"{t.name} {got[t.name].load.rps:.0f} req/s p99 {got[t.name].load.p99_ms:.1f} ms"
                for t in targets
            )
            print(f"round {i + 1}: {said}", file=sys.stderr)
    print(f"\nGET /api/jobs/{{id}} with a bearer token ({stack_name()})\n")
    print(table(rounds, args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="measured requests per server")
    parser.add_argument("--warmup", type=int, default=500, help="requests before measuring")
    parser.add_argument("--concurrency", type=int, default=64, help="connections")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--postgres",
        default=os.environ.get(POSTGRES_ENV),
        help=f"also measure serve on a throwaway database next to this URL (${POSTGRES_ENV})",
    )
    parser.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        token = os.environ.get("GET_JOB_BENCH_TOKEN")
        done = asyncio.run(load(args.port, args.path, token, args.n, args.warmup, args.concurrency))
        print(json.dumps(done.__dict__))
        return
    run(args)


if __name__ == "__main__":
    main()
