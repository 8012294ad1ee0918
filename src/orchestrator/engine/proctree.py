"""What ``/proc`` tells about processes and listening sockets (Linux).

Used by the supervisor of local ComfyUI processes to tell its own processes from
strangers: a process is identified by its pid *and* its start time (a pid is reused,
the pair is not), and the process answering on a port is found through the socket
inode listening there (``/proc/net/tcp``, ``/proc/net/tcp6``) and the file
descriptors that hold it (``/proc/<pid>/fd``). Where ``/proc`` is absent every
function answers "unknown" (None or empty) and callers fall back to weaker checks.

Only processes of the same user can be inspected fully; others are skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp
# Local addresses that receive a connection to 127.0.0.1 (as /proc/net prints them:
# 32-bit words in host byte order, little-endian here).
LOOPBACK_V4 = {"0100007F", "00000000"}
LOOPBACK_V6 = {
    "00000000000000000000000000000000",  # ::
    "0000000000000000FFFF00000100007F",  # ::ffff:127.0.0.1
}


@dataclass(frozen=True)
class ProcStat:
    pid: int
    state: str
    ppid: int
    pgrp: int
    session: int
    start_ticks: int  # clock ticks after boot: with the pid, names one process

    @property
    def zombie(self) -> bool:
        return self.state in ("Z", "X")


def available() -> bool:
    return (PROC / "self" / "stat").is_file() and (PROC / "net" / "tcp").is_file()


def stat(pid: int) -> ProcStat | None:
    try:
        raw = (PROC / str(pid) / "stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    # "pid (comm) state ppid pgrp session ..."; comm may hold spaces and parentheses
    try:
        fields = raw[raw.rindex(")") + 2 :].split()
        return ProcStat(
            pid=pid,
            state=fields[0],
            ppid=int(fields[1]),
            pgrp=int(fields[2]),
            session=int(fields[3]),
            start_ticks=int(fields[19]),
        )
    except (ValueError, IndexError):
        return None


def start_ticks(pid: int) -> int | None:
    st = stat(pid)
    return st.start_ticks if st is not None else None


def cmdline(pid: int) -> list[str] | None:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    return [os.fsdecode(a) for a in raw.split(b"\0")[:-1]] if raw else []


def boot_id() -> str | None:
    try:
        return (PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip() or None
    except OSError:
        return None


def all_stats() -> list[ProcStat]:
    try:
        names = [p.name for p in PROC.iterdir()]
    except OSError:
        return []
    out = []
    for name in names:
        if name.isdigit():
            st = stat(int(name))
            if st is not None:
                out.append(st)
    return out


def is_running(pid: int, ticks: int | None) -> bool:
    """``pid`` lives, is no zombie, and (when ``ticks`` is given) started then."""
    st = stat(pid)
    if st is None or st.zombie:
        return False
    return ticks is None or st.start_ticks == ticks


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    return [st.pid for st in all_stats() if st.pgrp == pgid and not st.zombie]


def descendants(root: int) -> list[int]:
    """``root`` and every live process below it."""
    children: dict[int, list[int]] = {}
    for st in all_stats():
        if not st.zombie:
            children.setdefault(st.ppid, []).append(st.pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def listening_inodes(port: int) -> set[int]:
    """Inodes of the TCP sockets listening on ``port`` that a connection to
    127.0.0.1 may reach."""
    found: set[int] = set()
    for table, accepted in (("tcp", LOOPBACK_V4), ("tcp6", LOOPBACK_V6)):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 10 or f[3] != LISTEN:
                continue
            address, _, hex_port = f[1].partition(":")
            if int(hex_port, 16) == port and address.upper() in accepted and f[9] != "0":
                found.add(int(f[9]))
    return found


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets ``pid`` holds open (empty when it cannot be read)."""
    fd_dir = PROC / str(pid) / "fd"
    try:
        fds = list(fd_dir.iterdir())
    except OSError:
        return set()
    out = set()
    for fd in fds:
        try:
            target = str(fd.readlink())
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


def holders(inodes: set[int], pids: list[int] | None = None) -> dict[int, int]:
    """inode -> the first of ``pids`` (default: every readable process) holding it."""
    out: dict[int, int] = {}
    if not inodes:
        return out
    candidates = pids if pids is not None else [st.pid for st in all_stats()]
    for pid in candidates:
        for inode in socket_inodes(pid) & inodes:
            out.setdefault(inode, pid)
        if len(out) == len(inodes):
            break
    return out


def describe(pid: int) -> str:
    """``pid 123: python3 -m http.server 8188`` (the command cut short)."""
    args = cmdline(pid)
    if not args:
        return f"pid {pid}"
    text = " ".join(args)
    return f"pid {pid}: {text[:117] + '...' if len(text) > 120 else text}"


def who_listens(port: int) -> str | None:
    """The processes listening on ``port`` as text, or None when none can be named."""
    inodes = listening_inodes(port)
    found = holders(inodes)
    if not found:
        return None
    return ", ".join(describe(pid) for pid in sorted(set(found.values())))
