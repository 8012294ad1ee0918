"""Several processes on one SQLite file (issue 17): ``serve --no-worker`` and two
``orchestrator worker --backends flux`` processes, each worker with its own DATA_DIR,
the fake BFL as its own process. 60 FLUX jobs are queued through the API from
several threads at once while both workers claim and run them. After the queue
drains:

* every job succeeded (no error mentions "locked": SQLite's lock waits stay inside);
* the API answered every submit (no 503 "database is locked");
* BFL saw exactly one submission per job: none ran twice;
* both workers ran jobs, and each logged every job it finished once.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
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
    wait_http,
)

pytestmark = pytest.mark.slow

N_JOBS = 60
SUBMITTERS = 6


class Farm:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True)
        self.db = root / "shared" / "orchestrator.db"
        self.db.parent.mkdir()
        self.procs: list[Proc] = []
        self.bfl_url = ""
        self.api_url = ""

    def env(self, data: str, **extra: str) -> dict[str, str]:
        return clean_environ(
            ORCHESTRATOR_CONFIG=str(self.root / f"{data}.toml"),
            DATA_DIR=str(self.root / data),
            DATABASE_URL=f"sqlite+aiosqlite:///{self.db}",
            DEMO_MODE="off",
            BFL_API_KEY=BFL_KEY,
            FLUX_BASE_URL=self.bfl_url,
            FLUX_MAX_ACTIVE="200",
            FLUX_POLL_INTERVAL_S="0.1",
            WORKER_POLL_INTERVAL_S="0.2",
            LOG_FORMAT="json",
            LOG_LEVEL="INFO",
            HTTP_CONNECT_TIMEOUT_S="2",
            HTTP_READ_TIMEOUT_S="10",
            **extra,
        )

    def start(self) -> None:
        port = _free_port()
        bfl = fake_bfl_proc(port, 0.3, self.logs)
        bfl.start()
        self.procs.append(bfl)
        self.bfl_url = f"http://127.0.0.1:{port}"
        wait_http(self.bfl_url + "/_fake/state", bfl)
        httpx2.post(
            f"{self.bfl_url}/_fake/config",
            json={"credits": 1_000_000, "poll_retry_after_s": 0, "active_limit": 1000},
            timeout=5,
        ).raise_for_status()
        port = _free_port()
        env = self.env("api", ORCHESTRATOR_HOST="127.0.0.1", ORCHESTRATOR_PORT=str(port))
        api = Proc("api", [*CLI, "serve", "--no-worker"], env, self.logs)
        api.start()
        self.procs.append(api)
        self.api_url = f"http://127.0.0.1:{port}"
        wait_http(self.api_url + "/api/system/health", api, timeout=60)
        for i in range(2):
            args = [*CLI, "worker", "--backends", "flux", "--concurrency", "8"]
            worker = Proc(f"worker{i}", args, self.env(f"worker{i}"), self.logs)
            worker.start()
            self.procs.append(worker)
        for w in self.workers:
            w.wait_log("worker started", timeout=60)

    @property
    def workers(self) -> list[Proc]:
        return [p for p in self.procs if p.name.startswith("worker")]

    def succeeded_by(self, proc: Proc) -> Counter[str]:
        seen: Counter[str] = Counter()
        for line in proc.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                ev = json.loads(line)
                if ev.get("event") == "job succeeded":
                    seen[str(ev["job_id"])] += 1
        return seen

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate(30)


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[Farm]:
    f = Farm(tmp_path)
    try:
        yield f
    finally:
        f.close()


def test_two_worker_processes_and_the_api_on_one_sqlite_file(farm: Farm) -> None:
    farm.start()
    run = uuid.uuid4().hex[:8]
    ids: list[str] = []
    refused: list[str] = []
    lock = threading.Lock()

    def submit(k: int) -> None:
        with httpx2.Client(base_url=farm.api_url, timeout=60) as c:
            for i in range(k, N_JOBS, SUBMITTERS):
                body = {
                    "backend": "flux",
                    "params": {"model": "flux-dev", "prompt": f"{run} job {i}"},
                }
                r = c.post("/api/generate", json=body)
                with lock:
                    if r.status_code == 202:
                        ids.append(r.json()["id"])
                    else:
                        refused.append(f"{r.status_code} {r.text[:300]}")

    threads = [threading.Thread(target=submit, args=(k,)) for k in range(SUBMITTERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not refused, refused
    assert len(ids) == N_JOBS

    jobs: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 90
    with httpx2.Client(base_url=farm.api_url, timeout=30) as c:
        while time.monotonic() < deadline:
            jobs = {i: c.get(f"/api/jobs/{i}").json() for i in ids}
            if all(j["status"] in ("succeeded", "failed", "canceled") for j in jobs.values()):
                break
            time.sleep(0.5)
        health = c.get("/api/system/health").json()
    statuses = Counter(j["status"] for j in jobs.values())
    errors = [j["error"] for j in jobs.values() if j.get("error")]
    assert not any("locked" in json.dumps(e).lower() for e in errors), errors
    assert statuses == {"succeeded": N_JOBS}, (statuses, errors[:5])

    state = httpx2.get(f"{farm.bfl_url}/_fake/state", timeout=5).json()
    ours = {p: n for p, n in state["submissions"].items() if p.startswith(run)}
    assert len(ours) == N_JOBS and set(ours.values()) == {1}, ours  # none ran twice

    by_worker = [farm.succeeded_by(w) for w in farm.workers]
    assert all(by_worker), "both workers ran jobs"
    assert sum(sum(c.values()) for c in by_worker) == N_JOBS
    assert set(by_worker[0]).isdisjoint(by_worker[1])

    live = [w for w in health["worker_processes"] if w["state"] == "live"]
    assert sorted(w["kind"] for w in live) == ["worker", "worker"]
    assert all(w["backends"] == ["flux"] and w["concurrency"] == 8 for w in live)
    for w in farm.workers:
        assert w.terminate(30) == 0, w.tail()
