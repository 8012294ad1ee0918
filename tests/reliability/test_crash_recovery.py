"""The crash suite: ``orchestrator serve`` as a real process, ``kill -9`` at random
moments, restarted, until every job is done.

The fake BFL and the fake ComfyUI run as their own processes, so what they count
(submissions per prompt: the double-pay detector) survives every kill. Each FLUX job
has a unique prompt. Jobs are submitted over HTTP by a thread that keeps going through
the kills with an ``Idempotency-Key`` per job (a submit whose answer was lost is sent
again and must return the same job).

After the last restart has finished everything, each trial checks:

* no job is lost: every submitted key maps to exactly one job, and all are terminal;
* nothing was submitted twice to BFL (per-prompt count <= 1); a FLUX job may fail with
  ``submit_interrupted`` / ``submit_uncertain`` only (the "we don't know if BFL got it,
  so we don't resend" cases), and then its prompt count is <= 1 too, and its task was
  never polled (a polled task's answer reached the worker, whose handle is stored
  before the first poll: it must be re-attached, not given up as paid and lost);
* outputs on disk match the database (path, size, sha256), in both directions; no
  ``*.part`` left in ``OUTPUT_DIR/.partial``, no ``*.tmp`` in ``JOBS_DIR``; every
  succeeded job has its manifest (see ``MANIFEST_GAP``).

Each trial prints its seed (``crash trial seed=...``) and a summary line. The seed fixes
the job mix and the kill delays; to replay one: ``ORCHESTRATOR_CRASH_SEED=<seed> pytest
tests/reliability -k <test>`` (process timing itself is not reproducible).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx2
import pytest

from orchestrator.config import Settings, env_name

CLI = [sys.executable, "-m", "orchestrator"]
BFL_KEY = "crash-suite-key-0123456789abcdef"
SEED_ENV = "ORCHESTRATOR_CRASH_SEED"
PG_ADMIN_URL = os.environ.get(
    "ORCHESTRATOR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

LEASE_S = 3.0
DRAIN_TIMEOUT_S = 90.0
# A FLUX job may end like this only when its prompt reached BFL at most once: the
# process died (or the answer was lost) mid-submit, and it is never resent.
UNKNOWN_SUBMIT = frozenset({"submit_interrupted", "submit_uncertain"})

Trigger = Literal["random", "download", "db_write", "startup"]

# Found by this suite and fixed: the worker commits a job as succeeded and then writes
# its manifest; a kill -9 in between used to leave it without one for good. The job
# row now records when its manifest was written (``manifest_at``) and every start
# writes the missing ones (and removes orphan ``*.tmp``);
# `test_kill9_between_commit_and_manifest` kills exactly in that window.
MANIFEST_GAP = (
    "a job committed as succeeded lacks its manifest (or left a *.tmp) after kill -9 and restart"
)


# --- processes ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def clean_environ(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in Settings.model_fields:
        env.pop(env_name(name), None)
        env.pop(name.upper(), None)
    env.pop("ORCHESTRATOR_CONFIG", None)
    env.pop(SEED_ENV, None)
    env["AUTH_DISABLED"] = "true"  # the API is called without a token here
    env.update(extra)
    return env


class Proc:
    """One long-running child process; each (re)start logs to its own file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log_dir = log_dir
        self.starts = 0
        self.kills = 0
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.log_dir / f"{self.name}-{self.starts}.log"

    def start(self) -> None:
        assert self.popen is None or self.popen.poll() is not None
        self.starts += 1
        with self.log.open("wb") as fh:
            self.popen = subprocess.Popen(
                self.args,
                env=self.env,
                cwd=self.log_dir,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill9(self) -> None:
        assert self.popen is not None
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=15)
        self.kills += 1

    def terminate(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait; SIGKILL after ``timeout``. Returns the exit code of the
        graceful stop, None if it had to be killed."""
        if self.popen is None:
            return None
        if self.popen.poll() is not None:
            return self.popen.returncode
        self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=15)
            return None

    def last_event(self) -> str:
        """The last JSON log event of the current run (where a kill landed)."""
        with contextlib.suppress(OSError):
            for raw in reversed(self.log.read_text(errors="replace").splitlines()):
                if raw.startswith("{"):
                    with contextlib.suppress(ValueError):
                        return str(json.loads(raw).get("event"))
        return "nothing logged"

    def wait_log(self, needle: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if needle in self.log.read_text(errors="replace"):
                    return
            if not self.alive:
                raise RuntimeError(f"{self.name} exited early:\n{self.tail()}")
            time.sleep(0.005)
        raise RuntimeError(f"{self.name} never logged {needle!r}:\n{self.tail()}")

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def fake_bfl_proc(port: int, duration_s: float, log_dir: Path) -> Proc:
    """The fake BFL as its own process (what it counts survives our kills)."""
    args = [*CLI, "fake-bfl", "--port", str(port), "--key", BFL_KEY]
    return Proc("fake-bfl", [*args, "--duration", str(duration_s)], clean_environ(), log_dir)


def wait_http(url: str, proc: Proc, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with httpx2.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if not proc.alive:
                raise RuntimeError(f"{proc.name} exited early:\n{proc.tail()}")
            with contextlib.suppress(httpx2.TransportError):
                if client.get(url).status_code == 200:
                    return
            time.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not answer {url} within {timeout}s:\n{proc.tail()}")


def start_fake(make: Callable[[int], Proc], path: str) -> tuple[Proc, str]:
    """A fake as its own process on a free port, answering ``path``; a port taken
    between choosing and binding it is simply tried again."""
    last: Exception | None = None
    for _ in range(3):
        port = _free_port()
        proc = make(port)
        proc.start()
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(url + path, proc)
            return proc, url
        except RuntimeError as exc:
            last = exc
            proc.terminate(5)
    raise RuntimeError(f"could not start a fake: {last}")


def _pg_admin(sql: str) -> None:
    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, go()).result()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A throwaway PostgreSQL database (skipped without a server, except under CI)."""
    name = f"orch_crash_{uuid.uuid4().hex[:10]}"
    try:
        _pg_admin(f'CREATE DATABASE "{name}"')
    except Exception as exc:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required under CI=true but unreachable: {exc}")
        pytest.skip(f"no PostgreSQL server reachable at {PG_ADMIN_URL}: {exc}")
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield f"{base}/{name}"
    finally:
        _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- the cluster: fake BFL + fake ComfyUI + orchestrator serve -------------------------------


class Cluster:
    def __init__(self, root: Path, *, database_url: str | None, bfl_duration_s: float) -> None:
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True)
        self.data = root / "data"
        self.output_dir = self.data / "outputs"
        self.jobs_dir = self.data / "jobs"
        self.database_url = database_url
        self.bfl_duration_s = bfl_duration_s
        self.bfl: Proc | None = None
        self.comfy: Proc | None = None
        self.server: Proc | None = None
        self.bfl_url = self.comfy_url = self.url = ""

    def _start_fake(self, make: Callable[[int], Proc], path: str) -> tuple[Proc, str]:
        return start_fake(make, path)

    def start_fakes(self) -> None:
        env = clean_environ()
        self.bfl, self.bfl_url = self._start_fake(
            lambda port: fake_bfl_proc(port, self.bfl_duration_s, self.logs), "/_fake/state"
        )
        comfy_dir = self.root / "comfyui"
        self.comfy, self.comfy_url = self._start_fake(
            lambda port: Proc(
                "fake-comfy",
                [
                    *CLI,
                    "fake-comfy",
                    "--port",
                    str(port),
                    "--base-dir",
                    str(comfy_dir),
                    "--node-delay",
                    "0.02",
                ],
                env,
                self.logs,
            ),
            "/system_stats",
        )
        # Plenty of credits for a few hundred jobs; poll at our own pace.
        r = httpx2.post(
            f"{self.bfl_url}/_fake/config",
            json={"credits": 1_000_000, "poll_retry_after_s": 0},
            timeout=5,
        )
        r.raise_for_status()

    def start_server(self) -> None:
        if self.server is None:
            port = _free_port()
            self.url = f"http://127.0.0.1:{port}"
            config = self.root / "config" / "orchestrator.toml"
            config.parent.mkdir(parents=True, exist_ok=True)
            extra = {
                "ORCHESTRATOR_CONFIG": str(config),
                "DATA_DIR": str(self.data),
                "DEMO_MODE": "off",
                "BFL_API_KEY": BFL_KEY,
                "FLUX_BASE_URL": self.bfl_url,
                "COMFY_URL": self.comfy_url,
                "COMFY_MAX_IN_FLIGHT": "4",
                "COMFY_RECONCILE_INTERVAL_S": "0.5",
                "COMFY_HEALTH_INTERVAL_S": "1",
                "ORCHESTRATOR_HOST": "127.0.0.1",
                "ORCHESTRATOR_PORT": str(port),
                "LEASE_S": str(LEASE_S),
                "LOG_FORMAT": "json",
                "LOG_LEVEL": "INFO",
                "FLUX_POLL_INTERVAL_S": "0.1",
                "WORKER_CONCURRENCY": "32",
                "WORKER_POLL_INTERVAL_S": "0.2",
                "HTTP_CONNECT_TIMEOUT_S": "2",
                "HTTP_READ_TIMEOUT_S": "10",
            }
            if self.database_url is not None:
                extra["DATABASE_URL"] = self.database_url
            self.server = Proc("serve", [*CLI, "serve"], clean_environ(**extra), self.logs)
        self.server.start()

    def wait_server(self, timeout: float = 45.0) -> None:
        assert self.server is not None
        wait_http(self.url + "/api/system/health", self.server, timeout)

    def close(self) -> None:
        for proc in (self.server, self.comfy, self.bfl):
            if proc is not None and proc.alive:
                proc.terminate(10)

    def server_logs(self) -> list[dict[str, Any]]:
        lines = []
        for path in sorted(self.logs.glob("serve-*.log")):
            for raw in path.read_text(errors="replace").splitlines():
                if raw.startswith("{"):
                    with contextlib.suppress(ValueError):
                        lines.append(json.loads(raw))
        return lines


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(*, database_url: str | None = None, bfl_duration_s: float = 0.5) -> Cluster:
        c = Cluster(
            tmp_path / f"c{len(made)}", database_url=database_url, bfl_duration_s=bfl_duration_s
        )
        made.append(c)
        return c

    try:
        yield make
    finally:
        for c in made:
            c.close()


