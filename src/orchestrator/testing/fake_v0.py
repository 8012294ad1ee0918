"""A fake of the v0 Model API (OpenAI-compatible chat completions), for tests and demo mode.

Use it in-process through ``StreamingASGITransport(fake.app)`` (``testing.asgi_stream``;
demo mode does) or ``httpx2.ASGITransport(app=fake.app)`` (which buffers the whole
answer), or serve ``fake.app`` on 127.0.0.1 (see `orchestrator.testing.serve`).

* ``POST /v1/chat/completions`` needs ``Authorization: Bearer <key>`` (401 otherwise),
  validates the body as OpenAI does (model one of ``config.models``, messages with
  system/user/assistant roles, content a string or text / image_url parts with
  base64 ``data:`` URLs; 400 ``invalid_request_error`` otherwise), and answers
  deterministically from the prompt and the page context: a sentence, one
  ```` ```tsx file="app/page.tsx" ```` block with a page component holding the page's
  title and block texts, and a closing sentence. ``stream: true`` sends
  ``chat.completion.chunk`` events of ``config.chunk_chars`` characters every
  ``config.chunk_delay_s`` seconds, a last chunk with ``finish_reason``, a usage chunk
  when ``stream_options.include_usage`` is set, then ``data: [DONE]`` (as OpenAI-compatible
  servers do, usage comes only last: a stream that is cut or ends in an error event
  reports none). Otherwise one
  ``chat.completion``. ``max_completion_tokens`` cuts the answer (``finish_reason:
  "length"``). Tokens are counted as characters / 4 (images: 85 each).
* The magic marker ``[no-code]`` in the prompt gives an answer without a code block.
* ``config.accept_stream_options = False`` refuses ``stream_options`` (400), as a
  strict server that does not know the field would.
* ``/_fake/*`` admin endpoints (faults, reset, state, config) for out-of-process use.

Fault injection (`FakeV0.faults.add`, or ``POST /_fake/faults``) applies to the next
``count`` completion requests: an error ``status`` (OpenAI-style body; add a
``Retry-After`` header for 429s), a ``delay_s`` before answering, ``hang`` (never
answer), ``drop`` (close the connection without a response), or, in a stream,
``cut_after`` (close the connection after that many content chunks, as a dying
server would), ``stall_after`` (stop sending after that many chunks and keep the
connection open) and ``error_after`` (send an error event after that many chunks).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import re
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Final, TypedDict, cast

import httpx2
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import Receive, Scope, Send

from orchestrator.asgi_body import read_body
from orchestrator.testing.dropped import DROPPED, served_by_uvicorn

__all__ = ["FakeV0", "FakeV0Config", "FakeV0State", "Fault", "FaultInjector", "FaultSpec"]

COMPLETIONS_PATH: Final = "/v1/chat/completions"
DEFAULT_MODELS: Final = ("v0-1.5-md", "v0-1.5-lg")
ROLES: Final = frozenset({"system", "user", "assistant"})
IMAGE_TOKENS: Final = 85
_POLL_S: Final = 0.02
_STATUS_TEXT: Final[dict[int, tuple[str, str | None]]] = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "not_found"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


@dataclass
class FakeV0Config:
    """Behaviour of a `FakeV0`; may be changed at any time (also via ``/_fake/config``)."""

    api_keys: set[str] = field(default_factory=lambda: {"v0-test-key"})
    models: tuple[str, ...] = DEFAULT_MODELS
    chunk_chars: int = 24
    chunk_delay_s: float = 0.0
    label: str | None = None
    # False: refuse ``stream_options`` as an unknown field, like a strict server
    accept_stream_options: bool = True


@dataclass(frozen=True)
class Fault:
    status: int | None = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    hang: bool = False
    drop: bool = False
    cut_after: int | None = None
    stall_after: int | None = None
    error_after: int | None = None


class FaultInjector:
    """A FIFO of faults for completion requests. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[list[object]] = deque()
        self._fired = 0

    def add(
        self,
        *,
        status: int | None = None,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        delay_s: float = 0.0,
        hang: bool = False,
        drop: bool = False,
        cut_after: int | None = None,
        stall_after: int | None = None,
        error_after: int | None = None,
        count: int = 1,
    ) -> Fault:
        """Apply a fault to the next ``count`` completion requests (after earlier ones)."""
        if count < 1:
            raise ValueError("count must be >= 1")
        if status is not None and not 100 <= status <= 599:
            raise ValueError("status must be an HTTP status code")
        if delay_s < 0:
            raise ValueError("delay_s must be >= 0")
        modes = [hang, drop, status is not None, cut_after is not None]
        modes += [stall_after is not None, error_after is not None]
        if sum(modes) > 1:
            raise ValueError(
                "choose one of status, hang, drop, cut_after, stall_after, error_after"
            )
        for n in (cut_after, stall_after, error_after):
            if n is not None and n < 0:
                raise ValueError("chunk counts must be >= 0")
        fault = Fault(
            status=status,
            body=body.encode() if isinstance(body, str) else body,
            headers=dict(headers or {}),
            delay_s=float(delay_s),
            hang=hang,
            drop=drop,
            cut_after=cut_after,
            stall_after=stall_after,
            error_after=error_after,
        )
        with self._lock:
            self._queue.append([fault, count])
        return fault

    def take(self) -> Fault | None:
        with self._lock:
            if not self._queue:
                return None
            entry = self._queue[0]
            entry[1] = cast(int, entry[1]) - 1
            if cast(int, entry[1]) <= 0:
                self._queue.popleft()
            self._fired += 1
            return cast(Fault, entry[0])

    def pending(self) -> int:
        with self._lock:
            return sum(cast(int, e[1]) for e in self._queue)

    @property
    def fired(self) -> int:
        with self._lock:
            return self._fired

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()
            self._fired = 0


