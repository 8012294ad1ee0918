"""The event streams under out-of-order commits and many subscribers (issue 12).

On PostgreSQL, event ids come from a sequence at insert time: an event inserted by a
transaction that commits late has a smaller id than one already visible. A stream
that resumed from "the last id sent" skipped it for good (202 of 2,321 events never
reached 50 subscribers). And every subscriber ran its own query on every wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from orchestrator.config import Settings
from orchestrator.db.schema import job_events
from orchestrator.domain.jobs import JobEvent
from orchestrator.domain.params import FluxDevParams, FluxRequest
from orchestrator.engine.events import FeedItem
from orchestrator.runtime import Runtime, open_runtime
from orchestrator.services import Service

SUBSCRIBERS = 50


@contextlib.asynccontextmanager
async def no_worker(settings: Settings) -> AsyncIterator[Runtime]:
    async with open_runtime(settings, run_worker=False) as rt:
        rt.service.feed.poll_s = 0.05
        yield rt


async def _job(service: Service) -> str:
    job, _ = await service.submit(
        FluxRequest(params=FluxDevParams(prompt="events", width=256, height=256))
    )
    return job.id


async def _insert(service: Service, job_id: str, message: str) -> None:
    await service.repo.add_event(job_id, "info", message)


@contextlib.asynccontextmanager
async def late_commit(service: Service, job_id: str, message: str) -> AsyncIterator[None]:
    """An event inserted now (its id taken) whose transaction commits when the block
    ends. On SQLite the write lock serialises writers, so commits cannot overtake: the
    block's writes wait, and the order is the natural one."""
    if service.db.is_sqlite:
        yield
        await _insert(service, job_id, message)
        return
    release = asyncio.Event()
    inserted = asyncio.Event()

    async def hold() -> None:
        async with service.db.write() as conn:
            await conn.execute(
                job_events.insert().values(
                    job_id=job_id,
                    at=sa.func.now(),
                    kind="info",
                    message=message,
                )
            )
            inserted.set()
            await release.wait()

    task = asyncio.create_task(hold())
    await inserted.wait()
    try:
        yield
    finally:
        release.set()
        await task


async def _flat(stream: AsyncIterator[list[FeedItem]]) -> AsyncIterator[FeedItem]:
    """The server-wide stream comes in batches (what arrived together)."""
    async for items in stream:
        for item in items:
            yield item


async def _collect(stream: AsyncIterator[FeedItem], into: list[FeedItem], until: str) -> None:
    async for item in stream:
        into.append(item)
        if item.event.message == until:
            return


async def _until(pred: Callable[[], bool]) -> None:
    for _ in range(500):
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in 10 s")


def _messages(items: list[FeedItem]) -> list[str | None]:
    return [i.event.message for i in items]


async def test_a_late_commit_reaches_every_subscriber(
    make_settings: Callable[..., Settings], db_url: str
) -> None:
    async with no_worker(make_settings(database_url=db_url, demo_mode="on")) as rt:
        svc = rt.service
        job_id = await _job(svc)
        got: list[list[FeedItem]] = [[] for _ in range(SUBSCRIBERS)]
        readers = [
            asyncio.create_task(_collect(_flat(svc.follow_all_events()), got[i], "last"))
            for i in range(SUBSCRIBERS)
        ]
        await asyncio.sleep(0.2)  # all subscribed
        async with late_commit(svc, job_id, "late"):
            await _insert(svc, job_id, "early")  # a larger id, committed first
            if not svc.db.is_sqlite:
                await _until(lambda: all("early" in _messages(g) for g in got))
        await _insert(svc, job_id, "last")
        async with asyncio.timeout(10):
            await asyncio.gather(*readers)
    for items in got:
        assert sorted(m for m in _messages(items) if m) == ["early", "last", "late"]
        ids = [i.event.id for i in items]
        assert len(ids) == len(set(ids))


