"""The HTTP API served by uvicorn on 127.0.0.1, with the fake BFL on another port:
problems, idempotency, SSE, outputs with ranges, FLUX routes, health — and proof
that a job makes only the upstream calls, never a call to the service itself."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx2
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send
from tests.conftest import TEST_KEY

from orchestrator.api.app import create_app
from orchestrator.config import Settings
from orchestrator.testing.fake_bfl import FakeBfl
from orchestrator.testing.serve import ServedApp, serve_in_thread

FakePair = tuple[FakeBfl, ServedApp]


@dataclass
class Counter:
    """Counts every HTTP request that reaches the wrapped app."""

    app: ASGIApp
    paths: list[str] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.paths.append(f"{scope['method']} {scope['path']}")
        await self.app(scope, receive, send)


@dataclass
class Api:
    client: httpx2.Client
    counter: Counter
    settings: Settings


@pytest.fixture
def api_factory(
    make_settings: Callable[..., Settings], fake_bfl: FakePair
) -> Iterator[Callable[..., Api]]:
    _fake, bfl = fake_bfl
    stack: list[tuple[object, httpx2.Client]] = []

    def make(**overrides: object) -> Api:
        base: dict[str, object] = {"bfl_api_key": TEST_KEY, "flux_base_url": bfl.base_url}
        base.update(overrides)
        settings = make_settings(**base)
        counter = Counter(create_app(settings))
        cm = serve_in_thread(counter, lifespan="on")
        served = cm.__enter__()
        client = httpx2.Client(base_url=served.base_url, timeout=30)
        stack.append((cm, client))
        return Api(client, counter, settings)

    yield make
    for cm, client in reversed(stack):
        client.close()
        cm.__exit__(None, None, None)  # type: ignore[attr-defined]


@pytest.fixture
def api(api_factory: Callable[..., Api]) -> Api:
    return api_factory()


def submit(api: Api, prompt: str, **kw: object) -> dict[str, object]:
    body = {
        "backend": "flux",
        "params": {"model": "flux-dev", "prompt": prompt, "width": 256, "height": 256, **kw},
    }
    r = api.client.post("/api/generate", json=body)
    assert r.status_code == 202, r.text
    doc: dict[str, object] = r.json()
    return doc


def wait_done(api: Api, job_id: str) -> dict[str, object]:
    """Follow the SSE stream to the end, then read the job."""
    with api.client.stream("GET", f"/api/jobs/{job_id}/events") as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for _line in r.iter_lines():
            pass
    doc: dict[str, object] = api.client.get(f"/api/jobs/{job_id}").json()
    return doc


def test_generate_to_output_makes_only_upstream_calls(api: Api, fake_bfl: FakePair) -> None:
    fake, _ = fake_bfl
    job = submit(api, "no self calls")
    assert job["status"] == "queued" and job["backend"] == "flux"
    done = wait_done(api, str(job["id"]))
    assert done["status"] == "succeeded", done
    # The service received exactly the requests this test made: nothing to itself.
    assert api.counter.paths == [
        "POST /api/generate",
        f"GET /api/jobs/{job['id']}/events",
        f"GET /api/jobs/{job['id']}",
    ]
    # ...and upstream got one submit, polls, and one download.
    assert fake.submission_count("no self calls") == 1
    assert fake.downloads == 1 and fake.misrouted_polls == 0


def test_sse_stream_and_resume(api: Api) -> None:
    job = submit(api, "stream me")
    events = []
    with api.client.stream("GET", f"/api/jobs/{job['id']}/events") as r:
        current: dict[str, str] = {}
        for line in r.iter_lines():
            if not line:
                if current:
                    events.append(current)
                current = {}
                continue
            if line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            current[key] = value.strip()
    kinds = [e["event"] for e in events]
    assert kinds[0] == "created" and kinds[-1] == "transition"
    assert json.loads(events[-1]["data"])["status"] == "succeeded"
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(ids)
    # resume after the second event: only later events come back
    with api.client.stream(
        "GET", f"/api/jobs/{job['id']}/events", headers={"Last-Event-ID": str(ids[1])}
    ) as r:
        resumed = [ln for ln in r.iter_lines() if ln.startswith("id:")]
    assert [int(x.split(":")[1]) for x in resumed] == ids[2:]


def test_output_download_and_range(api: Api) -> None:
    job = submit(api, "range")
    done = wait_done(api, str(job["id"]))
    outputs = done["outputs"]
    assert isinstance(outputs, list) and len(outputs) == 1
    url = outputs[0]["url"]
    full = api.client.get(url)
    assert full.status_code == 200 and full.headers["content-type"] == "image/jpeg"
    assert len(full.content) == outputs[0]["size_bytes"]
    part = api.client.get(url, headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and part.content == full.content[:10]
    assert api.client.get(f"/api/outputs/{job['id']}/5").status_code == 404
    assert api.client.get(f"/api/outputs/{job['id']}/..%2F..%2Fetc").status_code in (404, 422)


def test_range_errors_are_problem_documents(api: Api) -> None:
    """A malformed Range (400) and one past the end (416) answer problem documents like
    every other error (they were text/plain from the file response), and the 416 still
    says the file's size in Content-Range (RFC 9110 §15.5.17)."""
    job = submit(api, "range errors")
    done = wait_done(api, str(job["id"]))
    out = done["outputs"][0]  # type: ignore[index]
    url, size = out["url"], out["size_bytes"]
    bad = api.client.get(url, headers={"Range": "bytes=abc"})
    assert bad.status_code == 400, bad.text
    assert bad.headers["content-type"].startswith("application/problem+json")
    assert bad.json()["status"] == 400 and bad.json()["type"].endswith("/malformed-range")
    past = api.client.get(url, headers={"Range": f"bytes={size + 10}-"})
    assert past.status_code == 416, past.text
    assert past.headers["content-type"].startswith("application/problem+json")
    assert past.headers["content-range"] == f"bytes */{size}"
    assert past.json()["type"].endswith("/range-not-satisfiable")
    # a Range that a stale If-Range voids is not an error: the whole file comes back
    stale = api.client.get(
        url, headers={"Range": f"bytes={size + 10}-", "If-Range": '"not-the-etag"'}
    )
    assert stale.status_code == 200 and len(stale.content) == size


