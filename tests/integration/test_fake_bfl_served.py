"""The fake BFL API served on a real port (serve_in_thread / serve_in_task), real HTTP clients."""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from orchestrator.testing.fake_bfl import FakeBfl, FakeBflConfig
from orchestrator.testing.serve import ServedApp, serve_in_task, serve_in_thread

KEY = {"x-key": "test-key"}

# A connection the fake drops on purpose ends in a FIN (no response) or, when the
# request was still unread, an RST: both are a dropped connection to the client.
DROPPED = (httpx2.RemoteProtocolError, httpx2.ReadError)


@pytest.fixture(scope="module")
def served_fake() -> Iterator[tuple[FakeBfl, ServedApp]]:
    fake = FakeBfl(FakeBflConfig(task_duration_s=0.2, label="SIMULATED"))
    with serve_in_thread(fake.app) as served:
        fake.public_base_url = served.base_url
        yield fake, served


@pytest.fixture
def fake(served_fake: tuple[FakeBfl, ServedApp]) -> Iterator[FakeBfl]:
    fake, served = served_fake
    fake.config = FakeBflConfig(
        task_duration_s=0.2, label="SIMULATED", public_base_url=served.base_url
    )
    fake.reset()
    yield fake
    fake.reset()


@pytest.fixture
def client(served_fake: tuple[FakeBfl, ServedApp]) -> Iterator[httpx2.Client]:
    _, served = served_fake
    with httpx2.Client(base_url=served.base_url, timeout=5) as c:
        yield c


def submit(client: httpx2.Client, model: str = "flux-dev", **body: Any) -> httpx2.Response:
    body.setdefault("prompt", "a red fox")
    return client.post(f"/v1/{model}", json=body, headers=KEY)


def wait_ready(client: httpx2.Client, polling_url: str) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        data: dict[str, Any] = client.get(polling_url, headers=KEY).json()
        if data["status"] != "Pending":
            return data
        time.sleep(0.05)
    raise AssertionError("task never finished")


# -- serve helpers ------------------------------------------------------------------------------


def test_served_app_addresses(served_fake: tuple[FakeBfl, ServedApp]) -> None:
    _, served = served_fake
    assert served.base_url == f"http://127.0.0.1:{served.port}"
    assert served.port > 0


def test_serve_in_thread_runs_lifespan() -> None:
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(routes=[Route("/", hello)], lifespan=lifespan)
    with serve_in_thread(app, lifespan="on") as served:
        assert events == ["startup"]
        assert httpx2.get(served.base_url).text == "hello"
    assert events == ["startup", "shutdown"]
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(served.base_url)


# -- contract over HTTP -------------------------------------------------------------------------


def test_auth_validation_and_wrong_cluster(client: httpx2.Client, fake: FakeBfl) -> None:
    r = client.post("/v1/flux-dev", json={"prompt": "x"}, headers={"x-key": "nope"})
    assert (r.status_code, r.json()) == (
        403,
        {"detail": "Not authenticated - Invalid Authentication"},
    )
    r = submit(client, width=1000)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "width"]
    r = submit(client)
    task_id = r.json()["id"]
    r = client.get("/v1/get_result", params={"id": task_id}, headers=KEY)
    assert r.json()["status"] == "Task not found"


def test_full_flow_over_http(client: httpx2.Client, fake: FakeBfl) -> None:
    r = submit(client, width=320, height=256, seed=7)
    assert r.status_code == 200
    polling_url = r.json()["polling_url"]
    assert polling_url.startswith(f"{fake.public_base_url}/eu4/v1/get_result?id=")
    first = client.get(polling_url, headers=KEY)
    assert first.headers["x-ratelimit-limit"] == "1200"
    assert first.json()["status"] == "Pending"
    assert 0 <= first.json()["progress"] < 1
    data = wait_ready(client, polling_url)
    assert data["status"] == "Ready"
    assert data["result"]["seed"] == 7
    with httpx2.Client(timeout=5) as bare:  # no x-key, no base_url: the absolute signed URL
        r = bare.get(data["result"]["sample"])
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/jpeg"
    assert int(r.headers["content-length"]) == len(r.content)
    with Image.open(io.BytesIO(r.content)) as img:
        assert img.size == (320, 256)
    assert fake.downloads == 1


def test_moderation_and_error_over_http(client: httpx2.Client, fake: FakeBfl) -> None:
    fake.config.task_duration_s = 0.05
    statuses = {}
    for marker in ("[moderate:request]", "[moderate:content]", "[error]"):
        polling_url = submit(client, prompt=f"p {marker}").json()["polling_url"]
        statuses[marker] = wait_ready(client, polling_url)["status"]
    assert statuses == {
        "[moderate:request]": "Request Moderated",
        "[moderate:content]": "Content Moderated",
        "[error]": "Error",
    }
    assert client.get("/v1/credits", headers=KEY).json() == {"credits": 1000.0}


def test_limits_over_http(client: httpx2.Client, fake: FakeBfl) -> None:
    r = client.post("/_fake/config", json={"credits": 2})
    assert r.status_code == 200
    assert submit(client).status_code == 402
    client.post("/_fake/config", json={"credits": 100})
    fake.config.active_limit = 1
    assert submit(client).status_code == 200
    r = submit(client)
    assert (r.status_code, r.headers["retry-after"]) == (429, "1")


