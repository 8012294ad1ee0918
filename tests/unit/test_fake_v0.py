"""The fake v0 server in process (ASGI transport): the OpenAI-compatible contract,
validation, the deterministic answer, usage, and fault injection."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

import httpx2
import pytest

from orchestrator.backends import v0_prompt as vp
from orchestrator.testing.fake_v0 import FakeV0, FakeV0Config, answer_for, parse_request

KEY = "v0-test-key"
URL = "http://fake-v0.test/v1/chat/completions"
AUTH = {"authorization": f"Bearer {KEY}"}
PNG_URL = "data:image/png;base64," + base64.b64encode(b"\x89PNG fake").decode()


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeV0, httpx2.AsyncClient]]:
    f = FakeV0(FakeV0Config(api_keys={KEY}, chunk_chars=10))
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=f.app), timeout=10) as c:
        yield f, c


def body(prompt: str = "A bakery landing page", **kw: object) -> dict[str, object]:
    return {
        "model": "v0-1.5-md",
        "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": prompt}],
        **kw,
    }


def events(text: str) -> list[str]:
    return [line[6:] for line in text.split("\n\n") if line.startswith("data: ")]


async def test_non_streaming_answer(fake: tuple[FakeV0, httpx2.AsyncClient]) -> None:
    f, c = fake
    r = await c.post(URL, json=body(), headers=AUTH)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["object"] == "chat.completion" and doc["model"] == "v0-1.5-md"
    [choice] = doc["choices"]
    assert choice["finish_reason"] == "stop" and choice["message"]["role"] == "assistant"
    content = choice["message"]["content"]
    assert '```tsx file="app/page.tsx"' in content and "A bakery landing page" in content
    usage = doc["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert f.completed == 1 and len(f.requests) == 1
    # deterministic: the same request, the same answer
    again = (await c.post(URL, json=body(), headers=AUTH)).json()
    assert again["choices"][0]["message"]["content"] == content and again["id"] != doc["id"]


async def test_streaming_answer(fake: tuple[FakeV0, httpx2.AsyncClient]) -> None:
    f, c = fake
    r = await c.post(
        URL, json=body(stream=True, stream_options={"include_usage": True}), headers=AUTH
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    data = events(r.text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)
    assert len({ch["id"] for ch in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    finishes = [ch["choices"][0]["finish_reason"] for ch in chunks if ch["choices"]]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    text = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks if ch["choices"])
    whole = (await c.post(URL, json=body(), headers=AUTH)).json()
    assert text == whole["choices"][0]["message"]["content"]
    assert all(len(ch["choices"][0]["delta"].get("content", "")) <= 10 for ch in chunks[:-1])
    # no usage chunk unless asked
    plain = events((await c.post(URL, json=body(stream=True), headers=AUTH)).text)
    assert all("usage" not in json.loads(d) for d in plain[:-1])
    assert f.completed == 3


async def test_max_tokens_cuts_with_length(fake: tuple[FakeV0, httpx2.AsyncClient]) -> None:
    _f, c = fake
    doc = (await c.post(URL, json=body(max_completion_tokens=5), headers=AUTH)).json()
    assert doc["choices"][0]["finish_reason"] == "length"
    assert len(doc["choices"][0]["message"]["content"]) == 20
    assert doc["usage"]["completion_tokens"] == 5


@pytest.mark.parametrize(
    ("headers", "payload", "status", "fragment"),
    [
        ({}, body(), 401, "Invalid API key"),
        ({"authorization": "Bearer nope"}, body(), 401, "Invalid API key"),
        ({"authorization": KEY}, body(), 401, "Invalid API key"),  # no Bearer
        (AUTH, {**body(), "model": "gpt-4o"}, 400, "does not exist"),
        (AUTH, {"messages": body()["messages"]}, 400, "model"),
        (AUTH, {**body(), "messages": []}, 400, "non-empty"),
        (AUTH, {**body(), "messages": [{"role": "tool", "content": "x"}]}, 400, "role"),
        (AUTH, {**body(), "stream": "yes"}, 400, "boolean"),
        (AUTH, {**body(), "stream_options": {"include_usage": True}}, 400, "stream_options"),
        (AUTH, {**body(), "max_completion_tokens": 0}, 400, "positive"),
        (
            AUTH,
            {**body(), "messages": [{"role": "user", "content": [{"type": "video"}]}]},
            400,
            "text or image_url",
        ),
        (
            AUTH,
            {
                **body(),
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "x"},
                            {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}},
                        ],
                    }
                ],
            },
            400,
            "base64",
        ),
        (
            AUTH,
            {
                **body(),
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "x"},
                            {
                                "type": "image_url",
                                "image_url": {"url": "data:image/svg+xml;base64,AA=="},
                            },
                        ],
                    }
                ],
            },
            400,
            "PNG, JPEG",
        ),
    ],
)
async def test_refusals(
    fake: tuple[FakeV0, httpx2.AsyncClient],
    headers: dict[str, str],
    payload: dict[str, object],
    status: int,
    fragment: str,
) -> None:
    f, c = fake
    r = await c.post(URL, json=payload, headers=headers)
    assert r.status_code == status
    error = r.json()["error"]
    assert fragment in error["message"] and error["type"]
    assert f.requests == [] and f.completed == 0


async def test_bad_json(fake: tuple[FakeV0, httpx2.AsyncClient]) -> None:
    _f, c = fake
    r = await c.post(URL, content=b"{nope", headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_answer_uses_page_context_and_images() -> None:
    page = vp.PageContext(
        page_id="p",
        title="Bakery <Morning>",
        blocks=[vp.PageBlock(["Fresh bread", 'Open "daily"']), vp.PageBlock(["Call us"])],
        image_ids=["a"],
    )
    png = vp.ImageData("image/png", b"\x89PNG")
    messages = vp.build_messages(
        prompt="Modernise it", output_format="tsx", page=page, page_images=[png], images=[png]
    )
    ask = parse_request({"model": "v0-1.5-lg", "messages": messages}, ("v0-1.5-md", "v0-1.5-lg"))
    assert ask.title == "Bakery <Morning>" and ask.prompt == "Modernise it"
    assert ask.blocks == ['Fresh bread Open "daily"', "Call us"] and ask.images == 2
    code = vp.extract_code(answer_for(ask, "SIMULATED"))
    assert code is not None
    assert '{"Bakery <Morning>"}' in code and '{"Fresh bread Open \\"daily\\""}' in code
    assert code.count("<img ") == 2 and code.count("<section") == 2
    assert "(SIMULATED)" in code and "v0-1.5-lg" in code


def test_no_code_marker() -> None:
    ask = parse_request(
        {"model": "v0-1.5-md", "messages": [{"role": "user", "content": "[no-code] x"}]},
        ("v0-1.5-md",),
    )
    assert vp.extract_code(answer_for(ask)) is None


async def test_faults_status_and_retry_after(fake: tuple[FakeV0, httpx2.AsyncClient]) -> None:
    f, c = fake
    f.faults.add(status=429, headers={"Retry-After": "2"})
    f.faults.add(status=500, count=2)
    r = await c.post(URL, json=body(), headers=AUTH)
    assert r.status_code == 429 and r.headers["retry-after"] == "2"
    assert r.json()["error"]["type"] == "rate_limit_error"
    for _ in range(2):
        r = await c.post(URL, json=body(), headers=AUTH)
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    assert (await c.post(URL, json=body(), headers=AUTH)).status_code == 200
    assert f.faults.fired == 3 and f.faults.pending() == 0


async def test_fault_drop_and_cut_in_process(fake: tuple[FakeV0, httpx2.AsyncClient]) -> None:
    f, c = fake
    f.faults.add(drop=True)
    with pytest.raises(httpx2.RemoteProtocolError):
        await c.post(URL, json=body(), headers=AUTH)
    f.faults.add(cut_after=2)
    with pytest.raises(httpx2.RemoteProtocolError):
        await c.post(URL, json=body(stream=True), headers=AUTH)
    assert f.state()["cut"] == 1 and f.completed == 0


async def test_fault_error_event(fake: tuple[FakeV0, httpx2.AsyncClient]) -> None:
    f, c = fake
    f.faults.add(error_after=1)
    asked = body(stream=True, stream_options={"include_usage": True})
    data = events((await c.post(URL, json=asked, headers=AUTH)).text)
    assert json.loads(data[-1])["error"]["type"] == "server_error"
    assert "[DONE]" not in data and f.completed == 0
    # like OpenAI-compatible servers: usage comes only last, so a broken stream has none
    assert all("usage" not in json.loads(d) for d in data)


def test_fault_arguments_are_checked() -> None:
    f = FakeV0()
    with pytest.raises(ValueError):
        f.faults.add(hang=True, drop=True)
    with pytest.raises(ValueError):
        f.faults.add(status=700)
    with pytest.raises(ValueError):
        f.faults.add(cut_after=-1)
    with pytest.raises(ValueError):
        f.faults.add(status=500, count=0)


async def test_admin_endpoints(fake: tuple[FakeV0, httpx2.AsyncClient]) -> None:
    f, c = fake
    base = "http://fake-v0.test/_fake"
    assert (await c.post(f"{base}/faults", json={"status": 503, "count": 2})).json()[
        "pending_faults"
    ] == 2
    assert (await c.post(URL, json=body(), headers=AUTH)).status_code == 503
    await c.post(f"{base}/config", json={"api_keys": ["other"]})
    await c.delete(f"{base}/faults")
    assert (await c.post(URL, json=body(), headers=AUTH)).status_code == 401
    r = await c.post(URL, json=body(), headers={"authorization": "Bearer other"})
    assert r.status_code == 200
    state = (await c.get(f"{base}/state")).json()
    assert state == {"requests": 1, "completed": 1, "cut": 0, "disconnects": 0, "pending_faults": 0}
    await c.post(f"{base}/reset")
    assert f.state()["requests"] == 0