def test_validation_problems_have_field_paths(api: Api) -> None:
    r = api.client.post(
        "/api/generate",
        json={
            "backend": "flux",
            "params": {"model": "flux-dev", "prompt": "x", "width": 1000, "bogus": 1},
        },
    )
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    doc = r.json()
    assert doc["status"] == 422 and doc["type"].endswith("/invalid-request")
    locs = {tuple(e["loc"]) for e in doc["errors"]}
    assert ("body", "flux", "params", "flux-dev", "width") in locs
    assert ("body", "flux", "params", "flux-dev", "bogus") in locs
    assert doc["request_id"] == r.headers["x-request-id"]
    unknown_model = api.client.post(
        "/api/generate", json={"backend": "flux", "params": {"model": "flux-9", "prompt": "x"}}
    )
    assert unknown_model.status_code == 422
    not_json = api.client.post(
        "/api/generate", content=b"{", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 422


def test_idempotency_key(api: Api) -> None:
    body = {"backend": "flux", "params": {"model": "flux-pro-1.1", "prompt": "once"}}
    h = {"Idempotency-Key": "abc-123"}
    first = api.client.post("/api/generate", json=body, headers=h)
    again = api.client.post("/api/generate", json=body, headers=h)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    body["params"]["prompt"] = "different"  # type: ignore[index]
    clash = api.client.post("/api/generate", json=body, headers=h)
    assert clash.status_code == 409
    assert clash.json()["type"].endswith("/idempotency-conflict")


def test_flux_disabled_without_key(api_factory: Callable[..., Api]) -> None:
    api = api_factory(bfl_api_key=None)
    r = api.client.post(
        "/api/generate", json={"backend": "flux", "params": {"model": "flux-dev", "prompt": "x"}}
    )
    assert r.status_code == 409
    doc = r.json()
    assert doc["type"].endswith("/backend-disabled") and "BFL_API_KEY" in doc["detail"]
    health = api.client.get("/api/system/health").json()
    flux = next(b for b in health["backends"] if b["name"] == "flux")
    assert flux["status"] == "disabled" and "BFL_API_KEY" in flux["reason"]
    assert health["status"] == "degraded" and health["demo"] is False


def test_list_cancel_and_get(api_factory: Callable[..., Api]) -> None:
    api = api_factory(worker_enabled=False)
    ids = [submit(api, f"list {i}")["id"] for i in range(5)]
    page = api.client.get("/api/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in page["items"]] == ids[::-1][:2] and page["next_cursor"]
    nxt = api.client.get("/api/jobs", params={"limit": 2, "cursor": page["next_cursor"]}).json()
    assert [j["id"] for j in nxt["items"]] == ids[::-1][2:4]
    canceled = api.client.post(f"/api/jobs/{ids[0]}/cancel")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    again = api.client.post(f"/api/jobs/{ids[0]}/cancel")
    assert again.status_code == 409
    only = api.client.get("/api/jobs", params={"status": "canceled"}).json()
    assert [j["id"] for j in only["items"]] == [ids[0]]
    missing = api.client.get("/api/jobs/nope")
    assert missing.status_code == 404 and missing.json()["type"].endswith("/job-not-found")
    assert api.client.get("/api/jobs", params={"status": "bogus"}).status_code == 422


def test_flux_routes(api: Api) -> None:
    models = api.client.get("/api/flux/models").json()
    names = {m["model"] for m in models}
    assert {
        "flux-pro-1.1",
        "flux-pro-1.1-ultra",
        "flux-pro",
        "flux-dev",
        "flux-kontext-pro",
        "flux-kontext-max",
    } <= names
    kmax = next(m for m in models if m["model"] == "flux-kontext-max")
    assert kmax["max_active"] == 6 and "prompt" in kmax["params_schema"]["required"]
    r = api.client.post(
        "/api/flux/generate",
        params={"wait": "true"},
        json={"model": "flux-pro-1.1", "prompt": "waited", "width": 256, "height": 256},
    )
    assert r.status_code == 200 and r.json()["status"] == "succeeded"
    assert len(r.json()["outputs"]) == 1


def test_health_openapi_and_request_id(api: Api) -> None:
    r = api.client.get("/api/system/health", headers={"X-Request-ID": "req-42"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "req-42"
    doc = r.json()
    assert doc["database"] == "ok" and doc["demo"] is False and doc["workers"] >= 1
    flux = next(b for b in doc["backends"] if b["name"] == "flux")
    assert flux["status"] == "ok" and flux["details"]["credits"] > 0
    spec = api.client.get("/openapi.json").json()
    assert "/api/generate" in spec["paths"] and "/api/jobs/{job_id}/events" in spec["paths"]
    assert "may still" in spec["info"]["description"]
    assert api.client.get("/docs").status_code == 200
    lost = api.client.get("/no/such/route")
    assert lost.status_code == 404 and lost.headers["content-type"] == "application/problem+json"


def test_demo_mode_is_loud(api_factory: Callable[..., Api]) -> None:
    api = api_factory(bfl_api_key=None, demo_mode="auto")
    health = api.client.get("/api/system/health").json()
    assert health["demo"] is True and "DEMO" in health["notice"]
    flux = next(b for b in health["backends"] if b["name"] == "flux")
    assert flux["simulated"] is True and flux["status"] == "ok"
    job = submit(api, "demo job")
    done = wait_done(api, str(job["id"]))
    assert done["status"] == "succeeded" and done["simulated"] is True