def test_expired_sample_is_403_over_http(client: httpx2.Client, fake: FakeBfl) -> None:
    fake.config.task_duration_s = 0
    polling_url = submit(client).json()["polling_url"]
    sample = wait_ready(client, polling_url)["result"]["sample"]
    assert client.get(sample).status_code == 200
    client.post("/_fake/advance", json={"seconds": 601})
    r = client.get(sample)
    assert r.status_code == 403
    assert "<Code>AuthenticationFailed</Code>" in r.text


# -- faults over HTTP ---------------------------------------------------------------------------


def test_fault_statuses_over_http(client: httpx2.Client, fake: FakeBfl) -> None:
    client.post("/_fake/faults", json={"kind": "submit", "status": 500})
    client.post(
        "/_fake/faults",
        json={"kind": "submit", "status": 502, "body": "<html><h1>502 Bad Gateway</h1></html>"},
    )
    client.post("/_fake/faults", json={"kind": "submit", "status": 200, "body": "{not json"})
    assert submit(client).status_code == 500
    r = submit(client)
    assert (r.status_code, r.headers["content-type"]) == (502, "text/html; charset=utf-8")
    r = submit(client)
    assert r.status_code == 200
    with pytest.raises(ValueError):
        r.json()
    assert submit(client).status_code == 200
    state = client.get("/_fake/state").json()
    assert state["submissions"] == {"a red fox": 1}


def test_fault_hang_gives_client_read_timeout(client: httpx2.Client, fake: FakeBfl) -> None:
    fake.faults.add("poll", hang=True)
    started = time.monotonic()
    with pytest.raises(httpx2.ReadTimeout):
        client.get("/eu4/v1/get_result", params={"id": "x"}, headers=KEY, timeout=0.3)
    assert time.monotonic() - started < 2
    r = client.get("/eu4/v1/get_result", params={"id": "x"}, headers=KEY)
    assert r.json()["status"] == "Task not found"


def test_hang_is_released_by_reset(client: httpx2.Client, fake: FakeBfl) -> None:
    fake.faults.add("submit", hang=True, process=True)
    results: list[int] = []
    worker = threading.Thread(target=lambda: results.append(submit(client).status_code))
    worker.start()
    time.sleep(0.2)
    assert results == []
    assert fake.submission_count("a red fox") == 1  # processed (and billed) before hanging
    client.post("/_fake/reset")
    worker.join(5)
    assert results == [503]


def test_fault_drop_is_a_protocol_error(client: httpx2.Client, fake: FakeBfl) -> None:
    fake.faults.add("submit", drop=True, process=True)
    with pytest.raises(DROPPED):
        submit(client)
    assert fake.submission_count("a red fox") == 1  # the double-pay trap
    assert submit(client).status_code == 200


def test_fault_trickle_spreads_the_body(client: httpx2.Client, fake: FakeBfl) -> None:
    fake.config.task_duration_s = 0
    sample = wait_ready(client, submit(client).json()["polling_url"])["result"]["sample"]
    fake.faults.add("download", trickle_s=0.4)
    started = time.monotonic()
    arrivals: list[float] = []
    body = bytearray()
    with client.stream("GET", sample) as r:
        assert r.status_code == 200
        headers_at = time.monotonic() - started
        for chunk in r.iter_raw():
            arrivals.append(time.monotonic() - started)
            body.extend(chunk)
    assert headers_at < 0.2
    assert arrivals[-1] >= 0.35
    assert len(arrivals) >= 3
    assert len(body) == int(r.headers["content-length"])
    with Image.open(io.BytesIO(bytes(body))) as img:
        assert img.format == "JPEG"


def test_fault_delay_over_http(client: httpx2.Client, fake: FakeBfl) -> None:
    client.post("/_fake/faults", json={"kind": "submit", "delay_s": 0.2})
    started = time.monotonic()
    assert submit(client).status_code == 200
    assert time.monotonic() - started >= 0.18


# -- serve_in_task ------------------------------------------------------------------------------


async def test_serve_in_task_flow_and_faults() -> None:
    fake = FakeBfl(FakeBflConfig(task_duration_s=0.05))
    async with serve_in_task(fake.app) as served:
        fake.public_base_url = served.base_url
        async with httpx2.AsyncClient(base_url=served.base_url, timeout=5) as client:
            r = await client.post("/v1/flux-pro-1.1", json={"prompt": "x"}, headers=KEY)
            polling_url = r.json()["polling_url"]
            for _ in range(100):
                data = (await client.get(polling_url, headers=KEY)).json()
                if data["status"] == "Ready":
                    break
                await asyncio.sleep(0.02)
            assert data["status"] == "Ready"
            r = await client.get(data["result"]["sample"])
            assert r.status_code == 200

            fake.faults.add("poll", drop=True)
            with pytest.raises(DROPPED):
                await client.get(polling_url, headers=KEY)

            fake.faults.add("poll", hang=True)
            with pytest.raises(httpx2.ReadTimeout):
                await client.get(polling_url, headers=KEY, timeout=0.2)

            r = await client.get(polling_url, headers=KEY)
            assert r.json()["status"] == "Ready"
    assert fake.polls >= 2
