"""``orchestrator worker`` (issue 17): runs jobs only, no HTTP server, next to
``serve --no-worker``; ``--backends`` limits what it claims; SIGTERM stops it like
``serve`` (in-flight jobs finish or are handed back within SHUTDOWN_GRACE_S, exit 0).

Real processes on one SQLite file, in demo mode (simulated backends, in each process).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from tests.conftest import TEST_KEY
from tests.integration.test_cli import CLI, _free_port, clean_environ, run

from orchestrator.testing.fake_bfl import FakeBfl
from orchestrator.testing.serve import ServedApp

FLUX = {"backend": "flux", "params": {"model": "flux-dev", "prompt": "a"}}


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return clean_environ(
        ORCHESTRATOR_CONFIG=str(tmp_path / "orchestrator.toml"),
        DATA_DIR=str(tmp_path / "data"),
        DEMO_MODE="on",
        LOG_FORMAT="json",
        LOG_LEVEL="INFO",
        LEASE_S="6",
        WORKER_POLL_INTERVAL_S="0.1",
    )


class Started:
    def __init__(self, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.popen = popen
        self.log = log

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def wait_log(self, event: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e.get("event") == event for e in self.events()):
                return
            assert self.popen.poll() is None, f"exited early:\n{self.text()[-3000:]}"
            time.sleep(0.05)
        raise AssertionError(f"never logged {event!r}:\n{self.text()[-3000:]}")

    def stop(self, timeout: float = 60.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=15)
            raise AssertionError(f"did not stop on SIGTERM:\n{self.text()[-3000:]}") from None


@contextlib.contextmanager
def started(args: list[str], env: dict[str, str], log: Path) -> Iterator[Started]:
    with log.open("wb") as fh:
        popen = subprocess.Popen(
            [*CLI, *args], env=env, cwd=log.parent, stdout=fh, stderr=subprocess.STDOUT
        )
    proc = Started(popen, log)
    try:
        yield proc
    finally:
        if popen.poll() is None:
            popen.kill()
            popen.wait(timeout=15)


def wait_health(client: httpx2.Client, proc: Started, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.popen.poll() is None, f"serve exited:\n{proc.text()[-3000:]}"
        with contextlib.suppress(httpx2.TransportError):
            r = client.get("/api/system/health")
            if r.status_code == 200:
                body: dict[str, Any] = r.json()
                return body
        time.sleep(0.05)
    raise AssertionError(f"serve did not answer:\n{proc.text()[-3000:]}")


def wait_status(client: httpx2.Client, job_id: str, want: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        status = job["status"]
        if status == want:
            return
        assert status not in ("succeeded", "failed", "canceled"), job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} is {status}, not {want}")


def test_unknown_backend_is_refused_naming_the_known_ones(
    tmp_path: Path, env: dict[str, str]
) -> None:
    r = run(["worker", "--backends", "flux,dalle"], tmp_path, env)
    assert r.returncode == 2, r.stderr
    assert "Unknown backend" in r.stderr and "dalle" in r.stderr
    assert "flux, sdxl" in r.stderr  # the known names


def test_disabled_backend_is_refused_with_its_reason(tmp_path: Path, env: dict[str, str]) -> None:
    r = run(["worker", "--backends", "sdxl"], tmp_path, {**env, "DEMO_MODE": "off"})
    assert r.returncode == 1, r.stderr
    assert "sdxl" in r.stderr and "COMFY_URL" in r.stderr


def test_serve_no_worker_runs_nothing_and_a_worker_process_runs_its_backends(
    tmp_path: Path, env: dict[str, str]
) -> None:
    port = _free_port()
    api_env = {**env, "ORCHESTRATOR_HOST": "127.0.0.1", "ORCHESTRATOR_PORT": str(port)}
    with (
        started(["serve", "--no-worker"], api_env, tmp_path / "api.log") as api,
        httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
    ):
        health = wait_health(client, api)
        assert health["workers"] == 0
        flux = client.post("/api/generate", json=FLUX)
        sdxl = client.post(
            "/api/generate", json={"backend": "sdxl", "params": {"prompt": "b", "steps": 2}}
        )
        assert flux.status_code == 202 and sdxl.status_code == 202, (flux.text, sdxl.text)
        flux_id, sdxl_id = flux.json()["id"], sdxl.json()["id"]
        time.sleep(1.0)  # ten worker polls: nothing in the API process claims them
        assert client.get(f"/api/jobs/{flux_id}").json()["status"] == "queued"
        assert "worker started" not in api.text()

        args = ["worker", "--backends", "flux", "--concurrency", "2"]
        with started(args, env, tmp_path / "worker.log") as worker:
            worker.wait_log("worker started")
            wait_status(client, flux_id, "succeeded")
            assert client.get(f"/api/jobs/{sdxl_id}").json()["status"] == "queued"
            assert client.get("/api/system/health").json()["workers"] == 1
            assert worker.stop() == 0
        assert "worker stopped" in {e.get("event") for e in worker.events()}
        assert client.get(f"/api/jobs/{sdxl_id}").json()["status"] == "queued"
        assert client.get("/api/system/health").json()["workers"] == 0  # it unregistered
        assert api.stop() == 0


def test_sigterm_hands_back_jobs_in_flight_within_the_grace(
    tmp_path: Path, env: dict[str, str], fake_bfl: tuple[FakeBfl, ServedApp]
) -> None:
    """A job still running upstream when the grace runs out is handed back (not
    failed), exit 0; the next worker re-attaches and finishes it (one submit)."""
    fake, served = fake_bfl
    fake.config.task_duration_s = 3.0
    port = _free_port()
    env = {
        **env,
        "DEMO_MODE": "off",
        "BFL_API_KEY": TEST_KEY,
        "FLUX_BASE_URL": served.base_url,
        "FLUX_POLL_INTERVAL_S": "0.1",
    }
    api_env = {**env, "ORCHESTRATOR_HOST": "127.0.0.1", "ORCHESTRATOR_PORT": str(port)}
    wenv = {**env, "SHUTDOWN_GRACE_S": "0.3"}
    with (
        started(["serve", "--no-worker"], api_env, tmp_path / "api.log") as api,
        httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
    ):
        wait_health(client, api)
        with started(["worker"], wenv, tmp_path / "w1.log") as first:
            first.wait_log("worker started")
            job_id = client.post("/api/generate", json=FLUX).json()["id"]
            wait_status(client, job_id, "running", timeout=30)
            t0 = time.monotonic()
            assert first.stop() == 0
            assert time.monotonic() - t0 < 15
        job = client.get(f"/api/jobs/{job_id}").json()
        assert job["status"] in ("running", "queued"), job  # handed back, not failed
        with started(["worker"], env, tmp_path / "w2.log") as second:
            wait_status(client, job_id, "succeeded")
            assert second.stop() == 0
        assert api.stop() == 0
    assert len(fake.submissions) == 1


def test_generate_wait_runs_the_job_itself_when_no_live_worker_claims_its_backend(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """A live worker that claims only sdxl does not run a FLUX job: `generate --wait`
    must not wait for it forever, but run the job itself (as with no worker at all);
    without --wait it says that no worker claims the backend."""
    with started(["worker", "--backends", "sdxl"], env, tmp_path / "worker.log") as worker:
        worker.wait_log("worker started")
        r = run(["generate", "flux", "a fox", "--model", "flux-dev", "--wait"], tmp_path, env, 30)
        assert r.returncode == 0, r.stderr
        assert Path(r.stdout.strip().splitlines()[-1]).is_file()
        queued = run(["generate", "flux", "an owl", "--model", "flux-dev"], tmp_path, env)
        assert queued.returncode == 0, queued.stderr
        assert "No worker" in queued.stderr and "flux" in queued.stderr
        assert worker.stop() == 0


def test_a_killed_worker_is_listed_as_gone(tmp_path: Path, env: dict[str, str]) -> None:
    port = _free_port()
    env = {**env, "LEASE_S": "2"}
    api_env = {**env, "ORCHESTRATOR_HOST": "127.0.0.1", "ORCHESTRATOR_PORT": str(port)}
    with (
        started(["serve", "--no-worker"], api_env, tmp_path / "api.log") as api,
        httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
    ):
        wait_health(client, api)
        with started(["worker", "--backends", "flux"], env, tmp_path / "worker.log") as worker:
            worker.wait_log("worker started")
            listed = client.get("/api/system/health").json()["worker_processes"]
            assert [(w["kind"], w["state"], w["pid"]) for w in listed] == [
                ("worker", "live", worker.popen.pid)
            ]
            worker.popen.send_signal(signal.SIGKILL)
            worker.popen.wait(timeout=15)
        deadline = time.monotonic() + 20
        while True:
            health = client.get("/api/system/health").json()
            states = [w["state"] for w in health["worker_processes"]]
            if states == ["gone"]:
                break
            assert time.monotonic() < deadline, health["worker_processes"]
            time.sleep(0.2)
        assert health["workers"] == 0
        assert health["worker_processes"][0]["heartbeat_age_s"] >= 2
        assert api.stop() == 0
