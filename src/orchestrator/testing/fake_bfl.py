"""A contract-faithful fake of the Black Forest Labs (BFL) FLUX HTTP API.

Follows shared/reference/bfl.md (section 10 is the minimal contract). Use it in-process
through ``httpx2.ASGITransport(app=fake.app)`` or serve ``fake.app`` on a port (see
`orchestrator.testing.serve`). Routes are served at the host root:

* ``POST /v1/{model}`` for flux-pro-1.1, flux-pro-1.1-ultra, flux-pro, flux-dev,
  flux-kontext-pro and flux-kontext-max. It needs the ``x-key`` header (403 otherwise), validates
  the body with BFL's ranges (FastAPI 422 detail list), charges credits (402 when short) and
  enforces the active-task limits (429 with ``Retry-After: 1``).
* ``GET /eu4/v1/get_result?id=`` is where the returned ``polling_url`` points ("another
  cluster"). ``GET /v1/get_result?id=`` at the root answers "Task not found" for every id, the
  trap of polling a hand-built URL.
* ``GET /delivery/{id}/sample.{ext}?se=&scid=&sig=`` serves the image without auth. Like BFL's
  signed delivery URLs, every poll of a Ready task hands out a new URL (a fresh ``scid`` and so
  a fresh signature) valid ``sample_ttl_s`` from when it was handed out (``se``; 403
  Azure-style XML afterwards); URLs handed out earlier stay valid until their own expiry. So a
  client that lets a URL expire must poll again for a fresh one (bfl.md section 9: "call
  get_result again for a new URL").
* ``GET /v1/credits`` returns ``{"credits": n}``.
* ``/_fake/*`` admin endpoints (faults, reset, state, config, advance) for out-of-process use.

Every submit, poll and download is recorded with its headers (`FakeBfl.requests`, even when a
fault answered it), so tests can count what the fake saw: e.g. that no download carried
``x-key`` (``requests_with_key`` in the state) and that every poll did.

Magic prompt markers: ``[moderate:request]`` gives "Request Moderated" at once and charges
nothing; ``[moderate:content]`` gives "Content Moderated" once the task's duration has elapsed
(refunded); ``[error]`` gives "Error" once the duration has elapsed (refunded too, since BFL
says only Ready consumes credits).

Fault injection (`FaultInjector.add` or ``POST /_fake/faults``) applies to the next ``count``
requests of a kind (``submit``, ``poll``, ``download``). A dropped connection (``drop=True``)
is simulated like this: under uvicorn the app returns a non-None value, which makes uvicorn
close the socket without writing a byte, so a real client sees "Server disconnected without
sending a response" (``httpx2.RemoteProtocolError``); uvicorn logs an ERROR line for it. Under
any other server (e.g. ``httpx2.ASGITransport`` in-process) the app raises
``httpx2.RemoteProtocolError`` itself, which ASGITransport hands to the caller unchanged.
"""

import asyncio
import contextlib
import hashlib
import hmac
import math
import random
import re
import secrets
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Final, Literal, TypedDict, cast, get_args

import httpx2
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator
from starlette.types import Message, Receive, Scope, Send

from orchestrator.asgi_body import read_body
from orchestrator.testing.dropped import DROPPED, served_by_uvicorn
from orchestrator.testing.images import render_image

__all__ = [
    "KONTEXT_MODELS",
    "MODEL_COSTS",
    "ConfigUpdate",
    "FakeBfl",
    "FakeBflConfig",
    "FakeBflState",
    "Fault",
    "FaultInjector",
    "FaultKind",
    "FaultSpec",
    "FluxDevRequest",
    "FluxKontextRequest",
    "FluxPro11Request",
    "FluxProRequest",
    "FluxUltraRequest",
    "ModelName",
    "SeenRequest",
    "Submission",
]

ModelName = Literal[
    "flux-pro-1.1",
    "flux-pro-1.1-ultra",
    "flux-pro",
    "flux-dev",
    "flux-kontext-pro",
    "flux-kontext-max",
]
FaultKind = Literal["submit", "poll", "download"]
TaskStatus = Literal[
    "Task not found", "Pending", "Request Moderated", "Content Moderated", "Ready", "Error"
]
_Outcome = Literal["ready", "request_moderated", "content_moderated", "error"]
_OutputFormat = Literal["jpeg", "png"]

MODEL_COSTS: Final[dict[str, float]] = {
    "flux-pro-1.1": 4.0,
    "flux-pro-1.1-ultra": 6.0,
    "flux-pro": 5.0,
    "flux-dev": 2.5,
    "flux-kontext-pro": 4.0,
    "flux-kontext-max": 8.0,
}
KONTEXT_MODELS: Final[frozenset[str]] = frozenset({"flux-kontext-pro", "flux-kontext-max"})

AUTH_ERROR: Final = "Not authenticated - Invalid Authentication"
POLL_RATE_LIMIT: Final = 1200
POLL_RATE_WINDOW_S: Final = 60.0
DEFAULT_SIZE: Final = (1024, 768)
_KONTEXT_MAX: Final = "flux-kontext-max"
_CLUSTER_PREFIX: Final = "/eu4"
_MODERATION_REASONS: Final[dict[_Outcome, list[str]]] = {
    "request_moderated": ["Derivative Works Filter"],
    "content_moderated": ["Sexual Content"],
}
_HANG_POLL_S: Final = 0.02
_TRICKLE_STEP_S: Final = 0.05


