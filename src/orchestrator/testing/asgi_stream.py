"""An in-process HTTP transport to an ASGI app that streams the response body.

``httpx2.ASGITransport`` runs the app to the end and hands over the whole body at
once, so an in-process fake that streams (the fake v0 server's Server-Sent Events)
would look like one burst. This transport runs the app in a task and yields each
``http.response.body`` message as it is sent; closing the response (or cancelling
the reader) tells the app the client went away (``http.disconnect``) and stops it.
An exception the app raises after the response started reaches the reader as
``httpx2.RemoteProtocolError``, like a connection cut mid-body.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx2
from starlette.types import ASGIApp, Message

_END = object()


class _Body(httpx2.AsyncByteStream):
    def __init__(
        self, queue: asyncio.Queue[object], task: asyncio.Task[None], gone: asyncio.Event
    ) -> None:
        self._queue = queue
        self._task = task
        self._gone = gone

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise httpx2.RemoteProtocolError(f"the app failed mid-response: {item!r}")
            assert isinstance(item, bytes)
            yield item

    async def aclose(self) -> None:
        self._gone.set()
        if not self._task.done():
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task


class StreamingASGITransport(httpx2.AsyncBaseTransport):
    def __init__(self, app: ASGIApp, client: tuple[str, int] = ("127.0.0.1", 123)) -> None:
        self.app = app
        self.client = client

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        assert isinstance(request.stream, httpx2.AsyncByteStream)
        body = b"".join([part async for part in request.stream])
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "headers": [(k.lower(), v) for (k, v) in request.headers.raw],
            "scheme": request.url.scheme,
            "path": request.url.path,
            "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query,
            "server": (request.url.host, request.url.port),
            "client": self.client,
            "root_path": "",
        }
        loop = asyncio.get_running_loop()
        started: asyncio.Future[tuple[int, list[tuple[bytes, bytes]]]] = loop.create_future()
        queue: asyncio.Queue[object] = asyncio.Queue()
        gone = asyncio.Event()
        sent_request = False
        complete = False

        async def receive() -> Message:
            nonlocal sent_request
            if not sent_request:
                sent_request = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal complete
            if message["type"] == "http.response.start":
                if not started.done():
                    started.set_result((int(message["status"]), list(message.get("headers", []))))
            elif message["type"] == "http.response.body" and not gone.is_set():
                chunk = bytes(message.get("body", b""))
                if chunk and request.method != "HEAD":
                    queue.put_nowait(chunk)
                if not message.get("more_body", False):
                    complete = True
                    queue.put_nowait(_END)

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            except Exception as exc:
                if not started.done():
                    started.set_exception(exc)
                else:
                    queue.put_nowait(exc)
                return
            if not started.done():
                started.set_exception(RuntimeError("the app returned without a response"))
            elif not complete:
                queue.put_nowait(RuntimeError("the app returned before the body was complete"))

        task = asyncio.create_task(run(), name=f"asgi {request.method} {request.url.path}")
        try:
            status, headers = await asyncio.shield(started)
        except BaseException:
            gone.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            raise
        return httpx2.Response(status, headers=headers, stream=_Body(queue, task, gone))
