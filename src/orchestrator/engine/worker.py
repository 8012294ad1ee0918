"""The worker: claims queued jobs (the jobs table is the queue), runs each as an
asyncio task through its backend, keeps its leases alive, and takes over jobs whose
worker vanished.

One job makes one chain of calls: worker → backend client → upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

import structlog

from orchestrator import errors, logs
from orchestrator.backends.base import Backend, ProgressFn
from orchestrator.db.jobs import Claimed, JobRepo, LeaseLost
from orchestrator.db.workers import WorkerRepo
from orchestrator.domain.jobs import Job, JobError, JobStatus, UpstreamHandle
from orchestrator.engine import recovery
from orchestrator.engine.hub import Hub
from orchestrator.storage import OutputStore

if TYPE_CHECKING:
    from orchestrator.metrics import Metrics

log = logs.get(__name__)
Code = errors.ErrorCode

PROGRESS_MIN_INTERVAL_S = 0.5
MAX_REQUEUES = 5
StopReason = Literal["user", "shutdown", "lost"]


@dataclass
class WorkerOptions:
    concurrency: int = 64
    lease_s: float = 30.0
    poll_interval_s: float = 0.5
    shutdown_grace_s: float = 10.0
    kind: str = "serve"
    only_ids: Sequence[str] | None = None


class _Running:
    def __init__(self, job: Job, task: asyncio.Task[None]) -> None:
        self.job = job
        self.task = task
        self.stop_reason: StopReason | None = None
        self.submit_started = False
        self.started = time.monotonic()


class Worker:
    def __init__(
        self,
        repo: JobRepo,
        workers: WorkerRepo,
        backends: Mapping[str, Backend],
        store: OutputStore,
        hub: Hub,
        options: WorkerOptions | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.repo = repo
        self.metrics = metrics
        self.workers = workers
        self.backends = backends
        self.store = store
        self.hub = hub
        self.opts = options or WorkerOptions()
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._running: dict[str, _Running] = {}
        self._stopping = asyncio.Event()
        self._wake = hub.queue_changed
        self._main: asyncio.Task[None] | None = None
        self._beat: asyncio.Task[None] | None = None
        hub.on_cancel(self._on_cancel)

    # --- lifecycle -----------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return len(self._running)

    def enabled_backends(self) -> list[str]:
        return [name for name, b in self.backends.items() if b.enabled]

    async def start(self) -> None:
        await self.workers.register(self.id, self.opts.kind, socket.gethostname(), os.getpid())
        self.store.remove_partials(older_than_s=86_400)
        await self._repair_manifests(0)
        await self._recover()
        self._main = asyncio.create_task(self._loop(), name=f"worker-{self.id}")
        self._beat = asyncio.create_task(self._heartbeat(), name=f"heartbeat-{self.id}")
        log.info("worker started", worker=self.id, backends=self.enabled_backends())

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop claiming; let in-flight jobs finish for up to ``grace_s``; leave the
        rest re-attachable (queued again if nothing was sent upstream)."""
        grace = self.opts.shutdown_grace_s if grace_s is None else grace_s
        self._stopping.set()
        self._wake.set()
        if self._main is not None:
            await asyncio.gather(self._main, return_exceptions=True)
        pending = [r.task for r in self._running.values()]
        if pending:
            log.info("waiting for in-flight jobs", count=len(pending), grace_s=grace)
            await asyncio.wait(pending, timeout=grace)
        for r in list(self._running.values()):
            r.stop_reason = "shutdown"
            r.task.cancel()
        left = [r.task for r in self._running.values()]
        if left:
            await asyncio.gather(*left, return_exceptions=True)
        if self._beat is not None:
            self._beat.cancel()
            await asyncio.gather(self._beat, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.workers.unregister(self.id)
        log.info("worker stopped", worker=self.id)

    async def run_until_done(self, job_id: str) -> None:
        """Used by one-shot commands: return once ``job_id`` is terminal."""
        while True:
            job = await self.repo.get(job_id)
            if job.status.terminal:
                return
            await self.hub.wait_job(job_id, self.opts.poll_interval_s)

    # --- claiming ---------------------------------------------------------------------
    def _groups(self, backend: str, model: str) -> Sequence[tuple[str, int]]:
        b = self.backends.get(backend)
        return b.limit_groups(model) if b is not None else ()

    async def _loop(self) -> None:
        last_recovery = time.monotonic()
        while not self._stopping.is_set():
            try:
                self._wake.clear()
                free = self.opts.concurrency - len(self._running)
                claimed: list[Job] = []
                if free > 0:
                    claimed = await self.repo.claim(
                        self.id,
                        self.opts.lease_s,
                        free,
                        self._groups,
                        backends=self.enabled_backends(),
                        only_ids=self.opts.only_ids,
                    )
                    for job in claimed:
                        self._spawn(job, None)
                        self.hub.job_changed(job.id)
                if time.monotonic() - last_recovery > self.opts.lease_s / 2:
                    last_recovery = time.monotonic()
                    await self._recover()
                if claimed and len(claimed) == free:
                    continue  # the queue may hold more
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.opts.poll_interval_s):
                        await self._wake.wait()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("worker loop error; retrying")
                await asyncio.sleep(self.opts.poll_interval_s)

    def _spawn(self, job: Job, claimed: Claimed | None) -> None:
        self.hub.local_jobs.add(job.id)
        task = asyncio.create_task(self._run(job, claimed), name=f"job-{job.id}")
        self._running[job.id] = _Running(job, task)
        job_id = job.id

        def done(_task: asyncio.Task[None]) -> None:
            self._done(job_id)

        task.add_done_callback(done)

    def _done(self, job_id: str) -> None:
        self._running.pop(job_id, None)
        self.hub.local_jobs.discard(job_id)
        self._wake.set()

    async def _manifest(self, job: Job) -> None:
        """Write the job's manifest and record it. A process killed before that is
        caught up by :meth:`_repair_manifests` on the next start."""
        try:
            await asyncio.shield(self.store.write_manifest(job))
            await self.repo.mark_manifest_written(job.id)
        except OSError as exc:
            log.error("could not write the job manifest; will retry", error=str(exc))

    async def _repair_manifests(self, older_than_s: float) -> None:
        try:
            missing = await self.repo.missing_manifests(older_than_s=older_than_s)
        except Exception:
            log.exception("manifest repair scan failed")
            return
        for job in missing:
            log.warning("writing a manifest missed by a crash", job_id=job.id)
            await self._manifest(job)

    async def _recover(self) -> None:
        await self._repair_manifests(self.opts.lease_s)
        try:
            taken = await self.repo.take_over_expired(
                self.id,
                self.opts.lease_s,
                backends=self.enabled_backends(),
                only_ids=self.opts.only_ids,
            )
        except Exception:
            log.exception("recovery scan failed")
            return
        for c in taken:
            if c.job.id in self._running:
                continue
            removed = self.store.remove_partials(job_id=c.job.id)
            log.warning(
                "taking over job from a vanished worker",
                job_id=c.job.id,
                has_handle=c.job.upstream is not None,
                partial_files_removed=removed,
            )
            self._spawn(c.job, c)

    # --- heartbeat, cancel ---------------------------------------------------------------
    async def _heartbeat(self) -> None:
        interval = max(self.opts.lease_s / 3, 0.2)
        while True:
            await asyncio.sleep(interval)
            try:
                ids = list(self._running)
                kept = await self.repo.renew_leases(self.id, ids, self.opts.lease_s)
                for jid in ids:
                    r = self._running.get(jid)
                    if r is None or r.task.done():
                        continue
                    if jid not in kept:
                        r.stop_reason = "lost"
                        r.task.cancel()
                    elif kept[jid] and r.stop_reason is None:
                        r.stop_reason = "user"
                        r.task.cancel()
                await self.workers.heartbeat(self.id)
            except Exception:
                log.exception("heartbeat failed")

    def _on_cancel(self, job_id: str) -> None:
        r = self._running.get(job_id)
        if r is not None and r.stop_reason is None and not r.task.done():
            r.stop_reason = "user"
            r.task.cancel()

    # --- running one job ----------------------------------------------------------------
    async def _run(self, job: Job, claimed: Claimed | None) -> None:
        structlog.contextvars.bind_contextvars(job_id=job.id, backend=job.backend)
        try:
            await self._run_job(job, claimed)
        except LeaseLost:
            log.warning("lost the lease; another worker owns the job now")
        except Exception:
            log.exception("job crashed unexpectedly")
            with contextlib.suppress(Exception):
                await self._fail(job, Code.INTERNAL_ERROR, "internal error while running the job")
        finally:
            self.hub.job_changed(job.id)

    async def _run_job(self, job: Job, claimed: Claimed | None) -> None:
        backend = self.backends.get(job.backend)
        if backend is None or not backend.enabled:
            reason = backend.disabled_reason if backend else f"unknown backend {job.backend!r}"
            await self._fail(
                job, Code.BACKEND_DISABLED, f"backend {job.backend} is disabled: {reason}"
            )
            return
        if claimed is not None:
            action = recovery.decide(
                has_handle=job.upstream is not None,
                submitting=claimed.submitting_at is not None,
                cancel_requested=job.cancel_requested,
            )
            if action == recovery.Action.REQUEUE:
                await self.repo.requeue(
                    job.id, self.id, "worker vanished before submitting; requeued"
                )
                self.hub.job_queued()
                return
            if action == recovery.Action.CANCEL:
                await self._finish_canceled(job, backend, "canceled")
                return
            if action == recovery.Action.FAIL_SUBMIT_INTERRUPTED:
                await self._fail(
                    job,
                    Code.SUBMIT_INTERRUPTED,
                    "the worker stopped while submitting; not resubmitted because upstream "
                    "may have accepted (and billed) it. Retry the job to run it again.",
                )
                return
        remaining = (job.deadline_at - datetime.now(UTC)).total_seconds()
        handle = job.upstream
        try:
            if remaining <= 0:
                raise errors.DeadlineExceeded("the deadline passed before the job could start")
            async with asyncio.timeout(remaining):
                if handle is None:
                    self._mark_submit_started(job.id)
                    planned = backend.plan(job)
                    if planned is not None:
                        # Our own id: stored first, so a crash mid-submit re-attaches.
                        await self.repo.set_upstream(job.id, self.id, planned, None)
                        handle = planned
                    else:
                        await self.repo.mark_submitting(job.id, self.id)
                    t0 = time.monotonic()
                    submitted = await backend.submit(job, planned)
                    self._timed(job, "submit", t0)
                    if submitted.handle != planned or submitted.cost is not None:
                        await self.repo.set_upstream(
                            job.id, self.id, submitted.handle, submitted.cost
                        )
                    handle = submitted.handle
                    self.hub.job_changed(job.id)
                    log.info("submitted upstream", task_id=handle.task_id, cost=submitted.cost)
                else:
                    log.info("re-attached to upstream task", task_id=handle.task_id)
                t0 = time.monotonic()
                completed = await backend.wait(job, handle, self._progress_writer(job))
                if completed.record:
                    await self.repo.add_event(
                        job.id, "info", f"{job.backend} result", completed.record
                    )
                t1 = self._timed(job, "wait", t0)
                outputs = await backend.fetch_outputs(job, handle, completed, self.store)
                self._timed(job, "fetch", t1)
            done = await self.repo.finish(
                job.id,
                self.id,
                JobStatus.SUCCEEDED,
                outputs=outputs,
                gpu_seconds=_number(completed.details.get("gpu_seconds")),
                tokens=_int(completed.details.get("tokens")),
            )
            self.hub.job_changed(job.id)
            self._observe(job, JobStatus.SUCCEEDED)
            log.info("job succeeded", outputs=len(outputs))
            await self._manifest(done)
        except TimeoutError:
            await self._fail(job, Code.DEADLINE_EXCEEDED, "the job's deadline passed")
        except errors.DeadlineExceeded as exc:
            await self._fail(job, Code.DEADLINE_EXCEEDED, exc.detail)
        except errors.Requeue as exc:
            if job.attempts >= MAX_REQUEUES:
                await self._fail(
                    job, exc.code, f"{exc.detail} (gave up after {job.attempts} tries)"
                )
                return
            log.warning("requeued: nothing ran upstream", reason=exc.detail)
            await self.repo.requeue(job.id, self.id, f"requeued: {exc.detail}")
            if self.metrics is not None:
                self.metrics.requeued(job.backend)
            self.hub.job_queued()
        except errors.UpstreamError as exc:
            await self._fail(job, exc.code, exc.detail, exc.extra)
        except asyncio.CancelledError:
            r = self._running.get(job.id)
            reason = r.stop_reason if r else None
            if reason == "user":
                await self._finish_canceled(job, backend, "canceled by request", handle)
                return
            if reason == "shutdown":
                await self._leave_for_later(job, handle)
            raise

    def _observe(self, job: Job, status: JobStatus, code: errors.ErrorCode | None = None) -> None:
        if self.metrics is None:
            return
        r = self._running.get(job.id)
        if r is not None:
            self.metrics.job_finished(job.backend, status, time.monotonic() - r.started)
        if code is not None:
            self.metrics.upstream_error(job.backend, code.value)

    def _timed(self, job: Job, phase: str, started: float) -> float:
        """Observe an upstream phase's duration; returns now (monotonic)."""
        now = time.monotonic()
        if self.metrics is not None:
            self.metrics.upstream_call(job.backend, phase, now - started)
        return now

    def _mark_submit_started(self, job_id: str) -> None:
        r = self._running.get(job_id)
        if r is not None:
            r.submit_started = True

    def _progress_writer(self, job: Job) -> ProgressFn:
        last_write = 0.0
        last_value: float | None = None

        async def write(progress: float | None, message: str | None) -> None:
            nonlocal last_write, last_value
            now = time.monotonic()
            if progress == last_value and message is None:
                return
            if now - last_write < PROGRESS_MIN_INTERVAL_S and (progress or 0) < 1.0:
                return
            last_write, last_value = now, progress
            await self.repo.set_progress(job.id, self.id, progress, message)
            self.hub.job_changed(job.id)

        return write

    async def _fail(
        self,
        job: Job,
        code: errors.ErrorCode,
        message: str,
        details: Mapping[str, object] | None = None,
    ) -> None:
        clean = {k: v for k, v in (details or {}).items() if v is not None}
        err = JobError.model_validate({"code": code, "message": message, "details": clean})
        await asyncio.shield(
            self.repo.finish(
                job.id,
                self.id,
                JobStatus.FAILED,
                error=err,
                gpu_seconds=_number(clean.get("gpu_seconds")),
                tokens=_int(clean.get("tokens")),
            )
        )
        self.hub.job_changed(job.id)
        self._observe(job, JobStatus.FAILED, code)
        log.warning("job failed", code=code.value, error=message)

    async def _finish_canceled(
        self, job: Job, backend: Backend, message: str, handle: UpstreamHandle | None = None
    ) -> None:
        outcome = await asyncio.shield(backend.cancel(job, handle or job.upstream))
        await asyncio.shield(
            self.repo.finish(
                job.id, self.id, JobStatus.CANCELED, message=f"{message}; {outcome.note}"
            )
        )
        self.hub.job_changed(job.id)
        self._observe(job, JobStatus.CANCELED)
        log.info("job canceled", note=outcome.note)

    async def _leave_for_later(self, job: Job, handle: UpstreamHandle | None) -> None:
        """Shutdown: requeue if nothing was sent upstream, else release the lease so
        the next process re-attaches (or, mid-submit, reports it) at once."""
        r = self._running.get(job.id)
        submit_started = r.submit_started if r is not None else True
        if handle is None and not submit_started:
            with contextlib.suppress(LeaseLost):
                await asyncio.shield(
                    self.repo.requeue(job.id, self.id, "worker shut down; requeued")
                )
            return
        await asyncio.shield(self.repo.release_leases(self.id, [job.id]))
        log.info("left running upstream for the next start to re-attach")


def _number(value: object) -> float | None:
    """A float from backend details (None when absent or not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
