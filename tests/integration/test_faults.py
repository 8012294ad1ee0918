"""Fault matrix: each upstream fault ends its job in the right terminal state with its
own error code, inside the deadline, leaves nothing half-written, and the worker keeps
serving other jobs. (Moderation, 402, 403, 422, expired result URLs and bad JSON are in
test_engine.py; the ComfyUI websocket drop and restart are in test_comfy.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

import httpx2
import pytest
import stamina
from sqlalchemy import exc as sa_exc
from tests.conftest import IN_CI, TEST_KEY
from tests.integration.test_cli import clean_environ

from orchestrator.config import Settings
from orchestrator.db.jobs import JobRepo
from orchestrator.domain.jobs import Job, JobStatus
from orchestrator.domain.params import FluxDevParams, FluxRequest
from orchestrator.engine.worker import WorkerOptions
from orchestrator.errors import ErrorCode
from orchestrator.runtime import Runtime, open_runtime
from orchestrator.testing.fake_bfl import FakeBfl
from orchestrator.testing.serve import ServedApp

FakePair = tuple[FakeBfl, ServedApp]


@pytest.fixture
def settings_for(
    make_settings: Callable[..., Settings], fake_bfl: FakePair
) -> Callable[..., Settings]:
    def make(**kw: object) -> Settings:
        base: dict[str, object] = {
            "bfl_api_key": TEST_KEY,
            "flux_base_url": fake_bfl[1].base_url,
            "http_connect_timeout_s": 0.5,
            "http_read_timeout_s": 1.0,
        }
        base.update(kw)
        return make_settings(**base)

    return make


@asynccontextmanager
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    opts = WorkerOptions(concurrency=8, lease_s=settings.lease_s, poll_interval_s=0.05)
    async with open_runtime(settings, run_worker=True, worker_options=opts) as rt:
        yield rt


def dev(prompt: str, deadline_s: float | None = None) -> FluxRequest:
    return FluxRequest(
        params=FluxDevParams(prompt=prompt, width=256, height=256), deadline_s=deadline_s
    )


async def run_with_bystander(
    rt: Runtime, faulty: FluxRequest, fake: FakeBfl, limit_s: float = 20
) -> tuple[Job, Job, float]:
    """Run the faulty job, and a healthy one on the same worker: as soon as the faults
    are all taken (while a hung request still hangs), else once the faulty job is over
    (a fault repeated many times would hit the bystander too). Returns both jobs and
    the faulty one's duration."""
    started = time.monotonic()
    bad, _ = await rt.service.submit(faulty)
    while fake.faults.pending() and time.monotonic() - started < limit_s:
        if (await rt.service.get_job(bad.id)).status.terminal:
            break
        await asyncio.sleep(0.01)
    fake.faults.clear()
    good, _ = await rt.service.submit(dev(f"bystander of {faulty.params.prompt}"))
    bad_done = await rt.service.wait_for(bad.id, limit_s)
    elapsed = time.monotonic() - started
    good_done = await rt.service.wait_for(good.id, limit_s)
    return bad_done, good_done, elapsed


def assert_clean(settings: Settings) -> None:
    partial = settings.output_path / ".partial"
    assert not list(partial.glob("*")) if partial.exists() else True
    assert not list(settings.jobs_path.rglob("*.tmp"))


@pytest.mark.parametrize(
    ("name", "fault", "code", "deadline"),
    [
        ("submit hangs", {"kind": "submit", "hang": True}, ErrorCode.SUBMIT_UNCERTAIN, None),
        (
            "poll hangs",
            {"kind": "poll", "hang": True, "count": 50},
            ErrorCode.UPSTREAM_UNAVAILABLE,
            None,
        ),
        (
            "download trickles past the deadline",
            {"kind": "download", "trickle_s": 30.0},
            ErrorCode.DEADLINE_EXCEEDED,
            2.0,
        ),
        (
            "poll 500 forever",
            {"kind": "poll", "status": 500, "count": 50},
            ErrorCode.UPSTREAM_UNAVAILABLE,
            None,
        ),
        (
            "submit answers 502 html",
            {"kind": "submit", "status": 502, "body": "<html><h1>Bad gateway</h1></html>"},
            ErrorCode.UPSTREAM_ERROR,
            None,
        ),
        (
            "poll resets forever",
            {"kind": "poll", "drop": True, "count": 50},
            ErrorCode.UPSTREAM_UNAVAILABLE,
            None,
        ),
    ],
)
async def test_fault_ends_job_with_its_code(
    settings_for: Callable[..., Settings],
    fake_bfl: FakePair,
    name: str,
    fault: dict[str, Any],
    code: ErrorCode,
    deadline: float | None,
) -> None:
    fake, _ = fake_bfl
    kind = fault.pop("kind")
    fake.faults.add(kind, **fault)
    settings = settings_for()
    async with runtime(settings) as rt:
        bad, good, elapsed = await run_with_bystander(rt, dev(name, deadline), fake)
    assert bad.status == JobStatus.FAILED and bad.error is not None, bad
    assert bad.error.code == code, bad.error
    assert elapsed < (deadline or 10) + 3
    assert good.status == JobStatus.SUCCEEDED, good.error
    assert fake.submission_count(name) <= 1
    assert bad.outputs == []
    assert_clean(settings)
    fake.release_hangs()


