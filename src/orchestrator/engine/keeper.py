"""The keeper: the first process of a supervised ComfyUI's process group.

:mod:`orchestrator.engine.processes` runs it as a script, in a new session (so it
leads a new process group), with the standard library only (``python -I -S``)::

    python -I -S keeper.py <name> <parent pid> <lifeline fd> <grace s> <program> <argv...>

It starts the command (``program``, called with ``argv``) as its child, in its own
group, and ties the whole group's life to Orchestrator's:

* **Orchestrator is gone**, however it died (``kill -9`` included): the kernel closes
  the write end of the *lifeline* pipe that only Orchestrator holds, and the keeper
  reads EOF. On Linux the keeper also asks for SIGTERM when its parent dies
  (``PR_SET_PDEATHSIG``). Either way the whole group gets SIGTERM, and SIGKILL after
  ``grace`` seconds: the command and anything it started (which stays in the group
  unless it makes a session of its own).
* **SIGTERM, SIGINT or SIGHUP** (Orchestrator stopping it): the group gets SIGTERM,
  and SIGKILL after ``grace``; the keeper exits as the command did.
* **The command exits by itself**: the keeper exits with the same status (a signal
  is raised again on itself), and Orchestrator kills what is left of the group.
* On Linux the command gets ``PR_SET_PDEATHSIG`` = SIGKILL: if the keeper itself is
  killed, the command dies with it.

A parent-death signal is tied to the *thread* that forked the child: Orchestrator
forks the keeper from its event loop's thread, so the signal also comes when that
thread ends — which ends the supervisor too. The lifeline is the process-wide
guarantee; the signal is the second one, and the only one for the command itself.

Nothing here may import from ``orchestrator``: ``-S`` leaves site-packages out, which
keeps start-up short.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
EXIT_CANNOT_RUN = 127
TICK_S = 0.5  # longest wait between checks; signals and the lifeline wake it at once
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def set_parent_death_signal(sig: int) -> bool:
    """Linux: ``sig`` comes when the parent (its forking thread) dies. False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.prctl(
        ctypes.c_int(PR_SET_PDEATHSIG),
        ctypes.c_ulong(sig),
        ctypes.c_ulong(0),
        ctypes.c_ulong(0),
        ctypes.c_ulong(0),
    )
    return int(rc) == 0


def _say(message: str) -> None:
    with_newline = f"orchestrator keeper: {message}\n".encode(errors="replace")
    with contextlib.suppress(OSError):
        os.write(2, with_newline)


def _run_command(program: str, argv: list[str], keeper: int, closing: list[int]) -> None:
    """In the forked child: never returns."""
    try:
        for sig in (*STOP_SIGNALS, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        for fd in closing:
            os.close(fd)
        set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != keeper:  # the keeper died before the line above
            os._exit(EXIT_CANNOT_RUN)
        os.execv(program, argv)
    except BaseException as exc:  # a forked child must never return
        _say(f"cannot run {program}: {exc}")
    os._exit(EXIT_CANNOT_RUN)


def _exit_like(status: int) -> int:
    """Leave as the command did: its exit code, or the signal that ended it."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.set_wakeup_fd(-1)
        with contextlib.suppress(OSError, ValueError):  # SIGKILL, SIGSTOP: no handler
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        time.sleep(1.0)  # a signal that does not end a process by default
        return 128 + sig
    return os.waitstatus_to_exitcode(status)


def main(argv: list[str]) -> int:
    if len(argv) < 7:
        _say("usage: keeper.py <name> <parent pid> <lifeline fd> <grace s> <program> <argv...>")
        return 2
    parent, lifeline, grace = int(argv[2]), int(argv[3]), float(argv[4])
    program, command = argv[5], argv[6:]

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    stops: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        if signum != signal.SIGCHLD:
            stops.append(signum)

    for sig in (*STOP_SIGNALS, signal.SIGCHLD):
        signal.signal(sig, on_signal)
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent:  # Orchestrator died before the line above
        return EXIT_CANNOT_RUN

    keeper = os.getpid()
    child = os.fork()
    if child == 0:
        _run_command(program, command, keeper, [wake_r, wake_w, lifeline])

    group = os.getpgrp()
    parent_gone = False
    kill_at: float | None = None
    while True:
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid == child:
            break
        if not parent_gone and os.getppid() != parent:
            parent_gone = True
        if (stops or parent_gone) and kill_at is None:
            kill_at = time.monotonic() + grace
            with contextlib.suppress(OSError):
                os.killpg(group, signal.SIGTERM)
        if kill_at is not None and time.monotonic() >= kill_at:
            os.killpg(group, signal.SIGKILL)  # the keeper too
        timeout = TICK_S if kill_at is None else max(0.0, min(TICK_S, kill_at - time.monotonic()))
        watched = [wake_r] if lifeline < 0 else [wake_r, lifeline]
        readable, _, _ = select.select(watched, [], [], timeout)
        if wake_r in readable:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
        if lifeline >= 0 and lifeline in readable:
            try:
                data = os.read(lifeline, 512)
            except OSError:
                data = b""
            if not data:  # EOF: every write end is closed, so Orchestrator is gone
                parent_gone = True
                os.close(lifeline)
                lifeline = -1

    if parent_gone or os.getppid() != parent:
        # Nobody is left to clean up after the command: what it started goes too.
        os.killpg(group, signal.SIGKILL)
    return _exit_like(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
