"""Scale-out on PostgreSQL (issue 17): one API process, three workers on their own data
folders, nothing shared but PostgreSQL and an S3-compatible store.

Every process is real: the fake BFL and the fake ComfyUI run as their own processes
(what they count survives our kills), S3 is moto's standalone server, the API is
``orchestrator serve --no-worker`` and each worker is ``orchestrator worker`` with its
own ``DATA_DIR``. 1,000 mixed jobs (FLUX and ComfyUI) are queued through the API; one
worker is killed with SIGKILL mid-run and a new one started. After the queue drains:

* every job is terminal and succeeded: 0 lost;
* 0 double submits at the fakes: BFL saw each prompt once, ComfyUI one prompt per
  ComfyUI job;
* BFL never had more than ``FLUX_MAX_ACTIVE`` tasks active at once (a per-process
  limit would let three workers run three times as many);
* every output downloads through the API process (which has none of them on disk);
* the API process's SSE stream (``/api/events``) delivered every event the workers
  wrote, without a reconnect being needed to catch up.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from tests.reliability.test_crash_recovery import (
    BFL_KEY,
    CLI,
    Proc,
    _free_port,
    clean_environ,
    fake_bfl_proc,
    pg_url,
    start_fake,
    wait_http,
)
from tests.s3_server import S3Server

__all__ = ["pg_url"]  # the fixture, re-used

pytestmark = pytest.mark.slow

N_JOBS = int(os.environ.get("SCALE_OUT_JOBS", "1000"))  # smaller for a quick look
FLUX_SHARE = 0.6
FLUX_MAX_ACTIVE = 4
WORKERS = 3
LEASE_S = 3.0
DRAIN_TIMEOUT_S = 600.0


class SseRecorder(threading.Thread):
    """Follows ``/api/events`` of one process, reconnecting with ``Last-Event-ID``;
    records every event id it received and when."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.ids: dict[int, float] = {}  # event id -> monotonic time received
        self.jobs: set[str] = set()
        self.reconnects = 0
        self.stop_event = threading.Event()
        self.connected = threading.Event()
        self.error: BaseException | None = None
        self._last: str | None = None

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                try:
                    self._follow()
                except httpx2.TransportError:
                    if self.stop_event.is_set():
                        return
                    self.reconnects += 1
                    time.sleep(0.2)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _follow(self) -> None:
        headers = {"Last-Event-ID": self._last} if self._last else {}
        timeout = httpx2.Timeout(10.0, read=60.0)
        with (
            httpx2.Client(timeout=timeout) as client,
            client.stream("GET", self.url + "/api/events", headers=headers) as r,
        ):
            assert r.status_code == 200, r.status_code
            self.connected.set()
            token: str | None = None
            for line in r.iter_lines():
                if self.stop_event.is_set():
                    return
                if line.startswith("id: "):
                    token = line[4:]
                elif line.startswith("data: "):
                    event = json.loads(line[6:])
                    self.ids.setdefault(int(event["id"]), time.monotonic())
                    self.jobs.add(str(event["job_id"]))
                elif line == "" and token is not None:
                    self._last = token
                    token = None


