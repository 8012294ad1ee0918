"""The supervisor of local ComfyUI processes with real processes (issue 16, defect 3).

"The supervisor orphans its child and adopts a stranger": after ``kill -9`` of
``serve`` its ComfyUI kept running and holding the port, and the next ``serve`` heard
that orphan answer, called its own new child ready, and sent jobs to the orphan.

Every process here is real: a stand-in ComfyUI (``tests/fixtures/comfy_standin.py``,
which can start a grandchild and report its pid in ``/system_stats``), and for the
parent-death test a parent process (``tests/fixtures/supervise_one.py``) that is
killed with SIGKILL. Ports are free ports on 127.0.0.1. Every wait has a deadline;
every process started is killed in the fixtures' cleanup, even on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from orchestrator import errors
from orchestrator.config import ComfyProcessSettings, Settings
from orchestrator.engine import processes, proctree
from orchestrator.engine.processes import ProcessSupervisor, SupervisedProcess
from orchestrator.ignite import check_processes
from orchestrator.runtime import open_runtime

pytestmark = pytest.mark.skipif(
    not proctree.available(), reason="needs Linux /proc to tell processes apart"
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
STANDIN = FIXTURES / "comfy_standin.py"
PARENT = FIXTURES / "supervise_one.py"
DEADLINE_S = 20.0  # generous: two busy cores start Python processes slowly


# --- helpers ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def standin(port: int, *extra: str) -> list[str]:
    return [sys.executable, str(STANDIN), "--port", str(port), "--life-s", "120", *extra]


def stats(port: int) -> dict[str, object] | None:
    """``system`` of ``GET /system_stats``, or None when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/system_stats", timeout=2) as r:
            system = json.load(r)["system"]
    except OSError:
        return None
    assert isinstance(system, dict)
    return system


def answering_pid(port: int) -> int:
    system = stats(port)
    assert system is not None, f"nothing answers on port {port}"
    pid = system["pid"]
    assert isinstance(pid, int)
    return pid


def gone(pid: int) -> bool:
    """Exited (a zombie counts: it holds no port and runs nothing)."""
    st = proctree.stat(pid)
    return st is None or st.zombie


def wait_until(what: str, check: Callable[[], bool], timeout_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        time.sleep(0.05)


async def await_until(
    what: str,
    check: Callable[[], bool],
    timeout_s: float = DEADLINE_S,
    never: SupervisedProcess | None = None,
) -> None:
    """Wait for ``check``; meanwhile ``never`` must not once be ready."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if never is not None:
            assert not never.ready.is_set() and never.state != "ready", (
                f"reported ready while {what!r} was awaited: {never.status()}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        await asyncio.sleep(0.05)


def kill_hard(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def process_config(port: int, command: list[str], **kw: object) -> ComfyProcessSettings:
    return ComfyProcessSettings.model_validate(
        {
            "name": "gpu0",
            "command": command,
            "port": port,
            "startup_timeout_s": DEADLINE_S,
            "max_restarts": 5,
            **kw,
        }
    )


def write_pid_file(data: Path, record: dict[str, object]) -> Path:
    """A PID file as a run of Orchestrator leaves it (``DATA_DIR/run/<name>.pid``)."""
    path = data / "run" / "gpu0.pid"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record), encoding="utf-8")
    return path


def record_of(pid: int, port: int, owner_pid: int) -> dict[str, object]:
    return {
        "pid": pid,
        "start_ticks": proctree.start_ticks(pid),
        "boot_id": proctree.boot_id(),
        "cmdline": proctree.cmdline(pid),
        "port": port,
        "owner_pid": owner_pid,
        "owner_start_ticks": proctree.start_ticks(owner_pid),
    }


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


# --- fixtures --------------------------------------------------------------------------


class Spawned:
    """Processes a test starts itself; all killed and reaped at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pids: set[int] = set()  # others to kill at the end (grandchildren...)

    def start(self, cmd: list[str], log: Path | None = None) -> subprocess.Popen[bytes]:
        out = log.open("ab") if log is not None else subprocess.DEVNULL
        try:
            p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            if log is not None and not isinstance(out, int):
                out.close()
        self.procs.append(p)
        # reap it as soon as it exits, whoever kills it: no zombie of ours lingers
        threading.Thread(target=p.wait, daemon=True).start()
        return p

    def cleanup(self) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            kill_hard(p.pid)
        for pid in self.pids:
            kill_hard(pid)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)


