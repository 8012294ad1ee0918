"""Shared fixtures. Every test runs with a clean environment and its own config
folder, so nothing ever reads or writes the real user folders."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import stamina
from tests.s3_server import s3_server  # noqa: F401  (a fixture: moto's S3 server)

from orchestrator.config import Settings, env_name, load_settings
from orchestrator.testing.fake_bfl import FakeBfl, FakeBflConfig
from orchestrator.testing.serve import ServedApp, serve_in_thread

PG_ADMIN_URL = os.environ.get(
    "ORCHESTRATOR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TEST_KEY = "bfl-test-key-0123456789abcdef"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No setting leaks in from the machine; the config file lives in tmp."""
    for name in Settings.model_fields:
        monkeypatch.delenv(env_name(name), raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    config = tmp_path / "config" / "orchestrator.toml"
    config.parent.mkdir()
    monkeypatch.setenv("ORCHESTRATOR_CONFIG", str(config))
    return config


@pytest.fixture(autouse=True)
def fast_retries() -> Iterator[None]:
    """stamina's testing mode: no backoff sleeps, at most 5 attempts."""
    stamina.set_testing(True, attempts=5, cap=True)
    yield
    stamina.set_testing(False)


@pytest.fixture
def make_settings(tmp_path: Path, clean_env: Path) -> Callable[..., Settings]:
    def make(**overrides: object) -> Settings:
        base: dict[str, object] = {
            "data_dir": tmp_path / "data",
            "demo_mode": "off",
            "lease_s": 5.0,
            "worker_poll_interval_s": 0.05,
            "flux_poll_interval_s": 0.02,
            "http_connect_timeout_s": 2.0,
            "http_read_timeout_s": 5.0,
            # Most tests call the API without a token; auth tests turn it back on.
            "auth_disabled": True,
        }
        base.update(overrides)
        return load_settings(clean_env, base)

    return make


# --- databases -----------------------------------------------------------------------


def _pg_admin(sql: str) -> None:
    """Run one admin statement in a fresh thread and loop (callers may already be
    inside an event loop)."""
    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, go()).result()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A throwaway PostgreSQL database for the session (skipped when no server,
    except under CI=true, where it must run)."""
    name = f"orch_test_{uuid.uuid4().hex[:10]}"
    try:
        _pg_admin(f'CREATE DATABASE "{name}"')
    except (OSError, Exception) as exc:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required under CI=true but unreachable: {exc}")
        pytest.skip(f"no PostgreSQL server reachable at {PG_ADMIN_URL}: {exc}")
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base.replace('postgresql://', 'postgresql+asyncpg://')}/{name}"
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _reset_pg(url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"), timeout=5)
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Each test using this runs twice: on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
        return
    url: str = request.getfixturevalue("pg_database")
    await _reset_pg(url)
    yield url


# --- fakes --------------------------------------------------------------------------------


@pytest.fixture
def fake_bfl() -> Iterator[tuple[FakeBfl, ServedApp]]:
    fake = FakeBfl(FakeBflConfig(api_keys={TEST_KEY}, task_duration_s=0.2, poll_retry_after_s=0))
    with serve_in_thread(fake.app) as served:
        fake.public_base_url = served.base_url
        yield fake, served
