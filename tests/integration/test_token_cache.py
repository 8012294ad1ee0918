"""The in-process cache of verified bearer tokens (``auth_service.Tokens``).

* A verified token is not looked up again within the TTL (the GET path's promise: no
  token query per request), and its ``last_used_at`` is not written per request.
* A token revoked in this process is refused at once: through the service, and through
  the API of a served app; a lookup that was in flight during the revocation does not
  put the token back in the cache.
* Another process (another ``Tokens`` on the same database) refuses a revoked token once
  the TTL has passed (a fake clock: no sleeping, no timing assertion).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx2
import pytest

from orchestrator.api.app import create_app
from orchestrator.auth_service import TOKEN_CACHE_TTL_S, Tokens
from orchestrator.config import load_settings
from orchestrator.db.engine import Database, open_database
from orchestrator.db.tokens import TokenRepo, TokenRow
from orchestrator.domain.auth import Scope
from orchestrator.testing.serve import serve_in_thread


class CountingRepo(TokenRepo):
    """Counts the token lookups and ``last_used_at`` writes; can hold a lookup until
    released, with the row it read."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.lookups = 0
        self.touches = 0
        self.hold: asyncio.Event | None = None
        self.read: asyncio.Event = asyncio.Event()

    async def by_hash(self, token_hash: str) -> TokenRow | None:
        self.lookups += 1
        row = await super().by_hash(token_hash)
        if self.hold is not None:
            self.read.set()
            await self.hold.wait()
        return row

    async def touch(self, token_id: str, at: datetime) -> None:
        self.touches += 1
        await super().touch(token_id, at)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = await open_database(db_url)
    try:
        yield database
    finally:
        await database.dispose()


async def test_a_verified_token_is_not_looked_up_again_nor_touched_per_request(
    db: Database,
) -> None:
    repo = CountingRepo(db)
    tokens = Tokens(repo, session_ttl_s=60)
    made = await tokens.create("reader", Scope.READ)
    for _ in range(50):
        principal = await tokens.authenticate(made.secret)
        assert principal is not None and principal.token_id == made.token.id
    assert repo.lookups == 1
    assert repo.touches == 1  # last_used_at: one write, not one per request
    assert await tokens.authenticate(made.secret + "x") is None  # still checked


async def test_a_token_revoked_in_this_process_is_refused_at_once(db: Database) -> None:
    repo = CountingRepo(db)
    tokens = Tokens(repo, session_ttl_s=60)
    made = await tokens.create("short-lived", Scope.GENERATE)
    kept = await tokens.create("kept", Scope.READ)
    assert await tokens.authenticate(made.secret) is not None
    assert await tokens.authenticate(kept.secret) is not None
    assert await tokens.authenticate(made.secret) is not None  # from the cache
    assert repo.lookups == 2
    await tokens.revoke(made.token.id)
    assert await tokens.authenticate(made.secret) is None
    assert await tokens.authenticate(kept.secret) is not None  # others stay cached
    assert repo.lookups == 3


async def test_a_lookup_in_flight_during_a_revocation_does_not_refill_the_cache(
    db: Database,
) -> None:
    repo = CountingRepo(db)
    tokens = Tokens(repo, session_ttl_s=60)
    made = await tokens.create("racing", Scope.READ)
    repo.hold = asyncio.Event()
    slow = asyncio.create_task(tokens.authenticate(made.secret))
    await repo.read.wait()  # it has read the row, not revoked yet
    await tokens.revoke(made.token.id)
    repo.hold.set()
    repo.hold = None
    assert await slow is not None  # it started before the revocation
    assert await tokens.authenticate(made.secret) is None


async def test_another_process_refuses_a_revoked_token_after_the_ttl(db: Database) -> None:
    clock = Clock()
    server = Tokens(CountingRepo(db), session_ttl_s=60, clock=clock)
    cli = Tokens(TokenRepo(db), session_ttl_s=60)  # e.g. `orchestrator token revoke`
    made = await cli.create("elsewhere", Scope.READ)
    assert await server.authenticate(made.secret) is not None
    await cli.revoke(made.token.id)
    clock.now += TOKEN_CACHE_TTL_S / 2
    # Documented: up to the TTL, a revocation made elsewhere is not seen here yet.
    assert await server.authenticate(made.secret) is not None
    clock.now += TOKEN_CACHE_TTL_S / 2 + 0.001
    assert await server.authenticate(made.secret) is None


# --- through the API of a served app ------------------------------------------------


@dataclass
class Served:
    base_url: str
    admin: str


async def _admin(db_url: str) -> str:
    db = await open_database(db_url)
    try:
        return (await Tokens(TokenRepo(db), session_ttl_s=60).create("a", Scope.ADMIN)).secret
    finally:
        await db.dispose()


@pytest.fixture
def served(tmp_path: Path, clean_env: Path) -> Iterator[Served]:
    assert not any(k == "AUTH_DISABLED" for k in os.environ)
    settings = load_settings(
        tmp_path / "orchestrator.toml",
        {"data_dir": tmp_path / "data", "demo_mode": "on", "worker_enabled": False},
    )
    admin = asyncio.run(_admin(settings.db_url))
    with serve_in_thread(create_app(settings), lifespan="on") as s:
        yield Served(s.base_url, admin)


def test_a_token_revoked_through_the_api_is_refused_at_once(served: Served) -> None:
    admin = {"Authorization": f"Bearer {served.admin}"}
    with httpx2.Client(base_url=served.base_url, timeout=30) as c:
        r = c.post("/api/tokens", json={"name": "soon gone", "scope": "read"}, headers=admin)
        assert r.status_code == 201, r.text
        token_id, secret = r.json()["token"]["id"], r.json()["secret"]
        bearer = {"Authorization": f"Bearer {secret}"}
        for _ in range(3):  # verified, then served from the cache
            assert c.get("/api/jobs", headers=bearer).status_code == 200
        assert c.delete(f"/api/tokens/{token_id}", headers=admin).status_code == 200
        r = c.get("/api/jobs", headers=bearer)
        assert r.status_code == 401, r.text
        assert c.get("/api/auth/whoami", headers=admin).status_code == 200