@pytest.fixture
def spawned() -> Iterator[Spawned]:
    s = Spawned()
    try:
        yield s
    finally:
        s.cleanup()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
async def supervise(
    data: Path,
) -> AsyncIterator[Callable[[ComfyProcessSettings], ProcessSupervisor]]:
    """Start supervisors (PID files in ``data/run``); each is stopped at the end, and
    anything it started is killed even if stopping fails."""
    started: list[ProcessSupervisor] = []
    seen: set[int] = set()

    def make(config: ComfyProcessSettings) -> ProcessSupervisor:
        sup = ProcessSupervisor([config], data / "logs")
        started.append(sup)
        sup.start()
        return sup

    async def watch() -> None:
        while True:
            for sup in started:
                for st in sup.statuses():
                    if st.pid is not None:
                        seen.add(st.pid)
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    try:
        yield make
    finally:
        watcher.cancel()
        for sup in started:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(15):
                    await sup.stop()
        for pid in seen:  # its process group, if anything is left of it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


@pytest.fixture(autouse=True)
def quick_recheck(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processes, "PORT_RECHECK_S", 0.2, raising=False)


def only(sup: ProcessSupervisor) -> SupervisedProcess:
    return next(iter(sup.processes.values()))


def ours(sup: ProcessSupervisor, pid: int) -> bool:
    """``pid`` is the process started by ``sup`` or one of its descendants."""
    st = only(sup).status()
    return st.pid is not None and pid in proctree.descendants(st.pid)


# --- children die with their parent ----------------------------------------------------


