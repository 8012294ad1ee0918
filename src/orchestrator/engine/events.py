"""The event feed: one reader of the job event log per process, fanned out to every
event stream of the process: the server-wide one (``GET /api/events``), the per-job ones
(``GET /api/jobs/{id}/events``, the CLI's and MCP's followers).

However many streams are open, this process runs one query per wake-up (a job change
here, or every ``poll_s`` for changes made by other processes), encodes each event's
JSON once, and hands the same batch to every subscriber it concerns: all of them for
the server-wide stream, those of its job for a job's. An idle subscriber costs nothing
(no timer, no query); one timer sends the keep-alives of all. A subscriber that falls
``queue_max`` events behind is dropped (its stream ends, and the client reconnects with
its ``Last-Event-ID``) instead of slowing the others.

Positions are :class:`~orchestrator.domain.event_cursor.Cursor` tokens, so an event
whose transaction commits after a later one (PostgreSQL sequences) is still delivered,
also to a client that resumes across it; and a reader that starts while some events'
transactions are still open watches the unseen ids below the newest (``START_WINDOW``)
as gaps, so it does not lose those either.

A subscription joins the feed at once (nothing committed from then on can be missed)
and catches up from its resume token when first read: what the reader delivers
meanwhile is held, then passed on without what the catch-up already gave.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from orchestrator import logs
from orchestrator.db.events import EventLog
from orchestrator.domain.event_cursor import Cursor
from orchestrator.domain.jobs import JobEvent
from orchestrator.engine.hub import Hub

log = logs.get(__name__)

POLL_S = 0.5  # how often to look for events written by other processes
GAP_GRACE_S = 60.0  # longer than any transaction: a gap older than this never commits
START_WINDOW = 10_000  # ids below the newest that a starting reader checks for gaps
BATCH = 1000
QUEUE_MAX = 2000
KEEPALIVE_S = 15.0
YIELD_EVERY = 64  # subscribers written to between two turns of the event loop
NOTIFY_GAP_S = 0.005  # PostgreSQL: at most 200 NOTIFY a second from one process
PG_RETRY_S = 5.0  # after a failed LISTEN or NOTIFY (readers poll meanwhile)


@dataclass(eq=False)
class FeedItem:
    """One event as the stream sends it: ``token`` is the position after it."""

    event: JobEvent
    token: str
    data: str  # the event as JSON, encoded once for every subscriber
    encoded: bytes | None = field(default=None, repr=False)  # cached by the API


@dataclass(eq=False)
class Batch:
    """What one wake-up delivered to a set of subscribers; ``encoded`` caches the
    items' SSE bytes, joined, for every subscriber that gets the same batch."""

    items: list[FeedItem]
    encoded: bytes | None = field(default=None, repr=False)


class FellBehind(Exception):
    """The subscriber's queue overflowed; it should reconnect from its last token."""


class Target(Protocol):
    """Where a subscription's batches go: a queue read by an async iterator, or a
    sink that writes them to a client itself (``api/sse.py``)."""

    def send(self, batch: Batch) -> bool:
        """Take the batch; False when the subscription should end (fell behind)."""
        ...

    def keepalive(self) -> None: ...

    def end(self) -> None:
        """The feed dropped the subscription (it fell behind)."""
        ...


class _Queue:
    """The target of a subscription read as an async iterator."""

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self._batches: deque[list[FeedItem]] = deque()
        self._count = 0
        self._waiter: asyncio.Future[None] | None = None
        self.fell_behind = False

    def send(self, batch: Batch) -> bool:
        if self._count + len(batch.items) > self.max_items:
            self.end()
            return False
        self._batches.append(batch.items)
        self._count += len(batch.items)
        self._wake()
        return True

    def keepalive(self) -> None:
        pass

    def end(self) -> None:
        self.fell_behind = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    @property
    def pending(self) -> bool:
        return bool(self._batches)

    def drain(self) -> list[list[FeedItem]]:
        out = list(self._batches)
        self._batches.clear()
        self._count = 0
        return out

    async def next(self) -> list[FeedItem]:
        """Everything queued (waiting for something); FellBehind once it is drained
        after an overflow."""
        while not self._batches:
            if self.fell_behind:
                raise FellBehind
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if len(self._batches) == 1:
            items = self._batches.popleft()
        else:
            items = [i for b in self._batches for i in b]
            self._batches.clear()
        self._count = 0
        return items


