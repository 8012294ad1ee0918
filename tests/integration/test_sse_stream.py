"""``GET /api/events`` on a real server (uvicorn, raw sockets): the process's one event
reader writes each batch to every client itself (``api/sse.py``). A client that goes
away is forgotten (seen once, by the server's ``http.disconnect``); one that stops
reading is dropped once it is too far behind, while the others get everything; keep-alive
comments come from the reader's one timer (issue 13)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

import httpx2
import pytest
from fastapi import FastAPI, Header

from orchestrator.api import sse
from orchestrator.api.app import create_app
from orchestrator.api.deps import ServiceDep
from orchestrator.api.sse import EventStreamResponse
from orchestrator.config import Settings
from orchestrator.db.schema import job_events
from orchestrator.domain.params import FluxDevParams, FluxRequest
from orchestrator.runtime import open_runtime
from orchestrator.services import Service
from orchestrator.testing.serve import ServedApp, serve_in_thread


@dataclass
class Server:
    served: ServedApp
    app: FastAPI
    settings: Settings

    @property
    def service(self) -> Service:
        service: Service = self.app.state.runtime.service
        return service


@pytest.fixture
def server(make_settings: Callable[..., Settings]) -> Iterator[Server]:
    settings = make_settings(demo_mode="on", auth_disabled=True)
    app = create_app(settings)
    with serve_in_thread(app, lifespan="on") as served:
        yield Server(served, app, settings)


def _until(pred: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.02)


def _connect(served: ServedApp, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((served.host, served.port))
    sock.sendall(
        b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
    )
    return sock


class Reader(threading.Thread):
    """Reads a stream to its end (or until stopped), counting the events."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.data = bytearray()
        self.ended = threading.Event()

    def run(self) -> None:
        with contextlib.suppress(OSError):
            while chunk := self.sock.recv(1 << 16):
                self.data += chunk
                if self.data.endswith(b"\r\n0\r\n\r\n"):  # the last chunk: the stream ended
                    break
        self.ended.set()

    def count(self, needle: bytes) -> int:
        return bytes(self.data).count(needle)


async def _write_events(settings: Settings, n: int, size: int) -> None:
    """Events written by another process (its own runtime on the same database), a
    hundred per transaction."""
    async with open_runtime(settings, run_worker=False) as rt:
        job, _ = await rt.service.submit(
            FluxRequest(params=FluxDevParams(prompt="fan-out", width=256, height=256))
        )
        for start in range(0, n, 100):
            rows = [
                {
                    "job_id": job.id,
                    "at": datetime.now(UTC),
                    "kind": "info",
                    "message": f"{i:05d} " + "x" * size,
                }
                for i in range(start, min(n, start + 100))
            ]
            async with rt.service.db.write() as conn:
                await conn.execute(job_events.insert(), rows)


@contextlib.contextmanager
def _closing(socks: list[socket.socket]) -> Iterator[list[socket.socket]]:
    try:
        yield socks
    finally:
        for s in socks:
            s.close()


def test_a_client_that_goes_away_is_forgotten(server: Server) -> None:
    feed = server.service.feed
    with _closing([_connect(server.served) for _ in range(5)]) as socks:
        readers = [Reader(s) for s in socks]
        for r in readers:
            r.start()
        _until(lambda: feed.subscribers == 5, "5 subscribers")
        for s in socks[:2]:
            s.shutdown(socket.SHUT_RDWR)
        _until(lambda: feed.subscribers == 3, "the 2 closed streams forgotten")
        asyncio.run(_write_events(server.settings, 3, 10))
        for r in readers[2:]:
            _until(lambda r=r: r.count(b"event: info") == 3, "3 events on each open stream")
        for s in socks[2:]:
            s.shutdown(socket.SHUT_RDWR)
        _until(lambda: feed.subscribers == 0, "every stream forgotten")


