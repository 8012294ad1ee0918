"""The SQLite file deleted, replaced or corrupted under Orchestrator (issue 12).

A deleted file used to go unnoticed: jobs were accepted into the unlinked file,
/readyz stayed green, and everything was gone after a restart.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.integration import test_cli
from tests.integration.test_api import Api, api_factory

from orchestrator import errors
from orchestrator.config import Settings
from orchestrator.db.engine import open_database
from orchestrator.runtime import open_runtime

__all__ = ["api_factory"]

BODY = {"backend": "flux", "params": {"model": "flux-dev", "prompt": "p", "width": 256}}


def _db_file(api: Api) -> Path:
    return api.settings.data_path / "orchestrator.db"


def _assert_refused(api: Api, needle: str) -> None:
    ready = api.client.get("/readyz")
    assert ready.status_code == 503 and needle in ready.json()["detail"], ready.text
    assert "Retry-After" in ready.headers
    r = api.client.post("/api/generate", json=BODY)
    assert r.status_code == 503, r.text
    assert needle in r.json()["detail"] and "Retry-After" in r.headers
    ignite = api.client.post("/api/system/ignite").json()
    [db] = [c for c in ignite["checks"] if c["component"] == "database"]
    assert db["status"] == "fail" and needle in db["message"]
    health = api.client.get("/api/system/health").json()
    assert (health["status"], health["database"]) == ("degraded", "down"), health
    assert needle in health["database_problem"]


def test_a_deleted_database_file_is_noticed(api_factory: Callable[..., Api]) -> None:
    api = api_factory(worker_enabled=False)
    assert api.client.post("/api/generate", json=BODY).status_code == 202
    assert api.client.get("/readyz").status_code == 200
    for suffix in ("", "-wal", "-shm"):
        Path(f"{_db_file(api)}{suffix}").unlink(missing_ok=True)
    _assert_refused(api, "was deleted")


def test_a_replaced_database_file_is_noticed(api_factory: Callable[..., Api]) -> None:
    api = api_factory(worker_enabled=False)
    assert api.client.post("/api/generate", json=BODY).status_code == 202
    path = _db_file(api)
    copy = path.with_name("copy.db")
    shutil.copyfile(path, copy)
    copy.replace(path)
    _assert_refused(api, "was replaced")


def _corrupt(path: Path) -> None:
    size = path.stat().st_size
    assert size >= 4 * 4096  # migrated: a table and its indexes per page or more
    with path.open("r+b") as fh:  # garbage over the pages after the header's
        fh.seek(2 * 4096)
        fh.write(b"\xde\xad\xbe\xef" * 1024 * ((size - 2 * 4096) // 4096))


async def test_a_corrupt_database_file_stops_start_up(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    async with open_runtime(settings, run_worker=False):
        pass
    path = settings.data_path / "orchestrator.db"
    _corrupt(path)
    with pytest.raises(errors.DatabaseCorrupt, match="failed its integrity check") as caught:
        await open_database(settings.db_url)
    assert str(path) in caught.value.detail


def test_ignite_and_serve_refuse_a_corrupt_file_naming_it(tmp_path: Path) -> None:
    """As an operator sees it: the last line of the command's output says what is
    wrong with which file (serve's was the end of a long start-up traceback)."""
    data = tmp_path / "data"
    env = test_cli.clean_environ(DATA_DIR=str(data), HOME=str(tmp_path / "home"), DEMO_MODE="on")
    assert test_cli.run(["jobs", "list"], tmp_path, env).returncode == 0  # creates it
    path = data / "orchestrator.db"
    _corrupt(path)
    port = str(test_cli._free_port())
    for args in (["ignite"], ["serve", "--port", port, "--no-worker"]):
        r = test_cli.run(args, tmp_path, env)
        last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
        assert r.returncode != 0, (args, r.stdout, r.stderr)
        assert last.startswith("Database corrupt: the database file"), (args, last)
        assert str(path) in last and "integrity check" in last, (args, last)
