"""Reconnecting to the app's event streams the way a browser's ``EventSource`` does
(issue 15): it remembers the last ``id:`` it saw and sends it back as the
``Last-Event-ID`` header when it reconnects. Resuming only with ``?after=`` was
tested, so a route that ignored the header went unnoticed.

The app serves two streams (``GET /api/events`` and ``GET /api/jobs/{id}/events``; the
Tilda import's progress is polled, not streamed). For each: a client reads a few
events and goes away, events happen while it is away, and it reconnects with the
last id it saw; what it got before and after must be exactly what a client that
stayed connected got: no event twice, none missing. ``?after=`` resumes the same
way, and when both are given the header wins (it is the newer of the two: an
``EventSource`` keeps its URL, ``?after=`` included, and adds the header).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx2
import pytest
from fastapi import FastAPI
from tests.conftest import TEST_KEY

from orchestrator.api.app import create_app
from orchestrator.config import Settings
from orchestrator.services import Service
from orchestrator.testing.fake_bfl import FakeBfl
from orchestrator.testing.serve import ServedApp, serve_in_thread

TERMINAL = {"succeeded", "failed", "canceled"}


@dataclass(frozen=True)
class Event:
    id: str
    kind: str
    data: str

    @property
    def doc(self) -> dict[str, object]:
        doc: dict[str, object] = json.loads(self.data)
        return doc

    def ends(self, job_id: str) -> bool:
        doc = self.doc
        return doc.get("job_id", job_id) == job_id and (
            self.kind == "transition" and doc.get("status") in TERMINAL
        )


@dataclass
class Server:
    served: ServedApp
    app: FastAPI

    @property
    def service(self) -> Service:
        service: Service = self.app.state.runtime.service
        return service

    def client(self) -> httpx2.Client:
        # a read timeout well under the test's: a stream that never resumes fails fast
        return httpx2.Client(base_url=self.served.base_url, timeout=httpx2.Timeout(10.0))

    def submit(self, prompt: str) -> str:
        with self.client() as c:
            body = {"backend": "flux", "params": {"model": "flux-dev", "prompt": prompt}}
            r = c.post("/api/generate", json=body)
            assert r.status_code == 202, r.text
            job_id: str = r.json()["id"]
            return job_id


@pytest.fixture
def server(
    make_settings: Callable[..., Settings], fake_bfl: tuple[FakeBfl, ServedApp]
) -> Iterator[Server]:
    _, bfl = fake_bfl  # a FLUX task takes 0.2 s there (a simulated one, seconds)
    settings = make_settings(bfl_api_key=TEST_KEY, flux_base_url=bfl.base_url)
    app = create_app(settings)
    with serve_in_thread(app, lifespan="on") as served:
        yield Server(served, app)


def events_of(response: httpx2.Response) -> Iterator[Event]:
    """The events of an SSE response as a browser parses them (comments skipped)."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if "data" in fields:
                yield Event(fields.get("id", ""), fields.get("event", "message"), fields["data"])
            fields = {}
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        fields[key] = value.removeprefix(" ")


@dataclass(eq=False)  # a thread: hashed by identity
class Follower(threading.Thread):
    """A client that stays connected, reading until ``job_id``'s last transition (set
    later: the job does not exist yet when it connects)."""

    server: Server
    path: str
    seen: list[Event] = field(default_factory=list)
    until: str | None = None
    connected: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def __post_init__(self) -> None:
        super().__init__(daemon=True)

    def run(self) -> None:
        try:
            with self.server.client() as c, c.stream("GET", self.path) as r:
                assert r.status_code == 200
                self.connected.set()
                for ev in events_of(r):
                    self.seen.append(ev)
                    if self.until is not None and ev.ends(self.until):
                        break
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.done.set()

    def wait_for(self, pred: Callable[[list[Event]], bool], what: str) -> None:
        deadline = time.monotonic() + 30
        while not pred(list(self.seen)):
            assert self.error is None, self.error
            assert time.monotonic() < deadline, f"not within 30 s: {what}"
            time.sleep(0.02)