# --- jobs and their submission ---------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    key: str
    body: dict[str, Any]
    expect: Literal["success", "generation_failed"]

    @property
    def backend(self) -> str:
        return str(self.body["backend"])

    @property
    def prompt(self) -> str:
        return str(self.body["params"].get("prompt", ""))


def make_specs(rng: random.Random, seed: int, n: int, flux_share: float) -> list[Spec]:
    specs = []
    for i in range(n):
        key = f"crash-{seed}-{i}"
        roll = rng.random()
        if roll < flux_share:
            model = rng.choice(["flux-pro-1.1", "flux-pro-1.1", "flux-dev"])
            prompt = f"crash trial {seed} job {i}"
            expect: Literal["success", "generation_failed"] = "success"
            if rng.random() < 0.03:
                prompt += " [error]"
                expect = "generation_failed"
            params: dict[str, Any] = {
                "model": model,
                "prompt": prompt,
                "width": 256,
                "height": 256,
                "seed": i,
            }
            if model == "flux-dev":
                params["steps"] = 4
            specs.append(Spec(key, {"backend": "flux", "params": params}, expect))
        elif roll < flux_share + (1 - flux_share) / 2:
            body = {
                "backend": "sdxl",
                "params": {
                    "prompt": f"crash sdxl {seed} {i}",
                    "width": 128,
                    "height": 128,
                    "steps": 2,
                    "seed": i,
                },
            }
            specs.append(Spec(key, body, "success"))
        else:
            workflow = {
                "1": {
                    "class_type": "EmptyImage",
                    "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": i},
                },
                "2": {
                    "class_type": "SaveImage",
                    "inputs": {"images": ["1", 0], "filename_prefix": f"crash{i}"},
                },
            }
            specs.append(
                Spec(key, {"backend": "comfy", "params": {"workflow": workflow}}, "success")
            )
    return specs


