"""Prometheus metrics: one registry per runtime (never the global one).

Counters and histograms are fed by the worker, the webhook dispatcher and stamina's
retry hook; the gauges (jobs by status, queue depth, in-flight, BFL credits, today's
spend) are read from the database and the backends when ``/metrics`` is scraped."""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping, Sequence

import stamina.instrumentation
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from orchestrator.domain.jobs import JobStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
WEBHOOK_OUTCOMES = {"succeeded": "delivered", "pending": "retrying", "failed": "failed"}

# stamina's retry hooks are process-wide; every live Metrics counts the retries.
_LIVE: weakref.WeakSet[Metrics] = weakref.WeakSet()
_hook_installed = False


def _on_retry(details: stamina.instrumentation.RetryDetails) -> None:
    kind = type(details.caused_by).__name__
    for m in list(_LIVE):
        m.upstream_retries.labels(error=kind).inc()


def _install_retry_hook() -> None:
    global _hook_installed
    if _hook_installed:
        return
    hooks = list(stamina.instrumentation.get_on_retry_hooks())
    stamina.instrumentation.set_on_retry_hooks([*hooks, _on_retry])
    _hook_installed = True


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.jobs = Gauge(
            "orchestrator_jobs", "Jobs in the database, by backend and status.",
            ["backend", "status"], registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "orchestrator_queue_depth", "Queued jobs, by backend.", ["backend"], registry=r
        )
        self.in_flight = Gauge(
            "orchestrator_in_flight", "Running jobs, by backend.", ["backend"], registry=r
        )
        self.bfl_credits = Gauge(
            "orchestrator_bfl_credits", "BFL credit balance (refreshed at most once a minute).",
            registry=r,
        )  # fmt: skip
        self.job_duration = Histogram(
            "orchestrator_job_duration_seconds",
            "Time from claim to the end of a job run by this process.",
            ["backend", "status"],
            buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=r,
        )
        self.upstream_errors = Counter(
            "orchestrator_upstream_errors",
            "Jobs that failed, by backend and error code.",
            ["backend", "code"],
            registry=r,
        )
        self.upstream_calls = Histogram(
            "orchestrator_upstream_call_duration_seconds",
            "Time spent in a backend's submit, wait (until the upstream finished) and fetch.",
            ["backend", "phase"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
            registry=r,
        )
        self.upstream_retries = Counter(
            "orchestrator_upstream_retries",
            "Upstream requests retried (stamina), by the error that caused the retry.",
            ["error"],
            registry=r,
        )
        self.requeues = Counter(
            "orchestrator_requeues",
            "Jobs put back in the queue because nothing ran upstream, by backend.",
            ["backend"],
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "orchestrator_webhook_attempts",
            "Webhook delivery attempts, by event and outcome (delivered, retrying, failed).",
            ["event", "outcome"],
            registry=r,
        )
        self.webhook_latency = Histogram(
            "orchestrator_webhook_attempt_duration_seconds",
            "Time of one webhook delivery attempt.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.spent_today = Gauge(
            "orchestrator_spent_today_credits",
            "Credits spent by jobs created today (UTC), plus what unfinished jobs reserve.",
            ["kind"],
            registry=r,
        )
        self.workers = Gauge(
            "orchestrator_workers",
            "Registered worker processes (all machines), by kind and state (live, or gone: "
            "no heartbeat within LEASE_S).",
            ["kind", "state"],
            registry=r,
        )
        self.worker_backends = Gauge(
            "orchestrator_worker_backends",
            "Live worker processes (all machines) that claim each backend's jobs.",
            ["backend"],
            registry=r,
        )
        _LIVE.add(self)
        _install_retry_hook()

    # --- fed by the worker ----------------------------------------------------------
    def job_finished(self, backend: str, status: JobStatus, seconds: float) -> None:
        self.job_duration.labels(backend=backend, status=status.value).observe(max(seconds, 0.0))

    def upstream_error(self, backend: str, code: str) -> None:
        self.upstream_errors.labels(backend=backend, code=code).inc()

    def upstream_call(self, backend: str, phase: str, seconds: float) -> None:
        self.upstream_calls.labels(backend=backend, phase=phase).observe(max(seconds, 0.0))

    def requeued(self, backend: str) -> None:
        self.requeues.labels(backend=backend).inc()

    def webhook_attempt(self, event: str, outcome: str, seconds: float) -> None:
        label = WEBHOOK_OUTCOMES.get(outcome, outcome)
        self.webhook_deliveries.labels(event=event, outcome=label).inc()
        self.webhook_latency.observe(max(seconds, 0.0))

    # --- read at scrape time ----------------------------------------------------------
    def set_counts(self, counts: Mapping[str, Mapping[str, int]]) -> None:
        self.jobs.clear()
        self.queue_depth.clear()
        self.in_flight.clear()
        for backend, by_status in counts.items():
            for status in JobStatus:
                self.jobs.labels(backend=backend, status=status.value).set(
                    by_status.get(status.value, 0)
                )
            self.queue_depth.labels(backend=backend).set(by_status.get("queued", 0))
            self.in_flight.labels(backend=backend).set(by_status.get("running", 0))

    def set_workers(self, rows: Iterable[tuple[str, bool, Sequence[str] | None]]) -> None:
        """From the registry: each worker's (kind, live, backends it claims)."""
        self.workers.clear()
        self.worker_backends.clear()
        for kind in ("serve", "worker"):  # always present, 0 when none
            for state in ("live", "gone"):
                self.workers.labels(kind=kind, state=state).set(0)
        by_backend: dict[str, int] = {}
        for kind, live, backends in rows:
            self.workers.labels(kind=kind, state="live" if live else "gone").inc()
            if live:
                for b in backends or ():
                    by_backend[b] = by_backend.get(b, 0) + 1
        for b, n in by_backend.items():
            self.worker_backends.labels(backend=b).set(n)

    def set_spend(self, spent: float, reserved: float) -> None:
        self.spent_today.labels(kind="spent").set(spent)
        self.spent_today.labels(kind="reserved").set(reserved)

    def set_credits(self, credits: float | None) -> None:
        if credits is None:
            self.bfl_credits.set(float("nan"))
        else:
            self.bfl_credits.set(credits)

    def render(self) -> bytes:
        return generate_latest(self.registry)