class FakeV0State(TypedDict):
    requests: int
    completed: int
    cut: int
    disconnects: int
    pending_faults: int


class FaultSpec(BaseModel):
    """Body of ``POST /_fake/faults``: the keyword arguments of `FaultInjector.add`."""

    model_config = ConfigDict(extra="forbid")

    status: int | None = Field(default=None, ge=100, le=599)
    body: str | None = None
    headers: dict[str, str] | None = None
    delay_s: float = Field(default=0, ge=0)
    hang: bool = False
    drop: bool = False
    cut_after: int | None = Field(default=None, ge=0)
    stall_after: int | None = Field(default=None, ge=0)
    error_after: int | None = Field(default=None, ge=0)
    count: int = Field(default=1, ge=1)


class ConfigUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_keys: list[str] | None = None
    chunk_chars: int | None = Field(default=None, ge=1)
    chunk_delay_s: float | None = Field(default=None, ge=0)
    label: str | None = None


class InvalidBody(Exception):
    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


# --- the deterministic answer -------------------------------------------------------------


@dataclass(frozen=True)
class Ask:
    """What the fake understood of a request."""

    model: str
    stream: bool
    include_usage: bool
    max_tokens: int | None
    prompt: str
    title: str | None
    blocks: list[str]
    images: int
    prompt_chars: int


def parse_request(
    doc: object, models: tuple[str, ...], *, accept_stream_options: bool = True
) -> Ask:
    """Validate a completion request as the real API would; raise InvalidBody."""
    if not isinstance(doc, dict):
        raise InvalidBody("the body must be a JSON object")
    if not accept_stream_options and "stream_options" in doc:
        raise InvalidBody(
            "Unrecognized request argument supplied: stream_options", "stream_options"
        )
    model = doc.get("model")
    if not isinstance(model, str):
        raise InvalidBody("you must provide a model parameter", "model")
    if model not in models:
        raise InvalidBody(
            f"The model `{model}` does not exist or you do not have access to it.",
            "model",
            "model_not_found",
        )
    stream = doc.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidBody("stream must be a boolean", "stream")
    options = doc.get("stream_options")
    if options is not None and (not isinstance(options, dict) or not stream):
        raise InvalidBody("stream_options is only allowed when stream is true", "stream_options")
    include_usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
    max_tokens = doc.get("max_completion_tokens", doc.get("max_tokens"))
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        raise InvalidBody("max_completion_tokens must be a positive integer", "max_tokens")
    messages = doc.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidBody("messages must be a non-empty array", "messages")
    texts: list[str] = []
    last_user: list[str] = []
    images = 0
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ROLES:
            raise InvalidBody(f"messages[{i}].role must be system, user or assistant", "messages")
        content = msg.get("content")
        parts: list[str] = []
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list) and content:
            for j, part in enumerate(content):
                where = f"messages[{i}].content[{j}]"
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" and isinstance(part, dict) and isinstance(part.get("text"), str):
                    parts.append(part["text"])
                elif kind == "image_url" and isinstance(part, dict):
                    if msg["role"] != "user":
                        raise InvalidBody(f"{where}: images are only allowed in user messages")
                    _check_image(part.get("image_url"), where)
                    images += 1
                else:
                    raise InvalidBody(f"{where}: expected a text or image_url part", "messages")
        else:
            raise InvalidBody(f"messages[{i}].content must be a string or parts", "messages")
        texts += parts
        if msg["role"] == "user":
            last_user = parts
    if not last_user:
        raise InvalidBody("the last user message has no text", "messages")
    title, blocks = _context(last_user)
    prompt = next((p for p in reversed(last_user) if not p.startswith("Context:")), "")
    return Ask(
        model=model,
        stream=stream,
        include_usage=include_usage,
        max_tokens=max_tokens,
        prompt=prompt,
        title=title,
        blocks=blocks,
        images=images,
        prompt_chars=sum(len(t) for t in texts),
    )


