"""Operations: liveness, readiness, Prometheus metrics, supervised ComfyUI processes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx2
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.api.app import create_app
from orchestrator.config import Settings
from orchestrator.runtime import open_runtime
from orchestrator.testing.serve import serve_in_thread


def test_probes_in_demo_mode(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(demo_mode="on", worker_enabled=False)
    with (
        serve_in_thread(create_app(settings), lifespan="on") as served,
        httpx2.Client(base_url=served.base_url, timeout=30) as c,
    ):
        assert c.get("/healthz").json() == {"status": "alive"}
        r = c.get("/readyz")
        assert r.status_code == 200 and r.json() == {"status": "ready"}
        paths = c.get("/openapi.json").json()["paths"]
    assert "/healthz" in paths and "/readyz" in paths and "/metrics" not in paths
    problem = paths["/readyz"]["get"]["responses"]["503"]["content"]
    assert "application/problem+json" in problem


def test_readyz_503_names_the_reason(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(demo_mode="off", worker_enabled=False)
    with (
        serve_in_thread(create_app(settings), lifespan="on") as served,
        httpx2.Client(base_url=served.base_url, timeout=30) as c,
    ):
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
    assert r.status_code == 503
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "no backend is usable" in r.json()["detail"]
    assert "BFL_API_KEY" in r.json()["detail"]


def test_readyz_503_when_queue_is_full(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(demo_mode="on", worker_enabled=False, ready_max_queue=1)
    body = {"backend": "flux", "params": {"model": "flux-dev", "prompt": "a fox"}}
    with (
        serve_in_thread(create_app(settings), lifespan="on") as served,
        httpx2.Client(base_url=served.base_url, timeout=30) as c,
    ):
        assert c.get("/readyz").status_code == 200
        assert c.post("/api/generate", json=body).status_code == 202
        r = c.get("/readyz")
    assert r.status_code == 503
    assert "READY_MAX_QUEUE=1" in r.json()["detail"]


def test_metrics_after_a_job(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(demo_mode="on")
    body = {
        "backend": "flux",
        "params": {"model": "flux-dev", "prompt": "a fox", "width": 256, "height": 256},
    }
    with (
        serve_in_thread(create_app(settings), lifespan="on") as served,
        httpx2.Client(base_url=served.base_url, timeout=30) as c,
    ):
        job = c.post("/api/generate", json=body).json()
        deadline = time.monotonic() + 20
        while c.get(f"/api/jobs/{job['id']}").json()["status"] != "succeeded":
            assert time.monotonic() < deadline, "the demo job did not finish"
            time.sleep(0.1)
        r = c.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    jobs = {
        (s.labels["backend"], s.labels["status"]): s.value
        for s in families["orchestrator_jobs"].samples
    }
    assert jobs[("flux", "succeeded")] == 1
    assert jobs[("flux", "queued")] == 0
    depth = families["orchestrator_queue_depth"].samples
    assert any(s.labels["backend"] == "flux" and s.value == 0 for s in depth)
    assert families["orchestrator_bfl_credits"].samples[0].value > 0
    durations = [
        s
        for s in families["orchestrator_job_duration_seconds"].samples
        if s.name.endswith("_count") and s.labels == {"backend": "flux", "status": "succeeded"}
    ]
    assert durations and durations[0].value == 1
    assert "orchestrator_upstream_errors" in families
    phases = {
        s.labels["phase"]: s.value
        for s in families["orchestrator_upstream_call_duration_seconds"].samples
        if s.name.endswith("_count") and s.labels["backend"] == "flux"
    }
    assert phases == {"submit": 1, "wait": 1, "fetch": 1}
    spend = {
        s.labels["kind"]: s.value for s in families["orchestrator_spent_today_credits"].samples
    }
    assert spend == {"spent": 2.5, "reserved": 0.0}  # flux-dev's cost, in credits
    assert "orchestrator_upstream_retries" in families
    assert "orchestrator_requeues" in families


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _until(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_supervised_comfy_process(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    port = _free_port()
    proc_cfg = {
        "name": "local",
        "command": [
            sys.executable,
            "-m",
            "orchestrator",
            "fake-comfy",
            "--port",
            str(port),
            "--base-dir",
            str(tmp_path / "comfy"),
        ],
        "port": port,
        "startup_timeout_s": 30,
    }
    settings = make_settings(comfy_processes=[proc_cfg])
    async with open_runtime(settings, run_worker=True, wait_processes=True) as rt:
        sup = rt.processes
        assert sup is not None
        status = sup.statuses()[0]
        assert status.state == "ready" and status.pid is not None
        first_pid = status.pid
        pool = rt.service.comfy
        assert pool is not None
        await _until(lambda: pool.instances["local"].healthy, 10, "the instance to be healthy")
        assert pool.instances["local"].config.url == f"http://127.0.0.1:{port}"

        os.kill(first_pid, signal.SIGKILL)
        await _until(
            lambda: sup.statuses()[0].restarts >= 1 and sup.statuses()[0].state == "ready",
            30,
            "the restart",
        )
        second_pid = sup.statuses()[0].pid
        assert second_pid is not None and second_pid != first_pid
        assert not _alive(first_pid)
        await _until(lambda: pool.instances["local"].healthy, 15, "the instance to recover")
        log_file = settings.data_path / "logs" / "local.log"
    assert sup.statuses()[0].state == "stopped"
    assert not _alive(second_pid)
    assert log_file.read_text().count("starting ---") == 2
