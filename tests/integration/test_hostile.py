"""Hostile input: schemathesis against the served OpenAPI document (no 5xx, no
response outside the schema), oversized bodies (413), path traversal."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import ignored_auth, positive_data_acceptance
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.api.app import create_app
from orchestrator.api.middleware import MAX_BODY_BYTES
from orchestrator.config import Settings, env_name, load_settings
from orchestrator.testing.serve import ServedApp, serve_in_thread

EXAMPLES = int(os.environ.get("ORCHESTRATOR_FUZZ_EXAMPLES", "150"))
# The served app runs in another thread and uses the global `random` (seeds, jitter)
# while Hypothesis draws examples here; Hypothesis then wrongly blames the strategy.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")


@dataclass
class StatusCounter:
    app: ASGIApp
    requests: int = 0
    server_errors: list[str] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.requests += 1

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 500:
                self.server_errors.append(f"{scope['method']} {scope['path']}")
            await send(message)

        await self.app(scope, receive, watch)


@dataclass
class Target:
    served: ServedApp
    counter: StatusCounter
    settings: Settings


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k in _setting_envs()}
    root = tmp_path_factory.mktemp("hostile")
    config = root / "orchestrator.toml"
    s = load_settings(
        config,
        {
            "data_dir": root / "data",
            "demo_mode": "on",
            "worker_enabled": False,
            "auth_disabled": True,  # fuzz the operations, not the 401 (see test_auth)
        },
    )
    counter = StatusCounter(create_app(s))
    try:
        with serve_in_thread(counter, lifespan="on") as served:
            yield Target(served, counter, s)
    finally:
        os.environ.update(saved)
    print(
        f"\nschemathesis: {counter.requests} requests, {len(counter.server_errors)} 5xx"
        f" {counter.server_errors[:5]}"
    )
    assert counter.server_errors == []


def _setting_envs() -> set[str]:
    return {env_name(n) for n in Settings.model_fields} | {"ORCHESTRATOR_CONFIG"}


def _openapi_document() -> dict[str, Any]:
    """The OpenAPI document as the app serves it (building it needs no lifespan)."""
    folder = Path(tempfile.mkdtemp(prefix="orchestrator-openapi-"))
    settings_ = load_settings(
        folder / "orchestrator.toml", {"data_dir": folder / "data"}, check_dirs=False
    )
    doc: dict[str, Any] = create_app(settings_).openapi()
    shutil.rmtree(folder, ignore_errors=True)
    # Auth is off on the fuzzed server (test_auth walks every route with it on): without
    # this, a mangled Authorization header would count as "invalid data accepted".
    doc.pop("security", None)
    doc.get("components", {}).pop("securitySchemes", None)
    return doc


# A live stream that ends only when its job does is exercised in test_api instead; the
# server-wide stream never ends (test_ui_server exercises it).
schema = (
    schemathesis.openapi.from_dict(_openapi_document())
    .exclude(path="/api/jobs/{job_id}/events")
    .exclude(path="/api/events")
)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_fuzz_api(case: schemathesis.Case, target: Target) -> None:
    if isinstance(case.query, dict) and case.query.get("wait") not in (None, False, "false"):
        case.query["wait"] = "false"  # no worker runs here: waiting would only time out
    response = case.call(base_url=target.served.base_url, timeout=30)
    # Every check but "schema-valid data is accepted": some rules are more than the
    # JSON Schema can say (an http(s) webhook URL, an aspect ratio between 21:9 and 9:21,
    # a disabled backend's 409), and refusing those with a 422 problem is the point.
    # Auth is off here (AUTH_DISABLED): test_auth walks every route with it on.
    case.validate_response(response, excluded_checks=[positive_data_acceptance, ignored_auth])


@pytest.fixture
def client(target: Target) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=target.served.base_url, timeout=60) as c:
        yield c


def test_oversized_bodies_get_413(client: httpx2.Client) -> None:
    big = b"x" * (MAX_BODY_BYTES + 1)
    r = client.post("/api/generate", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.headers["content-type"] == "application/problem+json"

    def chunks() -> Iterator[bytes]:
        for _ in range(MAX_BODY_BYTES // (1 << 20) + 2):
            yield b"y" * (1 << 20)

    streamed = client.post(
        "/api/generate", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413


def test_unknown_fields_and_wrong_types(client: httpx2.Client) -> None:
    r = client.post(
        "/api/generate",
        json={
            "backend": "flux",
            "params": {"model": "flux-dev", "prompt": 5, "steps": "many", "surprise": True},
            "extra": 1,
        },
    )
    assert r.status_code == 422
    locs = {tuple(e["loc"]) for e in r.json()["errors"]}
    assert ("body", "flux", "params", "flux-dev", "prompt") in locs
    assert ("body", "flux", "params", "flux-dev", "steps") in locs
    assert ("body", "flux", "params", "flux-dev", "surprise") in locs
    assert ("body", "flux", "extra") in locs


@pytest.mark.parametrize(
    "path",
    [
        "/api/outputs/..%2F..%2F..%2Fetc%2Fpasswd/0",
        "/api/outputs/%2e%2e/0",
        "/api/outputs/x/..%2F..%2Fetc%2Fpasswd",
        "/api/outputs/x/-1",
        "/api/jobs/..%2F..%2Fetc%2Fpasswd",
        "/api/outputs/" + "a" * 5000 + "/0",
    ],
)
def test_path_traversal_never_reads_outside(client: httpx2.Client, path: str) -> None:
    r = client.get(path)
    assert r.status_code in (400, 404, 422), r.text
    assert "root:" not in r.text


def test_traversal_through_stored_paths_is_refused(target: Target, tmp_path: Path) -> None:
    from orchestrator import errors
    from orchestrator.storage import OutputStore

    store = OutputStore(target.settings.output_path, target.settings.jobs_path)
    for rel in ("../../etc/passwd", "/etc/passwd", ".partial/x.part", "a/../../b"):
        with pytest.raises(errors.OutputNotFound):
            store.resolve(rel)
