"""Black Forest Labs FLUX: the client and the backend built on it.

Contract (``shared/reference/bfl.md``): ``POST /v1/{model}`` with ``x-key`` returns
``{id, polling_url, cost}``; poll exactly that ``polling_url`` (it names the cluster
that took the task — never build it by hand) until a terminal status; download
``result.sample`` at once, without the key (it is a signed URL valid for 10 minutes).

Trust: ``x-key`` goes only over https to hosts on ``FLUX_KEY_HOSTS`` (BFL's global,
regional and cluster hosts) or to FLUX_BASE_URL's own origin. The ``polling_url`` and
``sample`` BFL answers are followed only when they are https on those hosts (samples:
``FLUX_RESULT_HOSTS``) or on the configured origin, and only to public addresses unless
``UPSTREAM_ALLOW_PRIVATE`` (``outbound.AddressGuard``); redirects are checked hop by hop.
Anything else fails the job with ``untrusted_url``. A download stops at
``FLUX_MAX_OUTPUT_MB`` (``output_too_large``) and ``DOWNLOAD_TIMEOUT_S``
(``download_timeout``), and must decode as an image (``invalid_output``).

Retries (stamina): 429 honours ``Retry-After``; connect errors are retried everywhere
(nothing reached BFL); 5xx, timeouts and malformed bodies are retried only on GETs —
a submit that may have reached BFL is never repeated, because that could pay twice.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal

import httpx2
import stamina
from pydantic import JsonValue, ValidationError

from orchestrator import errors, logs
from orchestrator.backends.base import (
    Backend,
    BackendHealth,
    CancelOutcome,
    Completed,
    ProgressFn,
    RemoteFile,
    Submitted,
)
from orchestrator.db.jobs import NewOutput
from orchestrator.domain.hosts import (
    UntrustedUrl,
    check_upstream_url,
    host_allowed,
    origin,
    parse_patterns,
)
from orchestrator.domain.jobs import Job, UpstreamHandle
from orchestrator.domain.params import FLUX_MODELS, FluxResult
from orchestrator.outbound import AddressGuard, Refused, guarded_stream
from orchestrator.storage import OutputStore

log = logs.get(__name__)
Code = errors.ErrorCode

MAX_CONNECT_RETRIES = 5
MAX_GET_RETRIES = 8
MAX_RETRY_AFTER_S = 60.0
# A drawn seed fits 32 bits, well inside what every FLUX endpoint takes (Seed: 2**53 - 1).
FLUX_SEED_RANGE = 2**32
DEFAULT_KEY_HOSTS = "api.bfl.ai,api.eu*.bfl.ai,api.us*.bfl.ai"
DEFAULT_RESULT_HOSTS = "*.bfl.ai,bfldelivery*.blob.core.windows.net"


# --- pure decisions (table-tested) ----------------------------------------------------


def retry_after_seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def submit_error(status: int, body: str, retry_after: str | None) -> errors.UpstreamError:
    """The error a non-200 submit response means."""
    detail = _detail(body)
    if status == 429:
        return errors.RateLimited(
            f"BFL is at its active-task limit: {detail}", retry_after_seconds(retry_after)
        )
    if status == 402:
        return errors.UpstreamError(Code.INSUFFICIENT_CREDITS, f"BFL: {detail}")
    if status in (401, 403):
        return errors.UpstreamError(Code.UPSTREAM_AUTH, f"BFL refused the API key: {detail}")
    if status in (400, 404, 422):
        return errors.UpstreamError(
            Code.INVALID_PARAMS,
            f"BFL rejected the parameters: {detail}",
            upstream_detail=_detail_json(body),
        )
    return errors.UpstreamError(
        Code.UPSTREAM_ERROR,
        f"BFL answered {status} to the submit; not resubmitted because it may have been "
        f"accepted (and billed): {detail}",
        http_status=status,
    )


def get_error(status: int, body: str, retry_after: str | None, what: str) -> errors.UpstreamError:
    """The error a non-200 response to a GET (poll, credits) means."""
    detail = _detail(body)
    if status == 429:
        return errors.RateLimited(f"BFL rate limit on {what}", retry_after_seconds(retry_after))
    if status in (401, 403):
        return errors.UpstreamError(Code.UPSTREAM_AUTH, f"BFL refused the API key on {what}")
    if status >= 500:
        return errors.TransientUpstreamError(
            Code.UPSTREAM_UNAVAILABLE,
            f"BFL answered {status} on {what}: {detail}",
            http_status=status,
        )
    return errors.UpstreamError(
        Code.UPSTREAM_ERROR, f"BFL answered {status} on {what}: {detail}", http_status=status
    )


@dataclass(frozen=True)
class Pending:
    progress: float | None


@dataclass(frozen=True)
class Ready:
    result: FluxResult


PollOutcome = Pending | Ready


def interpret_poll(body: JsonValue) -> PollOutcome:
    """Map a ``get_result`` body to pending, ready, or raise the job's error."""
    if not isinstance(body, dict):
        raise errors.TransientUpstreamError(Code.BAD_RESPONSE, "BFL poll answer is not an object")
    status = body.get("status")
    details = body.get("details")
    if status == "Pending":
        p = body.get("progress")
        progress = float(p) if isinstance(p, int | float) and not isinstance(p, bool) else None
        if progress is not None:
            progress = min(max(progress if progress <= 1 else progress / 100, 0.0), 1.0)
        return Pending(progress)
    if status == "Ready":
        try:
            return Ready(FluxResult.model_validate(body.get("result")))
        except ValidationError as exc:
            raise errors.UpstreamError(
                Code.BAD_RESPONSE, "BFL said Ready without a result sample"
            ) from exc
    if status in ("Request Moderated", "Content Moderated"):
        stage: Literal["request", "content"] = (
            "request" if status.startswith("Request") else "content"
        )
        reasons: list[JsonValue] = []
        if isinstance(details, dict):
            raw = details.get("Moderation Reasons")
            if isinstance(raw, list):
                reasons = [str(r) for r in raw]
        why = ", ".join(str(r) for r in reasons) or "no reason given"
        raise errors.UpstreamError(
            Code.MODERATED,
            f"BFL moderated the {'prompt or inputs' if stage == 'request' else 'output'}: {why}",
            stage=stage,
            reasons=reasons,
        )
    if status == "Error":
        raise errors.UpstreamError(
            Code.GENERATION_FAILED,
            "BFL reported an error generating the image",
            upstream_details=details if isinstance(details, dict) else None,
        )
    if status == "Task not found":
        raise errors.UpstreamError(
            Code.TASK_NOT_FOUND, "BFL does not know this task (unknown id, or it expired)"
        )
    raise errors.UpstreamError(Code.UPSTREAM_ERROR, f"BFL returned an unknown status {status!r}")


