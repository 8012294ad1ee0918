"""v0 (Vercel's code-generation models): the streaming client and the backend.

Contract: the v0 Model API is OpenAI-compatible. ``POST {base}/v1/chat/completions``
with ``Authorization: Bearer <key>`` and ``{"model", "messages", "stream": true}``
answers ``text/event-stream``: ``data: {chat.completion.chunk}`` events whose
``choices[0].delta.content`` carry the answer, the last one a ``finish_reason``, then
``data: [DONE]``. Errors are ``{"error": {"message", "type", "code"}}`` with 400, 401,
403, 429 (``Retry-After``) or 5xx; an error can also arrive as an event mid-stream.

How a job runs: ``submit`` sends nothing (a chat completion has no task to poll); it
returns a local handle, stored before anything is sent. ``wait`` builds the messages
(the prompt; an imported page's texts and a few of its images; image inputs), streams
the answer, and reports progress (characters received, throttled). ``fetch_outputs``
writes the code (``.tsx``, taken from the answer's code block) and the whole answer
(``.md``). Token usage is recorded in the job's events.

Retries (stamina): 429 honours ``Retry-After``; connect errors, 5xx, timeouts and a
stream that breaks off are retried a few times (a completion that failed produced
nothing usable; the retried request starts over). A restarted worker cannot re-attach
to a stream that was running when it stopped: the job fails with
``submit_interrupted`` instead of being sent again (retry it to run it again).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import httpx2
import stamina
from pydantic import JsonValue

from orchestrator import errors, logs
from orchestrator.backends import v0_prompt
from orchestrator.backends.base import (
    Backend,
    BackendHealth,
    CancelOutcome,
    Completed,
    ProgressFn,
    RemoteFile,
    Submitted,
)
from orchestrator.backends.flux import retry_after_seconds
from orchestrator.db.jobs import NewOutput
from orchestrator.domain.costs import TOKENS_PER_IMAGE, text_tokens
from orchestrator.domain.jobs import Job, UpstreamHandle
from orchestrator.domain.params import V0_MODELS, V0Params
from orchestrator.storage import InputStore, OutputStore

log = logs.get(__name__)
Code = errors.ErrorCode

MAX_CONNECT_RETRIES = 5
MAX_RETRIES = 3  # 5xx, timeouts, broken streams
PROGRESS_INTERVAL_S = 1.0
CODE_MIME = "text/x-typescript"
MARKDOWN_MIME = "text/markdown"
ASSET_PREFIX = "asset:"


# --- pure decisions (table-tested) --------------------------------------------------------


def error_detail(body: str) -> tuple[str, str | None, str | None]:
    """``(message, type, code)`` of an OpenAI-style error body (any body, really)."""
    try:
        doc = json.loads(body)
    except ValueError:
        text = " ".join(body.split())
        return text[:300] or "(empty body)", None, None
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict):
        msg = err.get("message")
        typ = err.get("type")
        code = err.get("code")
        return (
            str(msg) if msg else json.dumps(err)[:300],
            str(typ) if typ is not None else None,
            str(code) if code is not None else None,
        )
    if isinstance(err, str):
        return err[:300], None, None
    return json.dumps(doc)[:300], None, None


def response_error(status: int, body: str, retry_after: str | None) -> errors.UpstreamError:
    """The error a non-200 answer to the completion request means."""
    message, typ, code = error_detail(body)
    extra: dict[str, JsonValue] = {"http_status": status}
    if typ:
        extra["upstream_type"] = typ
    if code:
        extra["upstream_code"] = code
    if status == 429:
        return errors.RateLimited(f"v0 rate limit: {message}", retry_after_seconds(retry_after))
    if status in (401, 403):
        return errors.UpstreamError(
            Code.UPSTREAM_AUTH, f"v0 refused the API key: {message}", **extra
        )
    if status == 402:
        return errors.UpstreamError(Code.INSUFFICIENT_CREDITS, f"v0: {message}", **extra)
    if status in (400, 404, 413, 422):
        return errors.UpstreamError(
            Code.INVALID_PARAMS, f"v0 rejected the request: {message}", **extra
        )
    if status in (408, 409) or status >= 500:
        return errors.TransientUpstreamError(
            Code.UPSTREAM_UNAVAILABLE, f"v0 answered {status}: {message}", **extra
        )
    return errors.UpstreamError(Code.UPSTREAM_ERROR, f"v0 answered {status}: {message}", **extra)


def stream_error(err: JsonValue) -> errors.UpstreamError:
    """An ``{"error": ...}`` event received mid-stream."""
    message, typ, code = error_detail(json.dumps({"error": err}))
    kind = f"{typ or ''} {code or ''}".lower()
    if "rate_limit" in kind:
        return errors.RateLimited(f"v0 rate limit (mid-stream): {message}", None)
    if "invalid_request" in kind or "context_length" in kind:
        return errors.UpstreamError(
            Code.INVALID_PARAMS, f"v0 rejected the request mid-stream: {message}"
        )
    if "auth" in kind or "permission" in kind:
        return errors.UpstreamError(Code.UPSTREAM_AUTH, f"v0 (mid-stream): {message}")
    return errors.TransientUpstreamError(
        Code.STREAM_INTERRUPTED, f"v0 reported an error mid-stream: {message}"
    )


class SseDecoder:
    """Server-Sent Events, line by line: returns an event's data when the blank line
    ending it arrives. Comments (``:``) and fields other than ``data`` are skipped;
    several ``data`` lines join with newlines."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        line = line.rstrip("\r\n")
        if not line:
            return self.flush()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None

    def flush(self) -> str | None:
        if not self._data:
            return None
        data = "\n".join(self._data)
        self._data = []
        return data


