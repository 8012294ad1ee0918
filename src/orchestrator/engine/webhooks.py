"""The webhook delivery loop: takes due deliveries from the outbox (the
``webhook_deliveries`` table) under a lease, POSTs each one signed per Standard
Webhooks, records every attempt, and retries failures with exponential backoff and
jitter until the delivery's ``expires_at`` (``WEBHOOK_MAX_AGE_S`` after the event).

Any number of processes may run it: a delivery is leased by one of them at a time.
This process is woken at once when it queues a delivery itself (through the hub);
deliveries queued elsewhere are found by polling.

SSRF guard (``outbound.AddressGuard``): unless ``WEBHOOK_ALLOW_PRIVATE``, the target's
host name is resolved here, every address it resolves to must be public, and the
request is sent to the address that was checked (``Host`` header and TLS server name
keep the original name), so a second DNS answer cannot redirect it. Redirects are
never followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx2
from standardwebhooks import Webhook

from orchestrator import logs
from orchestrator.db.webhooks import DueDelivery, WebhookRepo
from orchestrator.domain.webhooks import DeliveryStatus, retry_delay
from orchestrator.engine.hub import Hub
from orchestrator.metrics import Metrics
from orchestrator.outbound import AddressGuard, Refused, Resolver, Route, system_resolver

log = logs.get(__name__)

BODY_SNIPPET_BYTES = 300


@dataclass
class WebhookOptions:
    concurrency: int = 16
    poll_interval_s: float = 1.0
    backoff_base_s: float = 5.0
    backoff_cap_s: float = 3600.0
    shutdown_grace_s: float = 5.0
    resolver: Resolver = field(default=system_resolver)


def utcnow() -> datetime:
    return datetime.now(UTC)


class WebhookDispatcher:
    def __init__(
        self,
        repo: WebhookRepo,
        http: httpx2.AsyncClient,
        hub: Hub,
        *,
        secret: str,
        allow_private: bool,
        timeout_s: float,
        options: WebhookOptions | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.repo = repo
        self.metrics = metrics
        self.http = http
        self.hub = hub
        self.signer = Webhook(secret)
        self.allow_private = allow_private
        self.timeout_s = timeout_s
        self.opts = options or WebhookOptions()
        self._guard = AddressGuard(allow_private, "WEBHOOK_ALLOW_PRIVATE", self.opts.resolver)
        self.id = f"{socket.gethostname()}:{os.getpid()}:wh-{uuid.uuid4().hex[:6]}"
        self.lease_s = timeout_s + 30.0
        self._wake = hub.webhooks_changed
        self._stopping = asyncio.Event()
        self._main: asyncio.Task[None] | None = None
        self._in_flight: dict[str, tuple[tuple[str, str], asyncio.Task[None]]] = {}

    # --- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        self._main = asyncio.create_task(self._loop(), name=f"webhooks-{self.id}")
        log.info("webhook delivery started", dispatcher=self.id)

    async def stop(self) -> None:
        """Stop claiming; give in-flight attempts a short grace, then hand what is
        left back to the outbox (any process sends it next)."""
        self._stopping.set()
        self._wake.set()
        if self._main is not None:
            await asyncio.gather(self._main, return_exceptions=True)
        tasks = [t for _key, t in self._in_flight.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=self.opts.shutdown_grace_s)
        left = list(self._in_flight)
        for _key, t in self._in_flight.values():
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if left:
            with contextlib.suppress(Exception):
                await self.repo.release(self.id, left)
        log.info("webhook delivery stopped", dispatcher=self.id)

    # --- the loop -------------------------------------------------------------------------
    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._wake.clear()
                free = self.opts.concurrency - len(self._in_flight)
                if free > 0:
                    busy = {key for key, _t in self._in_flight.values()}
                    due = await self.repo.claim_due(
                        self.id, self.lease_s, free, utcnow(), busy=busy
                    )
                    for d in due:
                        self._spawn(d)
                    if due and len(due) == free:
                        continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.opts.poll_interval_s):
                        await self._wake.wait()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook loop error; retrying")
                await asyncio.sleep(self.opts.poll_interval_s)

    def _spawn(self, d: DueDelivery) -> None:
        task = asyncio.create_task(self._deliver(d), name=f"webhook-{d.id}")
        self._in_flight[d.id] = ((d.job_id, d.url), task)

        def done(_t: asyncio.Task[None]) -> None:
            self._in_flight.pop(d.id, None)
            self._wake.set()  # the next event for the same receiver may go now

        task.add_done_callback(done)

    # --- one attempt ------------------------------------------------------------------------
    async def _deliver(self, d: DueDelivery) -> None:
        try:
            await self._attempt(d)
        except Exception:
            # e.g. the database is down: the lease runs out and the delivery is due again
            log.exception("webhook attempt could not be recorded", delivery_id=d.id)

    async def _attempt(self, d: DueDelivery) -> None:
        at = utcnow()
        started = time.monotonic()
        status_code: int | None = None
        error: str | None = None
        refused = False
        try:
            async with asyncio.timeout(self.timeout_s):
                route = await self.route(d.url)
                status_code, error = await self._post(d, route)
        except Refused as exc:
            refused, error = True, f"refused: {exc}"
        except TimeoutError:
            error = f"no answer within WEBHOOK_TIMEOUT_S ({self.timeout_s:g} s)"
        except httpx2.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except OSError as exc:  # DNS failure and the like
            error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # anything else still counts as a failed attempt
            log.exception("unexpected error sending a webhook", delivery_id=d.id)
            error = f"internal error: {type(exc).__name__}"
        latency_ms = round((time.monotonic() - started) * 1000, 1)
        now = utcnow()
        next_at: datetime | None = None
        if error is None:
            outcome = DeliveryStatus.SUCCEEDED
        elif refused:
            outcome = DeliveryStatus.FAILED
        else:
            delay = retry_delay(
                d.attempts + 1, base_s=self.opts.backoff_base_s, cap_s=self.opts.backoff_cap_s
            )
            next_at = now + timedelta(seconds=delay)
            if next_at > d.expires_at:
                outcome, next_at = DeliveryStatus.FAILED, None
            else:
                outcome = DeliveryStatus.PENDING
        kept = await self.repo.record_attempt(
            d.id,
            self.id,
            at=at,
            latency_ms=latency_ms,
            status_code=status_code,
            error=error,
            outcome=outcome,
            next_attempt_at=next_at,
        )
        fields = {
            "delivery_id": d.id,
            "job_id": d.job_id,
            # not "event": that is the log call's message argument
            "webhook_event": d.event,
            "status_code": status_code,
            "attempt": d.attempts + 1,
        }
        if self.metrics is not None:
            self.metrics.webhook_attempt(d.event, outcome.value, latency_ms / 1000)
        if not kept:
            log.warning("webhook delivery changed while sending; attempt not recorded", **fields)
        elif outcome == DeliveryStatus.SUCCEEDED:
            log.info("webhook delivered", latency_ms=latency_ms, **fields)
        elif outcome == DeliveryStatus.FAILED:
            log.warning("webhook delivery failed for good", error=error, **fields)
        else:
            log.info("webhook attempt failed; will retry", error=error, next_at=next_at, **fields)

    async def _post(self, d: DueDelivery, route: Route) -> tuple[int, str | None]:
        body = json.dumps(d.payload, separators=(",", ":"), ensure_ascii=False)
        ts = utcnow()
        headers = {
            **route.headers,
            "content-type": "application/json",
            "webhook-id": d.id,
            "webhook-timestamp": str(math.floor(ts.timestamp())),
            "webhook-signature": self.signer.sign(d.id, ts, body),
        }
        async with self.http.stream(
            "POST",
            route.url,
            content=body.encode(),
            headers=headers,
            extensions=route.extensions,
            follow_redirects=False,
        ) as resp:
            code = resp.status_code
            snippet = await _read_some(resp, BODY_SNIPPET_BYTES)
        if 200 <= code < 300:
            return code, None
        if 300 <= code < 400:
            where = resp.headers.get("location", "")
            return code, f"HTTP {code}: redirect to {where!r} not followed"
        return code, f"HTTP {code}" + (f": {snippet}" if snippet else "")

    async def route(self, url: str) -> Route:
        """Where to send: the address guard's checked, pinned route."""
        return await self._guard.route(url)


async def _read_some(resp: httpx2.Response, limit: int) -> str:
    """The start of a response body (a receiver's error message), never all of it."""
    buf = b""
    async for chunk in resp.aiter_raw():
        buf += chunk
        if len(buf) >= limit:
            break
    return buf[:limit].decode("utf-8", "replace").strip()