@pytest.mark.parametrize(
    ("name", "fault"),
    [
        ("slow trickle within the deadline", {"kind": "download", "trickle_s": 0.6}),
        ("one connection reset on poll", {"kind": "poll", "drop": True}),
        ("malformed poll json", {"kind": "poll", "status": 200, "body": "{nope"}),
        ("502 html on download", {"kind": "download", "status": 502, "body": "<html>x</html>"}),
    ],
)
async def test_transient_fault_is_survived(
    settings_for: Callable[..., Settings], fake_bfl: FakePair, name: str, fault: dict[str, Any]
) -> None:
    fake, _ = fake_bfl
    kind = fault.pop("kind")
    fake.faults.add(kind, **fault)
    settings = settings_for(http_read_timeout_s=1.0)
    async with runtime(settings) as rt:
        bad, good, _ = await run_with_bystander(rt, dev(name), fake)
    assert bad.status == JobStatus.SUCCEEDED, bad.error
    assert good.status == JobStatus.SUCCEEDED, good.error
    assert fake.submission_count(name) == 1
    assert_clean(settings)


async def test_429_storm_honours_retry_after(
    settings_for: Callable[..., Settings], fake_bfl: FakePair
) -> None:
    fake, _ = fake_bfl
    fake.faults.add("submit", status=429, headers={"Retry-After": "0"}, count=12)
    stamina.set_testing(False)  # real retry loop: it must keep going past 12 refusals
    try:
        # a generous read timeout: this test is about 429s, not slow answers
        async with runtime(settings_for(http_read_timeout_s=10.0)) as rt:
            bad, good, _ = await run_with_bystander(rt, dev("storm"), fake)
    finally:
        stamina.set_testing(True, attempts=5, cap=True)
    assert bad.status == JobStatus.SUCCEEDED and good.status == JobStatus.SUCCEEDED
    assert fake.submission_count("storm") == 1


