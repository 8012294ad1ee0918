"""Prometheus metrics: one registry per runtime (never the global one).

Counters and the duration histogram are fed by the worker; the gauges (jobs by
status, queue depth, in-flight, BFL credits) are read from the database and the
backends when ``/metrics`` is scraped."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from orchestrator.domain.jobs import JobStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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

    # --- fed by the worker ----------------------------------------------------------
    def job_finished(self, backend: str, status: JobStatus, seconds: float) -> None:
        self.job_duration.labels(backend=backend, status=status.value).observe(max(seconds, 0.0))

    def upstream_error(self, backend: str, code: str) -> None:
        self.upstream_errors.labels(backend=backend, code=code).inc()

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

    def set_credits(self, credits: float | None) -> None:
        if credits is None:
            self.bfl_credits.set(float("nan"))
        else:
            self.bfl_credits.set(credits)

    def render(self) -> bytes:
        return generate_latest(self.registry)