class Farm:
    """PostgreSQL, S3, the fakes, one API process and N workers."""

    def __init__(self, root: Path, database_url: str, s3_env: dict[str, str]) -> None:
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True)
        self.database_url = database_url
        self.s3_env = s3_env
        self.config = root / "config" / "orchestrator.toml"
        self.config.parent.mkdir(parents=True)
        self.bfl: Proc | None = None
        self.comfy: Proc | None = None
        self.api: Proc | None = None
        self.workers: list[Proc] = []
        self.bfl_url = self.comfy_url = self.url = ""

    def start_fakes(self) -> None:
        self.bfl, self.bfl_url = start_fake(
            lambda port: fake_bfl_proc(port, 0.3, self.logs), "/_fake/state"
        )
        comfy_dir = self.root / "comfyui"
        args = ["fake-comfy", "--base-dir", str(comfy_dir), "--node-delay", "0.002"]
        self.comfy, self.comfy_url = start_fake(
            lambda port: Proc(
                "fake-comfy", [*CLI, *args, "--port", str(port)], clean_environ(), self.logs
            ),
            "/system_stats",
        )
        httpx2.post(
            f"{self.bfl_url}/_fake/config",
            json={"credits": 1_000_000, "poll_retry_after_s": 0, "active_limit": 1000},
            timeout=5,
        ).raise_for_status()

    def env(self, data: Path, **extra: str) -> dict[str, str]:
        return clean_environ(
            ORCHESTRATOR_CONFIG=str(self.config),
            DATA_DIR=str(data),
            DATABASE_URL=self.database_url,
            DEMO_MODE="off",
            BFL_API_KEY=BFL_KEY,
            FLUX_BASE_URL=self.bfl_url,
            FLUX_MAX_ACTIVE=str(FLUX_MAX_ACTIVE),
            FLUX_POLL_INTERVAL_S="0.05",
            COMFY_URL=self.comfy_url,
            COMFY_MAX_IN_FLIGHT="4",
            COMFY_HEALTH_INTERVAL_S="1",
            LEASE_S=str(LEASE_S),
            LOG_FORMAT="json",
            LOG_LEVEL="INFO",
            WORKER_POLL_INTERVAL_S="0.5",
            HTTP_CONNECT_TIMEOUT_S="2",
            HTTP_READ_TIMEOUT_S="10",
            **self.s3_env,
            **extra,
        )

    def start_api(self) -> None:
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = self.env(
            self.root / "api-data", ORCHESTRATOR_HOST="127.0.0.1", ORCHESTRATOR_PORT=str(port)
        )
        self.api = Proc("api", [*CLI, "serve", "--no-worker"], env, self.logs)
        self.api.start()
        wait_http(self.url + "/api/system/health", self.api, timeout=60)

    def add_worker(self) -> Proc:
        i = len(self.workers)
        env = self.env(self.root / f"worker{i}-data")
        proc = Proc(f"worker{i}", [*CLI, "worker", "--concurrency", "16"], env, self.logs)
        proc.start()
        self.workers.append(proc)
        return proc

    def state(self, url: str) -> dict[str, Any]:
        r = httpx2.get(f"{url}/_fake/state", timeout=10)
        r.raise_for_status()
        state: dict[str, Any] = r.json()
        return state

    def tracebacks(self) -> list[str]:
        found = []
        for path in self.logs.glob("*.log"):
            text = path.read_text(errors="replace")
            if "Traceback" in text or "database is locked" in text:
                found.append(path.name)
        return found

    def close(self) -> None:
        for proc in [*self.workers, self.api, self.comfy, self.bfl]:
            if proc is not None and proc.alive:
                proc.terminate(15)


def _bodies(run: str) -> list[dict[str, Any]]:
    bodies: list[dict[str, Any]] = []
    for i in range(N_JOBS):
        if (i * 7919) % 100 < FLUX_SHARE * 100:
            params: dict[str, Any] = {
                "model": "flux-pro-1.1",
                "prompt": f"scale {run} job {i}",
                "width": 256,
                "height": 256,
                "seed": i,
            }
            bodies.append({"backend": "flux", "params": params})
        else:
            workflow = {
                "1": {
                    "class_type": "EmptyImage",
                    "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": i},
                },
                "2": {
                    "class_type": "SaveImage",
                    "inputs": {"images": ["1", 0], "filename_prefix": f"scale{i}"},
                },
            }
            bodies.append({"backend": "comfy", "params": {"workflow": workflow}})
    return bodies


def _submit(client: httpx2.Client, bodies: list[dict[str, Any]], run: str) -> list[str]:
    ids = []
    for i, body in enumerate(bodies):
        for _ in range(20):
            try:
                r = client.post(
                    "/api/generate", json=body, headers={"Idempotency-Key": f"{run}-{i}"}
                )
            except httpx2.TransportError:
                time.sleep(0.2)
                continue
            if r.status_code == 503:
                time.sleep(0.2)
                continue
            assert r.status_code in (200, 201, 202), r.text
            ids.append(str(r.json()["id"]))
            break
        else:
            raise AssertionError(f"could not submit job {i}")
    return ids


def _jobs(client: httpx2.Client, ids: list[str]) -> list[dict[str, Any]]:
    out = []
    for jid in ids:
        r = client.get(f"/api/jobs/{jid}")
        assert r.status_code == 200, r.text
        out.append(r.json())
    return out


def _db_event_ids(database_url: str, job_ids: list[str]) -> set[int]:
    import asyncio

    import asyncpg

    async def go() -> set[int]:
        dsn = database_url.replace("postgresql+asyncpg://", "postgresql://")
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            rows = await conn.fetch("SELECT id FROM job_events WHERE job_id = ANY($1)", job_ids)
        finally:
            await conn.close()
        return {int(r["id"]) for r in rows}

    return asyncio.run(go())