# --------------------------------------------------------------------------------------------
# Configuration and recorded state
# --------------------------------------------------------------------------------------------


@dataclass
class FakeBflConfig:
    """Behaviour of a `FakeBfl`. It may be changed at any time (also via ``/_fake/config``)."""

    api_keys: set[str] = field(default_factory=lambda: {"test-key"})
    credits: float = 1000.0
    task_duration_s: float = 2.0
    sample_ttl_s: float = 600.0
    active_limit: int = 24
    kontext_max_limit: int = 6
    image_size: tuple[int, int] | None = None
    label: str | None = None
    public_base_url: str = "http://fake-bfl.local"
    poll_retry_after_s: int = 1
    # Like BFL, the polling_url may name another host than the submit host (a cluster
    # such as api.eu2.bfl.ai) and samples come from a delivery host; None: public_base_url.
    cluster_base_url: str | None = None
    delivery_base_url: str | None = None


@dataclass(frozen=True)
class Submission:
    """One accepted (200) submit request. `received_at` is on the fake's clock."""

    task_id: str
    model: str
    body: dict[str, object]
    received_at: float


@dataclass(frozen=True)
class SeenRequest:
    """One submit, poll or download as it reached the fake (before any fault was applied).
    `headers` has lower-case names; `at` is on the fake's clock."""

    kind: FaultKind
    method: str
    path: str
    query: str
    headers: dict[str, str]
    at: float

    @property
    def has_key(self) -> bool:
        """Whether the request carried an ``x-key`` header (of any value)."""
        return "x-key" in self.headers

    @property
    def target(self) -> str:
        """Path and query, as requested."""
        return f"{self.path}?{self.query}" if self.query else self.path


class FakeBflState(TypedDict):
    """Snapshot returned by `FakeBfl.state()` and ``GET /_fake/state``."""

    submissions: dict[str, int]
    submission_total: int
    polls: int
    misrouted_polls: int
    # polls of a known task, by its prompt: a polled task's submit answer reached the
    # client (the crash suite's "paid, so it must be re-attached" detector)
    polls_by_prompt: dict[str, int]
    downloads: int
    # every submit/poll/download that arrived (faulted ones too), by kind, and how many of
    # them carried an x-key header: a download never should, a poll or submit always must
    requests: dict[str, int]
    requests_with_key: dict[str, int]
    credits: float
    active_tasks: int
    active_tasks_by_model: dict[str, int]
    # the most tasks active at once since the start (or the last reset), counted as
    # each one is accepted: what a limit over all of a key's clients must keep down
    peak_active_tasks: int
    tasks: int
    pending_faults: int
    now: float


@dataclass
class _Task:
    id: str
    model: str
    prompt: str
    seed: int
    width: int
    height: int
    fmt: _OutputFormat
    submitted_at: float
    duration: float
    outcome: _Outcome
    cost: float
    charged: bool
    refunded: bool = False
    sample: bytes | None = None

    @property
    def done_at(self) -> float:
        return self.submitted_at + self.duration

    def is_active(self, now: float) -> bool:
        return self.outcome != "request_moderated" and now < self.done_at

    def status(self, now: float) -> TaskStatus:
        if self.outcome == "request_moderated":
            return "Request Moderated"
        if now < self.done_at:
            return "Pending"
        if self.outcome == "content_moderated":
            return "Content Moderated"
        if self.outcome == "error":
            return "Error"
        return "Ready"


# --------------------------------------------------------------------------------------------
# Request bodies (BFL OpenAPI ranges, bfl.md section 3). Unknown keys are ignored.
# --------------------------------------------------------------------------------------------

_ASPECT_RE: Final = re.compile(r"^(\d{1,4}):(\d{1,4})$")
_MIN_ASPECT: Final = 9 / 21
_MAX_ASPECT: Final = 21 / 9


def _check_aspect_ratio(value: str | None) -> str | None:
    if value is None:
        return None
    match = _ASPECT_RE.match(value)
    if match is None or int(match[1]) == 0 or int(match[2]) == 0:
        raise ValueError("aspect_ratio must look like '16:9'")
    ratio = int(match[1]) / int(match[2])
    if not _MIN_ASPECT <= ratio <= _MAX_ASPECT:
        raise ValueError("aspect_ratio must be between 21:9 and 9:21")
    return value


class _BaseRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: str | None = ""
    seed: int | None = None
    prompt_upsampling: bool = False
    safety_tolerance: int = Field(default=2, ge=0, le=6)
    output_format: _OutputFormat | None = None
    webhook_url: str | None = Field(default=None, min_length=1, max_length=2083)
    webhook_secret: str | None = None


class _SizedRequest(_BaseRequest):
    width: int = Field(default=1024, ge=256, le=1440, multiple_of=32)
    height: int = Field(default=768, ge=256, le=1440, multiple_of=32)
    image_prompt: str | None = None


class FluxPro11Request(_SizedRequest):
    """Body of ``POST /v1/flux-pro-1.1``."""