class Submitter(threading.Thread):
    """Submits every spec once, through the kills: a submit that fails (connection
    refused or reset, 5xx) is repeated with the same Idempotency-Key until it is
    answered."""

    def __init__(self, url: str, specs: list[Spec], interval_s: float, timeout_s: float) -> None:
        super().__init__(name="crash-submitter", daemon=True)
        self.url = url
        self.specs = specs
        self.interval_s = interval_s
        self.deadline = time.monotonic() + timeout_s
        self.ids: dict[str, str] = {}
        self.retried = 0
        self.replayed = 0
        self.error: str | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            with httpx2.Client(base_url=self.url, timeout=5.0) as client:
                for spec in self.specs:
                    if not self._submit(client, spec):
                        return
                    if self.stop.wait(self.interval_s):
                        return
        except Exception as exc:  # reported by the test
            self.error = f"submitter crashed: {exc!r}"

    def _submit(self, client: httpx2.Client, spec: Spec) -> bool:
        tries = 0
        while not self.stop.is_set():
            if time.monotonic() > self.deadline:
                self.error = f"submit of {spec.key} did not get through in time"
                return False
            if tries:
                self.retried += 1
                time.sleep(0.05)
            tries += 1
            try:
                r = client.post(
                    "/api/generate", json=spec.body, headers={"Idempotency-Key": spec.key}
                )
            except httpx2.TransportError:
                continue
            if r.status_code >= 500:
                continue
            if r.status_code not in (200, 201, 202):
                self.error = f"submit of {spec.key} answered {r.status_code}: {r.text[:300]}"
                return False
            if r.headers.get("idempotent-replayed") == "true":
                self.replayed += 1
            self.ids[spec.key] = r.json()["id"]
            return True
        return False