def _check_image(value: object, where: str) -> None:
    url = value.get("url") if isinstance(value, dict) else None
    if not isinstance(url, str):
        raise InvalidBody(f"{where}.image_url.url is required", "messages")
    if url.startswith(("http://", "https://")):
        return
    m = re.fullmatch(r"data:(image/(?:png|jpeg|webp|gif));base64,(.+)", url, re.S)
    if m is None:
        raise InvalidBody(f"{where}: the image must be a PNG, JPEG, WEBP or GIF data URL")
    try:
        base64.b64decode(m[2], validate=True)
    except (ValueError, binascii.Error):
        raise InvalidBody(f"{where}: the image is not valid base64") from None


def _context(parts: list[str]) -> tuple[str | None, list[str]]:
    """Title and block texts from a page-context text part (as v0_prompt writes it)."""
    ctx = next((p for p in parts if p.startswith("Context:")), None)
    if ctx is None:
        return None, []
    title = None
    blocks: list[str] = []
    current: list[str] | None = None
    for line in ctx.splitlines():
        if line.startswith("Title: ") and title is None:
            title = line.removeprefix("Title: ").strip()
        elif re.match(r"^\[\d+\]", line):
            if current:
                blocks.append(" ".join(current))
            current = []
        elif line.startswith(("Images: ", "[... ")):
            if current:
                blocks.append(" ".join(current))
            current = None
        elif current is not None and line.strip():
            current.append(line.strip())
    if current:
        blocks.append(" ".join(current))
    return title, blocks


def answer_for(ask: Ask, label: str | None = None) -> str:
    """The deterministic answer: the same request always gets the same text."""
    title = ask.title or (ask.prompt.strip().splitlines() or ["Page"])[0][:60]
    if "[no-code]" in ask.prompt:
        return f"I cannot build {title!r} as asked; please describe the page in more detail."
    lines = [
        f"// Generated by the fake v0 server{f' ({label})' if label else ''} ({ask.model}).",
        f"// Prompt: {' '.join(ask.prompt.split())[:120]}",
        "export default function Page() {",
        "  return (",
        '    <main className="mx-auto max-w-3xl space-y-8 p-8">',
        f'      <h1 className="text-4xl font-bold">{{{_js(title)}}}</h1>',
    ]
    for i, text in enumerate(ask.blocks, start=1):
        lines += [
            f'      <section id="block-{i}" className="space-y-2">',
            f"        <p>{{{_js(text)}}}</p>",
            "      </section>",
        ]
    for i in range(1, ask.images + 1):
        lines.append(
            f'      <img src="/placeholder.svg?height=400&width=600" alt="Image {i}" '
            'className="rounded-lg" />'
        )
    lines += ["    </main>", "  )", "}"]
    code = "\n".join(lines)
    return (
        f"Here is a page for {title}.\n\n"
        f'```tsx file="app/page.tsx"\n{code}\n```\n\n'
        f"It has {len(ask.blocks)} content sections and {ask.images} images."
    )


def _js(text: str) -> str:
    """A JS string literal (JSON's is one), safe inside JSX braces."""
    return json.dumps(text, ensure_ascii=False)


def tokens(chars: int) -> int:
    return max(1, math.ceil(chars / 4))


# --- the app -----------------------------------------------------------------------------------


