"""The real retry schedule of every retrying call (issue 15): how many requests each kind
of failure gets, that a submit that may have been sent is never repeated, how long each
wait is (``wait_max``) and what one call can spend in waits at worst.

The pure `_RetryBudget` decisions are in test_flux_decisions.py; here the calls run
through stamina with testing mode off (no real sleeps, see tests/retry_probe.py) against
a scripted transport that counts the requests.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx2
import pytest
from tests.retry_probe import Wait, real_backoff

from orchestrator import errors
from orchestrator.backends.base import Completed, RemoteFile
from orchestrator.backends.comfy import ComfyBackend, ComfyInstanceConfig, ComfyPool
from orchestrator.backends.flux import (
    MAX_CONNECT_RETRIES,
    MAX_GET_RETRIES,
    MAX_RETRY_AFTER_S,
    FluxBackend,
    FluxClient,
)
from orchestrator.domain.jobs import Job, JobStatus, UpstreamHandle
from orchestrator.storage import InputStore, OutputStore
from orchestrator.testing.images import render_image

Code = errors.ErrorCode
BASE = "http://bfl.test"
POLLING_URL = f"{BASE}/eu4/v1/get_result?id=t1"
SAMPLE = f"{BASE}/delivery/t1/sample.jpeg?se=1&scid=a&sig=x"
FRESH_SAMPLE = f"{BASE}/delivery/t1/sample.jpeg?se=2&scid=b&sig=y"
JPEG = render_image("retry schedule", 64, 64, "jpeg")
NOW = datetime(2026, 3, 7, tzinfo=UTC)
JOB = Job(
    id="j1",
    backend="flux",
    model="flux-dev",
    params={},
    status=JobStatus.RUNNING,
    priority=0,
    deadline_at=NOW,
    created_at=NOW,
    updated_at=NOW,
)


def worst_case(n: int, wait_max: float) -> list[float]:
    """stamina's backoff before retry 1..n with the jitter at its top (1 s): the
    exponential schedule (0.1 s doubling) plus jitter, capped at wait_max."""
    return [min(wait_max, 0.1 * 2 ** (k - 1) + 1.0) for k in range(1, n + 1)]


# --- a scripted upstream ---------------------------------------------------------------------

# One step: an exception type to raise (nothing answered), or (status, body, headers).
Step = type[Exception] | tuple[int, bytes | str, dict[str, str]]


def resp(status: int, body: bytes | str = b"", **headers: str) -> Step:
    return (status, body, {k.replace("_", "-"): v for k, v in headers.items()})


def ready(sample: str = SAMPLE) -> Step:
    body = {"id": "t1", "status": "Ready", "result": {"sample": sample, "prompt": "p", "seed": 1}}
    return resp(200, json.dumps(body))


SUBMITTED = resp(200, json.dumps({"id": "t1", "polling_url": POLLING_URL, "cost": 2.5}))


class Upstream:
    """Answers each kind of request from its script; the last step repeats forever."""

    def __init__(self, **scripts: list[Step]) -> None:
        self.scripts = scripts
        self.seen: Counter[str] = Counter()

    def kind(self, request: httpx2.Request) -> str:
        path = request.url.path
        if request.method == "POST":
            return "submit"
        if path.endswith("/get_result"):
            return "poll"
        return "download" if path.startswith("/delivery/") else "view"

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        kind = self.kind(request)
        script = self.scripts[kind]
        step = script[min(self.seen[kind], len(script) - 1)]
        self.seen[kind] += 1
        if isinstance(step, type):
            raise step("scripted failure", request=request)  # type: ignore[call-arg]
        status, body, headers = step
        return httpx2.Response(status, content=body, headers=headers)


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Wait]]:
    with real_backoff(monkeypatch, max_jitter=True) as recorded:
        yield recorded


@pytest.fixture
async def http_for() -> AsyncIterator[Callable[[Upstream], httpx2.AsyncClient]]:
    clients: list[httpx2.AsyncClient] = []

    def make(upstream: Upstream) -> httpx2.AsyncClient:
        clients.append(httpx2.AsyncClient(transport=httpx2.MockTransport(upstream)))
        return clients[-1]

    yield make
    for client in clients:
        await client.aclose()


def seconds(waits: list[Wait]) -> list[float]:
    return [w.seconds for w in waits]


# --- submit: wait_max 10 s; only what cannot have reached BFL is retried ----------------------

CONNECT_FAILURES = 1 + MAX_CONNECT_RETRIES
SUBMIT_TABLE: list[tuple[str, list[Step], int, Code | None, list[float]]] = [
    # (name, script, requests made, error code or None for success, waits)
    (
        "connect error forever",
        [httpx2.ConnectError],
        CONNECT_FAILURES,
        Code.UPSTREAM_UNAVAILABLE,
        worst_case(MAX_CONNECT_RETRIES, 10.0),
    ),
    (
        "connect timeout forever",
        [httpx2.ConnectTimeout],
        CONNECT_FAILURES,
        Code.UPSTREAM_UNAVAILABLE,
        worst_case(MAX_CONNECT_RETRIES, 10.0),
    ),
    (
        "connect errors, then accepted",
        [httpx2.ConnectError] * MAX_CONNECT_RETRIES + [SUBMITTED],
        CONNECT_FAILURES,
        None,
        worst_case(MAX_CONNECT_RETRIES, 10.0),
    ),
    ("read timeout: maybe sent", [httpx2.ReadTimeout], 1, Code.SUBMIT_UNCERTAIN, []),
    ("dropped: maybe sent", [httpx2.RemoteProtocolError], 1, Code.SUBMIT_UNCERTAIN, []),
    ("write error: maybe sent", [httpx2.WriteError], 1, Code.SUBMIT_UNCERTAIN, []),
    ("500", [resp(500, "boom")], 1, Code.UPSTREAM_ERROR, []),
    ("502 html", [resp(502, "<html>bad gateway</html>")], 1, Code.UPSTREAM_ERROR, []),
    ("503", [resp(503)], 1, Code.UPSTREAM_ERROR, []),
    ("200 unreadable", [resp(200, "{not json")], 1, Code.SUBMIT_UNCERTAIN, []),
    ("403", [resp(403, '{"detail":"no"}')], 1, Code.UPSTREAM_AUTH, []),
    ("402", [resp(402, '{"detail":"no"}')], 1, Code.INSUFFICIENT_CREDITS, []),
    ("422", [resp(422, '{"detail":"no"}')], 1, Code.INVALID_PARAMS, []),
    (
        # a 429 accepted nothing: no count limit (the job's deadline bounds it)
        "429 storm with Retry-After",
        [resp(429, retry_after="2")] * 20 + [SUBMITTED],
        21,
        None,
        [2.0] * 20,
    ),
    (
        "429 with an absurd Retry-After is capped",
        [resp(429, retry_after="1000"), SUBMITTED],
        2,
        None,
        [MAX_RETRY_AFTER_S],
    ),
    (
        "429 without Retry-After: exponential backoff up to wait_max",
        [resp(429)] * 10 + [SUBMITTED],
        11,
        None,
        worst_case(10, 10.0),
    ),
]


@pytest.mark.parametrize(
    ("script", "requests", "code", "expected_waits"),
    [row[1:] for row in SUBMIT_TABLE],
    ids=[row[0] for row in SUBMIT_TABLE],
)
async def test_submit_schedule(
    waits: list[Wait],
    http_for: Callable[[Upstream], httpx2.AsyncClient],
    script: list[Step],
    requests: int,
    code: Code | None,
    expected_waits: list[float],
) -> None:
    upstream = Upstream(submit=script)
    client = FluxClient(http_for(upstream), BASE, "k")
    if code is None:
        assert (await client.submit("flux-dev", {"prompt": "p"})).id == "t1"
    else:
        with pytest.raises(errors.UpstreamError) as caught:
            await client.submit("flux-dev", {"prompt": "p"})
        assert caught.value.code == code
    assert upstream.seen["submit"] == requests
    assert seconds(waits) == pytest.approx(expected_waits)
    assert all(w <= 10.0 for w in seconds(waits) if w != MAX_RETRY_AFTER_S)


def test_the_worst_case_schedules_are_what_the_table_says() -> None:
    """Spelled out once, so a change of stamina's defaults shows here."""
    assert worst_case(8, 5.0) == pytest.approx([1.1, 1.2, 1.4, 1.8, 2.6, 4.2, 5.0, 5.0])
    assert worst_case(10, 10.0)[-3:] == pytest.approx([10.0, 10.0, 10.0])
    # what one call can spend waiting at worst, 429s aside
    assert sum(worst_case(MAX_CONNECT_RETRIES, 10.0)) == pytest.approx(8.1)
    assert sum(worst_case(MAX_GET_RETRIES, 5.0)) == pytest.approx(22.3)


