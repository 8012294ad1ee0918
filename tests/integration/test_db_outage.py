"""A database that is locked or gone answers 503 with Retry-After, never 500 (issue 12).

SQLite: another connection holds the write lock (``BEGIN EXCLUSIVE``) past the busy
timeout, so a submit cannot write (reads go on: WAL readers never wait for the writer).
PostgreSQL: the database disappears under a running server (its connections are
terminated and it is dropped), or the server goes away (its port refuses connections:
asyncpg raises that as a bare ``ConnectionRefusedError``, which was answered 503 but then
logged as unhandled, and the client's connection dropped).
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import threading
from collections.abc import Callable

import pytest
from tests.conftest import _pg_admin
from tests.integration.test_api import Api, api_factory
from tests.reliability.test_crash_recovery import pg_url

from orchestrator.api import problems

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
        assert api.client.get("/api/jobs").status_code == 200  # WAL: reads go on
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


class Forwarder:
    """127.0.0.1:<port> -> PostgreSQL until ``close()``; then its connections are cut
    and the port refuses new ones, as when the server goes away."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                t = threading.Thread(target=self._pump, args=(a, b), daemon=True)
                self.threads.append(t)
                t.start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept
        self.listener.close()
        self.threads[0].join(5)
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in self.threads[1:]:
            t.join(5)
        for s in self.sockets:
            s.close()


@pytest.mark.postgres
def test_a_postgresql_server_gone_away_answers_503(
    api_factory: Callable[..., Api], pg_url: str
) -> None:
    head, name = pg_url.rsplit("/", 1)
    host, port = head.rsplit("@", 1)[1].rsplit(":", 1)
    fwd = Forwarder((host, int(port)))
    try:
        url = f"{head.rsplit(':', 1)[0]}:{fwd.port}/{name}"
        api = api_factory(worker_enabled=False, database_url=url)
        assert api.client.post("/api/generate", json=BODY).status_code == 202
        assert api.client.get("/api/jobs").status_code == 200
    finally:
        fwd.close()
    for _ in range(2):
        _assert_unavailable(api.client.post("/api/generate", json=BODY))
        _assert_unavailable(api.client.get("/api/jobs"))
    ready = api.client.get("/readyz")
    assert ready.status_code == 503 and "Retry-After" in ready.headers


def _raise(exc: OSError) -> OSError:
    try:
        raise exc
    except OSError as caught:
        return caught


def test_only_the_drivers_oserrors_are_a_database_outage() -> None:
    """A missing output file is a bug to log (500), not 'the database is busy'."""
    assert not problems.database_outage(_raise(FileNotFoundError("outputs/x.png")))
    assert not problems.database_outage(_raise(ConnectionRefusedError("not the database")))


@pytest.mark.postgres
def test_postgresql_connections_dropped_by_the_server_recover_after_one_503(
    api_factory: Callable[..., Api], pg_url: str
) -> None:
    """The pool does not ping each connection before use (that ping was a third of a
    job's time): when the server drops every connection (a restart, an idle timeout), a
    request may fail once with 503, and the next ones are served on new connections."""
    api = api_factory(worker_enabled=False, database_url=pg_url)
    for _ in range(3):  # several pooled connections
        assert api.client.post("/api/generate", json=BODY).status_code == 202
    name = pg_url.rsplit("/", 1)[1]
    _pg_admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    )
    statuses = [api.client.get("/api/jobs").status_code for _ in range(4)]
    assert statuses[-2:] == [200, 200], statuses
    assert statuses.count(503) <= 1 and set(statuses) <= {200, 503}, statuses
    assert api.client.post("/api/generate", json=BODY).status_code == 202