# --- one trial --------------------------------------------------------------------------------


@dataclass
class Trial:
    seed: int
    n_jobs: int
    kills: int
    triggers: list[Trigger]
    flux_share: float = 0.8
    submit_interval_s: float = 0.02
    kill_delay_s: tuple[float, float] = (0.5, 3.0)
    down_s: tuple[float, float] = (0.0, 0.5)
    download_trickle_s: float | None = None
    label: str = "sqlite"
    # filled in while running
    kill_notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)


def _queue_counts(client: httpx2.Client) -> Counter[str]:
    body = client.get("/api/system/health").json()
    out: Counter[str] = Counter()
    for per_status in body.get("queue", {}).values():
        for status, n in per_status.items():
            out[status] += int(n)
    return out


def _partials(cluster: Cluster) -> list[Path]:
    d = cluster.output_dir / ".partial"
    return [p for p in d.iterdir() if p.is_file()] if d.is_dir() else []


def _wal_stamp(cluster: Cluster) -> tuple[int, int] | None:
    try:
        st = (cluster.data / "orchestrator.db-wal").stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size)


def _wait_for_trigger(cluster: Cluster, trigger: Trigger, timeout: float = 10.0) -> str:
    """Spin until the kill condition holds; returns what was seen."""
    deadline = time.monotonic() + timeout
    if trigger == "download":
        # Several downloads half-written if possible, else at least one.
        seen = 0
        while time.monotonic() < deadline:
            parts = 0
            for p in _partials(cluster):
                with contextlib.suppress(FileNotFoundError):
                    parts += p.stat().st_size > 0
            seen = max(seen, parts)
            if parts >= 3 or (parts and time.monotonic() > deadline - timeout / 2):
                return f"{parts} partial downloads"
            time.sleep(0.002)
        return f"no download in flight (timeout, max seen {seen})"
    if trigger == "db_write" and cluster.database_url is None:
        before = _wal_stamp(cluster)
        while time.monotonic() < deadline:
            if _wal_stamp(cluster) != before:
                return "just after a WAL write"
            time.sleep(0.0005)
        return "no WAL write seen (timeout)"
    return "random"


def run_trial(cluster: Cluster, trial: Trial) -> dict[str, Any]:
    rng = random.Random(trial.seed)
    specs = make_specs(rng, trial.seed, trial.n_jobs, trial.flux_share)
    cluster.start_fakes()
    if trial.download_trickle_s is not None:
        httpx2.post(
            f"{cluster.bfl_url}/_fake/faults",
            json={"kind": "download", "trickle_s": trial.download_trickle_s, "count": 100_000},
            timeout=5,
        ).raise_for_status()
    cluster.start_server()
    cluster.wait_server()
    assert cluster.server is not None
    submitter = Submitter(cluster.url, specs, trial.submit_interval_s, timeout_s=120)
    submitter.start()
    try:
        with httpx2.Client(base_url=cluster.url, timeout=5.0) as client:
            for k in range(trial.kills):
                trigger = trial.triggers[k % len(trial.triggers)]
                if trigger == "startup":
                    # Kill the running process, wait for its leases to expire, then
                    # kill the next one while it starts: migrations, worker
                    # registration, the recovery scan with its take-overs, requeues
                    # and submit_interrupted failures (all database writes).
                    cluster.server.kill9()
                    time.sleep(LEASE_S)
                    cluster.start_server()
                    cluster.server.wait_log("Waiting for application startup.")
                    delay = rng.uniform(0.0, 0.3)
                    time.sleep(delay)
                    cluster.server.kill9()
                    last = cluster.server.last_event()
                    trial.kill_notes.append(f"startup+{delay:.2f}s(last log: {last})")
                else:
                    delay = rng.uniform(*trial.kill_delay_s)
                    time.sleep(delay)
                    running: object = "?"
                    with contextlib.suppress(httpx2.HTTPError, ValueError):
                        running = _queue_counts(client)["running"]
                    seen = _wait_for_trigger(cluster, trigger)
                    cluster.server.kill9()
                    trial.kill_notes.append(f"{trigger}@{delay:.2f}s({seen}, running~{running})")
                time.sleep(rng.uniform(*trial.down_s))
                cluster.start_server()
                cluster.wait_server()
            submitter.join(timeout=120)
            # Let the last process finish everything.
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            counts: Counter[str] = Counter()
            while time.monotonic() < deadline:
                counts = _queue_counts(client)
                if not submitter.is_alive() and counts["queued"] == 0 and counts["running"] == 0:
                    break
                time.sleep(0.2)
            jobs = _all_jobs(client)
        bfl_state = httpx2.get(f"{cluster.bfl_url}/_fake/state", timeout=5).json()
    finally:
        submitter.stop.set()
        submitter.join(timeout=10)
    exit_code = cluster.server.terminate(30)
    return {
        "specs": specs,
        "submitter": submitter,
        "jobs": jobs,
        "bfl": bfl_state,
        "exit_code": exit_code,
        "drain_counts": counts,
        "elapsed": time.monotonic() - trial.started,
    }


