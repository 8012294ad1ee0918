"""Start-up time and idle memory of ``orchestrator serve``, and the cost of a light CLI command,
each against its baseline measured in the same run.

Run it from the repository root::

    .venv/bin/python bench/startup.py              # 3 rounds
    .venv/bin/python bench/startup.py --rounds 5 --settle 5

Each round runs, one after another (interleaved, so a drift of the machine's speed hits both
sides of a ratio alike):

* **serve**: ``orchestrator serve`` as a new process, with SQLite in a temporary folder whose
  schema is already at head (created once before the rounds, as a server that ran before
  left it), a free 127.0.0.1 port, auth off and no backend configured, so in demo mode
  (simulated FLUX, v0 and ComfyUI, the last one a server in a thread), as a new user gets it.
  The start time is from just before the process is spawned to the first 200 on ``/healthz``
  (polled every 5 ms); the idle RSS is ``VmRSS`` from ``/proc/<pid>/status`` ``--settle``
  seconds after that, with no request in between.
* **serve, DEMO_MODE=off**: the same with demo mode off (no backend enabled): the server's
  own cost, without the simulated backends.
* **serve, first start**: on an empty data folder, so the start creates the schema.
* **minimal app**: ``bench/startup_minimal_app.py`` (a FastAPI app with one ``/healthz``
  route under uvicorn), measured the same way: the baseline of both figures.
* **--help**: ``orchestrator --help`` against ``python -c pass``: wall time, and the peak RSS
  of the process (``ru_maxrss`` of that child alone).

Figures are min / median / max over the rounds; each ratio is taken round by round (this
process against its baseline in the same round) and then summarised. Only 127.0.0.1 is
contacted. Linux only (``/proc``).

``--one serve|serve-off|minimal`` starts that one server, waits for its first 200 on
``/healthz``, kills it (SIGKILL: no shutdown work) and exits, printing the time: a whole
command for an external timer such as ``/usr/bin/time -v`` or ``hyperfine``, to cross-check
these figures.
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
MINIMAL_APP = HERE / "startup_minimal_app.py"
POLL_S = 0.005
START_TIMEOUT_S = 60.0


def orchestrator_cmd() -> list[str]:
    """The installed console script next to this Python, else ``python -m orchestrator``."""
    script = Path(sys.executable).with_name("orchestrator")
    return [str(script)] if script.exists() else [sys.executable, "-m", "orchestrator"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def clean_env() -> dict[str, str]:
    """This process's environment without any Orchestrator or backend setting."""
    drop = ("BFL_", "COMFY_", "V0_", "TILDA_", "ORCHESTRATOR_", "DATABASE_", "DATA_DIR")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def serve_env(root: Path, port: int, demo: str = "auto") -> dict[str, str]:
    env = clean_env()
    config = root / "config" / "orchestrator.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    env.update(
        ORCHESTRATOR_CONFIG=str(config),
        DATA_DIR=str(root / "data"),
        AUTH_DISABLED="true",
        ORCHESTRATOR_HOST="127.0.0.1",
        ORCHESTRATOR_PORT=str(port),
        LOG_LEVEL="WARNING",
        LOG_FORMAT="json",
        DEMO_MODE=demo,
    )
    return env