@dataclass(frozen=True)
class Chunk:
    content: str = ""
    finish_reason: str | None = None
    usage: dict[str, JsonValue] | None = None
    completion_id: str | None = None
    model: str | None = None


DONE: Literal["[DONE]"] = "[DONE]"


def interpret_event(data: str) -> Chunk | Literal["[DONE]"]:
    """One event's data: the end marker, or a chunk (``chat.completion.chunk``, or a
    whole ``chat.completion`` from a server that did not stream). Raises the job's
    error for an error event, and a retryable one for an unreadable event."""
    if data.strip() == DONE:
        return DONE
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise errors.TransientUpstreamError(
            Code.STREAM_INTERRUPTED, f"v0 sent an unreadable event: {data[:80]!r}"
        ) from exc
    if not isinstance(doc, dict):
        raise errors.TransientUpstreamError(Code.BAD_RESPONSE, "v0 sent an event that is no object")
    if "error" in doc:
        raise stream_error(doc["error"])
    content = ""
    finish: str | None = None
    choices = doc.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        part = choice.get("delta")
        if not isinstance(part, dict):
            part = choice.get("message")
        if isinstance(part, dict) and isinstance(part.get("content"), str):
            content = part["content"]
        reason = choice.get("finish_reason")
        finish = reason if isinstance(reason, str) else None
    usage = doc.get("usage")
    cid = doc.get("id")
    model = doc.get("model")
    return Chunk(
        content=content,
        finish_reason=finish,
        usage=usage if isinstance(usage, dict) else None,
        completion_id=cid if isinstance(cid, str) else None,
        model=model if isinstance(model, str) else None,
    )


def prompt_tokens(body: Mapping[str, JsonValue]) -> int:
    """An estimate of a request's prompt tokens: its messages' text, and a tile
    allowance per image."""
    chars = images = 0
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            chars += len(content)
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and part.get("type") == "image_url":
                images += 1
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                chars += len(str(part["text"]))
    return text_tokens(chars) + TOKENS_PER_IMAGE * images


