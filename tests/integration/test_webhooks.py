"""Webhooks end to end, and the retry endpoint: a receiver on 127.0.0.1 verifies
every request with the ``standardwebhooks`` library; the fake BFL runs the jobs.

Nothing here sends traffic anywhere but 127.0.0.1: host names are resolved by a
fake resolver that answers 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from tests.conftest import TEST_KEY

from orchestrator import errors
from orchestrator.api.app import create_app
from orchestrator.config import Settings
from orchestrator.db.engine import open_database
from orchestrator.db.jobs import JobRepo, NewJob
from orchestrator.domain.jobs import JobStatus
from orchestrator.domain.params import FluxDevParams, FluxRequest
from orchestrator.domain.webhooks import DeliveryStatus, WebhookDelivery
from orchestrator.engine.webhooks import WebhookOptions
from orchestrator.engine.worker import WorkerOptions
from orchestrator.runtime import Runtime, open_runtime
from orchestrator.services import Service
from orchestrator.testing.fake_bfl import FakeBfl
from orchestrator.testing.serve import ServedApp, serve_in_thread

FakePair = tuple[FakeBfl, ServedApp]
SECRET = "whsec_" + base64.b64encode(b"orchestrator-webhook-test-secret!").decode()
PUBLIC_LOOKING = "hooks.example.test"


# --- the receiver -----------------------------------------------------------------------


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes
    payload: dict[str, object] | None
    error: str | None


@dataclass
class Receiver:
    """Records every POST, verifies its signature, answers as scripted per path."""

    secret: str
    hits: list[Hit] = field(default_factory=list)
    script: dict[str, list[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    base_url: str = ""

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.handle, methods=["POST"])])

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        headers = dict(request.headers)
        try:
            doc = Webhook(self.secret).verify(body, headers)
            error = None
        except WebhookVerificationError as exc:
            doc, error = None, str(exc)
        path = request.url.path
        with self.lock:
            self.hits.append(Hit(path, headers, body, doc, error))
            planned = self.script.get(path)
            status = planned.pop(0) if planned else 200
        if path == "/redirect":
            return Response(status_code=302, headers={"location": f"{self.base_url}/hook"})
        return Response("nope" if status >= 400 else "ok", status_code=status)

    def at(self, path: str) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if h.path == path]

    def types(self, path: str, job_id: str | None = None) -> list[str]:
        out = []
        for h in self.at(path):
            assert h.error is None, h.error
            assert h.payload is not None
            data = h.payload["data"]
            assert isinstance(data, dict)
            if job_id is None or data["id"] == job_id:
                out.append(str(h.payload["type"]))
        return out


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver(SECRET)
    with serve_in_thread(rec.app()) as served:
        rec.base_url = served.base_url
        yield rec


async def to_loopback(host: str, port: int) -> list[str]:
    """A DNS that answers 127.0.0.1 for every name (no query leaves the machine)."""
    return ["127.0.0.1"]


# --- helpers -----------------------------------------------------------------------------


@pytest.fixture
def settings_for(
    make_settings: Callable[..., Settings], fake_bfl: FakePair
) -> Callable[..., Settings]:
    _fake, served = fake_bfl

    def make(**kw: object) -> Settings:
        base: dict[str, object] = {
            "bfl_api_key": TEST_KEY,
            "flux_base_url": served.base_url,
            "webhook_secret": SECRET,
            "webhook_allow_private": True,
            "webhook_timeout_s": 2.0,
        }
        base.update(kw)
        return make_settings(**base)

    return make


def fast_webhooks(**kw: object) -> WebhookOptions:
    opts = WebhookOptions(
        poll_interval_s=0.05,
        backoff_base_s=0.05,
        backoff_cap_s=0.2,
        shutdown_grace_s=0.5,
        resolver=to_loopback,
    )
    for k, v in kw.items():
        setattr(opts, k, v)
    return opts


@asynccontextmanager
async def runtime(
    settings: Settings,
    *,
    worker: bool = True,
    only_ids: list[str] | None = None,
    webhooks: WebhookOptions | None = None,
) -> AsyncIterator[Runtime]:
    """``only_ids=[]``: the delivery loop runs, but the worker takes no job."""
    async with open_runtime(
        settings,
        run_worker=worker,
        worker_options=WorkerOptions(
            lease_s=settings.lease_s,
            poll_interval_s=settings.worker_poll_interval_s,
            shutdown_grace_s=2.0,
            only_ids=only_ids,
        ),
        webhook_options=webhooks or fast_webhooks(),
    ) as rt:
        yield rt


def dev(prompt: str, **kw: object) -> FluxRequest:
    return FluxRequest(
        params=FluxDevParams(prompt=prompt, width=256, height=256),
        **kw,  # type: ignore[arg-type]
    )


async def until(
    svc: Service,
    cond: Callable[[list[WebhookDelivery]], bool],
    *,
    job_id: str | None = None,
    limit_s: float = 10.0,
) -> list[WebhookDelivery]:
    deadline = time.monotonic() + limit_s
    while True:
        items = (await svc.list_deliveries(job_id=job_id, limit=500)).items
        if cond(items):
            return items
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met; deliveries: {items}")
        await asyncio.sleep(0.02)


def settled(items: list[WebhookDelivery], n: int | None = None) -> bool:
    done = [d for d in items if d.status != DeliveryStatus.PENDING]
    return bool(items) and len(done) == len(items) and (n is None or len(items) == n)


# --- events -------------------------------------------------------------------------------


async def test_job_events_arrive_signed_and_filtered(
    settings_for: Callable[..., Settings], receiver: Receiver, db_url: str
) -> None:
    settings = settings_for(database_url=db_url, webhook_url=f"{receiver.base_url}/all")
    async with runtime(settings) as rt:
        svc = rt.service
        every, _ = await svc.submit(dev("every event", webhook_url=f"{receiver.base_url}/hook"))
        only_done, _ = await svc.submit(
            dev(
                "completed only",
                webhook_url=f"{receiver.base_url}/done",
                webhook_events=["completed", "completed"],
            ),
        )
        assert only_done.webhook_events == ["completed"]
        assert every.webhook_url == f"{receiver.base_url}/hook" and every.webhook_events is None
        for job in (every, only_done):
            assert (await svc.wait_for(job.id, 10)).status == JobStatus.SUCCEEDED
        await until(svc, lambda items: settled(items) and len(receiver.hits) == len(items))
        await until(svc, lambda items: all(d.status == DeliveryStatus.SUCCEEDED for d in items))

    # the job's own URL: every event, in order, each verified by the receiver
    types = receiver.types("/hook")
    assert types[0] == "job.started" and types[-1] == "job.completed"
    assert set(types[1:-1]) <= {"job.progress"} and len(types) >= 2
    # the server-wide URL gets every event of every job
    assert receiver.types("/all", every.id) == types
    assert receiver.types("/done") == ["job.completed"]  # the job's filter
    assert receiver.types("/all", only_done.id)[0] == "job.started"  # not filtered
    assert receiver.types("/all", only_done.id)[-1] == "job.completed"
    done = receiver.at("/hook")[-1]
    assert done.headers["webhook-id"].startswith("msg_")
    assert abs(int(done.headers["webhook-timestamp"]) - time.time()) < 60
    assert done.headers["webhook-signature"].startswith("v1,")
    assert done.headers["content-type"] == "application/json"
    assert done.payload is not None
    data = done.payload["data"]
    assert isinstance(data, dict)
    assert data["status"] == "succeeded" and data["error"] is None
    outputs = data["outputs"]
    assert isinstance(outputs, list) and len(outputs) == 1
    assert outputs[0]["url"] == f"/api/outputs/{every.id}/0"
    assert "params" not in data and "webhook_url" not in data


async def test_progress_events_are_throttled(
    settings_for: Callable[..., Settings], receiver: Receiver
) -> None:
    settings = settings_for()
    async with runtime(settings, only_ids=[]) as rt:
        svc = rt.service
        job, _ = await svc.submit(dev("progress", webhook_url=f"{receiver.base_url}/hook"))
        [claimed] = await svc.repo.claim("test-owner", 30, 10, lambda b, m: [])
        assert claimed.job.id == job.id
        # our own worker does not own it: write progress as the test owner
        for i in range(30):
            await svc.repo.set_progress(job.id, claimed.lease, i / 30)
        await svc.repo.finish(job.id, claimed.lease, JobStatus.CANCELED, message="stop")
        items = await until(svc, lambda items: settled(items, 3), job_id=job.id)
    assert sorted(d.event.value for d in items) == [
        "job.completed",
        "job.progress",  # 30 progress writes within 2 s: one event
        "job.started",
    ]
    progress = next(d for d in items if d.event.value == "job.progress")
    data = progress.payload["data"]
    assert isinstance(data, dict) and data["progress"] == 0.0
    completed = next(d for d in items if d.event.value == "job.completed")
    data = completed.payload["data"]
    assert isinstance(data, dict) and data["status"] == "canceled"


async def test_failing_receiver_is_retried_until_it_succeeds(
    settings_for: Callable[..., Settings], receiver: Receiver
) -> None:
    receiver.script["/flaky"] = [500, 503]
    settings = settings_for()
    with structlog.testing.capture_logs() as logged:
        async with runtime(settings) as rt:
            svc = rt.service
            job, _ = await svc.submit(
                dev("flaky", webhook_url=f"{receiver.base_url}/flaky", webhook_events=["completed"])
            )
            [d] = await until(svc, lambda items: settled(items, 1), job_id=job.id)
            scraped = text_string_to_metric_families(rt.metrics.render().decode())
            families = {f.name: f for f in scraped}
    # each attempt is logged as what it was (a log call once raised TypeError: a field
    # named "event" clashed with the message argument, and these lines never appeared)
    webhook_lines = [e for e in logged if "webhook" in str(e.get("event"))]
    assert [e["event"] for e in webhook_lines if e.get("delivery_id") == d.id] == [
        "webhook attempt failed; will retry",
        "webhook attempt failed; will retry",
        "webhook delivered",
    ]
    assert all(e["webhook_event"] == "job.completed" for e in webhook_lines if "delivery_id" in e)
    assert not [e for e in logged if e.get("log_level") in ("error", "critical")], logged
    attempts = {
        (s.labels["event"], s.labels["outcome"]): s.value
        for s in families["orchestrator_webhook_attempts"].samples
        if s.name.endswith("_total")
    }
    assert attempts == {("job.completed", "retrying"): 2, ("job.completed", "delivered"): 1}
    [count] = [
        s
        for s in families["orchestrator_webhook_attempt_duration_seconds"].samples
        if s.name.endswith("_count")
    ]
    assert count.value == 3
    assert d.status == DeliveryStatus.SUCCEEDED and d.event.value == "job.completed"
    assert d.attempts == 3 and d.last_status_code == 200 and d.last_error is None
    assert [a.status_code for a in d.attempt_log] == [500, 503, 200]
    assert d.attempt_log[0].error == "HTTP 500: nope"
    assert all(a.latency_ms is not None and a.latency_ms >= 0 for a in d.attempt_log)
    hits = receiver.at("/flaky")
    assert len(hits) == 3 and all(h.error is None for h in hits)
    # one message: the same webhook-id on every attempt, signed afresh each time
    assert {h.headers["webhook-id"] for h in hits} == {d.id}


async def test_redirects_are_not_followed(
    settings_for: Callable[..., Settings], receiver: Receiver
) -> None:
    settings = settings_for(webhook_max_age_s=0.6)
    async with runtime(settings) as rt:
        svc = rt.service
        job, _ = await svc.submit(
            dev(
                "redirect",
                webhook_url=f"{receiver.base_url}/redirect",
                webhook_events=["completed"],
            )
        )
        [d] = await until(svc, lambda items: settled(items, 1), job_id=job.id)
    assert d.status == DeliveryStatus.FAILED  # retried until WEBHOOK_MAX_AGE_S, then failed
    assert d.attempts >= 2 and all(a.status_code == 302 for a in d.attempt_log)
    assert d.last_error is not None and "not followed" in d.last_error
    assert receiver.at("/hook") == []
    assert len(receiver.at("/redirect")) == d.attempts


async def test_ssrf_guard_checks_resolved_addresses(
    settings_for: Callable[..., Settings], receiver: Receiver
) -> None:
    port = receiver.base_url.rsplit(":", 1)[1]
    url = f"http://{PUBLIC_LOOKING}:{port}/hook"
    # private targets refused: the name resolves to 127.0.0.1, so nothing is sent
    settings = settings_for(webhook_allow_private=False)
    async with runtime(settings) as rt:
        svc = rt.service
        with pytest.raises(errors.InvalidRequest, match=r"non-public address 127\.0\.0\.1"):
            await svc.submit(dev("literal", webhook_url=f"{receiver.base_url}/hook"))
        job, _ = await svc.submit(dev("ssrf", webhook_url=url, webhook_events=["completed"]))
        [d] = await until(svc, lambda items: settled(items, 1), job_id=job.id)
        assert d.status == DeliveryStatus.FAILED and d.attempts == 1
        assert d.last_error is not None
        assert "resolves to the non-public address 127.0.0.1" in d.last_error
        assert d.attempt_log[0].status_code is None
    assert receiver.hits == []

    # allowed: sent to the address that was checked, with the original Host header
    settings = settings_for(webhook_allow_private=True)
    async with runtime(settings) as rt:
        svc = rt.service
        job, _ = await svc.submit(dev("pinned", webhook_url=url, webhook_events=["completed"]))
        [d] = await until(svc, lambda items: settled(items, 1), job_id=job.id)
        assert d.status == DeliveryStatus.SUCCEEDED
    [hit] = receiver.hits
    assert hit.headers["host"] == f"{PUBLIC_LOOKING}:{port}" and hit.error is None


async def test_deliveries_survive_a_restart(
    settings_for: Callable[..., Settings], receiver: Receiver, db_url: str
) -> None:
    settings = settings_for(database_url=db_url)
    async with runtime(settings, worker=False) as rt:
        assert rt.webhooks is None  # no worker, no delivery loop
        job, _ = await rt.service.submit(dev("later", webhook_url=f"{receiver.base_url}/hook"))
        await rt.service.cancel_job(job.id)  # queued -> canceled: job.completed queued
        [d] = (await rt.service.list_deliveries(job_id=job.id)).items
        assert d.status == DeliveryStatus.PENDING and d.attempts == 0
    assert receiver.hits == []
    async with runtime(settings) as rt:
        [d] = await until(rt.service, lambda items: settled(items, 1), job_id=job.id)
        assert d.status == DeliveryStatus.SUCCEEDED
    [hit] = receiver.hits
    assert hit.payload is not None and hit.payload["type"] == "job.completed"
    data = hit.payload["data"]
    assert isinstance(data, dict) and data["status"] == "canceled"


async def test_outbox_claims_once_across_processes(
    settings_for: Callable[..., Settings], db_url: str
) -> None:
    """Two dispatchers' claims never share a delivery, and one (job, target) is
    never in flight twice."""
    settings = settings_for(database_url=db_url, webhook_url="http://127.0.0.1:9/all")
    async with runtime(settings, worker=False) as rt:
        svc = rt.service
        ids = []
        for i in range(6):
            job, _ = await svc.submit(dev(f"outbox {i}", webhook_url="http://127.0.0.1:9/job"))
            await svc.cancel_job(job.id)
            ids.append(job.id)
        now = (await svc.list_deliveries(limit=1)).items[0].created_at
        repo = svc.webhooks
        a, b = await asyncio.gather(
            repo.claim_due("a", 30, 8, now), repo.claim_due("b", 30, 8, now)
        )
        assert len(a) + len(b) == 12 and not {d.id for d in a} & {d.id for d in b}
        assert await repo.claim_due("c", 30, 8, now) == []
        # after a failed attempt, it is due again later, and only then
        first = a[0]
        later = now.replace(year=now.year + 1)
        assert await repo.record_attempt(
            first.id,
            "a",
            at=now,
            latency_ms=1.0,
            status_code=500,
            error="HTTP 500",
            outcome=DeliveryStatus.PENDING,
            next_attempt_at=later,
        )
        assert not await repo.record_attempt(  # lease lost: nothing recorded
            first.id,
            "b",
            at=now,
            latency_ms=1.0,
            status_code=200,
            error=None,
            outcome=DeliveryStatus.SUCCEEDED,
            next_attempt_at=None,
        )
        assert await repo.claim_due("c", 30, 8, now) == []
        # a year later every lease has expired too: all 12 are due again
        again = {d.id: d for d in await repo.claim_due("c", 30, 20, later)}
        assert len(again) == 12 and again[first.id].attempts == 1
        got = await repo.get(first.id)
        assert [x.status_code for x in got.attempt_log] == [500]
        page = await svc.list_deliveries(limit=5)
        assert len(page.items) == 5 and page.next_cursor is not None
        rest = await svc.list_deliveries(limit=50, cursor=page.next_cursor)
        assert len(rest.items) == 7 and rest.next_cursor is None
        assert {d.job_id for d in page.items + rest.items} == set(ids)


# --- the HTTP API: replay, retry, disabled --------------------------------------------------


@dataclass
class Api:
    client: httpx2.Client
    settings: Settings


@pytest.fixture
def api_factory(settings_for: Callable[..., Settings]) -> Iterator[Callable[..., Api]]:
    stack: list[tuple[object, httpx2.Client]] = []

    def make(*, worker: bool = True, **overrides: object) -> Api:
        settings = settings_for(**overrides)
        app = create_app(
            settings,
            run_worker=worker,
            worker_options=WorkerOptions(
                lease_s=settings.lease_s,
                poll_interval_s=settings.worker_poll_interval_s,
                shutdown_grace_s=2.0,
            ),
            webhook_options=fast_webhooks(),
        )
        cm = serve_in_thread(app, lifespan="on")
        served = cm.__enter__()
        client = httpx2.Client(base_url=served.base_url, timeout=30)
        stack.append((cm, client))
        return Api(client, settings)

    yield make
    for cm, client in reversed(stack):
        client.close()
        cm.__exit__(None, None, None)  # type: ignore[attr-defined]


def submit(api: Api, prompt: str, **extra: object) -> dict[str, object]:
    body = {
        "backend": "flux",
        "params": {"model": "flux-dev", "prompt": prompt, "width": 256, "height": 256},
        **extra,
    }
    r = api.client.post("/api/generate", json=body)
    assert r.status_code == 202, r.text
    doc: dict[str, object] = r.json()
    return doc


def wait_status(api: Api, job_id: object, *statuses: str) -> dict[str, object]:
    deadline = time.monotonic() + 10
    while True:
        doc: dict[str, object] = api.client.get(f"/api/jobs/{job_id}").json()
        if doc["status"] in statuses:
            return doc
        assert time.monotonic() < deadline, doc
        time.sleep(0.02)


def deliveries(api: Api, **params: str) -> list[dict[str, object]]:
    r = api.client.get("/api/webhooks/deliveries", params=params)
    assert r.status_code == 200, r.text
    items: list[dict[str, object]] = r.json()["items"]
    return items


def test_replay_resends_with_the_same_id(
    api_factory: Callable[..., Api], receiver: Receiver
) -> None:
    api = api_factory()
    job = submit(api, "replay", webhook_url=f"{receiver.base_url}/hook")
    assert job["webhook_url"] == f"{receiver.base_url}/hook"
    wait_status(api, job["id"], "succeeded")
    deadline = time.monotonic() + 10
    while True:
        items = deliveries(api, job_id=str(job["id"]), status="succeeded")
        done = [d for d in items if d["event"] == "job.completed"]
        if done:
            break
        assert time.monotonic() < deadline, items
        time.sleep(0.02)
    [d] = done
    assert d["attempts"] == 1 and len(d["attempt_log"]) == 1  # type: ignore[arg-type]
    r = api.client.post(f"/api/webhooks/deliveries/{d['id']}/replay")
    assert r.status_code == 200, r.text
    assert r.json()["status"] in ("pending", "succeeded")
    while True:
        [again] = [x for x in deliveries(api, job_id=str(job["id"])) if x["id"] == d["id"]]
        if again["status"] == "succeeded" and again["attempts"] == 2:
            break
        assert time.monotonic() < deadline, again
        time.sleep(0.02)
    sent = [h for h in receiver.at("/hook") if h.headers["webhook-id"] == d["id"]]
    assert len(sent) == 2 and all(h.error is None for h in sent)
    assert sent[0].body == sent[1].body  # the same message, signed again
    r = api.client.post("/api/webhooks/deliveries/nope/replay")
    assert r.status_code == 404 and r.json()["type"].endswith("webhook-delivery-not-found")
    r = api.client.get("/api/webhooks/deliveries", params={"status": "bogus"})
    assert r.status_code == 422


def test_retry_endpoint(api_factory: Callable[..., Api], fake_bfl: FakePair) -> None:
    fake, _ = fake_bfl
    api = api_factory()
    first = submit(api, "retry me", priority=3, deadline_s=120, webhook_events=["completed"])
    done = wait_status(api, first["id"], "succeeded")
    r = api.client.post(f"/api/jobs/{first['id']}/retry")
    assert r.status_code == 202, r.text
    again = r.json()
    assert r.headers["location"] == f"/api/jobs/{again['id']}"
    assert again["id"] != first["id"] and again["retry_of"] == first["id"]
    for key in ("backend", "model", "params", "priority", "webhook_events"):
        assert again[key] == first[key], key
    assert again["status"] == "queued" and again["attempts"] == 0
    rerun = wait_status(api, again["id"], "succeeded")
    assert rerun["outputs"] and rerun["outputs"] != done["outputs"]
    assert fake.submission_count("retry me") == 2
    old = api.client.get(f"/api/jobs/{first['id']}").json()
    assert old["retry_of"] is None and old["status"] == "succeeded"
    r = api.client.post("/api/jobs/nope/retry")
    assert r.status_code == 404


async def test_retry_records_events_and_refuses_unfinished_jobs(
    settings_for: Callable[..., Settings], db_url: str
) -> None:
    settings = settings_for(database_url=db_url)
    async with runtime(settings, worker=False) as rt:
        svc = rt.service
        queued, _ = await svc.submit(dev("queued", deadline_s=42))
        with pytest.raises(errors.InvalidTransition, match="queued job cannot be retried"):
            await svc.retry_job(queued.id)
        [held] = await svc.repo.claim("someone", 30, 1, lambda b, m: [])
        running = held.job
        with pytest.raises(errors.InvalidTransition, match="running job cannot be retried"):
            await svc.retry_job(running.id)
        await svc.repo.finish(running.id, held.lease, JobStatus.CANCELED, message="stop")
        new = await svc.retry_job(running.id)
        assert new.retry_of == running.id and new.status == JobStatus.QUEUED
        span = (new.deadline_at - new.created_at).total_seconds()
        assert span == pytest.approx(42, abs=0.01)  # the original deadline_s, afresh
        old_events = [e.message for e in await svc.events(running.id)]
        new_events = [e.message for e in await svc.events(new.id)]
        assert old_events[-1] == f"retried as {new.id}"
        assert new_events == [f"retry of {running.id}"]


def test_running_job_retry_is_a_409_problem(
    api_factory: Callable[..., Api], tmp_path: Path
) -> None:
    api = api_factory(worker=False)
    job = submit(api, "busy")

    async def claim() -> None:
        db = await open_database(api.settings.db_url)
        try:
            await JobRepo(db).claim("elsewhere", 30, 1, lambda b, m: [])
        finally:
            await db.dispose()

    asyncio.run(claim())
    assert api.client.get(f"/api/jobs/{job['id']}").json()["status"] == "running"
    r = api.client.post(f"/api/jobs/{job['id']}/retry")
    assert r.status_code == 409
    assert r.headers["content-type"].startswith("application/problem+json")
    doc = r.json()
    assert doc["type"].endswith("/invalid-transition") and doc["current"] == "running"


def test_webhook_requests_refused_without_a_secret(api_factory: Callable[..., Api]) -> None:
    api = api_factory(worker=False, webhook_secret=None)
    body = {
        "backend": "flux",
        "params": {"model": "flux-dev", "prompt": "x"},
        "webhook_url": "https://hooks.example.com/x",
    }
    r = api.client.post("/api/generate", json=body)
    assert r.status_code == 409, r.text
    doc = r.json()
    assert doc["type"].endswith("/webhooks-disabled") and "WEBHOOK_SECRET" in doc["detail"]
    assert doc["setting"] == "WEBHOOK_SECRET"
    # invalid webhook fields are field errors
    for bad in ({"webhook_url": "ftp://x"}, {"webhook_events": ["finished"]}):
        r = api.client.post("/api/generate", json={**body, **bad})
        assert r.status_code == 422, r.text
    # without a webhook, jobs are accepted as before
    r = api.client.post("/api/generate", json={k: v for k, v in body.items() if k != "webhook_url"})
    assert r.status_code == 202


def test_cli_jobs_retry(tmp_path: Path) -> None:
    data = tmp_path / "cli-data"

    async def seed() -> str:
        from datetime import UTC, datetime, timedelta

        db = await open_database(f"sqlite+aiosqlite:///{data / 'orchestrator.db'}")
        try:
            repo = JobRepo(db)
            job, _ = await repo.create(
                NewJob(
                    id="00000000-0000-4000-8000-000000000001",
                    backend="flux",
                    model="flux-dev",
                    params={"prompt": "cli"},
                    priority=0,
                    deadline_at=datetime.now(UTC) + timedelta(minutes=5),
                    idempotency_key=None,
                    request_hash=None,
                    simulated=True,
                )
            )
            await repo.finish(job.id, None, JobStatus.FAILED)
            return job.id
        finally:
            await db.dispose()

    old_id = asyncio.run(seed())
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        "ORCHESTRATOR_CONFIG": str(tmp_path / "cfg" / "orchestrator.toml"),
        "DEMO_MODE": "on",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "--data-dir", str(data), "jobs", "retry", old_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    new_id = proc.stdout.strip().splitlines()[-1].split()[0]

    async def check() -> None:
        db = await open_database(f"sqlite+aiosqlite:///{data / 'orchestrator.db'}")
        try:
            new = await JobRepo(db).get(new_id)
            assert new.retry_of == old_id and new.status == JobStatus.QUEUED
        finally:
            await db.dispose()

    asyncio.run(check())
