"""Hostile input: schemathesis against the served OpenAPI document with every check on
(no 5xx, no response outside the schema, schema-valid data accepted, schema-invalid
data refused), oversized bodies (413), path traversal.

The schema says everything a request's shape must be; a few rules are beyond JSON
Schema, and for a case that breaks one only "schema-valid data is accepted" is left
out (:func:`beyond_the_schema`; each rule has its own tests): an aspect ratio between
21:9 and 9:21, a cost report of at most 366 days, a cursor that is a real page's
``next_cursor``, an input image that decodes, a site page, workflow or import path that
exists. Auth is on and every case sends an admin token (a case that mangles the
Authorization header on purpose sends it as generated), so ignored_auth checks that
each operation refuses a request without one. The fuzzed server
allows private webhook targets (whether an address is public is configuration, tested
in test_webhooks) and has a TILDA_DUMP_PATH (an import with no path reads it).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import httpx2
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import positive_data_acceptance
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.api.app import create_app
from orchestrator.api.middleware import MAX_BODY_BYTES
from orchestrator.auth_service import Tokens
from orchestrator.config import Settings, env_name, load_settings
from orchestrator.db.engine import open_database
from orchestrator.db.tokens import TokenRepo
from orchestrator.domain.auth import Scope as TokenScope
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
    statuses: Counter[int] = field(default_factory=Counter)
    cases: int = 0  # schemathesis cases sent (the fuzz may be deselected)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.requests += 1

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.statuses[message["status"]] += 1
                if message["status"] >= 500:
                    self.server_errors.append(f"{scope['method']} {scope['path']}")
            await send(message)

        await self.app(scope, receive, watch)


@dataclass
class Target:
    served: ServedApp
    counter: StatusCounter
    settings: Settings
    auth: dict[str, str]


async def _admin_secret(db_url: str) -> str:
    """An admin token, made before the server runs (what `orchestrator token create`
    does): every case sends it, so ignored_auth can tell whether auth is enforced."""
    db = await open_database(db_url)
    try:
        made = await Tokens(TokenRepo(db), session_ttl_s=3600).create("fuzzer", TokenScope.ADMIN)
    finally:
        await db.dispose()
    return made.secret


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
            "webhook_allow_private": True,
            "tilda_dump_path": _export(root),
        },
    )
    assert not s.auth_disabled  # auth on: every case sends an admin token
    secret = asyncio.run(_admin_secret(s.db_url))
    counter = StatusCounter(create_app(s))
    try:
        with serve_in_thread(counter, lifespan="on") as served:
            yield Target(served, counter, s, {"Authorization": f"Bearer {secret}"})
    finally:
        os.environ.update(saved)
    print(
        f"\nschemathesis: {counter.requests} requests, {len(counter.server_errors)} 5xx"
        f" {counter.server_errors[:5]}"
    )
    print(f"schemathesis: statuses {sorted(counter.statuses.items())}")
    assert counter.server_errors == []
    if counter.cases >= 1000:  # the whole fuzz ran: the token was sent and taken
        # (2xx), and ignored_auth's probes without it were refused (401)
        assert counter.statuses[200] > 100 and counter.statuses[401] > 10, counter.statuses


def _export(root: Path) -> Path:
    from orchestrator.testing import tilda_export as te

    te.build_export(root / "export")
    return root / "export"


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
    return doc


# A live stream that ends only when its job does is exercised in test_api instead; the
# server-wide stream never ends (test_ui_server exercises it).
schema = (
    schemathesis.openapi.from_dict(_openapi_document())
    .exclude(path="/api/jobs/{job_id}/events")
    .exclude(path="/api/events")
)


def _aspect_in_range(value: object) -> bool:
    from orchestrator.domain.params import ASPECT_RE

    m = ASPECT_RE.fullmatch(value) if isinstance(value, str) else None
    if m is None or not int(m[1]) or not int(m[2]):
        return True  # not a ratio at all: the schema's own business
    return 9 / 21 <= int(m[1]) / int(m[2]) <= 21 / 9


# Fields that carry an image (base64, a data: URL, asset:<id>): it must decode as one.
IMAGE_INPUTS = (
    "init_image",
    "images",
    "image_prompt",
    "input_image",
    "input_image_2",
    "input_image_3",
    "input_image_4",
)


def _body_beyond_the_schema(body: object) -> bool:
    """An aspect ratio out of range, an input image that must decode as one, or a
    reference to something that must exist (an imported site page, a user workflow by
    name), anywhere in a body."""
    if not isinstance(body, dict):
        return False
    if any(body.get(k) for k in IMAGE_INPUTS):
        return True
    if not _aspect_in_range(body.get("aspect_ratio")) or body.get("site_page_id") is not None:
        return True
    if body.get("backend") == "workflow" or body.get("model") == "workflow":
        return True  # names a user workflow (none is installed on the fuzzed server)
    return any(_body_beyond_the_schema(v) for v in body.values())


def _query_beyond_the_schema(query: object) -> bool:
    """A cursor (only a real next_cursor is one), or a cost report that is longer than
    366 days or ends before it starts."""
    if not isinstance(query, dict):
        return False
    if "cursor" in query:
        return True
    try:
        first = date.fromisoformat(str(query["since"]))
        until = query.get("until")
        last = date.fromisoformat(str(until)) if until is not None else date.today()
    except (KeyError, ValueError):
        return False
    return not 0 <= (last - first).days <= 365


def beyond_the_schema(case: schemathesis.Case) -> bool:
    """A case that breaks a rule JSON Schema cannot state: refusing it with a 422 is
    right, so "schema-valid data is accepted" does not apply to it (each rule has its
    own tests). A server-side import path must exist, too."""
    path = case.operation.path
    if path == "/api/tilda/import" and isinstance(case.body, dict) and case.body.get("path"):
        return True
    return _body_beyond_the_schema(case.body) or _query_beyond_the_schema(case.query)


def _mangles_auth(case: schemathesis.Case) -> bool:
    """A negative case that made the Authorization header invalid on purpose."""
    meta = case.meta
    if meta is None or not meta.is_negative_at(ParameterLocation.HEADER):
        return False
    data = meta.phase.data
    names = [getattr(data, "parameter", None)]
    names += [m.parameter for m in getattr(data, "mutations", ())]
    return any(isinstance(n, str) and n.lower() == "authorization" for n in names)


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
    # Auth is on and every case sends an admin token, so ignored_auth means something:
    # it sends the case again without the token and expects a 401. A case whose invalid
    # part is the Authorization header itself is sent as generated (a 401 refuses it).
    target.counter.cases += 1
    headers = dict(case.headers or {})
    if not _mangles_auth(case):
        headers.update(target.auth)
    response = case.call(base_url=target.served.base_url, headers=headers, timeout=30)
    # Every check: status codes, content types, headers and bodies as documented,
    # "schema-valid data is accepted", "schema-invalid data is refused", ignored_auth.
    excluded = [positive_data_acceptance] if beyond_the_schema(case) else []
    case.validate_response(response, headers=headers, excluded_checks=excluded)


def test_the_fuzz_runs_the_conformance_checks() -> None:
    """validate_response runs the enabled built-in checks: these must be among them."""
    load_all_checks()
    names = {c.__name__ for c in CHECKS.get_all()}
    config = schema.config.checks_config_for(operation=None, phase=None)
    on = {n for n in names if config.get_by_name(name=n).enabled}
    for name in (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "positive_data_acceptance",
        "ignored_auth",
    ):
        assert name in on, name


@pytest.fixture
def client(target: Target) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=target.served.base_url, headers=target.auth, timeout=60) as c:
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