def test_a_client_that_stops_reading_is_dropped_and_the_others_get_everything(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sse, "MAX_PENDING", 64 * 1024)
    feed = server.service.feed
    n = 5000  # ~10 MB per client (as 5 reads): more than the kernel's buffers hold (4 MB)
    stuck = _connect(server.served, rcvbuf=4096)  # connected, never read (for now)
    with _closing([stuck, _connect(server.served)]) as (_, other):
        reading = Reader(other)
        reading.start()
        _until(lambda: feed.subscribers == 2, "2 subscribers")
        asyncio.run(_write_events(server.settings, n, 2000))
        _until(lambda: reading.count(b"event: info") == n, "every event on the reading client")
        _until(lambda: feed.subscribers == 1, "the stuck client dropped")
        late = Reader(stuck)  # it reads at last: what was sent, then the end of the stream
        late.start()
        assert late.ended.wait(20), "the dropped stream never ended"
        assert 0 < late.count(b"event: info") < n
        assert reading.is_alive() and not reading.ended.is_set()


def test_keep_alives_come_from_the_one_reader(server: Server) -> None:
    feed = server.service.feed
    with _closing([_connect(server.served) for _ in range(3)]) as socks:
        readers = [Reader(s) for s in socks]
        for r in readers:
            r.start()
        _until(lambda: feed.subscribers == 3, "3 subscribers")
        feed.keepalive_s = 0.2
        feed.poll_s = 0.05
        for r in readers:
            _until(lambda r=r: r.count(b": ping") >= 2, "keep-alive comments")


@pytest.fixture
def job_server(make_settings: Callable[..., Settings]) -> Iterator[Server]:
    """The app with a job's stream served the lean way (``Service.subscribe_job`` and
    ``EventStreamResponse``), as ``/api/jobs/{id}/events`` can be."""
    settings = make_settings(demo_mode="on", auth_disabled=True)
    app = create_app(settings)

    @app.get("/test/jobs/{job_id}/events", response_class=EventStreamResponse)
    async def job_events(
        job_id: str,
        service: ServiceDep,
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    ) -> EventStreamResponse:
        return EventStreamResponse(await service.subscribe_job(job_id, last_event_id))

    with serve_in_thread(app, lifespan="on") as served:
        yield Server(served, app, settings)


def _job_stream(served: ServedApp, job_id: str, last_event_id: str | None = None) -> Reader:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.connect((served.host, served.port))
    resume = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id else ""
    sock.sendall(
        f"GET /test/jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n{resume}\r\n".encode()
    )
    reader = Reader(sock)
    reader.start()
    return reader


def _ids_and_kinds(reader: Reader) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    current: dict[str, str] = {}
    for line in bytes(reader.data).decode().split("\r\n"):
        key, sep, value = line.partition(": ")
        if sep and key in ("id", "event"):
            current[key] = value
            if key == "event":
                out.append((current["id"], value))
    return out


def test_a_job_stream_from_the_one_reader_ends_with_the_job(job_server: Server) -> None:
    with httpx2.Client(base_url=job_server.served.base_url, timeout=30) as client:
        body = {"backend": "flux", "params": {"model": "flux-dev", "prompt": "lean"}}
        job_id = client.post("/api/generate", json=body).json()["id"]
        live = [_job_stream(job_server.served, job_id) for _ in range(3)]
        for reader in live:
            assert reader.ended.wait(30), "a job's stream did not end with the job"
        seen = [_ids_and_kinds(r) for r in live]
        assert seen[0] == seen[1] == seen[2]
        kinds = [k for _, k in seen[0]]
        assert kinds[0] == "created" and kinds[-1] == "transition"
        assert b'"status":"succeeded"' in bytes(live[0].data)
        # resumed after the second event of the finished job: the rest, then the end
        again = _job_stream(job_server.served, job_id, seen[0][1][0])
        assert again.ended.wait(30)
        assert _ids_and_kinds(again) == seen[0][2:]
        # resumed after its last event: nothing, and the end
        done = _job_stream(job_server.served, job_id, seen[0][-1][0])
        assert done.ended.wait(30) and _ids_and_kinds(done) == []
    for reader in [*live, again, done]:
        reader.sock.close()
    _until(lambda: job_server.service.feed.subscribers == 0, "every job stream forgotten")