class FluxProRequest(_SizedRequest):
    """Body of ``POST /v1/flux-pro`` (FLUX.1 [pro])."""

    steps: int | None = Field(default=40, ge=1, le=50)
    guidance: float | None = Field(default=2.5, ge=1.5, le=5)
    interval: float | None = Field(default=2, ge=1, le=4)


class FluxDevRequest(_SizedRequest):
    """Body of ``POST /v1/flux-dev``."""

    steps: int | None = Field(default=28, ge=1, le=50)
    guidance: float | None = Field(default=3, ge=1.5, le=5)


class FluxUltraRequest(_BaseRequest):
    """Body of ``POST /v1/flux-pro-1.1-ultra``."""

    aspect_ratio: str = "16:9"
    raw: bool = False
    image_prompt: str | None = None
    image_prompt_strength: float = Field(default=0.1, ge=0, le=1)

    @field_validator("aspect_ratio")
    @classmethod
    def _aspect(cls, value: str) -> str:
        _check_aspect_ratio(value)
        return value


class FluxKontextRequest(_BaseRequest):
    """Body of ``POST /v1/flux-kontext-pro`` and ``/v1/flux-kontext-max``."""

    prompt: str
    input_image: str | None = None
    input_image_2: str | None = None
    input_image_3: str | None = None
    input_image_4: str | None = None
    aspect_ratio: str | None = None

    @field_validator("aspect_ratio")
    @classmethod
    def _aspect(cls, value: str | None) -> str | None:
        return _check_aspect_ratio(value)


def _size_for_aspect(aspect_ratio: str, pixels: int = 1024 * 1024) -> tuple[int, int]:
    """About `pixels` pixels at `aspect_ratio`, each side a multiple of 32."""
    num, den = (int(part) for part in aspect_ratio.split(":"))
    width = math.sqrt(pixels * num / den)
    height = width * den / num
    return max(32, round(width / 32) * 32), max(32, round(height / 32) * 32)


def _output_size(body: _BaseRequest) -> tuple[int, int]:
    if isinstance(body, _SizedRequest):
        return body.width, body.height
    if isinstance(body, FluxUltraRequest):
        return _size_for_aspect(body.aspect_ratio)
    if isinstance(body, FluxKontextRequest):
        return _size_for_aspect(body.aspect_ratio or "1:1")
    return DEFAULT_SIZE  # pragma: no cover - every model has a body class above


def _outcome_for(prompt: str) -> _Outcome:
    if "[moderate:request]" in prompt:
        return "request_moderated"
    if "[moderate:content]" in prompt:
        return "content_moderated"
    if "[error]" in prompt:
        return "error"
    return "ready"


# --------------------------------------------------------------------------------------------
# Fault injection
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """What to do to one matching request; see `FaultInjector.add`."""

    kind: FaultKind
    status: int | None = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    hang: bool = False
    drop: bool = False
    trickle_s: float | None = None
    process: bool = False
    advance_s: float = 0.0


@dataclass
class _Queued:
    fault: Fault
    remaining: int