async def test_resuming_across_a_late_commit_skips_nothing(
    make_settings: Callable[..., Settings], db_url: str
) -> None:
    """A client that got "early" (a larger id) while "late" was still uncommitted, then
    reconnected with its Last-Event-ID, still gets "late" — once — and what follows."""
    async with no_worker(make_settings(database_url=db_url, demo_mode="on")) as rt:
        svc = rt.service
        job_id = await _job(svc)
        first: list[FeedItem] = []
        reader = asyncio.create_task(_collect(_flat(svc.follow_all_events()), first, "early"))
        await asyncio.sleep(0.2)
        async with late_commit(svc, job_id, "late"):
            await _insert(svc, job_id, "early")
            async with asyncio.timeout(10):
                await reader  # disconnected after "early"
        token = first[-1].token
        await _insert(svc, job_id, "last")
        again: list[FeedItem] = []
        async with asyncio.timeout(10):
            await _collect(_flat(svc.follow_all_events(token)), again, "last")
        seen = _messages(first) + _messages(again)
        assert sorted(m for m in seen if m) == ["early", "last", "late"]
        # the same through the per-job stream, resumed from the same kind of token
        per_job: list[JobEvent] = []
        job_first = [i async for i in _first_until(svc, job_id, "early")]
        async for item in svc.follow_job(job_id, job_first[-1].token):
            per_job.append(item.event)
            if item.event.message == "last":
                break
        both = [i.event.message for i in job_first] + [e.message for e in per_job]
        assert both.count("late") == 1 and both.count("last") == 1


async def _first_until(svc: Service, job_id: str, message: str) -> AsyncIterator[FeedItem]:
    async for item in svc.follow_job(job_id):
        yield item
        if item.event.message == message:
            return


@pytest.mark.postgres
async def test_a_late_commit_reaches_the_job_stream(
    make_settings: Callable[..., Settings], db_url: str
) -> None:
    async with no_worker(make_settings(database_url=db_url, demo_mode="on")) as rt:
        svc = rt.service
        job_id = await _job(svc)
        got: list[FeedItem] = []
        reader = asyncio.create_task(_collect(svc.follow_job(job_id), got, "last"))
        await asyncio.sleep(0.2)
        async with late_commit(svc, job_id, "late"):
            await _insert(svc, job_id, "early")
            await _until(lambda: "early" in _messages(got))
        await _insert(svc, job_id, "last")
        async with asyncio.timeout(10):
            await reader
    assert sorted(m for m in _messages(got) if m in ("early", "late", "last")) == [
        "early",
        "last",
        "late",
    ]


async def test_one_query_per_wake_up_whatever_the_subscribers(
    make_settings: Callable[..., Settings],
) -> None:
    """200 subscribers, 20 events: the reader's queries do not grow with subscribers."""
    async with no_worker(make_settings(demo_mode="on")) as rt:
        svc = rt.service
        job_id = await _job(svc)
        statements: list[str] = []

        def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
            if "FROM job_events" in statement:
                statements.append(statement)

        got: list[list[FeedItem]] = [[] for _ in range(200)]
        readers = [
            asyncio.create_task(_collect(_flat(svc.follow_all_events()), got[i], "event 19"))
            for i in range(200)
        ]
        await asyncio.sleep(0.2)
        sa.event.listen(svc.db.engine.sync_engine, "before_cursor_execute", count)
        reads_before = svc.feed.reads
        try:
            for i in range(20):
                await _insert(svc, job_id, f"event {i}")
            async with asyncio.timeout(10):
                await asyncio.gather(*readers)
        finally:
            sa.event.remove(svc.db.engine.sync_engine, "before_cursor_execute", count)
        reads = svc.feed.reads - reads_before
    assert all(len([m for m in _messages(g) if m and m.startswith("event")]) == 20 for g in got)
    # one reader: at most a query per event written plus idle polls, never per subscriber
    assert len(statements) <= 40, len(statements)
    assert reads <= 40


# --- a reader that starts while events are still uncommitted (issue 13) -----------------


async def test_an_event_open_when_the_reader_starts_is_not_lost(
    make_settings: Callable[..., Settings], db_url: str
) -> None:
    """Another process inserted "late" (its id taken) and has not committed when this
    process's reader starts; "early" (a larger id) is already visible. A reader that
    starts at "the newest id" never looks below it again: "late" was lost, to the
    server-wide stream and to a job's stream alike (50 of 1,800 with several writer
    processes)."""
    settings = make_settings(database_url=db_url, demo_mode="on")
    async with no_worker(settings) as writer:
        job_id = await _job(writer.service)
        async with no_worker(settings) as reader:  # another process: its own reader
            everything: list[FeedItem] = []
            of_job: list[FeedItem] = []
            async with late_commit(writer.service, job_id, "late"):
                await _insert(writer.service, job_id, "early")
                # both subscribed (the reader started) while "late" is uncommitted
                all_stream = await reader.service.subscribe_all_events()
                job_stream = reader.service.follow_job(job_id)
                first = await anext(job_stream)  # the job's stream has subscribed
                of_job.append(first)
            await _insert(writer.service, job_id, "last")
            async with asyncio.timeout(10):
                await asyncio.gather(
                    _collect(_flat(all_stream), everything, "last"),
                    _collect(job_stream, of_job, "last"),
                )
    assert "late" in _messages(everything), _messages(everything)
    assert _messages(of_job).count("late") == 1, _messages(of_job)


