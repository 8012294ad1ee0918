"""Local ComfyUI processes: started, watched and restarted by Orchestrator.

Each ``[[comfy_processes]]`` entry is run directly (no shell) under a small *keeper*
(:mod:`orchestrator.engine.keeper`) that leads a new session and process group; its
stdout and stderr are appended to ``DATA_DIR/logs/<name>.log``. The group dies with
Orchestrator, however Orchestrator ends (``kill -9`` included): the keeper watches a
pipe only Orchestrator holds and, on Linux, a parent-death signal.

Before a start:

* a PID file from an earlier run (``DATA_DIR/run/<name>.pid``: pid, start time,
  command line, the Orchestrator that started it) whose process group still lives
  while that Orchestrator is gone is an orphan of ours: its group gets SIGTERM, then
  SIGKILL;
* the port must be free. Taken by anything else, the process is not started and its
  state is ``port_in_use``, naming the holder when it can; the port is checked again
  every ``PORT_RECHECK_S`` and the process starts once it is free.

It is *ready* once ``GET /system_stats`` answers 200 **and** the socket listening on
the port belongs to the process started (or one of its descendants; Linux, through
``/proc``; elsewhere: the process is still alive after the answer). When it exits
(or does not become ready within ``startup_timeout_s``) it is started again after an
exponential backoff, at most ``max_restarts`` times in a row. On shutdown its group
gets SIGTERM, then SIGKILL a few seconds later.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx2
from pydantic import BaseModel, ValidationError

from orchestrator import logs
from orchestrator.config import ComfyProcessSettings, child_environment
from orchestrator.engine import proctree

log = logs.get(__name__)

ProcessState = Literal["starting", "ready", "backoff", "port_in_use", "failed", "stopped"]
TERM_GRACE_S = 5.0  # SIGTERM to SIGKILL, in the keeper and here
KILL_WAIT_S = 2.0  # after SIGKILL, the longest wait for a group to be gone
READY_POLL_S = 0.2
PORT_RECHECK_S = 1.0
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_S = 60.0  # ready this long: the restart streak starts over
KEEPER = Path(__file__).with_name("keeper.py")
STATE_PHRASES: dict[ProcessState, str] = {
    "starting": "is starting",
    "ready": "is ready",
    "backoff": "is waiting to be restarted",
    "port_in_use": "is not started",
    "failed": "gave up restarting",
    "stopped": "is not running",
}
HOST = "127.0.0.1"


class ProcessStatus(BaseModel):
    name: str
    url: str
    state: ProcessState
    pid: int | None = None  # the keeper: leader of the process group started
    listener_pid: int | None = None  # the process of ours found answering on the port
    restarts: int = 0
    last_exit_code: int | None = None
    last_error: str | None = None
    log_path: str
    pid_path: str


class PidRecord(BaseModel):
    """``DATA_DIR/run/<name>.pid``: the process group a run started, so that a later
    run can tell its own orphan from a stranger that got the same pid."""

    pid: int  # the keeper; its pid is also the process group id
    start_ticks: int | None  # /proc/<pid>/stat field 22 (None without /proc)
    boot_id: str | None
    cmdline: list[str]
    port: int
    owner_pid: int  # the Orchestrator that started it
    owner_start_ticks: int | None


def read_record(path: Path) -> PidRecord | None:
    try:
        return PidRecord.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError, ValueError) as exc:
        log.warning("unreadable pid file removed", path=str(path), error=str(exc))
        path.unlink(missing_ok=True)
        return None


def write_record(path: Path, record: PidRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(record.model_dump_json(), encoding="utf-8")
    tmp.replace(path)


def record_for(pid: int, port: int) -> PidRecord:
    """The record of ``pid``, just started by this process, serving ``port``."""
    return PidRecord(
        pid=pid,
        start_ticks=proctree.start_ticks(pid),
        boot_id=proctree.boot_id(),
        cmdline=proctree.cmdline(pid) or [],
        port=port,
        owner_pid=os.getpid(),
        owner_start_ticks=proctree.start_ticks(os.getpid()),
    )


def port_taken(port: int) -> bool:
    """Something holds ``127.0.0.1:port`` (or a wildcard address covering it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # as ComfyUI (aiohttp) binds: a connection in TIME_WAIT does not count
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def group_alive(pgid: int) -> bool:
    """A live (non-zombie) process is left in process group ``pgid``."""
    if proctree.available():
        return bool(proctree.group_members(pgid))
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def kill_group(pgid: int) -> bool:
    """SIGTERM, then SIGKILL after ``TERM_GRACE_S``; True once the group is gone."""
    for sig, wait_s in ((signal.SIGTERM, TERM_GRACE_S), (signal.SIGKILL, KILL_WAIT_S)):
        signal_group(pgid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not group_alive(pgid):
                return True
            await asyncio.sleep(0.05)
    return not group_alive(pgid)


@dataclass(frozen=True)
class Answer:
    """Who answered ``GET /system_stats``."""

    ours: bool
    listener_pid: int | None = None
    problem: str | None = None


class SupervisedProcess:
    def __init__(
        self,
        config: ComfyProcessSettings,
        log_dir: Path,
        http: httpx2.AsyncClient,
        on_ready: Callable[[str], Awaitable[None]] | None = None,
        run_dir: Path | None = None,
    ) -> None:
        self.config = config
        self.log_path = log_dir / f"{config.name}.log"
        self.pid_path = (run_dir or log_dir.parent / "run") / f"{config.name}.pid"
        self.http = http
        self.on_ready = on_ready
        self.state: ProcessState = "stopped"
        self.proc: asyncio.subprocess.Process | None = None
        self.listener_pid: int | None = None
        self.restarts = 0
        self.last_exit_code: int | None = None
        self.last_error: str | None = None
        self.ready = asyncio.Event()
        self._lifeline: int | None = None  # write end; the keeper sees EOF when we die
        self._holder: tuple[frozenset[int], str] | None = None  # who holds the port
        self._problem: str | None = None  # why the answers heard are not this process's
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def address(self) -> str:
        return f"{HOST}:{self.config.port}"

    def status(self) -> ProcessStatus:
        running = self.proc is not None and self.proc.returncode is None
        return ProcessStatus(
            name=self.name,
            url=self.config.url,
            state=self.state,
            pid=self.proc.pid if self.proc is not None and running else None,
            listener_pid=self.listener_pid if self.state == "ready" else None,
            restarts=self.restarts,
            last_exit_code=self.last_exit_code,
            last_error=self.last_error,
            log_path=str(self.log_path),
            pid_path=str(self.pid_path),
        )

    def unavailable_reason(self) -> str | None:
        """Why the pool must not send work to this process's URL (None: ready)."""
        if self.state == "ready":
            return None
        why = f"supervised process {self.name} {STATE_PHRASES[self.state]}"
        return f"{why}: {self.last_error}" if self.last_error else why

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"comfy-process-{self.name}")

    # --- before a start: orphans and the port ----------------------------------------

    async def _reclaim(self) -> str | None:
        """Deal with the process group a PID file names. Kills an orphan of ours;
        returns why the port is not ours to take when another live Orchestrator runs
        that group; None otherwise."""
        rec = read_record(self.pid_path)
        if rec is None:
            return None
        if not proctree.available():  # nothing to tell ours from a stranger: the
            self.pid_path.unlink(missing_ok=True)  # port check decides
            return None
        boot = proctree.boot_id()
        if rec.boot_id is not None and boot is not None and rec.boot_id != boot:
            self.pid_path.unlink(missing_ok=True)  # from before a reboot
            return None
        if not group_alive(rec.pid):
            self.pid_path.unlink(missing_ok=True)
            return None
        if proctree.is_running(rec.owner_pid, rec.owner_start_ticks):
            return (
                f"port {self.address} is in use by {self.name} of another running "
                f"Orchestrator (pid {rec.owner_pid}; its process group {rec.pid})"
            )
        if rec.start_ticks is None:
            log.warning(
                "pid file names a live process that cannot be verified; not killing it",
                process=self.name,
                pid=rec.pid,
            )
            self.pid_path.unlink(missing_ok=True)
            return None
        leader = proctree.stat(rec.pid)
        if leader is not None and not leader.zombie:
            same = leader.start_ticks == rec.start_ticks and (
                not rec.cmdline or proctree.cmdline(rec.pid) == rec.cmdline
            )
            if not same:  # the pid was given to another process since
                self.pid_path.unlink(missing_ok=True)
                return None
        # The leader (or, it dead, what is left of its group: a group id is not
        # given out again while a member holds it) is ours, and its Orchestrator died.
        log.warning(
            "killing an orphaned process group of an earlier run",
            process=self.name,
            pid=rec.pid,
            members=proctree.group_members(rec.pid),
        )
        if await kill_group(rec.pid):
            self.pid_path.unlink(missing_ok=True)
            return None
        return f"an orphaned process group of an earlier run (pid {rec.pid}) would not die"

    async def _blocker(self) -> str | None:
        """Why the process cannot start now (None: go)."""
        claimed = await self._reclaim()
        if claimed is not None:
            return claimed
        if not await asyncio.to_thread(port_taken, self.config.port):
            self._holder = None
            return None
        holder = await asyncio.to_thread(self._describe_holder)
        return f"{holder}; {self.name} starts once it is free"

    def _describe_holder(self) -> str:
        inodes = frozenset(proctree.listening_inodes(self.config.port))
        if self._holder is None or self._holder[0] != inodes:  # scan only on a change
            who = proctree.who_listens(self.config.port)
            self._holder = (inodes, f" ({who})" if who else "")
        return (
            f"port {self.address} is already in use by another process{self._holder[1]}, "
            "not started by Orchestrator"
        )

    async def _wait_port(self) -> None:
        """Return once the port is free (after killing an orphan of ours)."""
        told: str | None = None
        while True:
            blocker = await self._blocker()
            if blocker is None:
                if self.state == "port_in_use":
                    self.last_error = None
                    log.info("comfy process port free again", process=self.name)
                return
            if blocker != told:
                log.warning(
                    "comfy process not started: port in use", process=self.name, why=blocker
                )
                told = blocker
            self.state = "port_in_use"
            self.last_error = blocker
            self.ready.clear()
            await asyncio.sleep(PORT_RECHECK_S)

    # --- start, readiness, exit --------------------------------------------------------

    def _program(self) -> str:
        """The executable (checked here, so a wrong path fails the start at once);
        relative to ``cwd``, where the keeper runs."""
        first = self.config.command[0]
        if os.sep in first or (os.altsep is not None and os.altsep in first):
            path = Path(first)
            cwd = self.config.cwd
            where = path if cwd is None or path.is_absolute() else cwd / path
            if where.is_file() and os.access(where, os.X_OK):
                return first
        else:
            env = child_environment(self.config.env)
            found = shutil.which(first, path=env.get("PATH", os.defpath))
            if found is not None:
                return found
        raise FileNotFoundError(errno.ENOENT, "no such executable file", first)

    async def _spawn(self) -> asyncio.subprocess.Process:
        if not sys.executable:
            raise OSError("no Python interpreter to run the keeper with (sys.executable)")
        program = self._program()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        lifeline_r, lifeline_w = os.pipe()  # both close-on-exec; only the keeper gets r
        try:
            os.write(fd, f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting ---\n".encode())
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",
                "-S",
                str(KEEPER),
                self.name,
                str(os.getpid()),
                str(lifeline_r),
                f"{TERM_GRACE_S:g}",
                program,
                *self.config.command,
                cwd=self.config.cwd,
                env=child_environment(self.config.env),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                start_new_session=True,  # a new process group: signals reach its children
                pass_fds=(lifeline_r,),
            )
        except BaseException:
            os.close(lifeline_w)
            raise
        finally:
            os.close(lifeline_r)
            os.close(fd)
        self._lifeline = lifeline_w
        try:
            write_record(self.pid_path, record_for(proc.pid, self.config.port))
        except OSError as exc:
            log.warning("could not write the pid file", path=str(self.pid_path), error=str(exc))
        return proc

    def _answered_by(self, proc: asyncio.subprocess.Process) -> Answer:
        """After a 200 from ``/system_stats``: did ``proc`` (or a descendant) answer?"""
        if not self.config.check_listener or not proctree.available():
            return Answer(ours=proc.returncode is None)
        port = self.config.port
        inodes = proctree.listening_inodes(port)
        if not inodes:
            return Answer(False, problem=f"nothing is seen listening on port {self.address}")
        mine = proctree.holders(inodes, proctree.descendants(proc.pid))
        foreign = inodes - mine.keys()
        if not foreign and proc.returncode is None:
            return Answer(True, listener_pid=min(mine.values()))
        others = proctree.holders(foreign)
        who = ", ".join(proctree.describe(p) for p in sorted(set(others.values())))
        return Answer(
            False,
            problem=f"GET {self.config.url}/system_stats was answered by another process "
            f"({who or 'not started by Orchestrator'}), not by {self.name} (pid {proc.pid})",
        )

    async def _wait_ready(self, proc: asyncio.subprocess.Process) -> bool:
        deadline = time.monotonic() + self.config.startup_timeout_s
        url = f"{self.config.url}/system_stats"
        told: str | None = None
        while time.monotonic() < deadline and proc.returncode is None:
            answered = False
            with contextlib.suppress(httpx2.HTTPError):
                answered = (await self.http.get(url)).status_code == 200
            if answered:
                answer = await asyncio.to_thread(self._answered_by, proc)
                if answer.ours:
                    self.listener_pid = answer.listener_pid
                    return True
                self._problem = self.last_error = answer.problem
                if answer.problem != told:
                    log.warning(
                        "comfy process not ready: the answer is not its own",
                        process=self.name,
                        why=answer.problem,
                    )
                    told = answer.problem
            await asyncio.sleep(READY_POLL_S)
        return False

    def _ended(self, proc: asyncio.subprocess.Process) -> None:
        """``proc`` (the keeper) exited: kill what is left of its group (a grandchild
        still holding the port), let go of the lifeline and the PID file."""
        signal_group(proc.pid, signal.SIGKILL)
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        self.listener_pid = None
        rec = read_record(self.pid_path)
        if rec is not None and rec.pid == proc.pid and rec.owner_pid == os.getpid():
            self.pid_path.unlink(missing_ok=True)

    async def _supervise(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                await self._wait_port()
            except OSError as exc:  # e.g. a port below 1024 without the right to bind it
                self.last_error = f"cannot check port {self.address}: {exc}"
                self.state = "failed"
                log.error("comfy process port check failed", process=self.name, error=str(exc))
                return
            self.state = "starting"
            self.ready.clear()
            self._problem = None
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
                    log.info(
                        "comfy process ready",
                        process=self.name,
                        url=self.config.url,
                        pid=proc.pid,
                        listener_pid=self.listener_pid,
                    )
                    if self.on_ready is not None:
                        try:
                            await self.on_ready(self.name)
                        except Exception:
                            log.exception("comfy process on_ready hook failed")
                    rc = await proc.wait()
                    self.last_error = f"exited with code {rc}"
                    if time.monotonic() - ready_at > STABLE_S:
                        failures = 0
                elif proc.returncode is None:
                    self.last_error = (
                        f"not ready within {self.config.startup_timeout_s:g} s "
                        f"(GET {self.config.url}/system_stats)"
                        + (f": {self._problem}" if self._problem else "")
                    )
                    log.warning("comfy process not ready; restarting", process=self.name)
                    await self._terminate(proc)
                    rc = proc.returncode if proc.returncode is not None else -1
                else:
                    rc = proc.returncode
                    self.last_error = f"exited with code {rc}" + (
                        f" ({self._problem})" if self._problem else ""
                    )
                self._ended(proc)
                self.proc = None
                self.ready.clear()
                self.last_exit_code = rc
                if self._stopping:
                    break
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
        signal_group(proc.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(TERM_GRACE_S + KILL_WAIT_S):  # the keeper's grace
                await proc.wait()
        except TimeoutError:
            signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.proc is not None:
            await self._terminate(self.proc)
            self._ended(self.proc)
            self.proc = None
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
        run_dir: Path | None = None,
    ) -> None:
        """``run_dir`` holds the PID files (default: ``run`` beside ``log_dir``)."""
        self._http = httpx2.AsyncClient(timeout=2.0, trust_env=False, follow_redirects=False)
        self.processes = {
            c.name: SupervisedProcess(c, log_dir, self._http, on_ready, run_dir) for c in configs
        }

    def start(self) -> None:
        for p in self.processes.values():
            p.start()

    async def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Wait until every process is ready (or gave up, or cannot start because its
        port is taken); True when all are ready."""
        if timeout_s is None:
            timeouts = [p.config.startup_timeout_s for p in self.processes.values()]
            timeout_s = max(timeouts, default=0.0) + 5.0

        async def one(p: SupervisedProcess) -> None:
            while not p.ready.is_set() and p.state not in ("failed", "port_in_use"):
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
