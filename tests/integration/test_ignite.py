"""`ignite`: every dependency checked, as a service call, an HTTP route and a command."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx2
from tests.conftest import TEST_KEY
from tests.integration.test_cli import clean_environ

from orchestrator.api.app import create_app
from orchestrator.config import Settings
from orchestrator.runtime import open_runtime
from orchestrator.testing.fake_bfl import FakeBfl
from orchestrator.testing.serve import ServedApp, serve_in_thread

FakePair = tuple[FakeBfl, ServedApp]


async def test_demo_mode_is_healthy(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(demo_mode="on")
    async with open_runtime(settings, run_worker=False) as rt:
        result = await rt.service.ignite()
    assert result.ok
    by = {c.component: c for c in result.checks}
    assert [c.component for c in result.checks if c.status == "fail"] == []
    for name in ("database", "folder:data", "folder:output", "folder:jobs", "flux"):
        assert by[name].status == "ok", by[name]
        assert by[name].latency_ms is not None
    assert by["database"].details["revision"] == by["database"].details["head"]
    assert by["comfy:simulated"].status == "ok"
    assert by["comfy:simulated"].details["version"]
    assert by["comfy:simulated:sdxl"].status == "ok"
    assert by["v0"].status == "warn" and not by["v0"].essential


async def test_unset_keys_warn_and_low_disk_warns(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(min_free_disk_mb=10**12, v0_api_key="v0-key")
    async with open_runtime(settings, run_worker=False) as rt:
        result = await rt.service.ignite()
    by = {c.component: c for c in result.checks}
    assert by["flux"].status == "warn" and by["flux"].message == "BFL_API_KEY not set"
    assert by["folder:data"].status == "warn" and "MIN_FREE_DISK_MB" in by["folder:data"].message
    assert by["v0"].status == "ok" and by["v0"].message.startswith("set (not verified")
    assert by["comfy"].status == "warn"
    assert result.ok  # nothing essential failed


def test_ignite_route(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(demo_mode="on", worker_enabled=False)
    with serve_in_thread(create_app(settings), lifespan="on") as served:
        r = httpx2.post(f"{served.base_url}/api/system/ignite", timeout=30)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["ok"] is True
    assert {"component", "status", "message", "latency_ms", "details", "essential"} <= set(
        doc["checks"][0]
    )


def test_cli_bad_flux_key_exits_1(tmp_path: Path, fake_bfl: FakePair) -> None:
    _fake, bfl = fake_bfl
    env = clean_environ(
        ORCHESTRATOR_CONFIG=str(tmp_path / "cfg" / "orchestrator.toml"),
        DATA_DIR=str(tmp_path / "data"),
        BFL_API_KEY="bfl-wrong-key-0123456789",
        FLUX_BASE_URL=bfl.base_url,
        DEMO_MODE="off",
        COLUMNS="200",
    )
    cmd = [sys.executable, "-m", "orchestrator", "ignite"]
    done = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "flux" in done.stdout and "fail" in done.stdout
    assert "an essential check failed" in done.stdout

    env["BFL_API_KEY"] = TEST_KEY
    done = subprocess.run(
        [*cmd, "--json"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"ok":true' in done.stdout