async def test_writers_with_open_transactions_lose_nothing_to_starting_readers(
    make_settings: Callable[..., Settings], db_url: str
) -> None:
    """Four writers keep transactions open for a while (ids taken, commits late and out
    of order) while readers start one after another, each in its own runtime (as
    another process would). Every event whose commit began after a subscriber
    subscribed reaches it."""
    import random

    settings = make_settings(database_url=db_url, demo_mode="on")
    rng = random.Random(13)
    clock = iter(range(1, 10**9))  # one event loop: a counter orders everything exactly
    commit_started: dict[str, int] = {}
    async with no_worker(settings) as writer:
        svc = writer.service
        job_id = await _job(svc)
        stop = asyncio.Event()

        async def write(k: int) -> None:
            i = 0
            while not stop.is_set():
                message = f"w{k}-{i}"
                i += 1
                async with svc.db.write() as conn:
                    await conn.execute(
                        job_events.insert().values(
                            job_id=job_id, at=sa.func.now(), kind="info", message=message
                        )
                    )
                    await asyncio.sleep(rng.uniform(0, 0.03))
                    commit_started[message] = next(clock)

        writers = [asyncio.create_task(write(k)) for k in range(4)]
        readers: list[tuple[int, list[FeedItem], asyncio.Task[None]]] = []
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(4):
                await asyncio.sleep(0.15)
                rt = await stack.enter_async_context(no_worker(settings))
                stream = await rt.service.subscribe_all_events()
                got: list[FeedItem] = []
                subscribed = next(clock)
                readers.append(
                    (subscribed, got, asyncio.create_task(_collect(_flat(stream), got, "stop")))
                )
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*writers)
            await _insert(svc, job_id, "stop")
            async with asyncio.timeout(20):
                await asyncio.gather(*(task for _, _, task in readers))
    assert len(commit_started) > 40
    for subscribed, got, _ in readers:
        due = {m for m, at in commit_started.items() if at > subscribed}
        missing = due - set(_messages(got))
        assert not missing, f"{len(missing)} of {len(due)} events never arrived: {missing}"


# --- per-job streams from the same reader (issue 13) ------------------------------------


async def test_job_streams_share_the_one_reader(make_settings: Callable[..., Settings]) -> None:
    """100 followers of 10 jobs (the CLI's, MCP's and /api/jobs/{id}/events' way), 30
    events: once they have caught up, the events reach them through the process's one
    reader (a query per wake-up), not a query per follower per wake-up as before; idle
    followers run no query at all; a job's last transition ends its followers."""
    async with no_worker(make_settings(demo_mode="on")) as rt:
        svc = rt.service
        jobs = [await _job(svc) for _ in range(10)]
        statements: list[str] = []

        def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
            if "FROM job_events" in statement:
                statements.append(statement)

        everything = await svc.subscribe_all_events()  # the reader runs, whatever serves them
        got: dict[int, list[FeedItem]] = {i: [] for i in range(100)}
        streams = [svc.follow_job(jobs[i % 10]) for i in range(100)]
        for i, stream in enumerate(streams):  # each has caught up (its "created")
            got[i].append(await anext(stream))
        engines = _engines(svc)
        for engine in engines:
            sa.event.listen(engine, "before_cursor_execute", count)
        reads_before = svc.feed.reads
        readers = [
            asyncio.create_task(_collect(stream, got[i], f"{jobs[i % 10]} 2"))
            for i, stream in enumerate(streams)
        ]
        try:
            for n in range(3):
                for job_id in jobs:
                    await _insert(svc, job_id, f"{job_id} {n}")
            async with asyncio.timeout(10):
                await asyncio.gather(*readers)
            # idle: the reader polls (for other processes' events); the followers do not
            idle_before = len(statements), svc.feed.reads
            await _until(lambda: svc.feed.reads >= idle_before[1] + 5)
            idle_statements = len(statements) - idle_before[0]
            idle_reads = svc.feed.reads - idle_before[1]
            # the jobs end: every follower sees the last transition, and stops
            ending = [asyncio.create_task(_drain(svc.follow_job(j))) for j in jobs[:2]]
            await asyncio.sleep(0.1)
            for job_id in jobs[:2]:
                await svc.cancel_job(job_id)
            async with asyncio.timeout(10):
                ends = await asyncio.gather(*ending)
        finally:
            for engine in engines:
                sa.event.remove(engine, "before_cursor_execute", count)
            await everything.aclose()
        reads = svc.feed.reads - reads_before
    for i, items in got.items():
        mine = [m for m in _messages(items) if m and m.startswith(jobs[i % 10])]
        assert mine == [f"{jobs[i % 10]} {n}" for n in range(3)], (i, _messages(items))
    assert idle_statements <= idle_reads + 1, (idle_statements, idle_reads)
    # 30 events; one reader: a query per wake-up (at most one per event written, plus
    # idle polls and the 2 last followers' catch-up), never one per follower
    assert len(statements) <= reads + 10, (len(statements), reads)
    assert reads < 100, reads
    for items in ends:
        assert items[-1].event.status is not None and items[-1].event.status.terminal


