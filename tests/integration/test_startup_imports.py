"""Start-up stays light: what each entry point imports before it does any work.

`orchestrator --help` and one-shot commands must not pay for the runtime, the web app or
the database layer, and `serve` must not import the MCP SDK (about half a second and
20 MB) until an MCP client calls ``/mcp``. Each check runs in a fresh interpreter and
reads its ``sys.modules``; no timing is asserted (bench/startup.py measures that).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from orchestrator.api.app import LazyMCP, create_app
from orchestrator.config import Settings, env_name
from orchestrator.testing.serve import serve_in_task

# Imported by none of the light commands (package roots: a submodule counts too).
HEAVY_FOR_CLI = (
    "mcp",
    "mcp_types",
    "alembic",
    "sqlalchemy",
    "fastapi",
    "starlette",
    "uvicorn",
    "httpx2",
    "PIL",
    "websockets",
    "jinja2",
    "pydantic_settings",
    "orchestrator.runtime",
    "orchestrator.services",
    "orchestrator.api",
    "orchestrator.db",
    "orchestrator.engine",
    "orchestrator.backends",
    "orchestrator.mcp_server",
    "orchestrator.ui",
    "orchestrator.tilda",
)


def _environ(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name in Settings.model_fields:
        env.pop(env_name(name), None)
        env.pop(name.upper(), None)
    config = tmp_path / "config" / "orchestrator.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    env.update(ORCHESTRATOR_CONFIG=str(config), DATA_DIR=str(tmp_path / "data"))
    return env


def _modules_after(code: str, tmp_path: Path) -> set[str]:
    """Run `code` in a new interpreter; the names in its sys.modules at the end."""
    out = tmp_path / "modules.json"
    script = (
        f"{code}\n"
        "import json, sys\n"
        f"open({str(out)!r}, 'w').write(json.dumps(sorted(sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=_environ(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    names: list[str] = json.loads(out.read_text())
    return set(names)


def _loaded(modules: set[str], roots: tuple[str, ...]) -> list[str]:
    return sorted(r for r in roots if any(m == r or m.startswith(r + ".") for m in modules))


def test_importing_the_cli_loads_no_runtime(tmp_path: Path) -> None:
    modules = _modules_after("import orchestrator.cli", tmp_path)
    assert _loaded(modules, HEAVY_FOR_CLI) == []


def test_help_loads_no_runtime(tmp_path: Path) -> None:
    code = (
        "from orchestrator.cli import app\n"
        "try:\n"
        "    app(['--help'], prog_name='orchestrator')\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
        "for sub in (['jobs', '--help'], ['token', '--help'], ['tilda', '--help']):\n"
        "    try:\n"
        "        app(sub, prog_name='orchestrator')\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code in (0, None), exc.code\n"
    )
    modules = _modules_after(code, tmp_path)
    assert _loaded(modules, HEAVY_FOR_CLI) == []


def test_config_check_loads_no_database_layer(tmp_path: Path) -> None:
    code = (
        "from orchestrator.cli import app\n"
        "try:\n"
        "    app(['config', 'check'], prog_name='orchestrator')\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
    )
    modules = _modules_after(code, tmp_path)
    light = ("mcp", "alembic", "sqlalchemy", "fastapi", "uvicorn", "orchestrator.api")
    assert _loaded(modules, (*light, "orchestrator.db", "orchestrator.services")) == []


def test_the_served_app_imports_mcp_only_when_mcp_is_called(tmp_path: Path) -> None:
    code = (
        "from orchestrator.api.app import create_app\n"
        "from orchestrator.config import load_settings\n"
        "create_app(load_settings(None, {}))\n"
    )
    modules = _modules_after(code, tmp_path)
    # jinja2: the UI's templates are loaded by the first page rendered
    assert _loaded(modules, ("mcp", "mcp_types", "orchestrator.mcp_server", "jinja2")) == []


async def test_the_mcp_endpoint_starts_on_first_use_and_stops_with_the_app(
    make_settings: Callable[..., Settings],
) -> None:
    app = create_app(make_settings(), run_worker=False)
    mcp = app.state.mcp
    assert isinstance(mcp, LazyMCP)

    async def session(url: str) -> str:
        async with (
            streamable_http_client(url) as (read, write),
            ClientSession(read, write) as client,
        ):
            await client.initialize()
            tools = await client.list_tools()
            return sorted(t.name for t in tools.tools)[0]

    async with serve_in_task(app, lifespan="on") as served:
        assert not mcp.started
        # Three clients arrive at once: one MCP server is built, and serves them all.
        names = await asyncio.gather(*(session(f"{served.base_url}/mcp") for _ in range(3)))
        assert len(set(names)) == 1
        assert mcp.started
    assert not mcp.started  # its sessions ended with the lifespan