def total_tokens(usage: dict[str, JsonValue] | None) -> int | None:
    """``usage.total_tokens`` (or prompt + completion) when v0 sent usage."""
    if usage is None:
        return None
    values = [usage.get(k) for k in ("total_tokens", "prompt_tokens", "completion_tokens")]
    total, prompt, completion = (
        v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None for v in values
    )
    if total is not None:
        return total
    if prompt is not None or completion is not None:
        return (prompt or 0) + (completion or 0)
    return None


class RetryPolicy:
    """stamina backoff hook: 429 waits ``Retry-After``; connect errors are retried up
    to ``MAX_CONNECT_RETRIES`` times; 5xx, timeouts and broken streams up to
    ``MAX_RETRIES`` times; everything else (bad key, bad request) is final."""

    def __init__(self) -> None:
        self.connect_failures = 0
        self.other_failures = 0

    def __call__(self, exc: Exception) -> bool | float:
        if isinstance(exc, errors.RateLimited):
            return exc.retry_after_s if exc.retry_after_s is not None else True
        if isinstance(exc, httpx2.ConnectError | httpx2.ConnectTimeout):
            self.connect_failures += 1
            return self.connect_failures <= MAX_CONNECT_RETRIES
        if isinstance(exc, errors.TransientUpstreamError):
            self.other_failures += 1
            return self.other_failures <= MAX_RETRIES
        return False


def _transport_error(exc: httpx2.TransportError, *, streaming: bool) -> errors.UpstreamError:
    if isinstance(exc, httpx2.ConnectError | httpx2.ConnectTimeout):
        return errors.UpstreamError(Code.UPSTREAM_UNAVAILABLE, f"cannot reach v0: {exc}")
    what = "the stream" if streaming else "the request"
    if isinstance(exc, httpx2.TimeoutException):
        code = Code.STREAM_INTERRUPTED if streaming else Code.UPSTREAM_UNAVAILABLE
        return errors.TransientUpstreamError(code, f"v0 timed out on {what} ({type(exc).__name__})")
    code = Code.STREAM_INTERRUPTED if streaming else Code.UPSTREAM_UNAVAILABLE
    return errors.TransientUpstreamError(
        code, f"the connection to v0 broke on {what}: {exc or type(exc).__name__}"
    )


# --- the client ---------------------------------------------------------------------------


@dataclass
class Answer:
    text: str
    finish_reason: str | None
    usage: dict[str, JsonValue] | None
    completion_id: str | None
    model: str | None
    chunks: int
    attempts: int
    retries: list[str] = field(default_factory=list)  # why each earlier attempt failed
    # Tokens of earlier attempts that began streaming and then failed (cut, an error
    # event, a stall): billed, but reported by no usage chunk (OpenAI-compatible
    # streams send usage last), so estimated as ``prompt_tokens`` + what streamed.
    broken_tokens: int = 0


@dataclass
class StreamState:
    chars: int = 0
    chunks: int = 0
    attempt: int = 1
    # v0 answered 200: the model ran, so the attempt is billed whatever happens next
    started: bool = False


OnStream = Callable[[StreamState], Awaitable[None]]
OnRetry = Callable[[int, str], Awaitable[None]]