def _detail(body: str) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        text = " ".join(body.split())
        return text[:200] or "(empty body)"
    if isinstance(doc, dict) and "detail" in doc:
        d = doc["detail"]
        if isinstance(d, list):
            parts = []
            for item in d:
                if isinstance(item, dict):
                    loc = ".".join(str(x) for x in item.get("loc", []) if x != "body")
                    parts.append(f"{loc}: {item.get('msg', '')}")
            return "; ".join(parts) or str(d)
        return str(d)
    return json.dumps(doc)[:200]


def _detail_json(body: str) -> JsonValue:
    try:
        doc: JsonValue = json.loads(body)
    except ValueError:
        return None
    return doc.get("detail") if isinstance(doc, dict) else doc


class _RetryBudget:
    """stamina backoff hook: which failures to retry, and for how long to wait."""

    def __init__(self, *, idempotent: bool) -> None:
        self.idempotent = idempotent
        self.connect_failures = 0
        self.other_failures = 0

    def __call__(self, exc: Exception) -> bool | float:
        if isinstance(exc, errors.RateLimited):
            return exc.retry_after_s if exc.retry_after_s is not None else True
        if isinstance(exc, httpx2.ConnectError | httpx2.ConnectTimeout):
            self.connect_failures += 1
            return self.connect_failures <= MAX_CONNECT_RETRIES
        if not self.idempotent:
            return False
        if isinstance(exc, errors.TransientUpstreamError | httpx2.TransportError):
            self.other_failures += 1
            return self.other_failures <= MAX_GET_RETRIES
        return False


def _transport_error(exc: httpx2.TransportError, what: str) -> errors.UpstreamError:
    if isinstance(exc, httpx2.ConnectError | httpx2.ConnectTimeout):
        return errors.UpstreamError(
            Code.UPSTREAM_UNAVAILABLE, f"cannot reach BFL for {what}: {exc}"
        )
    if isinstance(exc, httpx2.TimeoutException):
        return errors.UpstreamError(Code.UPSTREAM_UNAVAILABLE, f"BFL timed out on {what}")
    return errors.UpstreamError(
        Code.UPSTREAM_UNAVAILABLE, f"connection to BFL failed on {what}: {exc}"
    )