def _all_jobs(client: httpx2.Client) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 500}
        if cursor:
            params["cursor"] = cursor
        r = client.get("/api/jobs", params=params)
        r.raise_for_status()
        page = r.json()
        jobs.extend(page["items"])
        cursor = page.get("next_cursor")
        if not cursor:
            return jobs


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_trial(
    cluster: Cluster, trial: Trial, result: dict[str, Any]
) -> tuple[str, list[str], list[str]]:
    """The invariants; returns the summary line, the violations, and the manifest
    gaps of the known bug (MANIFEST_GAP)."""
    specs: list[Spec] = result["specs"]
    submitter: Submitter = result["submitter"]
    jobs: list[dict[str, Any]] = result["jobs"]
    counts: dict[str, int] = result["bfl"]["submissions"]
    polled: dict[str, int] = result["bfl"]["polls_by_prompt"]
    problems: list[str] = []
    if submitter.error:
        problems.append(submitter.error)
    if result["exit_code"] != 0:
        problems.append(f"the last serve did not stop cleanly on SIGTERM: {result['exit_code']}")

    by_id = {j["id"]: j for j in jobs}
    by_key = {s.key: s for s in specs}
    submitted = dict(submitter.ids)
    # none lost, none duplicated
    if len(submitted) != len(specs):
        problems.append(f"only {len(submitted)} of {len(specs)} jobs were accepted")
    lost = [k for k, jid in submitted.items() if jid not in by_id]
    if lost:
        problems.append(f"{len(lost)} accepted jobs are missing from the database: {lost[:5]}")
    if len(jobs) != len(set(submitted.values())):
        extra = sorted(set(by_id) - set(submitted.values()))
        problems.append(f"{len(jobs)} jobs in the database for {len(submitted)} keys: {extra[:5]}")
    for j in jobs:
        if j["idempotency_key"] not in by_key:
            problems.append(f"job {j['id']} has an unknown idempotency key")

    # double submits at BFL
    ours = {s.prompt for s in specs if s.backend == "flux"}
    double = {p: n for p, n in counts.items() if n > 1}
    if double:
        problems.append(f"{len(double)} prompts submitted more than once to BFL: {double}")
    strangers = set(counts) - ours
    if strangers:
        problems.append(f"BFL got prompts we never asked for: {sorted(strangers)[:3]}")

    outcomes: Counter[str] = Counter()
    unknown_paid = 0
    expected_files: dict[str, tuple[int, str]] = {}
    for key, jid in submitted.items():
        if jid not in by_id:
            continue
        j = by_id[jid]
        spec = by_key[key]
        status = j["status"]
        code = (j.get("error") or {}).get("code")
        outcomes[f"{status}:{code}" if code else status] += 1
        where = f"job {jid} ({spec.backend}, key {key})"
        if status not in ("succeeded", "failed", "canceled"):
            problems.append(f"{where} is not terminal: {status}")
            continue
        sent = counts.get(spec.prompt, 0) if spec.backend == "flux" else None
        if status == "failed" and code in UNKNOWN_SUBMIT and spec.backend == "flux":
            unknown_paid += int(sent == 1)
            # Only a kill inside the submit window (sent, answer not yet recorded) may
            # end so. A task that was polled had its answer in the worker's hands, and
            # the handle is stored before the first poll: it must have been re-attached.
            if polled.get(spec.prompt, 0):
                problems.append(
                    f"{where}: paid and lost: BFL answered its submit and was polled "
                    f"{polled[spec.prompt]} times, yet the job ended {code} instead of "
                    "being re-attached"
                )
        elif spec.expect == "generation_failed":
            if not (status == "failed" and code == "generation_failed"):
                problems.append(f"{where}: expected generation_failed, got {status}/{code}")
            if sent != 1:
                problems.append(f"{where}: its prompt reached BFL {sent} times")
        elif status != "succeeded":
            problems.append(f"{where} ended {status}/{code}: {(j.get('error') or {})}")
        else:
            if spec.backend == "flux" and sent != 1:
                problems.append(f"{where} succeeded but its prompt reached BFL {sent} times")
            if not j["outputs"]:
                problems.append(f"{where} succeeded without outputs")
            for o in j["outputs"]:
                expected_files[o["path"]] = (o["size_bytes"], o["sha256"])

    # outputs on disk == outputs in the database
    on_disk = {
        p.relative_to(cluster.output_dir).as_posix(): p
        for p in cluster.output_dir.rglob("*")
        if p.is_file() and ".partial" not in p.relative_to(cluster.output_dir).parts
    }
    for rel, (size, sha) in expected_files.items():
        path = on_disk.get(rel)
        if path is None:
            problems.append(f"output {rel} is in the database but not on disk")
        elif path.stat().st_size != size or _sha256(path) != sha:
            problems.append(f"output {rel} on disk differs from the database (size/sha256)")
    orphans = sorted(set(on_disk) - set(expected_files))
    if orphans:
        problems.append(f"{len(orphans)} files on disk no job refers to: {orphans[:5]}")
    partials = _partials(cluster)
    if partials:
        problems.append(f"{len(partials)} orphan partial files: {[p.name for p in partials[:5]]}")
    gaps: list[str] = []
    tmps = list(cluster.jobs_dir.rglob("*.tmp")) if cluster.jobs_dir.is_dir() else []
    if tmps:
        gaps.append(f"{len(tmps)} orphan manifest temp files: {[p.name for p in tmps[:5]]}")

    # a manifest per succeeded job, consistent with the database
    manifests = (
        {p.stem: p for p in cluster.jobs_dir.rglob("*.json")} if cluster.jobs_dir.is_dir() else {}
    )
    missing_manifest = []
    for j in jobs:
        if j["status"] != "succeeded":
            continue
        path = manifests.get(j["id"])
        if path is None:
            missing_manifest.append(j["id"])
            continue
        doc = json.loads(path.read_text())
        got = [(o["path"], o["sha256"]) for o in doc.get("outputs", [])]
        want = [(o["path"], o["sha256"]) for o in j["outputs"]]
        if doc.get("status") != "succeeded" or got != want:
            problems.append(f"manifest of {j['id']} disagrees with the database")
    if missing_manifest:
        gaps.append(
            f"{len(missing_manifest)} succeeded jobs have no manifest: {missing_manifest[:5]}"
        )

    if result["drain_counts"]["queued"] or result["drain_counts"]["running"]:
        problems.append(f"not drained within {DRAIN_TIMEOUT_S}s: {dict(result['drain_counts'])}")

    failed = {k.split(":", 1)[1]: n for k, n in outcomes.items() if k.startswith("failed:")}
    succeeded = outcomes.get("succeeded", 0)
    summary = (
        f"trial {trial.label} seed={trial.seed} jobs={len(specs)} "
        f"kills={cluster.server.kills if cluster.server else 0} "
        f"restarts={cluster.server.starts - 1 if cluster.server else 0} "
        f"succeeded={succeeded} failed(by code)={failed} "
        f"lost={len(lost) + max(0, len(specs) - len(submitted))} "
        f"double_submits={len(double)} unknown_submit_paid={unknown_paid} "
        f"bfl_submissions={result['bfl']['submission_total']} "
        f"submit_retries={submitter.retried} replayed={submitter.replayed} "
        f"elapsed={result['elapsed']:.1f}s kills_at=[{'; '.join(trial.kill_notes)}]"
    )
    logs = cluster.server_logs()
    takeovers = [ln for ln in logs if ln.get("event") == "taking over job from a vanished worker"]
    removed = sum(int(t.get("partial_files_removed", 0)) for t in takeovers)
    summary += (
        f" flux_jobs={sum(s.backend == 'flux' for s in specs)} takeovers={len(takeovers)}"
        f" partials_removed_on_takeover={removed}"
    )
    errors_logged = Counter(
        str(ln.get("event"))
        for ln in cluster.server_logs()
        if ln.get("level") in ("error", "critical")
    )
    if errors_logged:
        summary += f" error_logs={dict(errors_logged)}"
    if gaps:
        summary += f" manifest_gaps={len(missing_manifest)}+{len(tmps)}tmp"
    return summary, problems, gaps