def _engines(svc: Service) -> list[sa.Engine]:
    """Every engine statements may run on (the async one's, and SQLite's synchronous
    one for units of work where there is one)."""
    out = [svc.db.engine.sync_engine]
    sync = getattr(svc.db, "_sync", None)
    if isinstance(sync, sa.Engine):
        out.append(sync)
    return out


async def _drain(stream: AsyncIterator[FeedItem]) -> list[FeedItem]:
    return [item async for item in stream]


# --- PostgreSQL: processes wake each other's readers (LISTEN/NOTIFY) -------------------


@pytest.mark.postgres
async def test_another_process_wakes_the_reader_with_notify(
    make_settings: Callable[..., Settings], pg_database: str
) -> None:
    """A job change in one process reaches a stream of another at once: the writer's
    hub signal sends one NOTIFY (after the commit), the other's reader LISTENs. Here
    the reader would otherwise not look again for an hour."""
    settings = make_settings(database_url=pg_database, demo_mode="on")
    async with no_worker(settings) as writer, no_worker(settings) as reader:
        job_id = await _job(writer.service)
        stream = await reader.service.subscribe_all_events()
        feed = reader.service.feed
        assert feed.pg is not None and writer.service.feed.pg is not None
        await _until(lambda: feed.pg is not None and feed.pg.listening)
        got: list[FeedItem] = []
        collect = asyncio.create_task(_collect(_flat(stream), got, "wake up"))
        await asyncio.sleep(0.1)  # the reader is waiting (a poll after the change)
        feed.poll_s = 3600.0
        await asyncio.sleep(0.1)
        reads = feed.reads
        await _insert(writer.service, job_id, "wake up")
        writer.service.hub.job_changed(job_id)  # as the worker does after its commit
        async with asyncio.timeout(10):
            await collect
        assert feed.reads == reads + 1
        assert writer.service.feed.pg.sent >= 1 and feed.pg.heard >= 1


async def test_a_job_with_a_long_history_is_followed_from_its_first_event(
    make_settings: Callable[..., Settings],
) -> None:
    """5,000 events, more than a follower's queue holds: the catch-up is read page by
    page as the follower reads it (it used to be queued whole, and overflowed)."""
    async with no_worker(make_settings(demo_mode="on")) as rt:
        svc = rt.service
        job_id = await _job(svc)
        async with svc.db.write() as conn:
            await conn.execute(
                job_events.insert(),
                [
                    {"job_id": job_id, "at": datetime.now(UTC), "kind": "info", "message": f"{i}"}
                    for i in range(5000)
                ],
            )
        await svc.cancel_job(job_id)
        async with asyncio.timeout(30):
            got = [item async for item in svc.follow_job(job_id)]
    messages = _messages(got)
    assert messages[1:5001] == [str(i) for i in range(5000)]
    assert got[0].event.kind == "created" and got[-1].event.status is not None
    assert got[-1].event.status.terminal and len(got) == 5002
