"""The streaming in-process ASGI transport: the body arrives as the app sends it,
closing the response disconnects the app, and failures look like a cut connection."""

from __future__ import annotations

import asyncio

import httpx2
import pytest
from starlette.types import Message, Receive, Scope, Send

from orchestrator.testing.asgi_stream import StreamingASGITransport


class Gated:
    """Sends a body in three parts, each only once the test opens its gate; records
    what it received."""

    def __init__(self, *, fail_after: int | None = None, finish: bool = True) -> None:
        self.gates = [asyncio.Event() for _ in range(3)]
        self.received: list[Message] = []
        self.disconnected = asyncio.Event()
        self.fail_after = fail_after
        self.finish = finish

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.received.append(await receive())
        headers = [(b"content-type", b"text/plain"), (b"x-path", scope["path"].encode())]
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        watcher = asyncio.ensure_future(self._watch(receive))
        try:
            for i, gate in enumerate(self.gates):
                if self.fail_after == i:
                    raise RuntimeError("boom")
                await gate.wait()
                last = i == len(self.gates) - 1 and self.finish
                await send(
                    {"type": "http.response.body", "body": b"part%d;" % i, "more_body": not last}
                )
        finally:
            watcher.cancel()

    async def _watch(self, receive: Receive) -> None:
        if (await receive())["type"] == "http.disconnect":
            self.disconnected.set()


async def test_body_streams_as_sent() -> None:
    app = Gated()
    async with (
        httpx2.AsyncClient(transport=StreamingASGITransport(app), timeout=5) as client,
        client.stream("POST", "http://app.test/x?y=1", content=b"hello") as resp,
    ):
        assert resp.status_code == 201 and resp.headers["x-path"] == "/x"
        parts = resp.aiter_bytes()
        app.gates[0].set()
        assert await anext(parts) == b"part0;"  # before part 1 was even allowed
        app.gates[1].set()
        assert await anext(parts) == b"part1;"
        app.gates[2].set()
        assert [p async for p in parts] == [b"part2;"]
    assert app.received == [{"type": "http.request", "body": b"hello", "more_body": False}]


async def test_closing_early_disconnects_the_app() -> None:
    app = Gated()
    async with httpx2.AsyncClient(transport=StreamingASGITransport(app), timeout=5) as client:
        async with client.stream("GET", "http://app.test/") as resp:
            app.gates[0].set()
            assert await anext(resp.aiter_bytes()) == b"part0;"
        # the response is closed: the app was told and stopped
        assert app.disconnected.is_set()


async def test_failure_mid_body_is_a_protocol_error() -> None:
    app = Gated(fail_after=1)
    app.gates[0].set()
    async with httpx2.AsyncClient(transport=StreamingASGITransport(app), timeout=5) as client:
        with pytest.raises(httpx2.RemoteProtocolError, match="boom"):
            await client.get("http://app.test/")


async def test_incomplete_body_is_a_protocol_error() -> None:
    app = Gated(finish=False)
    for gate in app.gates:
        gate.set()
    async with httpx2.AsyncClient(transport=StreamingASGITransport(app), timeout=5) as client:
        with pytest.raises(httpx2.RemoteProtocolError, match="before the body was complete"):
            await client.get("http://app.test/")


async def test_failure_before_the_response_is_raised() -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise ValueError("no response")

    async with httpx2.AsyncClient(transport=StreamingASGITransport(broken), timeout=5) as c:
        with pytest.raises(ValueError, match="no response"):
            await c.get("http://app.test/")
