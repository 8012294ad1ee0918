"""A lean Server-Sent Events response for the event feed's subscriptions.

The feed's reader (``engine/events.py``) writes each batch to every client itself:
the batch's bytes are encoded once, and a write that the transport takes at once (the
usual case: the ASGI ``send`` of a body chunk does not wait unless the client is slow)
costs no task switch, no queue and no timer per subscriber. Only a write that has to
wait for the client is finished by a task of its own, and what arrives meanwhile is
joined into the next write; a client that falls ``max_pending`` bytes behind gets the
end of its stream (it reconnects with its ``Last-Event-ID``).

A disconnect is seen once, when the server reports ``http.disconnect`` (one waiting
``receive`` per stream), not probed per event. Keep-alive comments come from the
reader's one timer (``EventFeed.keepalive_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Coroutine
from typing import Any

from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from orchestrator.engine.events import Batch, FeedItem, Subscription

SEP = b"\r\n"
PING = b": ping" + SEP + SEP
MAX_PENDING = 4 * 1024 * 1024
FINAL_SEND_S = 10.0
HEADERS = {
    "Cache-Control": "no-store",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",
}


def encode(item: FeedItem) -> bytes:
    """The item as one SSE message, encoded once however many clients it goes to."""
    if item.encoded is None:
        item.encoded = b"".join(
            (
                b"id: ",
                item.token.encode(),
                SEP,
                b"event: ",
                item.event.kind.encode(),
                SEP,
                b"data: ",
                item.data.encode(),
                SEP,
                SEP,
            )
        )
    return item.encoded


def encode_batch(batch: Batch) -> bytes:
    if batch.encoded is None:
        items = batch.items
        batch.encoded = encode(items[0]) if len(items) == 1 else b"".join(map(encode, items))
    return batch.encoded


class _Sink:
    """Writes a subscription's batches to one client (see the module's text)."""

    def __init__(self, send: Send, max_pending: int, job_id: str | None = None) -> None:
        self._send = send
        self.job_id = job_id  # a job's stream ends after the job's last transition
        self.finishing = False
        self.last: FeedItem | None = None
        self.max_pending = MAX_PENDING if max_pending is None else max_pending
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._writer: asyncio.Task[None] | None = None
        self.disconnected = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # --- the feed's Target ------------------------------------------------------------
    def send(self, batch: Batch) -> bool:
        if self.finishing:
            return False
        self.write(encode_batch(batch))
        if self.job_id is not None:
            for item in batch.items:
                if item.event.status is not None and item.event.status.terminal:
                    self.last = item
                    self.finish()
                    return False
        return not self.done.done()

    def finish(self) -> None:
        """End the stream once what was written has gone out."""
        self.finishing = True
        if self._writer is None:
            self.end()

    def keepalive(self) -> None:
        if self._writer is None:  # a stream that is writing needs no keep-alive
            self.write(PING)

    def end(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    # --- writing ------------------------------------------------------------------------
    def write(self, chunk: bytes) -> None:
        if self.done.done():
            return
        if self._writer is not None:
            self._pending.append(chunk)
            self._pending_bytes += len(chunk)
            if self._pending_bytes > self.max_pending:
                self.end()  # fell behind: it resumes from its last id
            return
        sent = self._send({"type": "http.response.body", "body": chunk, "more_body": True})
        if not isinstance(sent, Coroutine):  # an awaitable of another kind: a task waits
            self._writer = asyncio.create_task(self._finish(_coro(sent), None))
            return
        try:
            waiting = sent.send(None)
        except StopIteration:
            return  # written at once: the usual case
        except Exception:
            self.end()  # the connection is gone
            return
        # The transport asked to wait (a slow client): a task finishes this write,
        # driving the coroutine on as a task would.
        self._writer = asyncio.create_task(self._finish(sent, waiting))

    # Coroutine's send and yield types are the transport's own (untyped in ASGI)
    async def _finish(self, coro: Coroutine[Any, Any, None], waiting: Any) -> None:
        try:
            while True:
                # ``waiting`` is what the coroutine yielded to its driver: a future to
                # wait for, or None (give the loop a turn), as a task would handle it.
                if isinstance(waiting, asyncio.Future):
                    await asyncio.wait([waiting])
                else:
                    await asyncio.sleep(0)
                try:
                    waiting = coro.send(None)
                except StopIteration:
                    break
            while self._pending and not self.done.done():
                chunk = b"".join(self._pending)
                self._pending.clear()
                self._pending_bytes = 0
                await self._send({"type": "http.response.body", "body": chunk, "more_body": True})
        except Exception:
            self.end()
        finally:
            coro.close()
            self._writer = None
            if self.finishing:
                self.end()

    async def close(self) -> None:
        self.end()
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer


class EventStreamResponse(Response):
    """``text/event-stream`` fed by a :class:`Subscription` (already subscribed when
    the route made it): catch-up first, then live, until the client goes away or the
    subscription falls behind; a job's subscription also ends after the job's last
    transition (and the late commits of its past, if any)."""

    media_type = "text/event-stream"

    def __init__(
        self,
        subscription: Subscription,
        status_code: int = 200,
        *,
        max_pending: int | None = None,
        background: BackgroundTask | None = None,
    ) -> None:
        super().__init__(None, status_code, HEADERS, background=background)
        # a stream: no Content-Length (Response puts "0" for an empty body)
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.subscription = subscription
        self.max_pending = MAX_PENDING if max_pending is None else max_pending

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sub = self.subscription
        sink = _Sink(send, self.max_pending, sub.job_id)
        watcher: asyncio.Task[None] | None = None
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            watcher = asyncio.create_task(_watch(receive, sink))
            sub.attach(sink)
            await sub.catch_up()
            if sub.closed and not sink.finishing:
                sink.end()
            elif sub.job_id is not None and sub.finished:
                sink.finish()  # the job had ended: the catch-up was all
            await sink.done
        finally:
            sub.close()
            if watcher is not None:
                watcher.cancel()
            await sink.close()
        if not sink.disconnected:
            # the end of the stream; a client that stopped reading gets FINAL_SEND_S to
            # take it, then its connection is closed
            with contextlib.suppress(Exception):
                async with asyncio.timeout(FINAL_SEND_S):
                    if sink.finishing and sink.last is not None and sub.job_id is not None:
                        async for late in sub.feed.tail(sub.job_id, sink.last.token):
                            await send(_body(encode(late)))
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
        if self.background is not None:
            await self.background()


def _body(chunk: bytes) -> Message:
    return {"type": "http.response.body", "body": chunk, "more_body": True}


async def _coro(awaitable: Awaitable[None]) -> None:
    await awaitable


async def _watch(receive: Receive, sink: _Sink) -> None:
    """Wait for the client to go away (the one place a disconnect is noticed)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            sink.disconnected = True
            sink.end()
            return