def _seed(default_rng: random.Random) -> int:
    fixed = os.environ.get(SEED_ENV)
    return int(fixed) if fixed else default_rng.randrange(1, 2**31)


def execute(cluster: Cluster, trial: Trial) -> None:
    print(f"\ncrash trial seed={trial.seed} ({trial.label})")
    try:
        result = run_trial(cluster, trial)
    except Exception as exc:
        tail = cluster.server.tail() if cluster.server else ""
        raise AssertionError(
            f"crash trial seed={trial.seed} ({trial.label}) broke: {exc!r}\nserve log tail:\n{tail}"
        ) from exc
    summary, problems, gaps = check_trial(cluster, trial, result)
    print(summary)
    assert not problems, (
        f"crash trial seed={trial.seed} ({trial.label}) violated invariants "
        f"(replay with {SEED_ENV}={trial.seed}):\n  "
        + "\n  ".join(problems[:25] + gaps)
        + f"\n{summary}"
    )
    assert not gaps, f"{MANIFEST_GAP} [seed={trial.seed}: {'; '.join(gaps)}]"


# --- the tests -------------------------------------------------------------------------------

_SEEDS = random.Random()


@pytest.mark.slow
@pytest.mark.timeout(200)
@pytest.mark.parametrize("trial_no", [1, 2])
def test_kill9_at_random_moments(cluster_factory: Callable[..., Cluster], trial_no: int) -> None:
    """Hundreds of mixed jobs, serve killed -9 three times while they run."""
    trial = Trial(
        seed=_seed(_SEEDS), n_jobs=200, kills=3, triggers=["random"], label=f"random#{trial_no}"
    )
    execute(cluster_factory(), trial)


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_kill9_while_downloading_outputs(cluster_factory: Callable[..., Cluster]) -> None:
    """Every BFL download trickles for a second; serve is killed while partial files
    are being written, and must leave none behind."""
    trial = Trial(
        seed=_seed(_SEEDS),
        n_jobs=120,
        kills=3,
        triggers=["download"],
        flux_share=1.0,
        kill_delay_s=(0.3, 2.0),
        download_trickle_s=1.0,
        label="download",
    )
    execute(cluster_factory(), trial)


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_kill9_while_writing_to_the_database(cluster_factory: Callable[..., Cluster]) -> None:
    """Short tasks, so many jobs finish at once and the process is nearly always in a
    transaction; kills land just after a WAL write is seen, or during start-up
    (migrations, recovery, take-overs)."""
    trial = Trial(
        seed=_seed(_SEEDS),
        n_jobs=250,
        kills=4,
        triggers=["db_write", "startup"],
        submit_interval_s=0.005,
        kill_delay_s=(0.3, 2.5),
        down_s=(0.0, 0.1),
        label="db-write",
    )
    execute(cluster_factory(bfl_duration_s=0.2), trial)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(200)