# --- poll: wait_max 5 s; connect errors and transient failures have separate budgets -----------

GET_FAILURES = 1 + MAX_GET_RETRIES
POLL_TABLE: list[tuple[str, list[Step], int, Code | None, list[float]]] = [
    (
        "connect error forever",
        [httpx2.ConnectError],
        CONNECT_FAILURES,
        Code.UPSTREAM_UNAVAILABLE,
        worst_case(MAX_CONNECT_RETRIES, 5.0),
    ),
    (
        "502 forever",
        [resp(502, "<html>bad gateway</html>")],
        GET_FAILURES,
        Code.UPSTREAM_UNAVAILABLE,
        worst_case(MAX_GET_RETRIES, 5.0),
    ),
    (
        "read timeout forever",
        [httpx2.ReadTimeout],
        GET_FAILURES,
        Code.UPSTREAM_UNAVAILABLE,
        worst_case(MAX_GET_RETRIES, 5.0),
    ),
    (
        "dropped forever",
        [httpx2.RemoteProtocolError],
        GET_FAILURES,
        Code.UPSTREAM_UNAVAILABLE,
        worst_case(MAX_GET_RETRIES, 5.0),
    ),
    (
        "unreadable json forever",
        [resp(200, "{nope")],
        GET_FAILURES,
        Code.BAD_RESPONSE,
        worst_case(MAX_GET_RETRIES, 5.0),
    ),
    (
        "every budget spent, then ready",
        [httpx2.ConnectError] * MAX_CONNECT_RETRIES + [resp(503)] * MAX_GET_RETRIES + [ready()],
        1 + MAX_CONNECT_RETRIES + MAX_GET_RETRIES,
        None,
        worst_case(MAX_CONNECT_RETRIES + MAX_GET_RETRIES, 5.0),
    ),
    ("403", [resp(403, '{"detail":"no"}')], 1, Code.UPSTREAM_AUTH, []),
    ("404", [resp(404, '{"detail":"no"}')], 1, Code.UPSTREAM_ERROR, []),
    (
        "429 with Retry-After, then ready",
        [resp(429, retry_after="3")] * 3 + [ready()],
        4,
        None,
        [3.0, 3.0, 3.0],
    ),
]