async def test_refused_connection(make_settings: Callable[..., Settings]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    settings = make_settings(
        bfl_api_key=TEST_KEY, flux_base_url=f"http://127.0.0.1:{port}", http_connect_timeout_s=0.5
    )
    async with runtime(settings) as rt:
        job, _ = await rt.service.submit(dev("refused"))
        done = await rt.service.wait_for(job.id, 20)
    assert done.status == JobStatus.FAILED and done.error is not None
    assert done.error.code == ErrorCode.UPSTREAM_UNAVAILABLE


def _full_disk(monkeypatch: pytest.MonkeyPatch, settings: Settings, suffix: str) -> dict[str, bool]:
    """Writes of files named ``*<suffix>`` in the partial folder fail with ENOSPC while
    ``["on"]`` is true (an injected full disk; the tmpfs test below fills a real one)."""
    partial_dir = settings.output_path / ".partial"
    real_open = Path.open
    full = {"on": True}

    class FullDisk:
        def __init__(self, inner: IO[bytes]) -> None:
            self.inner = inner

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.inner.close()

        def close(self) -> None:
            self.inner.close()

    def open_(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        fh = real_open(self, mode, *args, **kwargs)
        if full["on"] and "w" in mode and self.parent == partial_dir and self.name.endswith(suffix):
            return FullDisk(fh)
        return fh

    monkeypatch.setattr(Path, "open", open_)
    return full


async def _until_event(rt: Runtime, job_id: str, needle: str) -> None:
    for _ in range(400):
        if any(needle in (e.message or "") for e in await rt.service.events(job_id)):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never logged {needle!r}")


@pytest.mark.parametrize(
    "suffix", [".part", "-com.part"], ids=["while-streaming", "while-embedding-metadata"]
)
async def test_disk_full_keeps_the_paid_result_and_fetches_again(
    settings_for: Callable[..., Settings],
    fake_bfl: FakePair,
    monkeypatch: pytest.MonkeyPatch,
    suffix: str,
) -> None:
    """A full output folder used to fail a paid, finished FLUX job (storage_error), so
    a retry paid again, and left ``-com.part`` files behind. Now the job keeps its
    handle, says the folder is full, and succeeds once there is space, with one
    submission to BFL and no temp file left on any path."""
    fake, _ = fake_bfl
    settings = settings_for()
    full = _full_disk(monkeypatch, settings, suffix)
    async with runtime(settings) as rt:
        job, _ = await rt.service.submit(dev(f"disk full {suffix}"))
        await _until_event(rt, job.id, "the output folder is full")
        waiting = await rt.service.get_job(job.id)
        assert waiting.status == JobStatus.RUNNING and waiting.upstream is not None
        assert_clean(settings)
        full["on"] = False
        done = await rt.service.wait_for(job.id, 30)
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert fake.submission_count(f"disk full {suffix}") == 1
    assert done.cost is not None and done.cost > 0
    assert_clean(settings)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs (root only; skipped otherwise, except under CI, which runs as root)."""
    out = tmp_path / "small-disk"
    out.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(out)], capture_output=True
    )
    if mounted.returncode != 0:
        if IN_CI:
            pytest.fail(f"could not mount a tmpfs as root: {mounted.stderr.decode()}")
        pytest.skip(f"could not mount a tmpfs: {mounted.stderr.decode()}")
    try:
        yield out
    finally:
        subprocess.run(["umount", "-l", str(out)], check=False)


async def test_disk_full_on_a_real_full_filesystem(
    settings_for: Callable[..., Settings], fake_bfl: FakePair, small_disk: Path
) -> None:
    """The output folder on a small tmpfs, filled to the last byte: the kernel's own
    ENOSPC. The job waits with its handle; freeing space lets it finish, paid once."""
    fake, _ = fake_bfl
    (small_disk / ".partial").mkdir()
    filler = small_disk / "filler"
    with contextlib.suppress(OSError), filler.open("wb", buffering=0) as fh:
        while True:
            fh.write(b"\0" * 4096)
    settings = settings_for(output_dir=small_disk)
    async with runtime(settings) as rt:
        job, _ = await rt.service.submit(dev("a real full disk"))
        await _until_event(rt, job.id, "the output folder is full")
        assert (await rt.service.get_job(job.id)).status == JobStatus.RUNNING
        filler.unlink()
        done = await rt.service.wait_for(job.id, 40)
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert fake.submission_count("a real full disk") == 1
    assert not list((small_disk / ".partial").iterdir())


async def test_a_failed_write_after_submit_keeps_the_paid_task(
    settings_for: Callable[..., Settings], fake_bfl: FakePair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BFL accepted (and billed) the task, then recording its handle failed ("database
    is locked" after the busy timeout): the job used to fail ``internal_error`` with no
    handle, so nothing re-attached. The write is retried until it lands."""
    fake, _ = fake_bfl
    real = JobRepo.set_upstream
    failures = {"left": 3}

    async def flaky(self: JobRepo, *args: Any, **kwargs: Any) -> None:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise sa_exc.OperationalError(
                "UPDATE jobs", {}, sqlite3.OperationalError("database is locked")
            )
        await real(self, *args, **kwargs)

    monkeypatch.setattr(JobRepo, "set_upstream", flaky)
    async with runtime(settings_for()) as rt:
        job, _ = await rt.service.submit(dev("write fails after submit"))
        done = await rt.service.wait_for(job.id, 20)
    assert failures["left"] == 0
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert done.upstream is not None and done.cost is not None and done.cost > 0
    assert fake.submission_count("write fails after submit") == 1


async def test_a_demo_job_never_runs_on_the_paid_backend(
    settings_for: Callable[..., Settings], fake_bfl: FakePair
) -> None:
    """A job queued in demo mode (simulated FLUX), then a restart with a real key: it
    used to run on the real, paid backend and stay marked simulated."""
    fake, _ = fake_bfl
    demo = settings_for(bfl_api_key=None, demo_mode="on")
    async with open_runtime(demo, run_worker=False) as rt:
        job, _ = await rt.service.submit(dev("queued in demo mode"))
    assert job.simulated
    async with runtime(settings_for()) as rt:
        done = await rt.service.wait_for(job.id, 20)
    assert done.status == JobStatus.FAILED and done.error is not None
    assert done.error.code == ErrorCode.BACKEND_KIND_CHANGED
    assert "simulated" in done.error.message
    assert fake.submission_count("queued in demo mode") == 0
    assert done.cost == 0


async def test_a_cancel_during_the_submit_keeps_the_handle_and_the_cost(
    settings_for: Callable[..., Settings], fake_bfl: FakePair
) -> None:
    """A cancel that arrives while the submit is in flight used to cut the call: the job
    said "canceled before anything was sent to BFL" and cost 0, though BFL billed it.
    The cancel now waits for the submit's answer, records the handle and the cost."""
    fake, _ = fake_bfl
    # BFL accepts (and bills) the task, then its answer takes 0.7 s (read timeout: 1 s)
    fake.faults.add("submit", delay_s=0.7, process=True)
    async with runtime(settings_for()) as rt:
        job, _ = await rt.service.submit(dev("canceled mid-submit"))
        await _until_event(rt, job.id, "claimed by")
        await asyncio.sleep(0.2)
        await rt.service.cancel_job(job.id)
        done = await rt.service.wait_for(job.id, 20)
    assert done.status == JobStatus.CANCELED, done.error
    assert fake.submission_count("canceled mid-submit") == 1
    assert done.upstream is not None
    assert done.cost is not None and done.cost > 0
    events = [e.message or "" for e in await _events(settings_for(), job.id)]
    assert not any("before anything was sent" in m for m in events), events
    assert any("may still finish and bill it" in m for m in events), events


async def _events(settings: Settings, job_id: str) -> list[Any]:
    async with open_runtime(settings, run_worker=False) as rt:
        return await rt.service.events(job_id)


# --- graceful shutdown of a real `orchestrator serve` --------------------------------------


@pytest.fixture
def served_bfl(fake_bfl: FakePair) -> Iterator[FakePair]:
    fake_bfl[0].config.task_duration_s = 1.5
    yield fake_bfl


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start(env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "serve"],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _serve_env(tmp_path: Path, bfl: ServedApp, port: int, **extra: str) -> dict[str, str]:
    return clean_environ(
        ORCHESTRATOR_CONFIG=str(tmp_path / "orchestrator.toml"),
        DATA_DIR=str(tmp_path / "data"),
        BFL_API_KEY=TEST_KEY,
        FLUX_BASE_URL=bfl.base_url,
        ORCHESTRATOR_PORT=str(port),
        FLUX_POLL_INTERVAL_S="0.05",
        **extra,
    )


def _submit_until_upstream(client: httpx2.Client, prompt: str) -> dict[str, Any]:
    """Queue a FLUX job and return once it is submitted upstream."""
    job: dict[str, Any] = client.post(
        "/api/generate",
        json={"backend": "flux", "params": {"model": "flux-dev", "prompt": prompt}},
    ).json()
    for _ in range(200):
        if client.get(f"/api/jobs/{job['id']}").json()["upstream"]:
            break
        time.sleep(0.02)
    return job


def _wait_up(client: httpx2.Client) -> None:
    for _ in range(300):
        try:
            if client.get("/api/system/health").status_code == 200:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("serve did not come up")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_finishes_in_flight_jobs_within_grace(
    tmp_path: Path, served_bfl: FakePair, sig: signal.Signals
) -> None:
    fake, bfl = served_bfl
    port = _port()
    env = _serve_env(tmp_path, bfl, port, LOG_FORMAT="json")
    proc = _start(env, tmp_path)
    with httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        try:
            _wait_up(client)
            job = _submit_until_upstream(client, f"in flight {sig.name}")
            proc.send_signal(sig)
            _out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err
    # the job finished during the grace period, before the process exited
    proc2 = _start(env, tmp_path)
    with httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        try:
            _wait_up(client)
            after = client.get(f"/api/jobs/{job['id']}").json()
        finally:
            proc2.send_signal(signal.SIGTERM)
            proc2.communicate(timeout=30)
    assert after["status"] == "succeeded", after
    assert fake.submission_count(f"in flight {sig.name}") == 1


def test_sigterm_past_grace_leaves_job_reattachable(tmp_path: Path, served_bfl: FakePair) -> None:
    """A job longer than the grace period is left running upstream; the next start
    re-attaches to it and finishes it without submitting again."""
    fake, bfl = served_bfl
    fake.config.task_duration_s = 4.0
    port = _port()
    env = _serve_env(tmp_path, bfl, port, SHUTDOWN_GRACE_S="0.2", LEASE_S="3")
    proc = _start(env, tmp_path)
    with httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        try:
            _wait_up(client)
            job = _submit_until_upstream(client, "outlives the grace")
            stopped = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=30)
            assert time.monotonic() - stopped < 3, "did not stop within the grace period"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err
    proc2 = _start(env, tmp_path)
    with httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        try:
            _wait_up(client)
            left = client.get(f"/api/jobs/{job['id']}").json()
            assert left["status"] in ("running", "succeeded")
            for _ in range(300):
                done = client.get(f"/api/jobs/{job['id']}").json()
                if done["status"] != "running":
                    break
                time.sleep(0.05)
        finally:
            proc2.send_signal(signal.SIGTERM)
            proc2.communicate(timeout=30)
    assert done["status"] == "succeeded", done
    assert fake.submission_count("outlives the grace") == 1