@pytest.fixture
def s3_env(s3_server: S3Server) -> dict[str, str]:
    """A new bucket on the moto server, and the variables that point a process at it."""
    return s3_server.env(s3_server.make_bucket(), "scale")


@pytest.fixture
def farm_factory(tmp_path: Path) -> Iterator[Callable[..., Farm]]:
    made: list[Farm] = []

    def make(database_url: str, s3_env: dict[str, str]) -> Farm:
        f = Farm(tmp_path / f"farm{len(made)}", database_url, s3_env)
        made.append(f)
        return f

    try:
        yield make
    finally:
        for f in made:
            f.close()


@pytest.mark.timeout(900)
def test_three_workers_on_postgresql_and_s3_lose_nothing_and_pay_once(
    pg_url: str, s3_env: dict[str, str], farm_factory: Callable[..., Farm]
) -> None:
    farm = farm_factory(pg_url, s3_env)
    farm.start_fakes()
    farm.start_api()
    sse = SseRecorder(farm.url)
    sse.start()
    assert sse.connected.wait(30), "the SSE stream did not open"
    for _ in range(WORKERS):
        farm.add_worker()
    for w in farm.workers:
        w.wait_log("worker started", timeout=60)

    run = uuid.uuid4().hex[:8]
    bodies = _bodies(run)
    n_flux = sum(1 for b in bodies if b["backend"] == "flux")
    client = httpx2.Client(base_url=farm.url, timeout=30)
    try:
        ids = _submit(client, bodies, run)
        assert len(set(ids)) == N_JOBS

        # kill -9 one worker once a good part of the work is done, start another
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            done = farm.state(farm.bfl_url)["submission_total"]
            if done >= n_flux // 3:
                break
            time.sleep(0.2)
        victim = farm.workers[0]
        victim.kill9()
        farm.add_worker().wait_log("worker started", timeout=60)

        while True:
            jobs = _jobs(client, ids)
            statuses = Counter(j["status"] for j in jobs)
            if sum(statuses[s] for s in ("succeeded", "failed", "canceled")) == N_JOBS:
                break
            assert time.monotonic() < deadline, f"did not drain: {statuses}"
            time.sleep(1.0)

        failed = {j["id"]: j.get("error") for j in jobs if j["status"] != "succeeded"}
        assert not failed, f"{len(failed)} jobs did not succeed: {list(failed.items())[:5]}"

        bfl = farm.state(farm.bfl_url)
        twice = {p: n for p, n in bfl["submissions"].items() if n != 1}
        assert not twice, f"submitted to BFL more than once: {twice}"
        assert bfl["submission_total"] == n_flux
        assert bfl["peak_active_tasks"] <= FLUX_MAX_ACTIVE, bfl["peak_active_tasks"]
        assert bfl["peak_active_tasks"] == FLUX_MAX_ACTIVE, "the limit was never reached"
        comfy = farm.state(farm.comfy_url)
        assert len(comfy["submitted"]) == N_JOBS - n_flux
        assert len(set(comfy["submitted"])) == len(comfy["submitted"])

        # the API process holds no output: each one comes from the store
        for job in jobs:
            assert job["outputs"], job["id"]
            for out in job["outputs"]:
                r = client.get(f"/api/outputs/{job['id']}/{out['n']}")
                assert r.status_code == 200, (job["id"], r.status_code, r.text[:200])
                assert hashlib.sha256(r.content).hexdigest() == out["sha256"], job["id"]
        assert not list((farm.root / "api-data").rglob("*.png"))

        # every event the workers wrote reached the API process's SSE client
        wanted = _db_event_ids(farm.database_url, ids)
        settle = time.monotonic() + 10
        while not wanted <= set(sse.ids) and time.monotonic() < settle:
            time.sleep(0.2)
        missing = wanted - set(sse.ids)
        assert not missing, f"{len(missing)} of {len(wanted)} events never came over SSE"
        print(
            f"scale-out: {N_JOBS} jobs ({n_flux} FLUX), {len(wanted)} events, "
            f"SSE reconnects {sse.reconnects}, BFL peak active {bfl['peak_active_tasks']}, "
            f"worker kills {victim.kills}"
        )
    finally:
        sse.stop_event.set()
        client.close()
    assert sse.error is None, sse.error
    assert not farm.tracebacks(), farm.tracebacks()