@pytest.mark.parametrize(
    ("script", "requests", "code", "expected_waits"),
    [row[1:] for row in POLL_TABLE],
    ids=[row[0] for row in POLL_TABLE],
)
async def test_poll_schedule(
    waits: list[Wait],
    http_for: Callable[[Upstream], httpx2.AsyncClient],
    script: list[Step],
    requests: int,
    code: Code | None,
    expected_waits: list[float],
) -> None:
    upstream = Upstream(poll=script)
    client = FluxClient(http_for(upstream), BASE, "k")
    if code is None:
        await client.get_result(POLLING_URL)
    else:
        with pytest.raises(errors.UpstreamError) as caught:
            await client.get_result(POLLING_URL)
        assert caught.value.code == code
    assert upstream.seen["poll"] == requests
    assert seconds(waits) == pytest.approx(expected_waits)


async def test_each_poll_has_its_own_budget(
    waits: list[Wait], http_for: Callable[[Upstream], httpx2.AsyncClient]
) -> None:
    """A job polls many times; failures of one poll do not use up the next one's budget."""
    script: list[Step] = ([resp(503)] * MAX_GET_RETRIES + [resp(200, '{"status":"Pending"}')]) * 3
    upstream = Upstream(poll=[*script, ready()])
    client = FluxClient(http_for(upstream), BASE, "k")
    for _ in range(3):
        await client.get_result(POLLING_URL)
    assert upstream.seen["poll"] == 3 * GET_FAILURES
    assert seconds(waits) == pytest.approx(worst_case(MAX_GET_RETRIES, 5.0) * 3)


