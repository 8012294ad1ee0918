"""The fake BFL API, exercised in-process through httpx2.ASGITransport."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
from PIL import Image

from orchestrator.testing.fake_bfl import FakeBfl, FakeBflConfig
from orchestrator.testing.images import ImageFormat, render_image

KEY = {"x-key": "test-key"}
ORIGIN = "http://fake-bfl.test"


class ManualClock:
    def __init__(self) -> None:
        self.t = 5000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def fake(clock: ManualClock) -> FakeBfl:
    config = FakeBflConfig(task_duration_s=2.0, public_base_url=ORIGIN, label="SIMULATED")
    return FakeBfl(config, clock=clock)


@pytest.fixture
async def client(fake: FakeBfl) -> AsyncIterator[httpx2.AsyncClient]:
    transport = httpx2.ASGITransport(app=fake.app)
    async with httpx2.AsyncClient(transport=transport, base_url=ORIGIN) as c:
        yield c


async def submit(
    client: httpx2.AsyncClient, model: str = "flux-dev", **body: Any
) -> httpx2.Response:
    body.setdefault("prompt", "a red fox")
    return await client.post(f"/v1/{model}", json=body, headers=KEY)


async def submit_ok(client: httpx2.AsyncClient, model: str = "flux-dev", **body: Any) -> str:
    r = await submit(client, model, **body)
    assert r.status_code == 200, r.text
    polling_url = r.json()["polling_url"]
    assert isinstance(polling_url, str)
    return polling_url


async def poll(client: httpx2.AsyncClient, polling_url: str) -> dict[str, Any]:
    r = await client.get(polling_url, headers=KEY)
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    assert set(data) == {"id", "status", "result", "progress", "details", "preview"}
    return data


# -- auth, routing, validation ------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"x-key": "wrong"}])
async def test_auth_is_required(client: httpx2.AsyncClient, headers: dict[str, str]) -> None:
    expected = {"detail": "Not authenticated - Invalid Authentication"}
    r = await client.post("/v1/flux-dev", json={"prompt": "x"}, headers=headers)
    assert (r.status_code, r.json()) == (403, expected)
    r = await client.get("/eu4/v1/get_result", params={"id": "abc"}, headers=headers)
    assert (r.status_code, r.json()) == (403, expected)
    r = await client.get("/v1/credits", headers=headers)
    assert (r.status_code, r.json()) == (403, expected)


async def test_unknown_model_is_404(client: httpx2.AsyncClient) -> None:
    r = await client.post("/v1/flux-9000", json={"prompt": "x"}, headers=KEY)
    assert (r.status_code, r.json()) == (404, {"detail": "Not Found"})


@pytest.mark.parametrize(
    ("model", "body", "loc"),
    [
        ("flux-dev", {"width": 1000}, ["body", "width"]),
        ("flux-pro-1.1", {"height": 1472}, ["body", "height"]),
        ("flux-pro-1.1", {"width": 224}, ["body", "width"]),
        ("flux-dev", {"steps": 51}, ["body", "steps"]),
        ("flux-pro", {"guidance": 1.0}, ["body", "guidance"]),
        ("flux-pro", {"interval": 5}, ["body", "interval"]),
        ("flux-dev", {"safety_tolerance": 7}, ["body", "safety_tolerance"]),
        ("flux-dev", {"output_format": "gif"}, ["body", "output_format"]),
        ("flux-pro-1.1-ultra", {"aspect_ratio": "1:3"}, ["body", "aspect_ratio"]),
        ("flux-pro-1.1-ultra", {"aspect_ratio": "wide"}, ["body", "aspect_ratio"]),
        ("flux-pro-1.1-ultra", {"image_prompt_strength": 1.5}, ["body", "image_prompt_strength"]),
        ("flux-kontext-pro", {"prompt": None}, ["body", "prompt"]),
        ("flux-kontext-max", {"aspect_ratio": "22:9"}, ["body", "aspect_ratio"]),
    ],
)
async def test_validation_errors_use_fastapi_detail_list(
    client: httpx2.AsyncClient, fake: FakeBfl, model: str, body: dict[str, Any], loc: list[str]
) -> None:
    r = await client.post(f"/v1/{model}", json={"prompt": "p", **body}, headers=KEY)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, list)
    assert detail[0]["loc"] == loc
    assert isinstance(detail[0]["msg"], str)
    assert isinstance(detail[0]["type"], str)
    assert fake.credits == 1000.0
    assert fake.submissions == []


async def test_kontext_prompt_is_required(client: httpx2.AsyncClient) -> None:
    r = await client.post("/v1/flux-kontext-pro", json={}, headers=KEY)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "prompt"]


async def test_unknown_keys_are_ignored_but_recorded(
    client: httpx2.AsyncClient, fake: FakeBfl
) -> None:
    r = await submit(client, "flux-pro-1.1", frobnicate=True, width=512, height=256)
    assert r.status_code == 200
    assert fake.submissions[0].body == {
        "prompt": "a red fox",
        "frobnicate": True,
        "width": 512,
        "height": 256,
    }
    assert fake.submissions[0].model == "flux-pro-1.1"


# -- submit: response, credits, limits ----------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "body", "cost", "output_mp"),
    [
        ("flux-pro-1.1", {}, 4.0, 0.79),
        ("flux-pro-1.1-ultra", {}, 6.0, 1.06),
        ("flux-pro", {"width": 256, "height": 256}, 5.0, 0.07),
        ("flux-dev", {}, 2.5, 0.79),
        ("flux-kontext-pro", {}, 4.0, 1.05),
        ("flux-kontext-max", {"aspect_ratio": "9:16"}, 8.0, 1.06),
    ],
)
async def test_submit_response_and_cost(
    client: httpx2.AsyncClient,
    fake: FakeBfl,
    model: str,
    body: dict[str, Any],
    cost: float,
    output_mp: float,
) -> None:
    r = await submit(client, model, **body)
    assert r.status_code == 200, r.text
    data = r.json()
    task_id = data["id"]
    assert data == {
        "id": task_id,
        "polling_url": f"{ORIGIN}/eu4/v1/get_result?id={task_id}",
        "cost": cost,
        "input_mp": None,
        "output_mp": output_mp,
    }
    assert fake.credits == 1000.0 - cost
    assert fake.active_tasks() == 1
    assert fake.active_tasks(model) == 1


async def test_insufficient_credits_is_402(client: httpx2.AsyncClient, fake: FakeBfl) -> None:
    fake.credits = 5.0
    assert (await submit(client, "flux-pro-1.1")).status_code == 200
    r = await submit(client, "flux-pro-1.1")
    assert (r.status_code, r.json()) == (402, {"detail": "Insufficient credits"})
    assert fake.credits == 1.0
    assert fake.submission_count("a red fox") == 1
    r = await client.get("/v1/credits", headers=KEY)
    assert r.json() == {"credits": 1.0}


async def test_active_task_limit_is_429(
    client: httpx2.AsyncClient, fake: FakeBfl, clock: ManualClock
) -> None:
    fake.config.active_limit = 2
    for _ in range(2):
        assert (await submit(client)).status_code == 200
    r = await submit(client)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "1"
    assert isinstance(r.json()["detail"], str)
    assert fake.credits == 1000.0 - 2 * 2.5
    clock.advance(2.0)
    assert fake.active_tasks() == 0
    assert (await submit(client)).status_code == 200


async def test_peak_active_tasks_counts_the_most_at_once(
    client: httpx2.AsyncClient, fake: FakeBfl, clock: ManualClock
) -> None:
    """What a limit over all of a key's clients must keep down: the most tasks active
    at once, not how many were submitted."""
    assert fake.state()["peak_active_tasks"] == 0
    for _ in range(3):
        assert (await submit(client)).status_code == 200
    clock.advance(2.0)  # all three done
    for _ in range(2):
        assert (await submit(client)).status_code == 200
    state = fake.state()
    assert (state["peak_active_tasks"], state["active_tasks"]) == (3, 2)
    fake.reset()
    assert fake.state()["peak_active_tasks"] == 0


async def test_kontext_max_has_its_own_limit(client: httpx2.AsyncClient, fake: FakeBfl) -> None:
    fake.config.kontext_max_limit = 1
    assert (await submit(client, "flux-kontext-max")).status_code == 200
    r = await submit(client, "flux-kontext-max")
    assert (r.status_code, r.headers["retry-after"]) == (429, "1")
    assert (await submit(client, "flux-kontext-pro")).status_code == 200
    assert fake.active_tasks("flux-kontext-max") == 1
    assert fake.active_tasks() == 2


async def test_submission_count_detects_double_pay(
    client: httpx2.AsyncClient, fake: FakeBfl
) -> None:
    for _ in range(3):
        await submit_ok(client, prompt="same prompt")
    await submit_ok(client, prompt="other")
    assert fake.submission_count("same prompt") == 3
    assert fake.submission_count("other") == 1
    assert fake.submission_count("never") == 0
    assert len({s.task_id for s in fake.submissions}) == 4


# -- polling ------------------------------------------------------------------------------------


async def test_root_get_result_does_not_know_the_task(
    client: httpx2.AsyncClient, fake: FakeBfl
) -> None:
    polling_url = await submit_ok(client)
    task_id = polling_url.rsplit("=", 1)[1]
    r = await client.get("/v1/get_result", params={"id": task_id}, headers=KEY)
    assert r.status_code == 200
    assert r.json() == {
        "id": task_id,
        "status": "Task not found",
        "result": None,
        "progress": None,
        "details": None,
        "preview": None,
    }
    assert fake.misrouted_polls == 1


async def test_get_result_needs_an_id(client: httpx2.AsyncClient) -> None:
    r = await client.get("/eu4/v1/get_result", headers=KEY)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["query", "id"]
    r = await client.get("/eu4/v1/get_result", params={"id": "nope"}, headers=KEY)
    assert r.json()["status"] == "Task not found"


async def test_pending_then_ready_with_progress(
    client: httpx2.AsyncClient, fake: FakeBfl, clock: ManualClock
) -> None:
    polling_url = await submit_ok(client, seed=42, width=512, height=256, output_format="png")
    r = await client.get(polling_url, headers=KEY)
    assert r.headers["retry-after"] == "1"
    assert r.headers["x-ratelimit-limit"] == "1200"
    assert int(r.headers["x-ratelimit-remaining"]) == 1199
    assert float(r.headers["x-ratelimit-reset"]) > time.time() - 120
    data = r.json()
    assert (data["status"], data["progress"], data["result"]) == ("Pending", 0.0, None)

    clock.advance(1.0)
    data = await poll(client, polling_url)
    assert (data["status"], data["progress"]) == ("Pending", 0.5)

    clock.advance(1.0)
    r = await client.get(polling_url, headers=KEY)
    assert r.headers["retry-after"] == "0"
    data = r.json()
    assert (data["status"], data["progress"], data["details"]) == ("Ready", None, None)
    result = data["result"]
    assert result["prompt"] == "a red fox"
    assert result["seed"] == 42
    assert result["duration"] == 2.0
    assert result["end_time"] - result["start_time"] == pytest.approx(2.0, abs=0.02)
    assert result["sample"].startswith(f"{ORIGIN}/delivery/{data['id']}/sample.png?se=")
    assert fake.polls == 3

    r = await client.get(result["sample"])  # no x-key
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    assert r.headers["content-length"] == str(len(r.content))
    with Image.open(io.BytesIO(r.content)) as img:
        assert (img.format, img.size) == ("PNG", (512, 256))
    assert (await client.get(result["sample"])).content == r.content  # cached
    assert fake.downloads == 2
    assert fake.credits == 1000.0 - 2.5


async def test_kontext_progress_is_null_and_sample_is_png(
    client: httpx2.AsyncClient, clock: ManualClock
) -> None:
    polling_url = await submit_ok(client, "flux-kontext-pro", aspect_ratio="16:9")
    data = await poll(client, polling_url)
    assert (data["status"], data["progress"]) == ("Pending", None)
    clock.advance(2.0)
    data = await poll(client, polling_url)
    r = await client.get(data["result"]["sample"])
    assert r.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(r.content)) as img:
        assert img.size == (1376, 768)


async def test_image_size_override(client: httpx2.AsyncClient, fake: FakeBfl) -> None:
    fake.config.task_duration_s = 0
    fake.config.image_size = (64, 32)
    polling_url = await submit_ok(client, "flux-pro-1.1-ultra")
    data = await poll(client, polling_url)
    assert data["status"] == "Ready"
    r = await client.get(data["result"]["sample"])
    with Image.open(io.BytesIO(r.content)) as img:
        assert (img.format, img.size) == ("JPEG", (64, 32))


async def test_request_moderation_is_immediate_and_free(
    client: httpx2.AsyncClient, fake: FakeBfl
) -> None:
    polling_url = await submit_ok(client, prompt="bad [moderate:request]")
    assert fake.credits == 1000.0
    assert fake.active_tasks() == 0
    data = await poll(client, polling_url)
    assert data["status"] == "Request Moderated"
    assert data["result"] is None
    assert data["details"]["Moderation Reasons"]


async def test_content_moderation_after_duration_is_refunded(
    client: httpx2.AsyncClient, fake: FakeBfl, clock: ManualClock
) -> None:
    polling_url = await submit_ok(client, prompt="bad [moderate:content]")
    assert fake.credits == 1000.0 - 2.5
    assert (await poll(client, polling_url))["status"] == "Pending"
    clock.advance(2.5)
    data = await poll(client, polling_url)
    assert data["status"] == "Content Moderated"
    assert data["details"] == {"Moderation Reasons": ["Sexual Content"]}
    assert fake.credits == 1000.0


async def test_error_after_duration(
    client: httpx2.AsyncClient, fake: FakeBfl, clock: ManualClock
) -> None:
    polling_url = await submit_ok(client, prompt="boom [error]")
    assert (await poll(client, polling_url))["status"] == "Pending"
    clock.advance(2.0)
    data = await poll(client, polling_url)
    assert (data["status"], data["result"]) == ("Error", None)
    assert fake.credits == 1000.0


# -- samples ------------------------------------------------------------------------------------


async def ready_sample_url(client: httpx2.AsyncClient, clock: ManualClock) -> str:
    polling_url = await submit_ok(client)
    clock.advance(2.0)
    data = await poll(client, polling_url)
    assert data["status"] == "Ready"
    sample = data["result"]["sample"]
    assert isinstance(sample, str)
    return sample


async def test_sample_expires(
    client: httpx2.AsyncClient, fake: FakeBfl, clock: ManualClock
) -> None:
    sample = await ready_sample_url(client, clock)
    se = int(httpx2.URL(sample).params["se"])
    clock.advance(599)
    assert (await client.get(sample)).status_code == 200
    clock.advance(2)
    r = await client.get(sample)
    assert r.status_code == 403
    assert "<Code>AuthenticationFailed</Code>" in r.text
    assert se > time.time()


async def test_sample_signature_is_checked(client: httpx2.AsyncClient, clock: ManualClock) -> None:
    sample = await ready_sample_url(client, clock)
    url = httpx2.URL(sample)
    tampered = url.copy_set_param("se", str(int(url.params["se"]) + 3600))
    r = await client.get(tampered)
    assert r.status_code == 403
    assert "AuthenticationFailed" in r.text
    r = await client.get(url.copy_remove_param("sig"))
    assert r.status_code == 403
    r = await client.get(str(url).replace("sample.jpeg", "sample.png"))
    assert r.status_code == 403


async def test_advance_moves_time(client: httpx2.AsyncClient, fake: FakeBfl) -> None:
    polling_url = await submit_ok(client)
    fake.advance(2.0)
    assert (await poll(client, polling_url))["status"] == "Ready"


async def test_every_poll_hands_out_a_fresh_signed_url(
    client: httpx2.AsyncClient, fake: FakeBfl, clock: ManualClock
) -> None:
    """Like BFL: a new signature on every poll, valid sample_ttl_s from when it was handed
    out, while older URLs stay valid until their own expiry. A fake that handed out one
    never-changing URL let a client without the re-poll-for-a-fresh-URL step pass."""
    polling_url = await submit_ok(client)
    clock.advance(2.0)
    first = (await poll(client, polling_url))["result"]["sample"]
    again = (await poll(client, polling_url))["result"]["sample"]
    assert first != again  # same second, still a new signature
    assert httpx2.URL(first).params["scid"] != httpx2.URL(again).params["scid"]
    clock.advance(300)
    later = (await poll(client, polling_url))["result"]["sample"]
    se_first, se_later = (int(httpx2.URL(u).params["se"]) for u in (first, later))
    assert se_later - se_first in (300, 301)  # valid 600 s from when it was handed out
    assert (await client.get(first)).status_code == 200  # older URLs stay valid...
    clock.advance(301)
    assert (await client.get(first)).status_code == 403  # ...until their own expiry
    assert (await client.get(again)).status_code == 403
    assert (await client.get(later)).status_code == 200
    fresh = (await poll(client, polling_url))["result"]["sample"]
    assert (await client.get(fresh)).status_code == 200


async def test_the_signature_covers_the_scid(
    client: httpx2.AsyncClient, clock: ManualClock
) -> None:
    url = httpx2.URL(await ready_sample_url(client, clock))
    r = await client.get(url.copy_set_param("scid", "00000000-0000-0000-0000-000000000000"))
    assert r.status_code == 403 and "Signature did not match" in r.text
    r = await client.get(url.copy_remove_param("scid"))
    assert r.status_code == 403 and "not well formed" in r.text


async def test_requests_are_recorded_with_their_headers(
    client: httpx2.AsyncClient, fake: FakeBfl, clock: ManualClock
) -> None:
    """What the fake saw, so tests can count it: which requests carried x-key."""
    sample = await ready_sample_url(client, clock)  # a submit and a poll, both keyed
    assert (await client.get(sample)).status_code == 200
    assert (await client.get(sample, headers=KEY)).status_code == 200  # a leaked key
    fake.faults.add("download", status=503)
    assert (await client.get(sample, headers={"x-key": "another"})).status_code == 503
    assert (await client.get("/v1/credits", headers=KEY)).status_code == 200  # not recorded
    kinds = [(r.kind, r.method, r.headers.get("x-key")) for r in fake.requests]
    assert kinds == [
        ("submit", "POST", "test-key"),
        ("poll", "GET", "test-key"),
        ("download", "GET", None),
        ("download", "GET", "test-key"),
        ("download", "GET", "another"),  # recorded even though a fault answered it
    ]
    downloads = fake.requests_of("download")
    assert [r.has_key for r in downloads] == [False, True, True]
    assert downloads[0].target == sample.removeprefix(ORIGIN)
    assert downloads[0].at == clock.t
    state = (await client.get("/_fake/state")).json()
    assert state["requests"] == {"submit": 1, "poll": 1, "download": 3}
    assert state["requests_with_key"] == {"submit": 1, "poll": 1, "download": 2}
    assert "test-key" not in str(state)  # counts only, never the key
    fake.reset()
    assert fake.requests == []
    assert fake.state()["requests_with_key"] == {"submit": 0, "poll": 0, "download": 0}


async def test_fault_advance_s_lets_a_sample_expire_on_the_way(
    client: httpx2.AsyncClient, fake: FakeBfl, clock: ManualClock
) -> None:
    sample = await ready_sample_url(client, clock)
    before = fake.now()
    r = await client.post("/_fake/faults", json={"kind": "download", "advance_s": 601})
    assert r.status_code == 200
    r = await client.get(sample)
    assert r.status_code == 403 and "<Code>AuthenticationFailed</Code>" in r.text
    assert fake.now() == before + 601
    assert (await client.get(sample)).status_code == 403  # time does not go back
    with pytest.raises(ValueError):
        fake.faults.add("download", advance_s=-1)


# -- faults -------------------------------------------------------------------------------------


async def test_fault_status_500_then_normal(client: httpx2.AsyncClient, fake: FakeBfl) -> None:
    fake.faults.add("submit", status=500, count=2)
    for _ in range(2):
        r = await submit(client)
        assert (r.status_code, r.json()) == (500, {"detail": "Injected fault"})
    assert (await submit(client)).status_code == 200
    assert fake.submission_count("a red fox") == 1
    assert fake.faults.fired == 2
    assert fake.faults.pending() == 0


async def test_fault_502_html_and_malformed_json(client: httpx2.AsyncClient, fake: FakeBfl) -> None:
    polling_url = await submit_ok(client)
    fake.faults.add("poll", status=502, body="<html><body>Bad Gateway</body></html>")
    fake.faults.add("poll", status=200, body="{not json")
    r = await client.get(polling_url, headers=KEY)
    assert r.status_code == 502
    assert r.headers["content-type"].startswith("text/html")
    assert "Bad Gateway" in r.text
    r = await client.get(polling_url, headers=KEY)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    with pytest.raises(ValueError):
        r.json()
    assert (await poll(client, polling_url))["status"] == "Pending"
    assert fake.polls == 1  # injected answers never reached the handler


async def test_fault_hang_until_client_gives_up(client: httpx2.AsyncClient, fake: FakeBfl) -> None:
    fake.faults.add("poll", hang=True)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await client.get("/eu4/v1/get_result", params={"id": "x"}, headers=KEY)
    r = await client.get("/eu4/v1/get_result", params={"id": "x"}, headers=KEY)
    assert r.json()["status"] == "Task not found"


async def test_reset_releases_hung_requests(client: httpx2.AsyncClient, fake: FakeBfl) -> None:
    fake.faults.add("submit", hang=True)
    pending = asyncio.create_task(submit(client))
    await asyncio.sleep(0.05)
    assert not pending.done()
    fake.reset()
    r = await asyncio.wait_for(pending, 1)
    assert r.status_code == 503


async def test_fault_drop_raises_remote_protocol_error(
    client: httpx2.AsyncClient, fake: FakeBfl
) -> None:
    fake.faults.add("submit", drop=True)
    with pytest.raises(httpx2.RemoteProtocolError):
        await submit(client)
    assert fake.submission_count("a red fox") == 0


async def test_fault_drop_after_processing_is_billed(
    client: httpx2.AsyncClient, fake: FakeBfl
) -> None:
    fake.faults.add("submit", drop=True, process=True)
    with pytest.raises(httpx2.RemoteProtocolError):
        await submit(client)
    assert fake.submission_count("a red fox") == 1
    assert fake.credits == 1000.0 - 2.5


async def test_fault_delay_and_trickle(
    client: httpx2.AsyncClient, fake: FakeBfl, clock: ManualClock
) -> None:
    sample = await ready_sample_url(client, clock)
    fake.faults.add("download", trickle_s=0.2)
    fake.faults.add("download", delay_s=0.1, headers={"x-ignored": "1"})
    started = time.perf_counter()
    r = await client.get(sample)
    assert time.perf_counter() - started >= 0.18
    assert r.status_code == 200
    assert r.headers["content-length"] == str(len(r.content))
    with Image.open(io.BytesIO(r.content)) as img:
        assert img.format == "JPEG"
    started = time.perf_counter()
    r = await client.get(sample)
    assert time.perf_counter() - started >= 0.09
    assert r.status_code == 200
    assert fake.downloads == 2


async def test_fault_validation(fake: FakeBfl) -> None:
    with pytest.raises(ValueError):
        fake.faults.add("nope", status=500)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        fake.faults.add("poll", hang=True, drop=True)
    with pytest.raises(ValueError):
        fake.faults.add("poll", count=0)


# -- admin endpoints ----------------------------------------------------------------------------


async def test_admin_endpoints(client: httpx2.AsyncClient, fake: FakeBfl) -> None:
    r = await client.post("/_fake/faults", json={"kind": "submit", "status": 503, "count": 1})
    assert r.json() == {"ok": True, "pending_faults": 1}
    assert (await submit(client)).status_code == 503
    r = await client.post("/_fake/faults", json={"kind": "submit", "frob": 1})
    assert r.status_code == 422

    await submit_ok(client, prompt="p1")
    await submit_ok(client, prompt="p1")
    state = (await client.get("/_fake/state")).json()
    assert state["submissions"] == {"p1": 2}
    assert state["submission_total"] == 2
    assert state["credits"] == 1000.0 - 5.0
    assert state["active_tasks"] == 2
    assert state["active_tasks_by_model"] == {"flux-dev": 2}
    assert state["pending_faults"] == 0

    r = await client.post(
        "/_fake/config",
        json={"credits": 3, "task_duration_s": 0, "sample_ttl_s": 5, "keys": ["k2"]},
    )
    assert r.json() == {"ok": True}
    assert (await submit(client)).status_code == 403
    r = await client.post("/v1/flux-dev", json={"prompt": "p2"}, headers={"x-key": "k2"})
    assert r.status_code == 200
    assert fake.credits == 0.5
    assert fake.config.sample_ttl_s == 5

    r = await client.post("/_fake/advance", json={"seconds": 10})
    assert r.json()["ok"] is True

    assert (await client.post("/_fake/reset")).json() == {"ok": True}
    state = (await client.get("/_fake/state")).json()
    assert state["submissions"] == {}
    assert state["credits"] == 3.0
    assert state["polls"] == 0
    assert fake.submissions == []


# -- images -------------------------------------------------------------------------------------


def test_render_image_is_deterministic_and_fast() -> None:
    render_image("warm up", 64, 64, "jpeg")
    started = time.perf_counter()
    a = render_image("a red fox", 1024, 768, "jpeg", seed=1, label="SIMULATED")
    elapsed = time.perf_counter() - started
    assert a == render_image("a red fox", 1024, 768, "jpeg", seed=1, label="SIMULATED")
    assert a != render_image("a red fox", 1024, 768, "jpeg", seed=2, label="SIMULATED")
    assert elapsed < 0.2  # typically ~10 ms; generous for slow CI
    formats: list[tuple[ImageFormat, str]] = [("jpeg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")]
    for fmt, name in formats:
        with Image.open(io.BytesIO(render_image("東京", 300, 200, fmt))) as img:
            assert (img.format, img.size) == (name, (300, 200))
    with pytest.raises(ValueError):
        render_image("x", 0, 10, "png")