def _until(pred: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not pred():
        assert time.monotonic() < deadline, f"not within 30 s: {what}"
        time.sleep(0.02)


def read_some(
    server: Server, path: str, n: int, then: Callable[[], object] | None = None
) -> list[Event]:
    """Connect, read ``n`` events, go away (as a page that is closed or loses its
    network does). ``then`` runs once the stream is open."""
    got: list[Event] = []
    with server.client() as c, c.stream("GET", path) as r:
        assert r.status_code == 200
        if then is not None:
            then()
        for ev in events_of(r):
            got.append(ev)
            if len(got) == n:
                break
    return got


def read_until_end(
    server: Server,
    path: str,
    job_id: str | None,
    headers: dict[str, str] | None = None,
    then: Callable[[], str] | None = None,
) -> list[Event]:
    """Connect and read until ``job_id``'s last transition, or the end of the stream.
    ``then`` runs once the stream is open and names the job to wait for."""
    got: list[Event] = []
    with server.client() as c, c.stream("GET", path, headers=headers or {}) as r:
        assert r.status_code == 200, r.status_code
        if then is not None:
            job_id = then()
        for ev in events_of(r):
            got.append(ev)
            if job_id is not None and ev.ends(job_id):
                break
    return got


def payloads(events: list[Event]) -> list[tuple[str, str]]:
    """What a client acts on: each event's kind and data (the data carries the
    event's own id, so a duplicate or a gap shows)."""
    return [(e.kind, e.data) for e in events]


# --- GET /api/events ---------------------------------------------------------------------


def test_the_server_wide_stream_resumes_from_last_event_id(server: Server) -> None:
    feed = server.service.feed
    stayed = Follower(server, "/api/events")
    stayed.start()
    assert stayed.connected.wait(30)
    _until(lambda: feed.subscribers == 1, "the follower subscribed")

    jobs: list[str] = []
    away = read_some(server, "/api/events", 2, then=lambda: jobs.append(server.submit("first")))
    first = jobs[0]
    assert [e.doc.get("job_id") for e in away] == [first, first]
    assert away[0].kind == "created"
    last_id = away[-1].id
    stayed.wait_for(lambda s: any(e.ends(first) for e in s), "the first job ended")
    second = server.submit("while away")  # every one of its events happens while away
    stayed.wait_for(lambda s: any(e.ends(second) for e in s), "the second job ended")

    marker: list[str] = []

    def third() -> str:
        job_id = server.submit("after the reconnect")
        marker.append(job_id)
        stayed.until = job_id
        return job_id

    back = read_until_end(
        server, "/api/events", None, headers={"Last-Event-ID": last_id}, then=third
    )
    assert stayed.done.wait(30) and stayed.error is None, stayed.error

    reference = payloads(stayed.seen)
    assert reference[:2] == payloads(away)
    assert payloads(back) == reference[2:], "a duplicate or a gap after Last-Event-ID"
    kinds_of_second = [e.kind for e in back if e.doc.get("job_id") == second]
    assert kinds_of_second[0] == "created" and kinds_of_second[-1] == "transition"

    # ?after= (what a client that is not a browser may send) resumes the same way ...
    assert last_id.isdigit(), last_id  # no late commit pending in this test
    after = read_until_end(server, f"/api/events?after={last_id}", marker[0])
    assert payloads(after) == payloads(back)
    # ... and the header wins over ?after= when both are given (after=0: everything)
    both = read_until_end(
        server, "/api/events?after=0", marker[0], headers={"Last-Event-ID": last_id}
    )
    assert payloads(both) == payloads(back)


# --- GET /api/jobs/{id}/events -------------------------------------------------------------


def test_a_job_stream_resumes_from_last_event_id(server: Server) -> None:
    job_id = server.submit("one job")
    path = f"/api/jobs/{job_id}/events"
    away = read_some(server, path, 2)
    assert away[0].kind == "created"
    _until(
        lambda: server.service.feed.subscribers == 0, "the first connection forgotten"
    )  # the job goes on while nobody listens
    full = read_until_end(server, path, None)  # from the job's first event to its end
    assert full[-1].ends(job_id) and len(full) > 3, [e.kind for e in full]
    assert payloads(full[:2]) == payloads(away)

    back = read_until_end(server, path, None, headers={"Last-Event-ID": away[-1].id})
    assert payloads(back) == payloads(full[2:]), "a duplicate or a gap after Last-Event-ID"
    # from the middle as well: each id resumes exactly after itself
    mid = len(full) // 2
    rest = read_until_end(server, path, None, headers={"Last-Event-ID": full[mid].id})
    assert payloads(rest) == payloads(full[mid + 1 :])
    # ?after= the same; the header wins when both are given
    assert away[-1].id.isdigit(), away[-1].id
    after = read_until_end(server, f"{path}?after={away[-1].id}", None)
    assert payloads(after) == payloads(back)
    both = read_until_end(server, f"{path}?after=0", None, headers={"Last-Event-ID": away[-1].id})
    assert payloads(both) == payloads(back)
    # after its last event: nothing, and the end
    assert read_until_end(server, path, None, headers={"Last-Event-ID": full[-1].id}) == []
