"""Local ComfyUI processes: started, watched and restarted by Orchestrator.

Each ``[[comfy_processes]]`` entry is run directly (no shell) with
``asyncio.create_subprocess_exec``; its stdout and stderr are appended to
``DATA_DIR/logs/<name>.log``. It is *ready* once ``GET /system_stats`` answers 200.
When it exits (or does not become ready within ``startup_timeout_s``) it is started
again after an exponential backoff, at most ``max_restarts`` times in a row. On
shutdown it gets SIGTERM, then SIGKILL a few seconds later.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Literal

import httpx2
from pydantic import BaseModel

from orchestrator import logs
from orchestrator.config import ComfyProcessSettings, child_environment

log = logs.get(__name__)

ProcessState = Literal["starting", "ready", "backoff", "failed", "stopped"]
TERM_GRACE_S = 5.0
READY_POLL_S = 0.2
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_S = 60.0  # ready this long: the restart streak starts over


class ProcessStatus(BaseModel):
    name: str
    url: str
    state: ProcessState
    pid: int | None = None
    restarts: int = 0
    last_exit_code: int | None = None
    last_error: str | None = None
    log_path: str


class SupervisedProcess:
    def __init__(
        self,
        config: ComfyProcessSettings,
        log_dir: Path,
        http: httpx2.AsyncClient,
        on_ready: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.log_path = log_dir / f"{config.name}.log"
        self.http = http
        self.on_ready = on_ready
        self.state: ProcessState = "stopped"
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.last_exit_code: int | None = None
        self.last_error: str | None = None
        self.ready = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.config.name

    def status(self) -> ProcessStatus:
        return ProcessStatus(
            name=self.name,
            url=self.config.url,
            state=self.state,
            pid=self.proc.pid if self.proc is not None and self.proc.returncode is None else None,
            restarts=self.restarts,
            last_exit_code=self.last_exit_code,
            last_error=self.last_error,
            log_path=str(self.log_path),
        )

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"comfy-process-{self.name}")

    async def _spawn(self) -> asyncio.subprocess.Process:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting ---\n".encode())
            return await asyncio.create_subprocess_exec(
                *self.config.command,
                cwd=self.config.cwd,
                env=child_environment(self.config.env),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                start_new_session=True,  # its own process group: signals reach its children
            )
        finally:
            os.close(fd)

    async def _wait_ready(self, proc: asyncio.subprocess.Process) -> bool:
        deadline = time.monotonic() + self.config.startup_timeout_s
        url = f"{self.config.url}/system_stats"
        while time.monotonic() < deadline and proc.returncode is None:
            with contextlib.suppress(httpx2.HTTPError):
                r = await self.http.get(url)
                if r.status_code == 200:
                    return True
            await asyncio.sleep(READY_POLL_S)
        return False

    async def _supervise(self) -> None:
        failures = 0
        while not self._stopping:
            self.state = "starting"
            self.ready.clear()
            try:
                proc = await self._spawn()
            except OSError as exc:
                self.last_error = f"could not start: {exc}"
                log.error("comfy process could not start", process=self.name, error=str(exc))
                proc = None
            if proc is not None:
                self.proc = proc
                log.info("comfy process started", process=self.name, pid=proc.pid)
                if await self._wait_ready(proc):
                    self.state = "ready"
                    self.last_error = None
                    self.ready.set()
                    ready_at = time.monotonic()
                    log.info("comfy process ready", process=self.name, url=self.config.url)
                    if self.on_ready is not None:
                        try:
                            await self.on_ready(self.name)
                        except Exception:
                            log.exception("comfy process on_ready hook failed")
                    rc = await proc.wait()
                    if time.monotonic() - ready_at > STABLE_S:
                        failures = 0
                elif proc.returncode is None:
                    self.last_error = (
                        f"not ready within {self.config.startup_timeout_s:g} s "
                        f"(GET {self.config.url}/system_stats)"
                    )
                    log.warning("comfy process not ready; restarting", process=self.name)
                    await self._terminate(proc)
                    rc = proc.returncode if proc.returncode is not None else -1
                else:
                    rc = proc.returncode
                self.ready.clear()
                self.last_exit_code = rc
                if self._stopping:
                    break
                if self.last_error is None or self.state == "ready":
                    self.last_error = f"exited with code {rc}"
                log.warning("comfy process exited", process=self.name, code=rc)
            failures += 1
            if failures > self.config.max_restarts:
                self.state = "failed"
                log.error(
                    "comfy process keeps failing; giving up",
                    process=self.name,
                    restarts=self.restarts,
                    log=str(self.log_path),
                )
                return
            self.state = "backoff"
            await asyncio.sleep(min(BACKOFF_BASE_S * 2 ** (failures - 1), BACKOFF_MAX_S))
            if self._stopping:
                break
            self.restarts += 1
        self.state = "stopped"

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(TERM_GRACE_S):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.proc is not None:
            await self._terminate(self.proc)
        self.state = "stopped"
        self.ready.clear()
        log.info("comfy process stopped", process=self.name)


class ProcessSupervisor:
    """Every configured local ComfyUI process."""

    def __init__(
        self,
        configs: Sequence[ComfyProcessSettings],
        log_dir: Path,
        on_ready: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._http = httpx2.AsyncClient(timeout=2.0, trust_env=False, follow_redirects=False)
        self.processes = {
            c.name: SupervisedProcess(c, log_dir, self._http, on_ready) for c in configs
        }

    def start(self) -> None:
        for p in self.processes.values():
            p.start()

    async def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Wait until every process is ready (or gave up); True when all are ready."""
        if timeout_s is None:
            timeouts = [p.config.startup_timeout_s for p in self.processes.values()]
            timeout_s = max(timeouts, default=0.0) + 5.0

        async def one(p: SupervisedProcess) -> None:
            while not p.ready.is_set() and p.state != "failed":
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(READY_POLL_S):
                        await p.ready.wait()

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*(one(p) for p in self.processes.values()))
        return all(p.ready.is_set() for p in self.processes.values())

    def statuses(self) -> list[ProcessStatus]:
        return [p.status() for p in self.processes.values()]

    async def stop(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.processes.values()))
        await self._http.aclose()