class FaultInjector:
    """FIFO queues of faults per request kind. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[FaultKind, deque[_Queued]] = {
            kind: deque() for kind in get_args(FaultKind)
        }
        self._fired = 0

    def add(
        self,
        kind: FaultKind,
        *,
        status: int | None = None,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        delay_s: float = 0,
        hang: bool = False,
        drop: bool = False,
        trickle_s: float | None = None,
        count: int = 1,
        process: bool = False,
        advance_s: float = 0,
    ) -> Fault:
        """Apply a fault to the next `count` requests of `kind` (after earlier queued faults).

        * `status`: answer with this status and `body` (default ``{"detail": "Injected fault"}``).
          The content type is taken from `headers`, else ``text/html`` when the body starts
          with ``<``, else ``application/json`` (so ``"{not json"`` looks like broken JSON).
        * `delay_s`: wait this long first (then answer normally, or apply the other options).
        * `hang`: never answer; the request ends only when the client goes away, or with a 503
          after `FakeBfl.reset()` / `FakeBfl.release_hangs()`.
        * `drop`: close the connection without any response (see the module docstring).
        * `advance_s`: move the fake's clock forward this much when the request arrives (as if
          it had taken that long to get there), then go on as usual: e.g. a download that
          arrives after its sample URL expired.
        * `trickle_s`: send the body (real or injected) in small pieces spread over this time.
        * `process`: run the real handler first (so a submit is recorded and charged) and only
          then apply the fault to its response. By default the real handler does not run.
        * `headers`: extra response headers for injected responses.
        """
        if kind not in self._queues:
            raise ValueError(f"unknown fault kind {kind!r}")
        if count < 1:
            raise ValueError("count must be >= 1")
        if status is not None and not 100 <= status <= 599:
            raise ValueError("status must be an HTTP status code")
        if hang and drop:
            raise ValueError("a fault can hang or drop, not both")
        if delay_s < 0 or (trickle_s is not None and trickle_s <= 0):
            raise ValueError("delay_s must be >= 0 and trickle_s > 0")
        if advance_s < 0:
            raise ValueError("advance_s must be >= 0: time only moves forward")
        fault = Fault(
            kind=kind,
            status=status,
            body=body.encode() if isinstance(body, str) else body,
            headers=dict(headers or {}),
            delay_s=float(delay_s),
            hang=hang,
            drop=drop,
            trickle_s=trickle_s,
            process=process,
            advance_s=float(advance_s),
        )
        with self._lock:
            self._queues[kind].append(_Queued(fault, count))
        return fault

    def clear(self) -> None:
        """Forget every queued fault and reset `fired`."""
        with self._lock:
            for queue in self._queues.values():
                queue.clear()
            self._fired = 0

    def pending(self, kind: FaultKind | None = None) -> int:
        """How many more requests (of `kind`, or of any kind) will get a fault."""
        with self._lock:
            kinds = [kind] if kind is not None else list(self._queues)
            return sum(entry.remaining for k in kinds for entry in self._queues[k])

    @property
    def fired(self) -> int:
        """How many requests got a fault so far."""
        with self._lock:
            return self._fired

    def take(self, kind: FaultKind) -> Fault | None:
        """Consume one application of the first queued fault of `kind`, if any."""
        with self._lock:
            queue = self._queues[kind]
            if not queue:
                return None
            entry = queue[0]
            entry.remaining -= 1
            if entry.remaining <= 0:
                queue.popleft()
            self._fired += 1
            return entry.fault


def _request_kind(method: str, path: str) -> FaultKind | None:
    if method == "POST" and path.startswith("/v1/"):
        return "submit"
    if method == "GET" and path.endswith("/v1/get_result"):
        return "poll"
    if method == "GET" and path.startswith("/delivery/"):
        return "download"
    return None


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


@dataclass
class _Captured:
    status: int = 500
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            self.headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
        elif message["type"] == "http.response.body":
            self.body.extend(message.get("body", b""))


def _injected_response(fault: Fault) -> _Captured:
    body = fault.body if fault.body is not None else b'{"detail":"Injected fault"}'
    headers = {k.lower(): v for k, v in fault.headers.items()}
    if "content-type" not in headers:
        is_html = body.lstrip().startswith(b"<")
        headers["content-type"] = "text/html; charset=utf-8" if is_html else "application/json"
    headers["content-length"] = str(len(body))
    return _Captured(
        status=fault.status or 500,
        headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
        body=bytearray(body),
    )


async def _send_response(send: Send, response: _Captured, trickle_s: float | None) -> None:
    await send(
        {"type": "http.response.start", "status": response.status, "headers": response.headers}
    )
    body = bytes(response.body)
    if not trickle_s or len(body) <= 1:
        if trickle_s:
            await asyncio.sleep(trickle_s)
        await send({"type": "http.response.body", "body": body, "more_body": False})
        return
    pieces = max(2, min(len(body), math.ceil(trickle_s / _TRICKLE_STEP_S)))
    size = math.ceil(len(body) / pieces)
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    interval = trickle_s / len(chunks)
    for index, chunk in enumerate(chunks):
        await asyncio.sleep(interval)
        more = index < len(chunks) - 1
        await send({"type": "http.response.body", "body": chunk, "more_body": more})


class _FakeBflApp(FastAPI):
    """The FastAPI app, with fault injection wrapped around the whole middleware stack."""

    fake: "FakeBfl"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = _request_kind(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if kind is not None:
            self.fake._record(kind, scope)
        fault = self.fake.faults.take(kind) if kind is not None else None
        if fault is None:
            await super().__call__(scope, receive, send)
            return
        if await self._apply_fault(fault, scope, receive, send):
            if served_by_uvicorn(send):
                # uvicorn closes the socket, writing nothing, when an app returns a value.
                return cast(None, DROPPED)
            raise httpx2.RemoteProtocolError(
                "Server disconnected without sending a response. (fake-bfl: injected drop)"
            )

    async def _apply_fault(self, fault: Fault, scope: Scope, receive: Receive, send: Send) -> bool:
        """Apply `fault`; True means the caller must drop the connection."""
        body = await read_body(receive)
        if body is None:
            return False  # the client is already gone
        replayed = False
        if fault.advance_s:
            self.fake.advance(fault.advance_s)

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        response: _Captured | None = None
        if fault.process or (fault.status is None and not fault.hang and not fault.drop):
            response = _Captured()
            await super().__call__(scope, replay, response.send)
        if fault.hang:
            if await self.fake._hang(receive):
                released = _Captured(
                    status=503,
                    headers=[(b"content-type", b"application/json")],
                    body=bytearray(b'{"detail":"Fake BFL: hung request released"}'),
                )
                await _send_response(send, released, None)
            return False
        if fault.drop:
            return True
        if fault.status is not None or response is None:
            response = _injected_response(fault)
        await _send_response(send, response, fault.trickle_s)
        return False


# --------------------------------------------------------------------------------------------
# Admin request bodies
# --------------------------------------------------------------------------------------------


class FaultSpec(BaseModel):
    """Body of ``POST /_fake/faults``: the keyword arguments of `FaultInjector.add`."""

    model_config = ConfigDict(extra="forbid")

    kind: FaultKind
    status: int | None = Field(default=None, ge=100, le=599)
    body: str | None = None
    headers: dict[str, str] | None = None
    delay_s: float = Field(default=0, ge=0)
    hang: bool = False
    drop: bool = False
    trickle_s: float | None = Field(default=None, gt=0)
    count: int = Field(default=1, ge=1)
    process: bool = False
    advance_s: float = Field(default=0, ge=0)


class ConfigUpdate(BaseModel):
    """Body of ``POST /_fake/config``; omitted fields are left alone."""

    model_config = ConfigDict(extra="forbid")

    credits: float | None = None
    task_duration_s: float | None = Field(default=None, ge=0)
    sample_ttl_s: float | None = Field(default=None, ge=0)
    api_keys: list[str] | None = Field(
        default=None, validation_alias=AliasChoices("api_keys", "keys")
    )
    active_limit: int | None = Field(default=None, ge=0)
    kontext_max_limit: int | None = Field(default=None, ge=0)
    label: str | None = None
    public_base_url: str | None = None
    poll_retry_after_s: int | None = Field(default=None, ge=0)


class AdvanceRequest(BaseModel):
    """Body of ``POST /_fake/advance``."""

    seconds: float = Field(ge=0)


# --------------------------------------------------------------------------------------------
# The fake
# --------------------------------------------------------------------------------------------


def _xml_error(code: str, message: str, detail: str | None = None) -> Response:
    extra = f"<AuthenticationErrorDetail>{detail}</AuthenticationErrorDetail>" if detail else ""
    body = (
        '<?xml version="1.0" encoding="utf-8"?>'
        f"<Error><Code>{code}</Code><Message>{message}\nRequestId:{uuid.uuid4()}</Message>"
        f"{extra}</Error>"
    )
    status = 404 if code == "BlobNotFound" else 403
    return Response(body, status_code=status, media_type="application/xml")


class FakeBfl:
    """In-memory BFL API. All state is guarded by one lock, so tests may inspect it from
    another thread while the app is served.

    `clock` (default `time.monotonic`) drives task timing and sample expiry; `advance()` moves
    the fake's time forward on top of it. Wall-clock fields (``start_time``, ``se``...) are
    derived from it, anchored at construction.
    """

    def __init__(
        self,
        config: FakeBflConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config if config is not None else FakeBflConfig()
        self.faults = FaultInjector()
        self._clock = clock
        self._offset = 0.0
        self._wall_anchor = time.time()
        self._clock_anchor = clock()
        self._lock = threading.RLock()
        self._secret = secrets.token_bytes(32)
        self._hang_generation = 0
        self._tasks: dict[str, _Task] = {}
        self._submissions: list[Submission] = []
        self._prompt_counts: Counter[str] = Counter()
        self._refundable: set[str] = set()
        self._credits = self.config.credits
        self._polls = 0
        self._misrouted_polls = 0
        self._polled_prompts: Counter[str] = Counter()
        self._downloads = 0
        self._peak_active = 0
        self._requests: list[SeenRequest] = []
        self._poll_window = (0.0, 0)
        self._app = self._build_app()

    # -- public state -------------------------------------------------------------------------

    @property
    def app(self) -> FastAPI:
        """The ASGI (FastAPI) app, fault injection included."""
        return self._app

    @property
    def public_base_url(self) -> str:
        """Origin used in ``polling_url`` and sample URLs (set it after binding a port)."""
        return self.config.public_base_url.rstrip("/")

    @public_base_url.setter
    def public_base_url(self, value: str) -> None:
        self.config.public_base_url = value.rstrip("/")

    @property
    def submissions(self) -> list[Submission]:
        """Accepted submissions, oldest first (a copy)."""
        with self._lock:
            return list(self._submissions)

    def submission_count(self, prompt: str) -> int:
        """How many accepted submissions had exactly this prompt (the double-pay detector)."""
        with self._lock:
            return self._prompt_counts[prompt]

    @property
    def polls(self) -> int:
        """Poll requests handled (both the polling_url and the root ``/v1/get_result``)."""
        with self._lock:
            return self._polls

    @property
    def misrouted_polls(self) -> int:
        """Polls of the root ``/v1/get_result`` instead of the returned ``polling_url``."""
        with self._lock:
            return self._misrouted_polls

    @property
    def downloads(self) -> int:
        """Successful sample downloads."""
        with self._lock:
            return self._downloads

    @property
    def requests(self) -> list[SeenRequest]:
        """Every submit, poll and download that arrived, oldest first, with its headers,
        including those a fault answered (a copy)."""
        with self._lock:
            return list(self._requests)

    def requests_of(self, kind: FaultKind) -> list[SeenRequest]:
        """The recorded requests of one kind, oldest first."""
        return [r for r in self.requests if r.kind == kind]

    @property
    def credits(self) -> float:
        """Current balance, after refunds of moderated or failed tasks that have finished."""
        with self._lock:
            self._settle(self.now())
            return self._credits

    @credits.setter
    def credits(self, value: float) -> None:
        with self._lock:
            self._credits = float(value)

    def active_tasks(self, model: str | None = None) -> int:
        """Tasks submitted and not yet finished (optionally of one model)."""
        with self._lock:
            now = self.now()
            return sum(
                1
                for task in self._tasks.values()
                if task.is_active(now) and (model is None or task.model == model)
            )

    def now(self) -> float:
        """The fake's current time (the clock plus any `advance`)."""
        return self._clock() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the fake's time forward (tasks finish, samples expire)."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        with self._lock:
            self._offset += seconds

    def release_hangs(self) -> None:
        """End every request currently held by a `hang` fault (they get a 503)."""
        with self._lock:
            self._hang_generation += 1

    def reset(self) -> None:
        """Forget tasks, submissions, counters and faults; credits go back to
        ``config.credits``; hung requests are released. Configuration changes are kept."""
        with self._lock:
            self._tasks.clear()
            self._submissions.clear()
            self._prompt_counts.clear()
            self._refundable.clear()
            self._credits = self.config.credits
            self._polls = 0
            self._misrouted_polls = 0
            self._polled_prompts.clear()
            self._downloads = 0
            self._peak_active = 0
            self._requests.clear()
            self._poll_window = (0.0, 0)
            self.faults.clear()
            self._hang_generation += 1

    def state(self) -> FakeBflState:
        """A JSON-friendly snapshot of the counters."""
        with self._lock:
            now = self.now()
            self._settle(now)
            by_model: Counter[str] = Counter(
                task.model for task in self._tasks.values() if task.is_active(now)
            )
            return {
                "submissions": dict(self._prompt_counts),
                "submission_total": len(self._submissions),
                "polls": self._polls,
                "misrouted_polls": self._misrouted_polls,
                "polls_by_prompt": dict(self._polled_prompts),
                "downloads": self._downloads,
                "requests": {
                    kind: sum(1 for r in self._requests if r.kind == kind)
                    for kind in get_args(FaultKind)
                },
                "requests_with_key": {
                    kind: sum(1 for r in self._requests if r.kind == kind and r.has_key)
                    for kind in get_args(FaultKind)
                },
                "credits": self._credits,
                "active_tasks": sum(by_model.values()),
                "active_tasks_by_model": dict(by_model),
                "peak_active_tasks": self._peak_active,
                "tasks": len(self._tasks),
                "pending_faults": self.faults.pending(),
                "now": now,
            }

    def update_config(self, update: ConfigUpdate) -> None:
        """Apply a partial configuration change (what ``POST /_fake/config`` does)."""
        with self._lock:
            cfg = self.config
            if update.credits is not None:
                cfg.credits = update.credits
                self._credits = update.credits
            if update.task_duration_s is not None:
                cfg.task_duration_s = update.task_duration_s
            if update.sample_ttl_s is not None:
                cfg.sample_ttl_s = update.sample_ttl_s
            if update.api_keys is not None:
                cfg.api_keys = set(update.api_keys)
            if update.active_limit is not None:
                cfg.active_limit = update.active_limit
            if update.kontext_max_limit is not None:
                cfg.kontext_max_limit = update.kontext_max_limit
            if update.label is not None:
                cfg.label = update.label or None
            if update.public_base_url is not None:
                self.public_base_url = update.public_base_url
            if update.poll_retry_after_s is not None:
                cfg.poll_retry_after_s = update.poll_retry_after_s

    # -- internals ----------------------------------------------------------------------------

    def _wall(self, at: float) -> float:
        return self._wall_anchor + (at - self._clock_anchor)

    def _settle(self, now: float) -> None:
        """Refund finished tasks that BFL does not charge for. Call with the lock held."""
        for task_id in list(self._refundable):
            task = self._tasks[task_id]
            if now >= task.done_at:
                self._refundable.discard(task_id)
                if task.charged and not task.refunded:
                    task.refunded = True
                    self._credits += task.cost

    def _record(self, kind: FaultKind, scope: Scope) -> None:
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope.get("headers", []):
            name = bytes(raw_name).decode("latin-1").lower()
            value = bytes(raw_value).decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        seen = SeenRequest(
            kind=kind,
            method=str(scope["method"]),
            path=str(scope["path"]),
            query=bytes(scope.get("query_string", b"")).decode("latin-1"),
            headers=headers,
            at=self.now(),
        )
        with self._lock:
            self._requests.append(seen)

    def _sign(self, task_id: str, ext: str, expiry: int, scid: str) -> str:
        message = f"{task_id}/sample.{ext}?se={expiry}&scid={scid}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def _sample_url(self, task: _Task, now: float) -> str:
        """A new signed URL on every call (a fresh ``scid``, so a fresh signature), valid
        ``sample_ttl_s`` from now (from the end of the task when polled at once)."""
        expiry = int(self._wall(max(now, task.done_at) + self.config.sample_ttl_s))
        scid = str(uuid.uuid4())
        sig = self._sign(task.id, task.fmt, expiry, scid)
        origin = (self.config.delivery_base_url or self.public_base_url).rstrip("/")
        return (
            f"{origin}/delivery/{task.id}/sample.{task.fmt}"
            f"?se={expiry}&sp=r&sr=b&scid={scid}&sig={sig}"
        )

    def _check_key(self, key: str | None) -> bool:
        with self._lock:
            return key is not None and key in self.config.api_keys

    async def _hang(self, receive: Receive) -> bool:
        """Wait until released (True) or the client disconnects (False)."""
        with self._lock:
            generation = self._hang_generation
        disconnected = asyncio.ensure_future(_wait_for_disconnect(receive))
        try:
            while True:
                with self._lock:
                    if self._hang_generation != generation:
                        return True
                if disconnected.done():
                    return False
                await asyncio.sleep(_HANG_POLL_S)
        finally:
            disconnected.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await disconnected

    def _poll_headers(self, status: TaskStatus) -> dict[str, str]:
        """Rate-limit headers of poll responses (reported, not enforced). Lock held."""
        wall = self._wall(self.now())
        window_start = math.floor(wall / POLL_RATE_WINDOW_S) * POLL_RATE_WINDOW_S
        start, used = self._poll_window
        used = used + 1 if start == window_start else 1
        self._poll_window = (window_start, used)
        retry_after = self.config.poll_retry_after_s if status == "Pending" else 0
        return {
            "Retry-After": str(retry_after),
            "X-Ratelimit-Limit": str(POLL_RATE_LIMIT),
            "X-Ratelimit-Remaining": str(max(0, POLL_RATE_LIMIT - used)),
            "X-Ratelimit-Reset": f"{window_start + POLL_RATE_WINDOW_S:.1f}",
        }

    # -- handlers -----------------------------------------------------------------------------

    async def _submit(self, request: Request, model: ModelName, body: _BaseRequest) -> Response:
        raw = await request.json()
        raw_body: dict[str, object] = raw if isinstance(raw, dict) else {}
        prompt = body.prompt or ""
        outcome = _outcome_for(prompt)
        cost = MODEL_COSTS[model]
        width, height = _output_size(body)
        default_fmt: _OutputFormat = "png" if model in KONTEXT_MODELS else "jpeg"
        with self._lock:
            now = self.now()
            self._settle(now)
            cfg = self.config
            if self._credits < cost:
                return JSONResponse({"detail": "Insufficient credits"}, status_code=402)
            active = [task for task in self._tasks.values() if task.is_active(now)]
            limited = False
            if outcome != "request_moderated":
                limited = len(active) >= cfg.active_limit
                if model == _KONTEXT_MAX:
                    kontext_max = sum(1 for task in active if task.model == _KONTEXT_MAX)
                    limited = limited or kontext_max >= cfg.kontext_max_limit
            if limited:
                limit = cfg.kontext_max_limit if model == _KONTEXT_MAX else cfg.active_limit
                return JSONResponse(
                    {
                        "detail": f"Rate limit exceeded: you have reached your limit of {limit} "
                        "active tasks. Wait for a task to finish and try again."
                    },
                    status_code=429,
                    headers={"Retry-After": "1"},
                )
            task = _Task(
                id=str(uuid.uuid4()),
                model=model,
                prompt=prompt,
                seed=body.seed if body.seed is not None else random.randrange(2**32),
                width=width,
                height=height,
                fmt=body.output_format or default_fmt,
                submitted_at=now,
                duration=max(0.0, cfg.task_duration_s),
                outcome=outcome,
                cost=cost,
                charged=outcome != "request_moderated",
            )
            if task.charged:
                self._credits -= cost
            if outcome in ("content_moderated", "error"):
                self._refundable.add(task.id)
            self._tasks[task.id] = task
            self._peak_active = max(self._peak_active, len(active) + 1)
            self._submissions.append(Submission(task.id, model, raw_body, now))
            self._prompt_counts[prompt] += 1
            cluster = (cfg.cluster_base_url or self.public_base_url).rstrip("/")
            polling_url = f"{cluster}{_CLUSTER_PREFIX}/v1/get_result?id={task.id}"
        return JSONResponse(
            {
                "id": task.id,
                "polling_url": polling_url,
                "cost": cost,
                "input_mp": None,
                "output_mp": round(width * height / 1e6, 2),
            }
        )

    def _result_payload(self, task_id: str, task: _Task | None, now: float) -> dict[str, object]:
        payload: dict[str, object] = {
            "id": task_id,
            "status": "Task not found",
            "result": None,
            "progress": None,
            "details": None,
            "preview": None,
        }
        if task is None:
            return payload
        status = task.status(now)
        payload["status"] = status
        if status == "Pending" and task.model not in KONTEXT_MODELS:
            fraction = (now - task.submitted_at) / task.duration if task.duration else 1.0
            payload["progress"] = round(min(max(fraction, 0.0), 0.99), 2)
        elif status == "Ready":
            payload["result"] = {
                "sample": self._sample_url(task, now),
                "prompt": task.prompt,
                "seed": task.seed,
                "start_time": round(self._wall(task.submitted_at), 2),
                "end_time": round(self._wall(task.done_at), 2),
                "duration": round(task.duration, 2),
            }
        elif task.outcome in _MODERATION_REASONS and status != "Pending":
            payload["details"] = {"Moderation Reasons": list(_MODERATION_REASONS[task.outcome])}
        return payload

    def _poll(self, task_id: str, *, misrouted: bool) -> Response:
        with self._lock:
            now = self.now()
            self._settle(now)
            self._polls += 1
            if misrouted:
                self._misrouted_polls += 1
            task = None if misrouted else self._tasks.get(task_id)
            if task is not None:
                self._polled_prompts[task.prompt] += 1
            payload = self._result_payload(task_id, task, now)
            headers = self._poll_headers(cast(TaskStatus, payload["status"]))
        return JSONResponse(payload, headers=headers)

    async def _download(
        self, task_id: str, filename: str, se: str | None, scid: str | None, sig: str | None
    ) -> Response:
        name, _, ext = filename.partition(".")
        if name != "sample" or ext not in ("jpeg", "png"):
            return _xml_error("BlobNotFound", "The specified blob does not exist.")
        expiry = int(se) if se is not None and se.isdigit() else None
        if expiry is None or scid is None or sig is None:
            return _xml_error(
                "AuthenticationFailed",
                "Server failed to authenticate the request.",
                "Signature fields not well formed.",
            )
        if not hmac.compare_digest(sig, self._sign(task_id, ext, expiry, scid)):
            return _xml_error(
                "AuthenticationFailed",
                "Server failed to authenticate the request.",
                "Signature did not match.",
            )
        with self._lock:
            now = self.now()
            wall_now = self._wall(now)
            task = self._tasks.get(task_id)
        if wall_now > expiry:
            return _xml_error(
                "AuthenticationFailed",
                "Server failed to authenticate the request.",
                f"Signed expiry time [{expiry}] must be after signed start time [{int(wall_now)}]",
            )
        if task is None or task.status(now) != "Ready":
            return _xml_error("BlobNotFound", "The specified blob does not exist.")
        sample = task.sample
        if sample is None:
            size = self.config.image_size or (task.width, task.height)
            sample = await asyncio.to_thread(
                render_image, task.prompt, size[0], size[1], task.fmt, task.seed, self.config.label
            )
            with self._lock:
                task.sample = sample
        with self._lock:
            self._downloads += 1
        return Response(sample, media_type=f"image/{task.fmt}")

    # -- app ----------------------------------------------------------------------------------

    def _build_app(self) -> FastAPI:
        app = _FakeBflApp(title="Fake BFL API", openapi_url=None, docs_url=None, redoc_url=None)
        app.fake = self

        def require_key(x_key: Annotated[str | None, Header()] = None) -> None:
            if not self._check_key(x_key):
                raise HTTPException(status_code=403, detail=AUTH_ERROR)

        auth = [Depends(require_key)]

        @app.post("/v1/flux-pro-1.1", dependencies=auth)
        async def flux_pro_11(request: Request, body: FluxPro11Request) -> Response:
            return await self._submit(request, "flux-pro-1.1", body)

        @app.post("/v1/flux-pro-1.1-ultra", dependencies=auth)
        async def flux_pro_11_ultra(request: Request, body: FluxUltraRequest) -> Response:
            return await self._submit(request, "flux-pro-1.1-ultra", body)

        @app.post("/v1/flux-pro", dependencies=auth)
        async def flux_pro(request: Request, body: FluxProRequest) -> Response:
            return await self._submit(request, "flux-pro", body)

        @app.post("/v1/flux-dev", dependencies=auth)
        async def flux_dev(request: Request, body: FluxDevRequest) -> Response:
            return await self._submit(request, "flux-dev", body)

        @app.post("/v1/flux-kontext-pro", dependencies=auth)
        async def flux_kontext_pro(request: Request, body: FluxKontextRequest) -> Response:
            return await self._submit(request, "flux-kontext-pro", body)

        @app.post("/v1/flux-kontext-max", dependencies=auth)
        async def flux_kontext_max(request: Request, body: FluxKontextRequest) -> Response:
            return await self._submit(request, "flux-kontext-max", body)

        @app.get(f"{_CLUSTER_PREFIX}/v1/get_result", dependencies=auth)
        async def get_result(task_id: Annotated[str, Query(alias="id")]) -> Response:
            return self._poll(task_id, misrouted=False)

        @app.get("/v1/get_result", dependencies=auth)
        async def get_result_wrong_cluster(task_id: Annotated[str, Query(alias="id")]) -> Response:
            return self._poll(task_id, misrouted=True)

        @app.get("/v1/credits", dependencies=auth)
        async def get_credits() -> Response:
            return JSONResponse({"credits": self.credits})

        @app.get("/delivery/{task_id}/{filename}")
        async def download(
            task_id: str,
            filename: str,
            se: str | None = None,
            scid: str | None = None,
            sig: str | None = None,
        ) -> Response:
            return await self._download(task_id, filename, se, scid, sig)

        @app.post("/_fake/faults")
        async def add_fault(spec: FaultSpec) -> Response:
            self.faults.add(**spec.model_dump())
            return JSONResponse({"ok": True, "pending_faults": self.faults.pending()})

        @app.delete("/_fake/faults")
        async def clear_faults() -> Response:
            self.faults.clear()
            return JSONResponse({"ok": True, "pending_faults": 0})

        @app.post("/_fake/reset")
        async def reset() -> Response:
            self.reset()
            return JSONResponse({"ok": True})

        @app.get("/_fake/state")
        async def state() -> Response:
            return JSONResponse(dict(self.state()))

        @app.post("/_fake/config")
        async def config(update: ConfigUpdate) -> Response:
            self.update_config(update)
            return JSONResponse({"ok": True})

        @app.post("/_fake/advance")
        async def advance(body: AdvanceRequest) -> Response:
            self.advance(body.seconds)
            return JSONResponse({"ok": True, "now": self.now()})

        return app
