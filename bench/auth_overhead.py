"""What does authentication cost per request?

Run it from the repository root::

    .venv/bin/python bench/auth_overhead.py            # N=500 requests per row
    .venv/bin/python bench/auth_overhead.py --n 2000

The app (demo mode, no worker) is served by uvicorn on 127.0.0.1 in a thread of this
process, on a new SQLite database in a temporary folder (removed at the end). One client
sends N ``GET /api/jobs?limit=1`` one after another (after a warm-up) for each way in:

* **auth disabled**: ``AUTH_DISABLED`` (loopback only), no credential;
* **bearer token**: ``Authorization: Bearer orch_…`` (a SHA-256 and one indexed SELECT);
* **session cookie**: the UI's ``orch_session`` (a SHA-256 and one SELECT joining the
  session to its token);
* **no credential**: refused with 401 before any route runs.

It prints the median and p99 latency in milliseconds and the median each adds to the
auth-disabled row. The client shares the process (and its GIL) with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx2

from orchestrator import logs
from orchestrator.api.app import create_app
from orchestrator.auth_service import SESSION_COOKIE, Tokens
from orchestrator.config import Settings, load_settings
from orchestrator.db.engine import open_database
from orchestrator.db.tokens import TokenRepo
from orchestrator.domain.auth import Scope
from orchestrator.testing.serve import serve_in_thread
from orchestrator.ui import csrf

PATH = "/api/jobs?limit=1"


def settings_for(root: Path, *, auth_disabled: bool) -> Settings:
    root.mkdir(parents=True, exist_ok=True)
    return load_settings(
        root / "orchestrator.toml",
        {
            "data_dir": root / "data",
            "demo_mode": "on",
            "worker_enabled": False,
            "auth_disabled": auth_disabled,
            "log_level": "WARNING",
            "log_format": "console",
        },
    )


async def first_token(db_url: str) -> str:
    db = await open_database(db_url)
    try:
        made = await Tokens(TokenRepo(db), session_ttl_s=3600).create("bench", Scope.READ)
    finally:
        await db.dispose()
    return made.secret


def timed(client: httpx2.Client, n: int, expect: int) -> list[float]:
    for _ in range(20):
        client.get(PATH)
    out = []
    for _ in range(n):
        started = time.perf_counter()
        r = client.get(PATH)
        out.append((time.perf_counter() - started) * 1000)
        assert r.status_code == expect, r.text
    return out


def run(n: int) -> list[tuple[str, list[float]]]:
    rows: list[tuple[str, list[float]]] = []
    root = Path(tempfile.mkdtemp(prefix="orchestrator-auth-bench-"))
    try:
        off = settings_for(root / "off", auth_disabled=True)
        with (
            serve_in_thread(create_app(off), lifespan="on") as served,
            httpx2.Client(base_url=served.base_url, timeout=30) as c,
        ):
            rows.append(("auth disabled", timed(c, n, 200)))
        on = settings_for(root / "on", auth_disabled=False)
        secret = asyncio.run(first_token(on.db_url))
        with serve_in_thread(create_app(on), lifespan="on") as served:
            bearer = {"Authorization": f"Bearer {secret}"}
            with httpx2.Client(base_url=served.base_url, timeout=30, headers=bearer) as c:
                rows.append(("bearer token", timed(c, n, 200)))
            with httpx2.Client(base_url=served.base_url, timeout=30) as c:
                c.get("/ui/login")
                c.post(
                    "/ui/login",
                    data={"token": secret, csrf.CSRF_FIELD: c.cookies[csrf.CSRF_COOKIE]},
                )
                assert SESSION_COOKIE in c.cookies
                rows.append(("session cookie", timed(c, n, 200)))
            with httpx2.Client(base_url=served.base_url, timeout=30) as c:
                rows.append(("no credential (401)", timed(c, n, 401)))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500, help="requests per row")
    args = parser.parse_args()
    logs.configure("WARNING", "console")
    rows = run(args.n)
    base = statistics.median(rows[0][1])
    print(f"\nGET {PATH}, {args.n} sequential requests per row, SQLite\n")
    print(f"| {'way in':<22} | median ms | p99 ms | median added ms |")
    print(f"|{'-' * 24}|-----------|--------|-----------------|")
    for name, samples in rows:
        med = statistics.median(samples)
        p99 = statistics.quantiles(samples, n=100)[98]
        print(f"| {name:<22} | {med:9.2f} | {p99:6.2f} | {med - base:15.2f} |")


if __name__ == "__main__":
    main()