def test_kill9_on_postgresql(pg_url: str, cluster_factory: Callable[..., Cluster]) -> None:
    trial = Trial(
        seed=_seed(_SEEDS),
        n_jobs=200,
        kills=3,
        triggers=["random", "startup"],
        kill_delay_s=(0.3, 2.5),
        label="postgresql",
    )
    execute(cluster_factory(database_url=pg_url), trial)


def _manifest_path(cluster: Cluster, job_id: str, created_at: str) -> Path:
    day = created_at[:10].replace("-", "/")  # stored as 'YYYY-MM-DD ...' (UTC)
    return cluster.jobs_dir / day / f"{job_id}.json"


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_kill9_between_commit_and_manifest(cluster_factory: Callable[..., Cluster]) -> None:
    """Watch the SQLite database (read-only) and kill serve -9 the moment a job is
    committed as succeeded while its manifest is not written yet; after a restart the
    job must get its manifest."""
    seed = _seed(_SEEDS)
    print(f"\ncrash trial seed={seed} (commit-manifest)")
    rng = random.Random(seed)
    cluster = cluster_factory(bfl_duration_s=0.3)
    specs = make_specs(rng, seed, 150, flux_share=1.0)
    cluster.start_fakes()
    cluster.start_server()
    cluster.wait_server()
    assert cluster.server is not None
    submitter = Submitter(cluster.url, specs, 0.005, timeout_s=60)
    submitter.start()
    caught: tuple[str, Path] | None = None
    attempts = 0
    try:
        db = sqlite3.connect(f"file:{cluster.data / 'orchestrator.db'}?mode=ro", uri=True)
        try:
            known: set[str] = set()
            deadline = time.monotonic() + 40
            while caught is None and time.monotonic() < deadline:
                rows = db.execute(
                    "SELECT id, created_at FROM jobs WHERE status = 'succeeded'"
                ).fetchall()
                gap = None
                for job_id, created in rows:
                    if job_id in known:
                        continue
                    path = _manifest_path(cluster, job_id, str(created))
                    if path.exists():
                        known.add(job_id)
                    elif gap is None:
                        gap = (job_id, path)
                if gap is None:
                    time.sleep(0.0005)
                    continue
                cluster.server.kill9()
                attempts += 1
                if not gap[1].exists():
                    caught = gap
                    break
                # The manifest made it just before the kill: go again.
                cluster.start_server()
                cluster.wait_server()
        finally:
            db.close()
        if caught is None:
            pytest.skip(f"seed={seed}: never killed inside the window ({attempts} tries)")
        cluster.start_server()
        cluster.wait_server()
        submitter.join(timeout=60)
        with httpx2.Client(base_url=cluster.url, timeout=5.0) as client:
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while time.monotonic() < deadline:
                counts = _queue_counts(client)
                if not submitter.is_alive() and not counts["queued"] and not counts["running"]:
                    break
                time.sleep(0.2)
            job = client.get(f"/api/jobs/{caught[0]}").json()
    finally:
        submitter.stop.set()
        submitter.join(timeout=10)
    assert cluster.server.terminate(30) == 0
    print(
        f"commit-manifest seed={seed}: killed -9 after job {caught[0]} was committed as "
        f"succeeded and before its manifest was written ({attempts} kill(s))"
    )
    # The window was real: the job is succeeded, and every other succeeded job has
    # its manifest where this test looks (not an AssertionError: must not be xfailed).
    with contextlib.closing(sqlite3.connect(cluster.data / "orchestrator.db")) as db:
        rows = db.execute("SELECT id, created_at FROM jobs WHERE status = 'succeeded'").fetchall()
    found = sum(_manifest_path(cluster, jid, str(c)).exists() for jid, c in rows)
    if job["status"] != "succeeded" or found < len(rows) - 5 or found == 0:
        raise RuntimeError(f"seed={seed}: bad test set-up: {job['status']=}, {found}/{len(rows)}")
    assert caught[1].exists(), (
        f"seed={seed}: job {caught[0]} succeeded (outputs {[o['path'] for o in job['outputs']]}) "
        f"but after kill -9 and a restart it still has no manifest at {caught[1]}"
    )


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_kill9_after_the_submit_answer_reattaches(cluster_factory: Callable[..., Cluster]) -> None:
    """Kill -9 once BFL has answered the submit and been polled (the answer reached
    the worker): after a restart the job is re-attached and succeeds, paid once."""
    cluster = cluster_factory(bfl_duration_s=4.0)
    cluster.start_fakes()
    cluster.start_server()
    cluster.wait_server()
    assert cluster.server is not None
    prompt = f"reattach after answer {uuid.uuid4().hex[:8]}"
    body = {"backend": "flux", "params": {"model": "flux-pro-1.1", "prompt": prompt}}
    with httpx2.Client(base_url=cluster.url, timeout=10.0) as client:
        r = client.post("/api/generate", json=body)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = httpx2.get(f"{cluster.bfl_url}/_fake/state", timeout=5).json()
            if state["polls_by_prompt"].get(prompt, 0) >= 1:
                break
            time.sleep(0.02)
        else:
            raise RuntimeError("the job was never polled")
        cluster.server.kill9()
        cluster.start_server()
        cluster.wait_server()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            job = client.get(f"/api/jobs/{job_id}").json()
            if job["status"] in ("succeeded", "failed", "canceled"):
                break
            time.sleep(0.1)
    assert cluster.server.terminate(30) == 0
    state = httpx2.get(f"{cluster.bfl_url}/_fake/state", timeout=5).json()
    assert state["submissions"].get(prompt) == 1
    assert job["status"] == "succeeded", (
        f"killed after BFL answered the submit (polled {state['polls_by_prompt'][prompt]} "
        f"times), the job ended {job['status']}/{(job.get('error') or {}).get('code')}: "
        "a paid result was lost"
    )
