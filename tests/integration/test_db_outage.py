"""A database that is locked or gone answers 503 with Retry-After, never 500 (issue 12).

SQLite: another connection holds the write lock (``BEGIN EXCLUSIVE``) past the busy
timeout, so a submit cannot write. PostgreSQL: the database disappears under a running
server (its connections are terminated and it is dropped).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import pytest
from tests.conftest import _pg_admin
from tests.integration.test_api import Api, api_factory
from tests.reliability.test_crash_recovery import pg_url

__all__ = ["api_factory", "pg_url"]  # fixtures, re-used

BODY = {"backend": "flux", "params": {"model": "flux-dev", "prompt": "p", "width": 256}}


def _assert_unavailable(r: object) -> None:
    import httpx2

    assert isinstance(r, httpx2.Response)
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert int(r.headers["Retry-After"]) >= 1
    body = r.json()
    assert body["type"].endswith("/database-unavailable") and body["status"] == 503


def test_a_locked_sqlite_database_answers_503(
    api_factory: Callable[..., Api], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("orchestrator.db.engine.SQLITE_BUSY_TIMEOUT_MS", 300)
    api = api_factory(worker_enabled=False)
    assert api.client.post("/api/generate", json=BODY).status_code == 202
    hog = sqlite3.connect(api.settings.data_path / "orchestrator.db", isolation_level=None)
    try:
        hog.execute("BEGIN EXCLUSIVE")
        _assert_unavailable(api.client.post("/api/generate", json=BODY))
    finally:
        hog.execute("ROLLBACK")
        hog.close()
    assert api.client.post("/api/generate", json=BODY).status_code == 202


@pytest.mark.postgres
def test_a_vanished_postgresql_database_answers_503(
    api_factory: Callable[..., Api], pg_url: str
) -> None:
    api = api_factory(worker_enabled=False, database_url=pg_url)
    assert api.client.post("/api/generate", json=BODY).status_code == 202
    name = pg_url.rsplit("/", 1)[1]
    _pg_admin(f'DROP DATABASE "{name}" WITH (FORCE)')  # terminates the server's connections
    for _ in range(2):  # the pool's dead connections, then a refused new one
        _assert_unavailable(api.client.post("/api/generate", json=BODY))
        _assert_unavailable(api.client.get("/api/jobs"))
    ready = api.client.get("/readyz")
    assert ready.status_code == 503 and "Retry-After" in ready.headers