class V0Client:
    """Speaks the v0 Model API. Holds no state but the shared HTTP client."""

    def __init__(self, http: httpx2.AsyncClient, base_url: str, api_key: str) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self._key = api_key
        # Token usage comes in a last chunk when asked with OpenAI's stream_options; a
        # server that refuses the field is asked without it from then on.
        self.ask_usage = True

    @property
    def url(self) -> str:
        return f"{self.base_url}/v1/chat/completions"

    async def complete(
        self,
        body: dict[str, JsonValue],
        *,
        on_stream: OnStream | None = None,
        on_retry: OnRetry | None = None,
    ) -> Answer:
        """Stream one completion, retrying what may be retried (see `RetryPolicy`).
        ``stream_options`` is added to ``body`` (for token usage) unless the server
        refused it before."""
        if self.ask_usage:
            asked: dict[str, JsonValue] = {**body, "stream_options": {"include_usage": True}}
            try:
                return await self._complete(asked, on_stream, on_retry)
            except errors.UpstreamError as exc:
                if exc.code != Code.INVALID_PARAMS or "stream_options" not in exc.detail:
                    raise
                log.warning("v0 refused stream_options; asking without (no token usage)")
                self.ask_usage = False
        return await self._complete(body, on_stream, on_retry)

    async def _complete(
        self, body: dict[str, JsonValue], on_stream: OnStream | None, on_retry: OnRetry | None
    ) -> Answer:
        policy = RetryPolicy()
        last: str = ""
        retries: list[str] = []
        broken = 0
        prompt = prompt_tokens(body)
        try:
            async for attempt in stamina.retry_context(
                on=policy, attempts=None, timeout=None, wait_max=10.0
            ):
                with attempt:
                    if attempt.num > 1:
                        retries.append(last[:300])
                        if on_retry is not None:
                            await on_retry(attempt.num, last)
                    state = StreamState(attempt=attempt.num)
                    try:
                        answer = await self._complete_once(body, state, on_stream)
                        answer.retries = retries
                        answer.broken_tokens = broken
                        return answer
                    except errors.UpstreamError as exc:
                        last = exc.detail
                        if state.started:  # billed, though no usage chunk came for it
                            broken += prompt + text_tokens(state.chars)
                        if broken:  # what the cost ledger counts if this is the last try
                            exc.extra["tokens"] = broken
                        raise
                    except httpx2.TransportError as exc:
                        last = str(exc) or type(exc).__name__
                        raise
        except httpx2.TransportError as exc:  # connect errors, retries spent
            raise _transport_error(exc, streaming=False) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _complete_once(
        self, body: dict[str, JsonValue], state: StreamState, on_stream: OnStream | None
    ) -> Answer:
        headers = {"authorization": f"Bearer {self._key}", "accept": "text/event-stream"}
        streaming = False
        try:
            async with self.http.stream("POST", self.url, json=body, headers=headers) as resp:
                if resp.status_code != 200:
                    raw = (await resp.aread()).decode("utf-8", "replace")
                    raise response_error(resp.status_code, raw, resp.headers.get("retry-after"))
                streaming = state.started = True
                kind = resp.headers.get("content-type", "").split(";")[0].strip().lower()
                if kind == "application/json":
                    return _whole_answer(await resp.aread(), state.attempt)
                return await _read_stream(resp, state, on_stream)
        except (httpx2.ConnectError, httpx2.ConnectTimeout):
            raise
        except httpx2.TransportError as exc:
            raise _transport_error(exc, streaming=streaming) from exc


async def _read_stream(
    resp: httpx2.Response, state: StreamState, on_stream: OnStream | None
) -> Answer:
    decoder = SseDecoder()
    parts: list[str] = []
    finish: str | None = None
    usage: dict[str, JsonValue] | None = None
    cid: str | None = None
    model: str | None = None
    done = False

    async def handle(data: str) -> bool:
        nonlocal finish, usage, cid, model
        event = interpret_event(data)
        if event == DONE:
            return True
        assert isinstance(event, Chunk)
        cid = cid or event.completion_id
        model = model or event.model
        finish = event.finish_reason or finish
        usage = event.usage or usage
        if event.content:
            parts.append(event.content)
            state.chars += len(event.content)
            state.chunks += 1
            if on_stream is not None:
                await on_stream(state)
        return False

    async for line in resp.aiter_lines():
        data = decoder.feed(line)
        if data is not None and await handle(data):
            done = True
            break
    if not done:
        tail = decoder.flush()
        done = tail is not None and await handle(tail)
    if not done and finish is None:
        raise errors.TransientUpstreamError(
            Code.STREAM_INTERRUPTED,
            f"the v0 stream ended before the answer was complete ({state.chars} characters "
            "received, no finish_reason and no [DONE])",
        )
    return Answer("".join(parts), finish, usage, cid, model, state.chunks, state.attempt)