def healthz_ok(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def reap(proc: subprocess.Popen[bytes]) -> float:
    """Wait for `proc` and return its own peak RSS in MB (ru_maxrss, KiB on Linux). Linux
    carries the high-water mark across fork and exec, so this cannot read below the RSS
    of this process when it started the command: `table` prints that floor."""
    _pid, _status, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0  # reaped here: keep Popen from waiting again
    return usage.ru_maxrss / 1024


@dataclass
class Served:
    start_s: float
    idle_rss_mb: float


def measure_server(
    args: list[str], env: dict[str, str], port: int, settle_s: float, *, kill: bool = False
) -> Served:
    """Start the server, time it to its first /healthz 200, read its RSS `settle_s` later
    and stop it: SIGTERM (a graceful shutdown), or with `kill` SIGKILL (no shutdown work,
    for a timer of the whole command that should count the start-up only)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        while not healthz_ok(port):
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"{args} exited {proc.returncode} before ready:\n{err}")
            if time.perf_counter() - t0 > START_TIMEOUT_S:
                raise RuntimeError(f"{args} not ready within {START_TIMEOUT_S} s")
            time.sleep(POLL_S)
        started = time.perf_counter() - t0
        time.sleep(settle_s)
        rss = vm_rss_mb(proc.pid)
        return Served(start_s=started, idle_rss_mb=rss)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@dataclass
class Ran:
    wall_s: float
    peak_rss_mb: float


def measure_command(args: list[str], env: dict[str, str]) -> Ran:
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert proc.stderr is not None
    err = proc.stderr.read()
    peak = reap(proc)
    wall = time.perf_counter() - t0
    proc.stderr.close()
    if err.strip():
        raise RuntimeError(f"{args} wrote to stderr:\n{err.decode(errors='replace')}")
    return Ran(wall_s=wall, peak_rss_mb=peak)


@dataclass
class Row:
    label: str
    unit: str
    goal: str
    values: list[float] = field(default_factory=list)
    base: list[float] = field(default_factory=list)

    def ratios(self) -> list[float]:
        return [v / b for v, b in zip(self.values, self.base, strict=True)]


def mmm(xs: list[float], fmt: str) -> str:
    return " / ".join(format(x, fmt) for x in (min(xs), statistics.median(xs), max(xs)))


def table(rows: list[Row], rounds: int, floor_mb: float) -> str:
    head = (
        "| figure | goal | this (min / median / max) | baseline (min / median / max) "
        "| ratio (min / median / max) |"
    )
    lines = [head, "|---|---|---|---|---|"]
    for r in rows:
        fmt = ".3f" if r.unit == "s" else ".1f"
        lines.append(
            f"| {r.label} | {r.goal} | {mmm(r.values, fmt)} {r.unit} | {mmm(r.base, fmt)} {r.unit} "
            f"| {mmm(r.ratios(), '.2f')} x |"
        )
    lines.append("")
    lines.append(
        f"{rounds} rounds, interleaved. Baselines: a minimal FastAPI app under uvicorn "
        "(serve rows), `python -c pass` (--help rows). A peak RSS cannot read below this "
        f"benchmark's own RSS, {floor_mb:.1f} MB (the kernel carries it across fork and exec)."
    )
    return "\n".join(lines)


def prepare(root: Path, orch: list[str]) -> None:
    """Create the database under `root` and bring its schema to head, as a server that ran
    before left it (one-shot command: `orchestrator jobs list`)."""
    env = serve_env(root, free_port())
    subprocess.run(
        [*orch, "jobs", "list"], env=env, stdin=subprocess.DEVNULL, capture_output=True, check=True
    )


def one(which: str, orch: list[str], data: Path | None) -> float:
    port = free_port()
    if which == "minimal":
        args = [sys.executable, str(MINIMAL_APP), "--port", str(port)]
        return measure_server(args, clean_env(), port, 0.0, kill=True).start_s
    demo = "off" if which == "serve-off" else "auto"
    if data is not None:  # kept between calls: only the first one creates the schema
        data.mkdir(parents=True, exist_ok=True)
        env = serve_env(data, port, demo=demo)
        return measure_server([*orch, "serve"], env, port, 0.0, kill=True).start_s
    with tempfile.TemporaryDirectory(prefix="orch-startup-") as tmp:
        env = serve_env(Path(tmp), port, demo=demo)
        return measure_server([*orch, "serve"], env, port, 0.0, kill=True).start_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=3.0, help="Seconds before idle RSS.")
    parser.add_argument(
        "--one",
        choices=("serve", "serve-off", "minimal"),
        help="Start only this server once, until its first /healthz 200, and exit.",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="With --one: keep the data here (a first call creates the schema, later ones "
        "start on it); default a new empty folder each time.",
    )
    args = parser.parse_args()
    orch = orchestrator_cmd()
    if args.one is not None:
        print(f"{args.one}: ready in {one(args.one, orch, args.data_dir):.3f} s")
        return
    start = Row("`serve` start → /healthz 200", "s", "≤ 1.0 s")
    start_off = Row("… with DEMO_MODE=off", "s", "-")
    start_first = Row("… first start (empty data dir)", "s", "-")
    rss = Row("idle RSS of `serve`", "MB", "≤ 100 MB")
    rss_off = Row("… with DEMO_MODE=off", "MB", "-")
    help_wall = Row("`orchestrator --help` wall", "s", "-")
    help_rss = Row("`orchestrator --help` peak RSS", "MB", "-")
    with tempfile.TemporaryDirectory(prefix="orch-startup-") as kept:
        root = Path(kept)
        prepare(root, orch)
        for i in range(args.rounds):
            port = free_port()
            cmd = [*orch, "serve"]
            served = measure_server(cmd, serve_env(root, port), port, args.settle)
            port = free_port()
            served_off = measure_server(cmd, serve_env(root, port, "off"), port, args.settle)
            with tempfile.TemporaryDirectory(prefix="orch-startup-") as tmp:
                port = free_port()
                first = measure_server(cmd, serve_env(Path(tmp), port), port, 0.0)
            port = free_port()
            minimal = measure_server(
                [sys.executable, str(MINIMAL_APP), "--port", str(port)],
                clean_env(),
                port,
                args.settle,
            )
            helped = measure_command([*orch, "--help"], serve_env(root, free_port()))
            bare = measure_command([sys.executable, "-c", "pass"], clean_env())
            for row, value, base in (
                (start, served.start_s, minimal.start_s),
                (start_off, served_off.start_s, minimal.start_s),
                (start_first, first.start_s, minimal.start_s),
                (rss, served.idle_rss_mb, minimal.idle_rss_mb),
                (rss_off, served_off.idle_rss_mb, minimal.idle_rss_mb),
                (help_wall, helped.wall_s, bare.wall_s),
                (help_rss, helped.peak_rss_mb, bare.peak_rss_mb),
            ):
                row.values.append(value)
                row.base.append(base)
            print(
                f"round {i + 1}: serve {served.start_s:.3f} s {served.idle_rss_mb:.1f} MB; "
                f"no demo {served_off.start_s:.3f} s {served_off.idle_rss_mb:.1f} MB; "
                f"first start {first.start_s:.3f} s; "
                f"minimal {minimal.start_s:.3f} s {minimal.idle_rss_mb:.1f} MB; "
                f"--help {helped.wall_s:.3f} s; pass {bare.wall_s:.3f} s",
                file=sys.stderr,
                flush=True,
            )
    print(f"\nStart-up and idle memory (python {sys.version.split()[0]}, SQLite, demo mode)\n")
    rows = [start, start_off, start_first, rss, rss_off, help_wall, help_rss]
    print(table(rows, args.rounds, vm_rss_mb(os.getpid())))


if __name__ == "__main__":
    main()