class Subscription(AsyncIterator[list[FeedItem]]):
    """A place in the feed, taken when it was made. Read it as an async iterator of
    batches (what arrived together), or hand it a sink with :meth:`attach`."""

    def __init__(
        self,
        feed: EventFeed,
        resume: Cursor | None,
        job_id: str | None,
        queue_max: int,
        finished: bool = False,
    ) -> None:
        self.feed = feed
        self.job_id = job_id
        # a job's stream: the job had finished when it was made (the catch-up is all)
        self.finished = finished
        self.resume = resume
        self.queue = _Queue(queue_max)
        self.target: Target = self.queue
        self.queue_max = queue_max
        # while catching up: what the reader delivered meanwhile (None: live)
        self.held: list[Batch] | None = [] if resume is not None else None
        self.held_count = 0
        self.caught_up = resume is None
        self.seen: set[int] = set()  # ids the catch-up gave (the reader may bring them too)
        self.seen_max = 0
        self.closed = False

    # --- as the reader sees it ------------------------------------------------------
    def offer(self, batch: Batch) -> bool:
        """False when the subscription fell behind (the feed then forgets it)."""
        if self.held is not None:
            self.held.append(batch)
            self.held_count += len(batch.items)
            if self.held_count > self.queue_max:
                self.target.end()
                return False
            return True
        if self.seen_max and batch.items[0].event.id <= self.seen_max:
            items = [i for i in batch.items if i.event.id not in self.seen]
            if not items:
                return True
            if len(items) < len(batch.items):
                batch = Batch(items)
        return self.target.send(batch)

    # --- as its reader sees it --------------------------------------------------------
    async def catch_up(self) -> None:
        """Send what came after the resume token to the target, then go live."""
        while not self.caught_up:
            items = await self._page()
            if items and not self.target.send(Batch(items)):
                self.close()
                return

    async def _page(self) -> list[FeedItem]:
        """The next page of the catch-up (read when the reader of the subscription
        asks for it: a long history never piles up in memory); after the last one,
        live."""
        cursor = self.resume
        assert cursor is not None
        try:
            rows = await self.feed.log.after(
                cursor.high, cursor.open_gaps(), job_id=self.job_id, limit=BATCH
            )
        except BaseException:
            self.close()
            raise
        now = time.monotonic()
        items = []
        for ev in rows:
            if cursor.accept(ev.id, now):
                if self.feed.cursor is not None:
                    # ids the reader has seen are no gaps of this stream: an event of
                    # its committed before the query above is in its rows, one
                    # committed since reaches it live
                    cursor.drop_seen_by(self.feed.cursor)
                items.append(_item(ev, cursor))
        if self.feed.cursor is not None:
            cursor.drop_seen_by(self.feed.cursor)
        if items:
            self.seen.update(i.event.id for i in items)
            self.seen_max = max(self.seen_max, items[-1].event.id)
        if len(rows) < BATCH:
            self._go_live()
        return items

    def _go_live(self) -> None:
        self.caught_up = True
        held, self.held = self.held or [], None
        for batch in held:
            if not self.offer(batch):
                self.close()
                return

    def attach(self, target: Target) -> None:
        """Deliver to ``target`` from now on (what is queued first)."""
        for items in self.queue.drain():
            target.send(Batch(items))
        if self.queue.fell_behind:
            target.end()
        self.target = target

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.feed._leave(self)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> list[FeedItem]:
        try:
            while not self.caught_up:
                items = await self._page()
                if items:
                    return items
            return await self.queue.next()
        except BaseException:
            self.close()
            raise

    async def aclose(self) -> None:
        self.close()