# --- download (FluxBackend.fetch_outputs): wait_max 5 s, one refresh of an expired URL --------

DOWNLOAD_TABLE: list[tuple[str, list[Step], list[Step], int, int, Code | None]] = [
    # (name, download script, poll script, downloads, polls, error code)
    ("ok", [resp(200, JPEG)], [ready()], 1, 0, None),
    ("503 forever", [resp(503)], [ready()], GET_FAILURES, 0, Code.UPSTREAM_UNAVAILABLE),
    (
        "connect error forever",
        [httpx2.ConnectError],
        [ready()],
        CONNECT_FAILURES,
        0,
        Code.UPSTREAM_UNAVAILABLE,
    ),
    ("dropped forever", [httpx2.ReadError], [ready()], GET_FAILURES, 0, Code.UPSTREAM_UNAVAILABLE),
    ("expired, refreshed", [resp(403), resp(200, JPEG)], [ready(FRESH_SAMPLE)], 2, 1, None),
    ("expired, twice", [resp(403)], [ready(FRESH_SAMPLE)], 2, 1, Code.RESULT_EXPIRED),
    ("expired, BFL repeats the same URL", [resp(404)], [ready()], 1, 1, Code.RESULT_EXPIRED),
    (
        # the budget is per output, shared across the refresh: 4 + 4 retried 503s
        "503s around a refresh share one budget",
        [resp(503)] * 4 + [resp(410)] + [resp(503)],
        [ready(FRESH_SAMPLE)],
        4 + 1 + (MAX_GET_RETRIES - 4) + 1,
        1,
        Code.UPSTREAM_UNAVAILABLE,
    ),
]


@pytest.mark.parametrize(
    ("download_script", "poll_script", "downloads", "polls", "code"),
    [row[1:] for row in DOWNLOAD_TABLE],
    ids=[row[0] for row in DOWNLOAD_TABLE],
)
async def test_download_schedule(
    waits: list[Wait],
    http_for: Callable[[Upstream], httpx2.AsyncClient],
    tmp_path: Path,
    download_script: list[Step],
    poll_script: list[Step],
    downloads: int,
    polls: int,
    code: Code | None,
) -> None:
    upstream = Upstream(download=download_script, poll=poll_script)
    backend = FluxBackend(http_for(upstream), base_url=BASE, api_key="k")
    store = OutputStore(tmp_path / "out", tmp_path / "jobs")
    handle = UpstreamHandle(task_id="t1", polling_url=POLLING_URL)
    completed = Completed([RemoteFile(SAMPLE)], {"seed": 1})
    if code is None:
        [out] = await backend.fetch_outputs(JOB, handle, completed, store)
        assert out.mime_type == "image/jpeg"
    else:
        with pytest.raises(errors.UpstreamError) as caught:
            await backend.fetch_outputs(JOB, handle, completed, store)
        assert caught.value.code == code
    assert (upstream.seen["download"], upstream.seen["poll"]) == (downloads, polls)
    assert all(w.seconds <= 5.0 for w in waits)
    # each retry loop (one per URL) starts its backoff afresh; no wait beyond the worst case
    assert sum(seconds(waits)) <= 2 * sum(worst_case(MAX_GET_RETRIES, 5.0))
    loops = 1 + min(polls, downloads - 1)  # a refreshed URL is downloaded in a new loop
    assert len(waits) == downloads - loops