# --- the client ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SubmitResponse:
    id: str
    polling_url: str
    cost: float | None


class FluxClient:
    """Speaks BFL's HTTP API. Holds no state but the shared HTTP client."""

    def __init__(
        self,
        http: httpx2.AsyncClient,
        base_url: str,
        api_key: str,
        *,
        key_hosts: str = DEFAULT_KEY_HOSTS,
        result_hosts: str = DEFAULT_RESULT_HOSTS,
        guard: AddressGuard | None = None,
    ) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self._key = api_key
        self._base_origin = origin(self.base_url)
        self._key_hosts = parse_patterns(key_hosts)
        self._result_hosts = parse_patterns(result_hosts)
        self._guard = guard or AddressGuard(False, "UPSTREAM_ALLOW_PRIVATE")

    def _auth(self, url: str) -> dict[str, str]:
        """``x-key`` goes only to the configured origin, or over https to a host on
        FLUX_KEY_HOSTS (port 443 unless the pattern names another)."""
        if origin(url) == self._base_origin or host_allowed(url, self._key_hosts):
            return {"x-key": self._key}
        return {}

    def _poll_trusted(self, url: str) -> bool:
        return check_upstream_url(
            url,
            patterns=self._key_hosts,
            trusted_origins=[self._base_origin],
            what="BFL's polling_url",
            setting="FLUX_KEY_HOSTS",
        )

    def _sample_trusted(self, url: str) -> bool:
        return check_upstream_url(
            url,
            patterns=self._result_hosts,
            trusted_origins=[self._base_origin],
            what="BFL's result URL",
            setting="FLUX_RESULT_HOSTS",
        )

    async def submit(self, model: str, body: dict[str, object]) -> SubmitResponse:
        url = f"{self.base_url}/v1/{model}"
        budget = _RetryBudget(idempotent=False)
        try:
            async for attempt in stamina.retry_context(
                on=budget, attempts=None, timeout=None, wait_max=10.0
            ):
                with attempt:
                    return await self._submit_once(url, body)
        except httpx2.TransportError as exc:  # connect errors only: nothing was sent
            raise _transport_error(exc, "the submit") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _submit_once(self, url: str, body: dict[str, object]) -> SubmitResponse:
        try:
            resp = await self.http.post(url, json=body, headers=self._auth(url))
        except (httpx2.ConnectError, httpx2.ConnectTimeout):
            raise
        except httpx2.TransportError as exc:
            raise errors.UpstreamError(
                Code.SUBMIT_UNCERTAIN,
                f"the submit to BFL failed after it was sent ({type(exc).__name__}); "
                "not resubmitted because BFL may have accepted (and billed) it",
            ) from exc
        if resp.status_code != 200:
            raise submit_error(resp.status_code, resp.text, resp.headers.get("retry-after"))
        try:
            doc = resp.json()
            return SubmitResponse(
                id=str(doc["id"]),
                polling_url=str(doc["polling_url"]),
                cost=float(doc["cost"]) if doc.get("cost") is not None else None,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise errors.UpstreamError(
                Code.SUBMIT_UNCERTAIN,
                "BFL accepted the submit but its answer could not be read; "
                "not resubmitted because the task may exist",
            ) from exc

    async def get_result(self, polling_url: str) -> tuple[PollOutcome, float | None]:
        """One poll (with retries of transient failures). Returns the outcome and
        the server's ``Retry-After`` hint."""
        budget = _RetryBudget(idempotent=True)
        try:
            async for attempt in stamina.retry_context(
                on=budget, attempts=None, timeout=None, wait_max=5.0
            ):
                with attempt:
                    return await self._poll_once(polling_url)
        except httpx2.TransportError as exc:
            raise _transport_error(exc, "the poll") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _poll_once(self, polling_url: str) -> tuple[PollOutcome, float | None]:
        try:
            async with guarded_stream(
                self.http,
                polling_url,
                guard=self._guard,
                trusted=self._poll_trusted,
                headers=self._auth,
            ) as resp:
                await resp.aread()
        except (UntrustedUrl, Refused) as exc:
            raise untrusted(exc) from None
        except OSError as exc:  # the cluster's name did not resolve
            raise errors.TransientUpstreamError(
                Code.UPSTREAM_UNAVAILABLE, f"cannot resolve BFL's polling host: {exc}"
            ) from None
        hint = retry_after_seconds(resp.headers.get("retry-after"))
        if resp.status_code != 200:
            raise get_error(resp.status_code, resp.text, resp.headers.get("retry-after"), "poll")
        try:
            body: JsonValue = resp.json()
        except ValueError as exc:
            raise errors.TransientUpstreamError(
                Code.BAD_RESPONSE, "BFL poll answer is not valid JSON"
            ) from exc
        return interpret_poll(body), hint

    async def credits(self) -> float:
        url = f"{self.base_url}/v1/credits"
        resp = await self.http.get(url, headers=self._auth(url))
        if resp.status_code != 200:
            raise get_error(resp.status_code, resp.text, resp.headers.get("retry-after"), "credits")
        return float(resp.json()["credits"])

    def download(self, sample_url: str) -> AsyncIterator[bytes]:
        """Stream the sample (no ``x-key``: it is a signed URL)."""
        return self._download(sample_url)

    async def _download(self, sample_url: str) -> AsyncIterator[bytes]:
        try:
            async with guarded_stream(
                self.http, sample_url, guard=self._guard, trusted=self._sample_trusted
            ) as resp:
                if resp.status_code in (401, 403, 404, 410):
                    raise errors.UpstreamError(
                        Code.RESULT_EXPIRED,
                        f"the result URL answered {resp.status_code}: it expired or is invalid",
                    )
                if resp.status_code != 200:
                    raise errors.TransientUpstreamError(
                        Code.UPSTREAM_UNAVAILABLE, f"result download answered {resp.status_code}"
                    )
                async for chunk in resp.aiter_bytes(64 * 1024):
                    yield chunk
        except (UntrustedUrl, Refused) as exc:
            raise untrusted(exc) from None
        except OSError as exc:  # the delivery host's name did not resolve
            raise errors.TransientUpstreamError(
                Code.UPSTREAM_UNAVAILABLE, f"cannot resolve the result URL's host: {exc}"
            ) from None


def untrusted(exc: Exception) -> errors.UpstreamError:
    return errors.UpstreamError(
        Code.UNTRUSTED_URL, f"refused to follow a URL BFL handed over: {exc}"
    )


# --- the backend ----------------------------------------------------------------------------


class FluxBackend(Backend):
    name = "flux"

    def __init__(
        self,
        http: httpx2.AsyncClient,
        *,
        base_url: str,
        api_key: str | None,
        max_active: int = 24,
        kontext_max_active: int = 6,
        poll_interval_s: float = 0.5,
        deadline_s: float = 600.0,
        simulated: bool = False,
        key_hosts: str = DEFAULT_KEY_HOSTS,
        result_hosts: str = DEFAULT_RESULT_HOSTS,
        guard: AddressGuard | None = None,
        max_output_bytes: int = 64 * 1024 * 1024,
        download_timeout_s: float = 300.0,
    ) -> None:
        self.simulated = simulated
        self.max_active = max_active
        self.kontext_max_active = kontext_max_active
        self.poll_interval_s = poll_interval_s
        self._deadline_s = deadline_s
        self.max_output_bytes = max_output_bytes
        self.download_timeout_s = download_timeout_s
        self.client = (
            FluxClient(
                http,
                base_url,
                api_key,
                key_hosts=key_hosts,
                result_hosts=result_hosts,
                guard=guard,
            )
            if api_key
            else None
        )

    @property
    def enabled(self) -> bool:
        return self.client is not None

    @property
    def disabled_reason(self) -> str | None:
        return None if self.client else "BFL_API_KEY is not set"

    def prepare(self, params: dict[str, JsonValue]) -> dict[str, JsonValue]:
        """Every FLUX model takes a seed: draw one when none was given, so the job
        records (and a retry reuses) the seed BFL was sent, not one BFL chose."""
        if params.get("seed") is None:
            params = {**params, "seed": random.randrange(FLUX_SEED_RANGE)}
        return params

    def limit_groups(self, model: str) -> Sequence[tuple[str, int]]:
        groups = [("flux", self.max_active)]
        if model == "flux-kontext-max":
            groups.append(("flux:flux-kontext-max", self.kontext_max_active))
        return groups

    def default_deadline_s(self) -> float:
        return self._deadline_s

    def _client(self) -> FluxClient:
        if self.client is None:
            raise errors.BackendDisabled("flux is disabled: BFL_API_KEY is not set")
        return self.client

    async def submit(self, job: Job, planned: UpstreamHandle | None = None) -> Submitted:
        model_cls = FLUX_MODELS[job.model]
        body = model_cls.model_validate({**job.params, "model": job.model}).upstream_body()
        sub = await self._client().submit(job.model, body)
        return Submitted(UpstreamHandle(task_id=sub.id, polling_url=sub.polling_url), sub.cost)

    async def wait(self, job: Job, handle: UpstreamHandle, progress: ProgressFn) -> Completed:
        client = self._client()
        if not handle.polling_url:
            raise errors.UpstreamError(Code.TASK_NOT_FOUND, "the stored handle has no polling_url")
        last: float | None = -1.0
        while True:
            outcome, hint = await client.get_result(handle.polling_url)
            if isinstance(outcome, Ready):
                details: dict[str, JsonValue] = {
                    k: v
                    for k, v in outcome.result.model_dump(mode="json").items()
                    if k in ("seed", "duration", "start_time", "end_time")
                }
                return Completed([RemoteFile(outcome.result.sample)], details)
            if outcome.progress != last:
                last = outcome.progress
                await progress(outcome.progress, None)
            await asyncio.sleep(max(self.poll_interval_s, min(hint or 0.0, 5.0)))

    async def fetch_outputs(
        self, job: Job, handle: UpstreamHandle, completed: Completed, store: OutputStore
    ) -> list[NewOutput]:
        client = self._client()
        outputs = []
        for n, remote in enumerate(completed.files):
            url = remote.ref
            budget = _RetryBudget(idempotent=True)
            refreshed = False
            while True:
                try:
                    async for attempt in stamina.retry_context(
                        on=budget, attempts=None, timeout=None, wait_max=5.0
                    ):
                        with attempt:
                            outputs.append(
                                await store.save(
                                    job,
                                    n,
                                    client.download(url),
                                    extra_metadata={"seed": completed.details.get("seed")},
                                    max_bytes=self.max_output_bytes,
                                    timeout_s=self.download_timeout_s,
                                    expect_image=True,
                                )
                            )
                    break
                except errors.UpstreamError as exc:
                    # An expired signed URL: ask BFL once more for a fresh one.
                    if exc.code != Code.RESULT_EXPIRED or refreshed or not handle.polling_url:
                        raise
                    refreshed = True
                    outcome, _ = await client.get_result(handle.polling_url)
                    if not isinstance(outcome, Ready) or outcome.result.sample == url:
                        raise
                    url = outcome.result.sample
                except httpx2.TransportError as exc:
                    raise _transport_error(exc, "the result download") from exc
        return outputs

    async def cancel(
        self, job: Job, handle: UpstreamHandle | None, *, submit_started: bool = False
    ) -> CancelOutcome:
        # BFL has no cancel endpoint: we stop polling; upstream may still finish
        # and bill the task.
        if handle is not None:
            note = (
                "BFL cannot cancel a submitted task: polling stopped; BFL may still finish "
                "and bill it"
            )
            return CancelOutcome(stopped_upstream=False, note=note)
        if submit_started:
            note = (
                "canceled while the submit to BFL was in flight; BFL may have accepted and "
                "billed it"
            )
            return CancelOutcome(stopped_upstream=False, note=note)
        return CancelOutcome(stopped_upstream=True, note="canceled before anything was sent to BFL")

    async def health(self) -> BackendHealth:
        if self.client is None:
            return BackendHealth(
                name=self.name,
                enabled=False,
                simulated=self.simulated,
                status="disabled",
                reason=self.disabled_reason,
            )
        started = time.perf_counter()
        try:
            credits = await self.client.credits()
        except errors.UpstreamError as exc:
            return BackendHealth(
                name=self.name,
                enabled=True,
                simulated=self.simulated,
                status="down",
                reason=exc.detail,
            )
        except httpx2.HTTPError as exc:
            return BackendHealth(
                name=self.name,
                enabled=True,
                simulated=self.simulated,
                status="down",
                reason=str(_transport_error(exc, "the health check"))
                if isinstance(exc, httpx2.TransportError)
                else str(exc),
            )
        return BackendHealth(
            name=self.name,
            enabled=True,
            simulated=self.simulated,
            status="ok",
            latency_ms=round((time.perf_counter() - started) * 1000, 1),
            details={"credits": credits},
        )