def _error_body(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> bytes:
    typ, default_code = _STATUS_TEXT.get(
        status, ("server_error" if status >= 500 else "error", None)
    )
    return json.dumps(
        {"error": {"message": message, "type": typ, "param": param, "code": code or default_code}}
    ).encode()


class _FakeV0App(FastAPI):
    fake: FakeV0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] == COMPLETIONS_PATH
        ):
            if await self.fake._completion(scope, receive, send):
                if served_by_uvicorn(send):
                    return cast(None, DROPPED)  # uvicorn closes the socket, writing nothing more
                raise httpx2.RemoteProtocolError("fake-v0: connection closed on purpose")
            return
        await super().__call__(scope, receive, send)


class FakeV0:
    """In-memory v0 Model API. State is guarded by one lock (tests may read it from
    another thread while the app is served)."""

    def __init__(self, config: FakeV0Config | None = None) -> None:
        self.config = config if config is not None else FakeV0Config()
        self.faults = FaultInjector()
        self._lock = threading.Lock()
        self._bodies: list[dict[str, object]] = []
        self._completed = 0
        self._cut = 0
        self._disconnects = 0
        self._release = 0
        self._app = self._build_app()

    @property
    def app(self) -> FastAPI:
        return self._app

    @property
    def requests(self) -> list[dict[str, object]]:
        """Bodies of the valid, authenticated completion requests, oldest first."""
        with self._lock:
            return list(self._bodies)

    @property
    def completed(self) -> int:
        """Answers sent in full."""
        with self._lock:
            return self._completed

    @property
    def disconnects(self) -> int:
        """Streams the client closed before the end (e.g. a canceled job)."""
        with self._lock:
            return self._disconnects

    def state(self) -> FakeV0State:
        with self._lock:
            return {
                "requests": len(self._bodies),
                "completed": self._completed,
                "cut": self._cut,
                "disconnects": self._disconnects,
                "pending_faults": self.faults.pending(),
            }

    def reset(self) -> None:
        with self._lock:
            self._bodies.clear()
            self._completed = self._cut = self._disconnects = 0
            self._release += 1
        self.faults.clear()

    def release_hangs(self) -> None:
        """End hung requests (503) and stalled streams (cut)."""
        with self._lock:
            self._release += 1

    # --- the completion endpoint --------------------------------------------------------
    async def _completion(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Serve one completion request; True means: drop the connection."""
        fault = self.faults.take()
        raw = await read_body(receive)
        if raw is None:
            return False
        watcher = _Disconnect(receive)
        try:
            if fault is not None and fault.delay_s:
                await asyncio.sleep(fault.delay_s)
            if fault is not None and fault.hang:
                if await self._wait_release(watcher):
                    await _send_json(send, 503, _error_body(503, "fake-v0: hung request released"))
                return False
            if fault is not None and fault.drop:
                return True
            if fault is not None and fault.status is not None:
                body = fault.body or _error_body(fault.status, "Injected fault")
                await _send_json(send, fault.status, body, fault.headers)
                return False
            headers = {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
            }
            auth = headers.get("authorization", "")
            key = auth[7:].strip() if auth[:7].lower() == "bearer " else None
            with self._lock:
                known = key is not None and key in self.config.api_keys
            if not known:
                await _send_json(send, 401, _error_body(401, "Invalid API key provided."))
                return False
            try:
                doc = json.loads(raw)
                ask = parse_request(
                    doc,
                    self.config.models,
                    accept_stream_options=self.config.accept_stream_options,
                )
            except ValueError:
                await _send_json(send, 400, _error_body(400, "We could not parse the JSON body."))
                return False
            except InvalidBody as exc:
                await _send_json(send, 400, _error_body(400, exc.message, exc.code, exc.param))
                return False
            with self._lock:
                self._bodies.append(doc)
                label = self.config.label
            answer = answer_for(ask, label)
            finish = "stop"
            if ask.max_tokens is not None and tokens(len(answer)) > ask.max_tokens:
                answer = answer[: ask.max_tokens * 4]
                finish = "length"
            usage = {
                "prompt_tokens": tokens(ask.prompt_chars) + IMAGE_TOKENS * ask.images,
                "completion_tokens": tokens(len(answer)),
            }
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
            if not ask.stream:
                doc_out = {
                    "id": cid,
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": ask.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": answer},
                            "finish_reason": finish,
                        }
                    ],
                    "usage": usage,
                }
                await _send_json(send, 200, json.dumps(doc_out).encode())
                with self._lock:
                    self._completed += 1
                return False
            return await self._stream(send, watcher, ask, cid, answer, finish, usage, fault)
        finally:
            watcher.stop()

    async def _stream(
        self,
        send: Send,
        watcher: _Disconnect,
        ask: Ask,
        cid: str,
        answer: str,
        finish: str,
        usage: dict[str, int],
        fault: Fault | None,
    ) -> bool:
        created = int(time.time())

        def event(delta: dict[str, str], reason: str | None) -> bytes:
            chunk = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": ask.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
            }
            return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode()

        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )

        async def body(data: bytes) -> bool:
            if watcher.gone:
                with self._lock:
                    self._disconnects += 1
                return False
            await send({"type": "http.response.body", "body": data, "more_body": True})
            return True

        if not await body(event({"role": "assistant", "content": ""}, None)):
            return False
        with self._lock:
            size, delay = max(1, self.config.chunk_chars), self.config.chunk_delay_s
        pieces = [answer[i : i + size] for i in range(0, len(answer), size)]
        for n, piece in enumerate(pieces):
            if fault is not None and fault.cut_after == n:
                with self._lock:
                    self._cut += 1
                return True
            if fault is not None and fault.stall_after == n:
                await self._wait_release(watcher)
                with self._lock:
                    self._cut += 1
                    if watcher.gone:
                        self._disconnects += 1
                return True
            if fault is not None and fault.error_after == n:
                err = _error_body(500, "fake-v0: the model failed mid-answer")
                await body(b"data: " + err + b"\n\n")
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return False
            if delay:
                await asyncio.sleep(delay)
            if not await body(event({"content": piece}, None)):
                return False
        if not await body(event({}, finish)):
            return False
        if ask.include_usage:
            tail = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": ask.model,
                "choices": [],
                "usage": usage,
            }
            if not await body(f"data: {json.dumps(tail)}\n\n".encode()):
                return False
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        with self._lock:
            self._completed += 1
        return False

    async def _wait_release(self, watcher: _Disconnect) -> bool:
        """Wait until released (True) or the client went away (False)."""
        with self._lock:
            generation = self._release
        while True:
            with self._lock:
                if self._release != generation:
                    return True
            if watcher.gone:
                return False
            await asyncio.sleep(_POLL_S)

    # --- admin ------------------------------------------------------------------------------
    def _build_app(self) -> FastAPI:
        app = _FakeV0App(title="Fake v0 API", openapi_url=None, docs_url=None, redoc_url=None)
        app.fake = self

        @app.post("/_fake/faults")
        async def add_fault(spec: FaultSpec) -> Response:
            self.faults.add(**spec.model_dump())
            return JSONResponse({"ok": True, "pending_faults": self.faults.pending()})

        @app.delete("/_fake/faults")
        async def clear_faults() -> Response:
            self.faults.clear()
            return JSONResponse({"ok": True})

        @app.post("/_fake/reset")
        async def reset() -> Response:
            self.reset()
            return JSONResponse({"ok": True})

        @app.get("/_fake/state")
        async def state() -> Response:
            return JSONResponse(dict(self.state()))

        @app.post("/_fake/config")
        async def config(update: ConfigUpdate) -> Response:
            with self._lock:
                if update.api_keys is not None:
                    self.config.api_keys = set(update.api_keys)
                if update.chunk_chars is not None:
                    self.config.chunk_chars = update.chunk_chars
                if update.chunk_delay_s is not None:
                    self.config.chunk_delay_s = update.chunk_delay_s
                if update.label is not None:
                    self.config.label = update.label or None
            return JSONResponse({"ok": True})

        return app


class _Disconnect:
    """Watches ``receive`` for the client going away while the app answers."""

    def __init__(self, receive: Receive) -> None:
        self.gone = False
        self._task = asyncio.ensure_future(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone = True

    def stop(self) -> None:
        self._task.cancel()


async def _send_json(
    send: Send, status: int, body: bytes, headers: dict[str, str] | None = None
) -> None:
    extra = {k.lower(): v for k, v in (headers or {}).items()}
    extra.setdefault("content-type", "application/json")
    extra["content-length"] = str(len(body))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