async def test_download_waits_follow_the_get_schedule(
    waits: list[Wait], http_for: Callable[[Upstream], httpx2.AsyncClient], tmp_path: Path
) -> None:
    upstream = Upstream(download=[resp(503)], poll=[ready()])
    backend = FluxBackend(http_for(upstream), base_url=BASE, api_key="k")
    store = OutputStore(tmp_path / "out", tmp_path / "jobs")
    handle = UpstreamHandle(task_id="t1", polling_url=POLLING_URL)
    with pytest.raises(errors.UpstreamError):
        await backend.fetch_outputs(JOB, handle, Completed([RemoteFile(SAMPLE)]), store)
    assert seconds(waits) == pytest.approx(worst_case(MAX_GET_RETRIES, 5.0))


# --- ComfyUI's /view download (comfy.py fetch_outputs: attempts=5, wait_max=2.0) ---------------

COMFY_ATTEMPTS = 5
COMFY_TABLE: list[tuple[str, list[Step], int, type[Exception] | Code | None]] = [
    ("ok", [resp(200, JPEG, content_type="image/jpeg")], 1, None),
    ("503 forever", [resp(503)], COMFY_ATTEMPTS, Code.BACKEND_UNAVAILABLE),
    ("502 twice, then ok", [resp(502), resp(502), resp(200, JPEG)], 3, None),
    ("connect error forever", [httpx2.ConnectError], COMFY_ATTEMPTS, httpx2.ConnectError),
    ("dropped forever", [httpx2.RemoteProtocolError], COMFY_ATTEMPTS, httpx2.RemoteProtocolError),
    ("404: the file is gone", [resp(404)], 1, Code.PROMPT_LOST),
]


@pytest.mark.parametrize(
    ("script", "requests", "outcome"),
    [row[1:] for row in COMFY_TABLE],
    ids=[row[0] for row in COMFY_TABLE],
)
async def test_comfy_view_schedule(
    waits: list[Wait],
    http_for: Callable[[Upstream], httpx2.AsyncClient],
    tmp_path: Path,
    script: list[Step],
    requests: int,
    outcome: type[Exception] | Code | None,
) -> None:
    upstream = Upstream(view=script)
    pool = ComfyPool([ComfyInstanceConfig(name="a", url="http://comfy.test")], http_for(upstream))
    backend = ComfyBackend("comfy", pool, InputStore(tmp_path / "inputs"))
    store = OutputStore(tmp_path / "out", tmp_path / "jobs")
    handle = UpstreamHandle(task_id="p1", instance="a")
    ref = json.dumps({"filename": "x.jpeg", "subfolder": "", "type": "output"})
    completed = Completed([RemoteFile(ref, "image/jpeg")])
    job = JOB.model_copy(update={"backend": "comfy", "model": "comfy"})
    if outcome is None:
        assert len(await backend.fetch_outputs(job, handle, completed, store)) == 1
    elif isinstance(outcome, Code):
        with pytest.raises(errors.UpstreamError) as caught:
            await backend.fetch_outputs(job, handle, completed, store)
        assert caught.value.code == outcome
    else:
        with pytest.raises(outcome):
            await backend.fetch_outputs(job, handle, completed, store)
    assert upstream.seen["view"] == requests
    assert seconds(waits) == pytest.approx(worst_case(requests - 1, 2.0))
    assert all(w <= 2.0 for w in seconds(waits))