class Lines:
    """A child's stdout, line by line, read by a thread (with deadlines here)."""

    def __init__(self, p: subprocess.Popen[str]) -> None:
        self.p = p
        self.lines: queue.Queue[str] = queue.Queue()
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        assert self.p.stdout is not None
        with contextlib.suppress(ValueError, OSError):
            for line in self.p.stdout:
                self.lines.put(line)
        self.lines.put("")

    def until(self, prefixes: tuple[str, ...], timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        seen = []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line.startswith(prefixes) or not line:
                return line
            seen.append(line)
        raise AssertionError(f"no {prefixes} within {timeout_s:g} s: {seen}")

    def close(self) -> None:
        self.thread.join(timeout=10)
        if self.p.stdout is not None:
            self.p.stdout.close()


def test_kill_9_of_the_parent_takes_its_child_and_grandchild(
    tmp_path: Path, spawned: Spawned
) -> None:
    port = free_port()
    config = process_config(port, standin(port, "--role", "child", "--grandchild"))
    parent = subprocess.Popen(
        [sys.executable, str(PARENT), config.model_dump_json(), str(tmp_path / "logs"), "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    out = Lines(parent)
    pids: list[int] = []
    try:
        line = out.until(("READY ", "NOT READY "), DEADLINE_S + 10)
        assert line.startswith("READY "), line
        status = json.loads(line.removeprefix("READY "))
        system = stats(port)
        assert system is not None
        child, grandchild = system["pid"], system["grandchild"]
        assert isinstance(child, int) and isinstance(grandchild, int)
        pids = [p for p in (status["pid"], child, grandchild) if isinstance(p, int)]
        spawned.pids.update(pids)
        assert not any(gone(p) for p in pids)

        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)

        wait_until(
            f"the child {child} and grandchild {grandchild} die with their parent",
            lambda: all(gone(p) for p in pids),
            timeout_s=15,
        )
        wait_until("the port is free", lambda: not processes.port_taken(port), timeout_s=5)
    finally:
        kill_hard(parent.pid)
        parent.wait(timeout=10)
        out.close()


async def test_a_clean_stop_takes_the_grandchild_and_removes_the_pid_file(
    supervise: Callable[[ComfyProcessSettings], ProcessSupervisor], data: Path
) -> None:
    port = free_port()
    sup = supervise(process_config(port, standin(port, "--role", "child", "--grandchild")))
    p = only(sup)
    await await_until("ready", p.ready.is_set)
    system = await asyncio.to_thread(stats, port)
    assert system is not None and isinstance(system["grandchild"], int)
    grandchild = system["grandchild"]
    pid_file = data / "run" / "gpu0.pid"
    record = json.loads(pid_file.read_text())
    assert record["pid"] == p.status().pid
    assert record["start_ticks"] == proctree.start_ticks(record["pid"])
    assert record["owner_pid"] == os.getpid()
    assert p.status().listener_pid == system["pid"]

    await sup.stop()
    assert gone(grandchild)
    assert not pid_file.exists()
    assert not processes.port_taken(port)


async def test_a_child_that_dies_leaves_no_grandchild_and_is_restarted(
    supervise: Callable[[ComfyProcessSettings], ProcessSupervisor],
) -> None:
    port = free_port()
    sup = supervise(process_config(port, standin(port, "--role", "child", "--grandchild")))
    p = only(sup)
    await await_until("ready", p.ready.is_set)
    first = await asyncio.to_thread(stats, port)
    assert first is not None
    child, grandchild = first["pid"], first["grandchild"]
    assert isinstance(child, int) and isinstance(grandchild, int)

    os.kill(child, signal.SIGKILL)  # the ComfyUI itself, not the keeper above it
    await await_until("the exit is seen", lambda: p.last_exit_code is not None)
    assert p.last_exit_code == -signal.SIGKILL  # the keeper exits as its command did
    await await_until("the grandchild is killed", lambda: gone(grandchild), timeout_s=5)
    await await_until("ready again", lambda: p.ready.is_set() and p.restarts == 1)
    assert ours(sup, await asyncio.to_thread(answering_pid, port))


# --- an orphan of ours is killed; a stranger is not adopted ------------------------------


async def test_an_orphan_from_an_earlier_run_is_killed_and_replaced(
    supervise: Callable[[ComfyProcessSettings], ProcessSupervisor],
    spawned: Spawned,
    data: Path,
) -> None:
    """The earlier ``serve`` died and its child (with a grandchild) lives on; its PID
    file names it. The new supervisor kills that group and starts its own."""
    port = free_port()
    orphan = spawned.start(standin(port, "--role", "orphan", "--grandchild"))
    wait_until("the orphan answers", lambda: stats(port) is not None)
    system = stats(port)
    assert system is not None and isinstance(system["grandchild"], int)
    orphan_grandchild = system["grandchild"]
    spawned.pids.add(orphan_grandchild)
    write_pid_file(data, record_of(orphan.pid, port, owner_pid=dead_pid()))

    sup = supervise(process_config(port, standin(port, "--role", "child")))
    p = only(sup)
    await await_until("the new child is ready", p.ready.is_set)
    assert gone(orphan.pid), "the orphan still runs"
    assert gone(orphan_grandchild), "the orphan's grandchild still runs"
    answer = await asyncio.to_thread(stats, port)
    assert answer is not None and answer["role"] == "child"
    assert isinstance(answer["pid"], int) and ours(sup, answer["pid"])
    assert p.status().listener_pid == answer["pid"]


async def test_a_stranger_on_the_port_is_reported_and_waited_out(
    supervise: Callable[[ComfyProcessSettings], ProcessSupervisor], spawned: Spawned
) -> None:
    port = free_port()
    stranger = spawned.start(standin(port, "--role", "stranger"))
    wait_until("the stranger answers", lambda: stats(port) is not None)

    sup = supervise(process_config(port, standin(port, "--role", "child")))
    p = only(sup)
    await await_until("port_in_use", lambda: p.state == "port_in_use", never=p)
    st = p.status()
    assert st.pid is None, "a child was started on a taken port"
    assert st.last_error is not None
    assert f"port 127.0.0.1:{port} is already in use by another process" in st.last_error
    assert f"pid {stranger.pid}" in st.last_error
    assert "not started by Orchestrator" in st.last_error
    assert "port 127.0.0.1" in (p.unavailable_reason() or "")
    # it keeps checking, and keeps not starting
    await asyncio.sleep(1.0)
    assert p.state == "port_in_use" and p.status().pid is None and not p.ready.is_set()
    assert await sup.wait_ready(timeout_s=5) is False  # settled: no point waiting

    stranger.kill()
    await await_until("ready once the port is free", p.ready.is_set)
    answer = await asyncio.to_thread(stats, port)
    assert answer is not None and answer["role"] == "child"
    assert isinstance(answer["pid"], int) and ours(sup, answer["pid"])
    assert p.last_error is None


async def test_readiness_is_not_believed_from_a_stranger(
    supervise: Callable[[ComfyProcessSettings], ProcessSupervisor],
    spawned: Spawned,
    tmp_path: Path,
) -> None:
    """The child started is slow to bind; a stranger takes the port meanwhile and
    answers. That answer does not make the child ready; the child then fails to bind
    and the supervisor waits for the port."""
    port = free_port()
    go = tmp_path / "bind-now"
    sup = supervise(process_config(port, standin(port, "--role", "child", "--bind-after", str(go))))
    p = only(sup)
    await await_until("the child is started", lambda: p.status().pid is not None)

    spawned.start(standin(port, "--role", "stranger"))
    await await_until("the stranger answers", lambda: stats(port) is not None, never=p)
    await await_until(
        "the stranger's answers are seen and refused",
        lambda: "answered by another process" in (p.last_error or ""),
        never=p,
    )
    assert p.state == "starting"
    go.touch()  # the child binds now: the port is taken, it exits 1
    await await_until("port_in_use", lambda: p.state == "port_in_use", never=p)
    assert p.last_exit_code == 1

    for proc in spawned.procs:
        proc.kill()
    await await_until("ready once the stranger is gone", p.ready.is_set)
    assert ours(sup, await asyncio.to_thread(answering_pid, port))


async def test_a_pid_file_naming_a_recycled_pid_kills_nothing(
    supervise: Callable[[ComfyProcessSettings], ProcessSupervisor],
    spawned: Spawned,
    data: Path,
) -> None:
    """The pid recorded now belongs to another process (another start time)."""
    port = free_port()
    stranger = spawned.start(standin(port, "--role", "stranger"))
    wait_until("the stranger answers", lambda: stats(port) is not None)
    record = record_of(stranger.pid, port, owner_pid=dead_pid())
    assert isinstance(record["start_ticks"], int)
    record["start_ticks"] -= 1
    write_pid_file(data, record)

    sup = supervise(process_config(port, standin(port, "--role", "child")))
    p = only(sup)
    await await_until("port_in_use", lambda: p.state == "port_in_use", never=p)
    assert not gone(stranger.pid)


async def test_a_group_of_another_live_orchestrator_is_left_alone(
    supervise: Callable[[ComfyProcessSettings], ProcessSupervisor],
    spawned: Spawned,
    data: Path,
) -> None:
    """Two Orchestrators with the same process configured: the second does not kill
    the first one's ComfyUI, and says why it does not start its own."""
    port = free_port()
    theirs = spawned.start(standin(port, "--role", "theirs"))
    wait_until("it answers", lambda: stats(port) is not None)
    owner = spawned.start([sys.executable, "-c", "import time; time.sleep(120)"])
    wait_until("the owner runs", lambda: proctree.start_ticks(owner.pid) is not None)
    write_pid_file(data, record_of(theirs.pid, port, owner_pid=owner.pid))

    sup = supervise(process_config(port, standin(port, "--role", "child")))
    p = only(sup)
    await await_until("port_in_use", lambda: p.state == "port_in_use", never=p)
    assert "another running Orchestrator" in (p.last_error or "")
    assert f"pid {owner.pid}" in (p.last_error or "")
    assert not gone(theirs.pid)


# --- what the rest of Orchestrator sees ------------------------------------------------


async def test_the_pool_sends_nothing_to_a_stranger_on_a_supervised_port(
    make_settings: Callable[..., Settings], spawned: Spawned, tmp_path: Path
) -> None:
    """A real (fake) ComfyUI that Orchestrator did not start holds the port of a
    configured process: the pool instance stays down with the reason, and so do the
    health and ignite reports; nothing is routed there."""
    port = free_port()
    fake_comfy = [sys.executable, "-m", "orchestrator", "fake-comfy", "--port", str(port)]
    spawned.start([*fake_comfy, "--base-dir", str(tmp_path / "stranger")])
    wait_until("the stranger answers", lambda: stats(port) is not None)
    settings = make_settings(
        comfy_processes=[
            {
                "name": "local",
                "command": [*fake_comfy, "--base-dir", str(tmp_path / "ours")],
                "port": port,
                "startup_timeout_s": DEADLINE_S,
            }
        ]
    )
    async with open_runtime(settings, run_worker=True, wait_processes=True) as rt:
        sup = rt.processes
        pool = rt.service.comfy
        assert sup is not None and pool is not None
        local = sup.processes["local"]
        await await_until("port_in_use", lambda: local.state == "port_in_use", never=local)
        await pool.refresh()
        inst = pool.instances["local"]
        assert not inst.healthy
        assert "already in use by another process" in (inst.last_error or "")
        health = {h.name: h for h in await rt.service.backend_health()}
        assert "already in use by another process" in (health["comfy"].reason or "")
        checks = {c.component: c for c in check_processes(rt.service)}
        assert checks["process:local"].status == "fail"
        assert "port_in_use: port 127.0.0.1" in checks["process:local"].message
        with pytest.raises(errors.WaitForBackend, match="already in use"):
            pool.pick(None)