class EventFeed:
    def __init__(
        self,
        log: EventLog,
        hub: Hub,
        *,
        poll_s: float = POLL_S,
        grace_s: float = GAP_GRACE_S,
        queue_max: int = QUEUE_MAX,
        keepalive_s: float = KEEPALIVE_S,
        start_window: int = START_WINDOW,
    ) -> None:
        self.log = log
        self.hub = hub
        self.poll_s = poll_s
        self.grace_s = grace_s
        self.queue_max = queue_max
        self.keepalive_s = keepalive_s
        self.start_window = start_window
        self.cursor: Cursor | None = None
        self._all: set[Subscription] = set()
        self._by_job: dict[str, set[Subscription]] = {}
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        # set by a job change in this process, also one that happens while the reader
        # is querying (a waiter registered only between queries would miss it, and
        # the event would wait for the next poll)
        self._wake = asyncio.Event()
        self._starting = asyncio.Lock()
        self.reads = 0  # queries run: one per wake-up, whatever the subscriber count
        # PostgreSQL: this process's job changes wake the readers of the others
        # (NOTIFY, sent after the hub's signal, so after the commit), and theirs wake
        # this one (LISTEN, while it has a reader)
        self.pg = log.wake
        self._changed = asyncio.Event()  # a job changed here since the last NOTIFY
        self._notifier: asyncio.Task[None] | None = None
        self._listening: asyncio.Task[None] | None = None
        if self.pg is not None:
            with contextlib.suppress(RuntimeError):  # no running loop: at the first reader
                asyncio.get_running_loop()
                self._start_listening_to_hub()

    @property
    def subscribers(self) -> int:
        return len(self._all) + sum(len(s) for s in self._by_job.values())

    async def subscribe(
        self, resume: str | None = None, *, job_id: str | None = None, finished: bool = False
    ) -> Subscription:
        """Subscribe now (events committed from here on are not missed, even before the
        caller starts reading) and return the stream: every job's events from
        ``resume`` (a token; None: from now on), or those of ``job_id`` from ``resume``
        (None: from its first; ``finished``: the job had finished, so the catch-up is
        all), live, in batches of what arrived together (a burst costs a subscriber
        one write, not one per event). The stream raises :class:`FellBehind` when it
        fell behind."""
        await self._ensure_running()
        start = Cursor.parse(resume, time.monotonic()) if resume else None
        if job_id is not None and start is None:
            start = Cursor()  # a job's stream starts from its first event
        sub = Subscription(self, start, job_id, self.queue_max, finished)
        if job_id is None:
            self._all.add(sub)
        else:
            self._by_job.setdefault(job_id, set()).add(sub)
        return sub

    async def follow(self, resume: str | None = None) -> AsyncIterator[list[FeedItem]]:
        async for items in await self.subscribe(resume):
            yield items

    async def follow_job(
        self, job_id: str, resume: str | None, *, finished: bool
    ) -> AsyncIterator[FeedItem]:
        """A job's events from ``resume`` (None: from its first), live, until one
        finishes it; ``finished``: the job was finished before this was called, so
        the catch-up is all there is."""
        token = resume
        while True:
            sub = await self.subscribe(token, job_id=job_id)
            try:
                while True:
                    if sub.caught_up and finished and not sub.queue.pending:
                        return
                    for item in await anext(sub):
                        token = item.token
                        yield item
                        if item.event.status is not None and item.event.status.terminal:
                            async for late in self.tail(job_id, item.token):
                                yield late
                            return
            except FellBehind:
                # A follower in this process that could not keep up: it reads on from
                # where it is (the API's clients reconnect by themselves).
                continue
            finally:
                sub.close()

    async def tail(self, job_id: str, token: str) -> AsyncIterator[FeedItem]:
        """After a job's last transition, the events of its past whose transactions
        were still open (ids the reader had not seen below it): one query, only when
        there are such ids."""
        cursor = Cursor.parse(token, time.monotonic())
        if cursor is None or not cursor.gaps:
            return
        gaps = cursor.open_gaps()
        rows = await self.log.after(cursor.high, gaps, job_id=job_id)
        now = time.monotonic()
        for ev in rows:
            if ev.id in cursor.gaps and cursor.accept(ev.id, now):
                yield _item(ev, cursor)

    def _leave(self, sub: Subscription) -> None:
        if sub.job_id is None:
            self._all.discard(sub)
            return
        subs = self._by_job.get(sub.job_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._by_job[sub.job_id]

    async def _ensure_running(self) -> None:
        if self._task is not None:
            return
        async with self._starting:  # one reader, however many subscribe at once
            if self._task is None:
                newest, unseen = await self.log.start(self.start_window)
                now = time.monotonic()
                self.cursor = Cursor(high=newest, gaps=dict.fromkeys(unseen, now))
                self._start_listening_to_hub()
                self._listen_to_others()
                self._task = asyncio.create_task(self._run(), name="event-feed")

    def _start_listening_to_hub(self) -> None:
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="event-feed-hub")
        if self.pg is not None and self._notifier is None:
            self._notifier = asyncio.create_task(self._notify(), name="event-feed-notify")

    async def _listen(self) -> None:
        """Turn the hub's job changes into the reader's wake-ups: always listening
        (nothing runs between one wait and the next)."""
        while True:
            await self.hub.wait_any_job(3600.0)
            self._wake.set()
            self._changed.set()

    async def _notify(self) -> None:
        """One NOTIFY per burst of this process's job changes (what changes while one
        is sent goes in the next), at most one per ``NOTIFY_GAP_S``."""
        assert self.pg is not None
        while True:
            await self._changed.wait()
            self._changed.clear()
            try:
                await self.pg.notify()
            except Exception as exc:
                log.debug("event feed: NOTIFY failed; readers poll", error=str(exc))
                await asyncio.sleep(PG_RETRY_S)
            await asyncio.sleep(NOTIFY_GAP_S)

    def _listen_to_others(self) -> None:
        if self.pg is not None and (self._listening is None or self._listening.done()):
            self._listening = asyncio.create_task(self._listen_pg(), name="event-feed-listen")

    async def _listen_pg(self) -> None:
        assert self.pg is not None
        try:
            await self.pg.listen(self._wake.set)
        except Exception as exc:
            log.debug("event feed: LISTEN failed; polling", error=str(exc))
            await asyncio.sleep(PG_RETRY_S)  # _run tries again after this

    async def _run(self) -> None:
        assert self.cursor is not None
        cursor = self.cursor
        pinged = time.monotonic()
        while True:
            self._wake.clear()  # what changes from here on wakes the next read
            try:
                rows = await self.log.after(cursor.high, cursor.open_gaps(), limit=BATCH)
                self.reads += 1
            except Exception:
                log.warning("event feed: could not read events; retrying", exc_info=True)
                await asyncio.sleep(self.poll_s)
                continue
            now = time.monotonic()
            items = [_item(ev, cursor) for ev in rows if cursor.accept(ev.id, now)]
            cursor.expire(now, self.grace_s)
            if items:
                await self._dispatch(items)
            if now - pinged >= self.keepalive_s:
                pinged = now
                for sub in [*self._all, *(s for subs in self._by_job.values() for s in subs)]:
                    if sub.held is None:
                        sub.target.keepalive()
            if self.pg is not None and not self.pg.listening:
                self._listen_to_others()  # a lost connection: listen again
            if len(rows) == BATCH:
                continue
            try:
                async with asyncio.timeout(self.poll_s):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _dispatch(self, items: list[FeedItem]) -> None:
        if self._all:
            await self._offer(self._all, Batch(items))
        if self._by_job:
            groups: dict[str, list[FeedItem]] = {}
            for item in items:
                if item.event.job_id in self._by_job:
                    groups.setdefault(item.event.job_id, []).append(item)
            for job_id, of_job in groups.items():
                await self._offer(self._by_job.get(job_id, set()), Batch(of_job))

    async def _offer(self, subs: set[Subscription], batch: Batch) -> None:
        for n, sub in enumerate(list(subs), 1):
            if n % YIELD_EVERY == 0:
                # a turn for the rest of the process (API requests, the worker) now
                # and then: a fan-out to a thousand clients takes tens of milliseconds
                await asyncio.sleep(0)
                if sub.closed:
                    continue
            try:
                kept = sub.offer(batch)
            except Exception:
                log.exception("event feed: a subscriber failed; it is dropped")
                kept = False
                sub.target.end()
            if not kept:
                sub.close()

    async def stop(self) -> None:
        for task in (self._task, self._listener, self._notifier, self._listening):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._task = self._listener = self._notifier = self._listening = None
        if self.pg is not None:
            await self.pg.close()


def _item(ev: JobEvent, cursor: Cursor) -> FeedItem:
    return FeedItem(ev, cursor.token(), ev.model_dump_json())
