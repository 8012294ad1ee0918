"""The event feed: one reader of the job event log per process, fanned out to every
subscriber of the server-wide stream (``GET /api/events``).

However many clients follow the stream, this process runs one query per wake-up (a
job change here, or every ``poll_s`` for changes made by other processes), encodes
each event's JSON once, and hands the same item to every subscriber's bounded queue.
A subscriber that falls ``queue_max`` events behind is dropped (its stream ends, and
the client reconnects with its ``Last-Event-ID``) instead of slowing the others.

Positions are :class:`~orchestrator.domain.event_cursor.Cursor` tokens, so an event
whose transaction commits after a later one (PostgreSQL sequences) is still delivered,
also to a client that resumes across it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from orchestrator import logs
from orchestrator.db.jobs import JobRepo
from orchestrator.domain.event_cursor import Cursor
from orchestrator.domain.jobs import JobEvent
from orchestrator.engine.hub import Hub

log = logs.get(__name__)

POLL_S = 0.5  # how often to look for events written by other processes
GAP_GRACE_S = 60.0  # longer than any transaction: a gap older than this never commits
BATCH = 1000
QUEUE_MAX = 2000


@dataclass
class FeedItem:
    """One event as the stream sends it: ``token`` is the position after it."""

    event: JobEvent
    token: str
    data: str  # the event as JSON, encoded once for every subscriber
    encoded: bytes | None = field(default=None, repr=False)  # cached by the API


class FellBehind(Exception):
    """The subscriber's queue overflowed; it should reconnect from its last token."""


class _Subscriber:
    def __init__(self, queue_max: int) -> None:
        self.queue: asyncio.Queue[FeedItem | None] = asyncio.Queue(queue_max)

    def offer(self, item: FeedItem) -> bool:
        """Queue the item; False when the queue overflowed (the end marker is queued)."""
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()  # room for the end marker
            self.queue.put_nowait(None)
            return False
        return True


class EventFeed:
    def __init__(
        self,
        repo: JobRepo,
        hub: Hub,
        *,
        poll_s: float = POLL_S,
        grace_s: float = GAP_GRACE_S,
        queue_max: int = QUEUE_MAX,
    ) -> None:
        self.repo = repo
        self.hub = hub
        self.poll_s = poll_s
        self.grace_s = grace_s
        self.queue_max = queue_max
        self.cursor: Cursor | None = None
        self._subs: set[_Subscriber] = set()
        self._task: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()
        self.reads = 0  # queries run: one per wake-up, whatever the subscriber count

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    async def subscribe(self, resume: str | None = None) -> AsyncIterator[list[FeedItem]]:
        """Subscribe now (events committed from here on are not missed, even before the
        caller starts reading) and return the stream: every job's events from
        ``resume`` (a token; None: from now on), live, in batches of what arrived
        together (a burst costs a subscriber one write, not one per event). The stream
        raises :class:`FellBehind` when this subscriber's queue overflowed."""
        await self._ensure_running()
        sub = _Subscriber(self.queue_max)
        self._subs.add(sub)  # join first, then catch up: nothing falls in between
        return self._stream(sub, resume)

    async def follow(self, resume: str | None = None) -> AsyncIterator[list[FeedItem]]:
        async for items in await self.subscribe(resume):
            yield items

    async def _stream(self, sub: _Subscriber, resume: str | None) -> AsyncIterator[list[FeedItem]]:
        try:
            seen: set[int] = set()
            now = time.monotonic()
            start = Cursor.parse(resume, now) if resume else None
            if start is not None:
                async for items in self._catch_up(start):
                    seen.update(i.event.id for i in items)
                    yield items
            while True:
                batch = [await sub.queue.get()]
                while not sub.queue.empty() and len(batch) < BATCH:
                    batch.append(sub.queue.get_nowait())
                live = [i for i in batch if i is not None and i.event.id not in seen]
                if live:
                    yield live
                if None in batch:
                    raise FellBehind
        finally:
            self._subs.discard(sub)

    async def _catch_up(self, cursor: Cursor) -> AsyncIterator[list[FeedItem]]:
        while True:
            rows = await self.repo.events_after(cursor.high, cursor.open_gaps(), limit=BATCH)
            now = time.monotonic()
            items = [_item(ev, cursor) for ev in rows if cursor.accept(ev.id, now)]
            if items:
                yield items
            if len(rows) < BATCH:
                return

    async def _ensure_running(self) -> None:
        async with self._starting:  # one reader, however many subscribe at once
            if self._task is None:
                self.cursor = Cursor(high=await self.repo.last_event_id())
                self._task = asyncio.create_task(self._run(), name="event-feed")

    async def _run(self) -> None:
        assert self.cursor is not None
        cursor = self.cursor
        while True:
            try:
                rows = await self.repo.events_after(cursor.high, cursor.open_gaps(), limit=BATCH)
                self.reads += 1
            except Exception:
                log.warning("event feed: could not read events; retrying", exc_info=True)
                await asyncio.sleep(self.poll_s)
                continue
            now = time.monotonic()
            for ev in rows:
                if cursor.accept(ev.id, now):
                    item = _item(ev, cursor)
                    for sub in list(self._subs):
                        if not sub.offer(item):
                            # Fell behind (or never read: its response was never
                            # started): it is told once, and no longer fed.
                            self._subs.discard(sub)
            cursor.expire(now, self.grace_s)
            if len(rows) == BATCH:
                continue
            await self.hub.wait_any_job(self.poll_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


def _item(ev: JobEvent, cursor: Cursor) -> FeedItem:
    return FeedItem(ev, cursor.token(), ev.model_dump_json())