def _whole_answer(raw: bytes, attempt: int) -> Answer:
    """A non-streamed ``chat.completion`` (a server that ignored ``stream``)."""
    event = interpret_event(raw.decode("utf-8", "replace"))
    if not isinstance(event, Chunk):
        raise errors.UpstreamError(Code.BAD_RESPONSE, "v0 answered JSON that is no completion")
    return Answer(
        event.content,
        event.finish_reason,
        event.usage,
        event.completion_id,
        event.model,
        1,
        attempt,
    )


# --- the backend ----------------------------------------------------------------------------


@dataclass
class _Prepared:
    messages: list[dict[str, JsonValue]]
    record: dict[str, JsonValue] = field(default_factory=dict)


StoreInput = Callable[[str], Awaitable[str]]


class V0Backend(Backend):
    name = "v0"

    def __init__(
        self,
        http: httpx2.AsyncClient,
        *,
        base_url: str,
        api_key: str | None,
        inputs: InputStore,
        pages: v0_prompt.PageSource | None = None,
        max_active: int = 4,
        deadline_s: float = 600.0,
        progress_interval_s: float = PROGRESS_INTERVAL_S,
        simulated: bool = False,
    ) -> None:
        self.simulated = simulated
        self.max_active = max_active
        self.inputs = inputs
        self.pages = pages
        self.progress_interval_s = progress_interval_s
        self._deadline_s = deadline_s
        self.client = V0Client(http, base_url, api_key) if api_key else None
        self._local: set[str] = set()  # jobs submitted by this process

    @property
    def enabled(self) -> bool:
        return self.client is not None

    @property
    def disabled_reason(self) -> str | None:
        return None if self.client else "V0_API_KEY is not set"

    def limit_groups(self, model: str) -> Sequence[tuple[str, int]]:
        return [("v0", self.max_active)]

    def default_deadline_s(self) -> float:
        return self._deadline_s

    def _client(self) -> V0Client:
        if self.client is None:
            raise errors.BackendDisabled("v0 is disabled: V0_API_KEY is not set")
        return self.client

    # --- submit-time checks (called by the service before the job exists) ---------------
    async def check_params(self, params: V0Params, store_input: StoreInput) -> dict[str, JsonValue]:
        """The job's stored parameters: the page must exist (422 otherwise, before
        anything is spent); images become ``input:`` references (``asset:`` ones are
        checked and kept)."""
        if params.site_page_id is not None:
            await self._page(params.site_page_id, at_submit=True)
        refs: list[JsonValue] = []
        for i, value in enumerate(params.images):
            if value.startswith(ASSET_PREFIX):
                await self._asset(value, at_submit=True, index=i)
                refs.append(value)
            else:
                refs.append(await store_input(value))
        out: dict[str, JsonValue] = params.model_dump(mode="json", exclude={"model"})
        out["images"] = refs
        return out

    async def _page(self, page_id: str, *, at_submit: bool) -> v0_prompt.PageContext:
        if self.pages is None:
            msg = "site pages are not available here (no Tilda import is wired in)"
            if at_submit:
                raise _field_error("site_page_id", msg)
            raise errors.UpstreamError(Code.INVALID_INPUT, msg)
        try:
            return await self.pages.page_context(page_id)
        except errors.NotFound:
            msg = f"no imported site page {page_id!r}"
            if at_submit:
                raise _field_error("site_page_id", msg) from None
            raise errors.UpstreamError(
                Code.INVALID_INPUT, f"{msg} (it was removed after the job was queued)"
            ) from None

    async def _asset(self, ref: str, *, at_submit: bool, index: int = 0) -> v0_prompt.ImageData:
        asset_id = ref.removeprefix(ASSET_PREFIX)
        try:
            if self.pages is None:
                raise errors.NotFound("no Tilda import is wired in")
            raw = await self.pages.asset_image(asset_id)
            return await asyncio.to_thread(v0_prompt.prepare_image, raw)
        except (errors.NotFound, ValueError) as exc:
            msg = f"image {ref}: {exc}"
            if at_submit:
                raise _field_error(f"images.{index}", msg, ["images", index]) from None
            raise errors.UpstreamError(Code.INVALID_INPUT, msg) from None

    # --- running -------------------------------------------------------------------------
    async def submit(self, job: Job, planned: UpstreamHandle | None = None) -> Submitted:
        # Nothing to send yet: a chat completion is one streamed request, made in wait().
        self._client()
        self._local.add(job.id)
        return Submitted(UpstreamHandle(task_id=f"v0-chat-{job.id}"))

    async def wait(self, job: Job, handle: UpstreamHandle, progress: ProgressFn) -> Completed:
        client = self._client()
        if job.id not in self._local:
            raise errors.UpstreamError(
                Code.SUBMIT_INTERRUPTED,
                "the worker running this v0 job stopped while the answer was streaming; a "
                "chat completion cannot be re-attached, and it is not sent again because "
                "v0 may have billed it. Retry the job to run it again.",
            )
        try:
            params = V0Params.model_validate({**job.params, "model": job.model})
            prepared = await self._prepare(params)
            body: dict[str, JsonValue] = {
                "model": params.model,
                "messages": list[JsonValue](prepared.messages),
                "stream": True,
            }
            if params.max_completion_tokens is not None:
                body["max_completion_tokens"] = params.max_completion_tokens
            await progress(None, _context_note(prepared.record))
            answer = await client.complete(
                body,
                on_stream=self._throttled(progress),
                on_retry=lambda n, why: progress(None, f"attempt {n} after: {why}"[:500]),
            )
        finally:
            self._local.discard(job.id)
        # every attempt's tokens: the answer's usage and the broken attempts' estimate
        tokens = (total_tokens(answer.usage) or 0) + answer.broken_tokens or None
        code = v0_prompt.extract_code(answer.text) if params.output_format == "tsx" else None
        if params.output_format == "tsx" and code is None:
            raise errors.UpstreamError(
                Code.GENERATION_FAILED,
                "v0 answered without any code block",
                answer_start=answer.text[:500],
                usage=answer.usage,
                tokens=tokens,
            )
        truncated = answer.finish_reason == "length"
        await progress(
            1.0,
            f"answer complete: {len(answer.text)} characters"
            + (" (cut at max_completion_tokens)" if truncated else ""),
        )
        record: dict[str, JsonValue] = {
            **prepared.record,
            "completion_id": answer.completion_id,
            "upstream_model": answer.model,
            "usage": answer.usage,
            "finish_reason": answer.finish_reason,
            "truncated": truncated,
            "answer_chars": len(answer.text),
            "chunks": answer.chunks,
            "attempts": answer.attempts,
            "retried_after": list[JsonValue](answer.retries),
        }
        # "tokens" is what the cost ledger counts
        details: dict[str, JsonValue] = {
            "answer": answer.text,
            "code": code,
            "tokens": tokens,
            **record,
        }
        files = [RemoteFile("code", CODE_MIME)] if code is not None else []
        files.append(RemoteFile("answer", MARKDOWN_MIME))
        return Completed(files, details, record=record)

    def _throttled(self, progress: ProgressFn) -> OnStream:
        last = 0.0

        async def report(state: StreamState) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last < self.progress_interval_s:
                return
            last = now
            await progress(None, f"streaming: {state.chars} characters ({state.chunks} chunks)")

        return report

    async def _prepare(self, params: V0Params) -> _Prepared:
        page = None
        page_images: list[v0_prompt.ImageData] = []
        record: dict[str, JsonValue] = {}
        if params.site_page_id is not None:
            page = await self._page(params.site_page_id, at_submit=False)
            skipped = 0
            for asset_id in page.image_ids:
                if len(page_images) >= params.page_images:
                    break
                try:
                    page_images.append(await self._asset(ASSET_PREFIX + asset_id, at_submit=False))
                except errors.UpstreamError:
                    skipped += 1  # an SVG, a missing file: the page text still goes
            record["site_page"] = {
                "id": page.page_id,
                "title": page.title,
                "blocks": len(page.blocks),
                "images_sent": len(page_images),
                "images_skipped": skipped,
            }
        images = [await self._image(ref) for ref in params.images]
        messages = v0_prompt.build_messages(
            prompt=params.prompt,
            output_format=params.output_format,
            system=params.system,
            page=page,
            page_images=page_images,
            images=images,
        )
        record["images_sent"] = len(images) + len(page_images)
        return _Prepared(messages, record)

    async def _image(self, ref: str) -> v0_prompt.ImageData:
        if ref.startswith(ASSET_PREFIX):
            return await self._asset(ref, at_submit=False)
        try:
            path = await self.inputs.fetch(ref)  # from the output store on another node
            data = await asyncio.to_thread(path.read_bytes)
            return await asyncio.to_thread(
                v0_prompt.prepare_image, v0_prompt.ImageData("application/octet-stream", data)
            )
        except (errors.InvalidRequest, OSError, ValueError) as exc:
            raise errors.UpstreamError(Code.INVALID_INPUT, f"image {ref}: {exc}") from None

    async def fetch_outputs(
        self, job: Job, handle: UpstreamHandle, completed: Completed, store: OutputStore
    ) -> list[NewOutput]:
        outputs = []
        for n, remote in enumerate(completed.files):
            text = completed.details.get(remote.ref)
            assert isinstance(text, str)
            outputs.append(
                await store.save_text(job, n, text, mime_type=remote.mime_type or MARKDOWN_MIME)
            )
        return outputs

    async def cancel(
        self, job: Job, handle: UpstreamHandle | None, *, submit_started: bool = False
    ) -> CancelOutcome:
        # submit() sends nothing (the request is made in wait()): without a handle,
        # nothing went to v0 whatever ``submit_started`` says.
        self._local.discard(job.id)
        if handle is None:
            return CancelOutcome(True, "canceled before anything was sent to v0")
        return CancelOutcome(
            True, "the v0 stream was closed; v0 may bill the tokens generated until then"
        )

    async def health(self) -> BackendHealth:
        details: dict[str, JsonValue] = {
            "models": list(V0_MODELS),
            "page_context": self.pages is not None,
        }
        if self.client is None:
            return BackendHealth(
                name=self.name,
                enabled=False,
                simulated=self.simulated,
                status="disabled",
                reason=self.disabled_reason,
                details=details,
            )
        # The v0 API has no free endpoint to probe: a configured key is reported as ok
        # (a bad one shows as upstream_auth on the first job).
        details["verified"] = False
        return BackendHealth(
            name=self.name, enabled=True, simulated=self.simulated, status="ok", details=details
        )


def _context_note(record: dict[str, JsonValue]) -> str:
    page = record.get("site_page")
    images = record.get("images_sent", 0)
    if isinstance(page, dict):
        return (
            f"asking v0 with page {page.get('id')} ({page.get('blocks')} blocks, {images} images)"
        )
    return f"asking v0 ({images} images)"


def _field_error(name: str, msg: str, loc: list[JsonValue] | None = None) -> errors.InvalidRequest:
    where: list[JsonValue] = ["body", "params", *(loc or [name])]
    return errors.InvalidRequest(
        f"params.{name}: {msg}", errors=[{"loc": where, "msg": msg, "type": "value_error"}]
    )
