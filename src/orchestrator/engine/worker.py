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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal, TypeVar

import structlog

from orchestrator import errors, logs
from orchestrator.backends.base import Backend, Completed, ProgressFn
from orchestrator.db.engine import is_transient
from orchestrator.db.jobs import Claimed, JobRepo, LeaseLost, NewOutput, lease_holder
from orchestrator.db.workers import WorkerRepo
from orchestrator.domain.jobs import Job, JobError, JobStatus, UpstreamHandle
from orchestrator.engine import recovery
from orchestrator.engine.hub import Hub
from orchestrator.storage import OutputStore

if TYPE_CHECKING:
    from orchestrator.config import Settings
    from orchestrator.metrics import Metrics

log = logs.get(__name__)
Code = errors.ErrorCode

PROGRESS_MIN_INTERVAL_S = 0.5
MAX_REQUEUES = 5
StopReason = Literal["user", "shutdown", "lost"]
T = TypeVar("T")
# Backoff of a write that must not be lost (the upstream handle, a result): retried
# for as long as the process lives.
DURABLE_RETRY_FIRST_S = 0.05
DURABLE_RETRY_MAX_S = 2.0
# A full output folder: fetch the (paid, finished) result again after a backoff, for
# as long as upstream keeps it (BFL's signed sample URLs live about 10 minutes).
STORAGE_RETRY_FIRST_S = 1.0
STORAGE_RETRY_MAX_S = 30.0
# A job requeued to wait for its backend (e.g. its model is only on a ComfyUI
# instance that is down) is set aside by this worker, doubling from the first to the
# max, or until an instance comes back up, whichever is first.
PARK_FIRST_S = 1.0
PARK_MAX_S = 30.0


@dataclass
class WorkerOptions:
    concurrency: int = 64
    lease_s: float = 30.0
    poll_interval_s: float = 0.5
    shutdown_grace_s: float = 10.0
    kind: str = "serve"
    only_ids: Sequence[str] | None = None
    # The backends whose jobs this worker claims (None: every enabled one); the
    # others' jobs are left to workers that claim them (``orchestrator worker
    # --backends``).
    backends: Sequence[str] | None = None
    # How long a job taken over mid-submit waits for its previous holder (possibly
    # alive, its lease lost) to record the upstream handle before it is failed as
    # ``submit_interrupted``: longer than any submit call can take.
    handle_grace_s: float = 60.0
    # How long a finished result is fetched again while the output folder is full.
    storage_retry_window_s: float = 600.0

    @classmethod
    def from_settings(
        cls, settings: Settings, *, kind: str = "serve", backends: Sequence[str] | None = None
    ) -> WorkerOptions:
        """The options the settings give (concurrency, lease, poll interval, grace)."""
        return cls(
            concurrency=settings.worker_concurrency,
            lease_s=settings.lease_s,
            poll_interval_s=settings.worker_poll_interval_s,
            shutdown_grace_s=settings.shutdown_grace_s,
            kind=kind,
            backends=backends,
        )


class _Running:
    def __init__(self, claimed: Claimed, task: asyncio.Task[None], *, taken_over: bool) -> None:
        self.job = claimed.job
        self.lease = claimed.lease
        self.task = task
        self.stop_reason: StopReason | None = None
        # Claimed here from the queue (not taken over): what this process did is all
        # that happened to the job under this claim.
        self.fresh = not taken_over
        self.submit_started = False
        # Between the submit's start and its handle being recorded: a stop is
        # deferred, since cutting the call would lose a task upstream may have billed.
        self.in_submit = False
        self.lost = False
        # The job's end (or its requeue) is committed: its lease is gone by design.
        self.settled = False
        self.started = time.monotonic()

    def stop(self, reason: StopReason) -> None:
        """Cancel the job's task, or, mid-submit, once the handle is recorded."""
        if self.stop_reason is not None or self.task.done():
            return
        self.stop_reason = reason
        if not self.in_submit:
            self.task.cancel()

    def submit_done(self) -> None:
        self.in_submit = False
        if self.stop_reason is not None and not self.task.done():
            self.task.cancel()


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
        self.host = socket.gethostname()
        # Short enough for a lease token (``<id>#<n>``) to fit its column.
        self.id = f"{self.host[:32]}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._running: dict[str, _Running] = {}
        # Jobs whose manifest was written but not yet recorded: recorded with the
        # next claim or lease renewal (no transaction of their own).
        self._manifests: list[str] = []
        # Whether the last claim left queued jobs behind: only then is a freed slot
        # worth another claim (else only a new job, or the poll, can bring work).
        self._backlog = True
        self._stopping = asyncio.Event()
        self._wake = hub.queue_changed
        self._main: asyncio.Task[None] | None = None
        self._beat: asyncio.Task[None] | None = None
        # Backends that cannot take a job now, with why (their jobs stay queued).
        self._waiting: dict[str, str] = {}
        # Jobs set aside to wait for their backend: until (monotonic), the backend's
        # availability epoch then; and each one's current backoff.
        self._parked: dict[str, tuple[float, int, str]] = {}
        self._park_backoff: dict[str, float] = {}
        hub.on_cancel(self._on_cancel)
        for b in backends.values():
            b.on_available(self._wake.set)  # an instance is back: claim at once

    # --- lifecycle -----------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return len(self._running)

    def enabled_backends(self) -> list[str]:
        """The enabled backends this worker claims jobs of."""
        only = self.opts.backends
        return [
            name
            for name, b in self.backends.items()
            if b.enabled and (only is None or name in only)
        ]

    def claimable_backends(self) -> list[str]:
        """Enabled backends that can take a job now: the others' jobs stay queued
        (and say why in their events) until an instance comes back."""
        return [n for n in self.enabled_backends() if n not in self._waiting]

    async def _check_waiting(self) -> None:
        """Note which backends cannot take jobs now; the queued jobs of one that just
        went down get an event saying what they wait for."""
        gone: dict[str, str] = {}
        mine = set(self.enabled_backends())
        for name, b in self.backends.items():
            reason = b.waiting_reason() if name in mine else None
            if reason is not None:
                if name not in self._waiting:
                    gone[name] = reason
                self._waiting[name] = reason
            elif self._waiting.pop(name, None) is not None:
                log.info("backend available again", backend=name)
        for name, reason in gone.items():
            log.warning("backend cannot take jobs; they wait queued", backend=name, reason=reason)
            try:
                await self.repo.note_queued([name], reason)
            except Exception:
                log.exception("could not note the wait on queued jobs", backend=name)

    def _park(self, job: Job) -> None:
        backend = self.backends.get(job.backend)
        delay = min(self._park_backoff.get(job.id, PARK_FIRST_S / 2) * 2, PARK_MAX_S)
        self._park_backoff[job.id] = delay
        epoch = backend.availability_epoch if backend is not None else 0
        self._parked[job.id] = (time.monotonic() + delay, epoch, job.backend)

    def _skipped(self) -> list[str]:
        """Parked jobs not to claim yet (their time is not up and no instance of their
        backend came back since)."""
        now = time.monotonic()
        for job_id, (until, epoch, name) in list(self._parked.items()):
            b = self.backends.get(name)
            if now >= until or b is None or b.availability_epoch != epoch:
                del self._parked[job_id]
        return list(self._parked)

    async def start(self) -> None:
        await self.workers.register(
            self.id,
            self.opts.kind,
            self.host,
            os.getpid(),
            backends=self.enabled_backends(),
            concurrency=self.opts.concurrency,
        )
        _LIVE_HERE.add(self.id)
        await self._release_dead_predecessors()
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
            r.stop("shutdown")
        left = [r.task for r in self._running.values()]
        if left:
            await asyncio.gather(*left, return_exceptions=True)
        if self._beat is not None:
            self._beat.cancel()
            await asyncio.gather(self._beat, return_exceptions=True)
        await self._flush_manifests()
        with contextlib.suppress(Exception):
            await self.workers.unregister(self.id)
        _LIVE_HERE.discard(self.id)
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

    def _submits_at_once(self, backend: str) -> bool:
        """Whether this backend's jobs go upstream right after the claim, with no
        handle planned first: the claim marks them as submitting itself."""
        b = self.backends.get(backend)
        return b is not None and type(b).plan is Backend.plan

    async def _loop(self) -> None:
        last_recovery = time.monotonic()
        polled = True  # the first pass looks at the queue as a poll would
        while not self._stopping.is_set():
            try:
                self._wake.clear()
                await self._check_waiting()
                free = self.opts.concurrency - len(self._running)
                claimed: list[Claimed] = []
                skipped = self._skipped()
                if free <= 0:
                    self._backlog = True  # unknown: look again when a slot frees
                elif not polled or await self.repo.has_queued(
                    self.claimable_backends(), self.opts.only_ids, skipped
                ):
                    manifests = list(self._manifests)
                    got = await self.repo.claim(
                        self.id,
                        self.opts.lease_s,
                        free,
                        self._groups,
                        backends=self.claimable_backends(),
                        only_ids=self.opts.only_ids,
                        submits_at_once=self._submits_at_once,
                        manifests=manifests,
                        skip_ids=skipped,
                    )
                    self._recorded(manifests)
                    self._backlog = got.backlog
                    claimed = got
                    for c in claimed:
                        self._spawn(c, taken_over=False)
                        self.hub.job_changed(c.job.id)
                else:
                    self._backlog = False
                if (
                    self.hub.recover_requested
                    or time.monotonic() - last_recovery > self.opts.lease_s / 2
                ):
                    self.hub.recover_requested = False
                    last_recovery = time.monotonic()
                    await self._recover()
                    await self._expire_waiting()
                if claimed and len(claimed) == free:
                    polled = False
                    continue  # the queue may hold more
                polled = True
                self.hub.queue_changed_elsewhere = False
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.opts.poll_interval_s):
                        await self._wake.wait()
                        # woken by another process (PostgreSQL NOTIFY): its job may be
                        # taken already, so read first, as a poll does
                        polled = self.hub.queue_changed_elsewhere
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("worker loop error; retrying")
                await asyncio.sleep(self.opts.poll_interval_s)

    async def _expire_waiting(self) -> None:
        """Queued jobs of a backend that cannot take them, whose deadline passed: claim
        them to fail them ``deadline_exceeded`` (nothing else would while it is down)."""
        waiting = [n for n in self._waiting if n in self.enabled_backends()]
        if not waiting:
            return
        try:
            ids = await self.repo.queued_past_deadline(waiting)
            if self.opts.only_ids is not None:
                ids = [i for i in ids if i in self.opts.only_ids]
            if not ids:
                return
            got = await self.repo.claim(
                self.id, self.opts.lease_s, len(ids), lambda _b, _m: (), only_ids=ids
            )
        except Exception:
            log.exception("could not expire queued jobs past their deadline")
            return
        for c in got:
            self._spawn(c, taken_over=False)
            self.hub.job_changed(c.job.id)

    def _spawn(self, claimed: Claimed, *, taken_over: bool) -> None:
        """Run a job we now hold. One job never runs twice in this process: a task
        still finishing an earlier claim of it (requeued, or its lease lost) is
        awaited first, and its writes are refused by its old lease token."""
        job_id = claimed.job.id
        self.hub.local_jobs.add(job_id)
        before = self._running.get(job_id)
        after = None
        if before is not None and not before.task.done():
            before.stop("lost")  # its lease is gone: the new claim supersedes it
            after = before.task
        task = asyncio.create_task(
            self._run(claimed, taken_over=taken_over, after=after), name=f"job-{job_id}"
        )
        self._running[job_id] = _Running(claimed, task, taken_over=taken_over)

        def done(finished: asyncio.Task[None]) -> None:
            self._done(job_id, finished)

        task.add_done_callback(done)

    def _done(self, job_id: str, task: asyncio.Task[None]) -> None:
        r = self._running.get(job_id)
        if r is not None and r.task is task:  # not a newer claim's entry
            del self._running[job_id]
            self.hub.local_jobs.discard(job_id)
            if job_id not in self._parked:
                self._park_backoff.pop(job_id, None)
        if self._backlog:
            self._wake.set()
            self.hub.slot_freed()

    async def _manifest(self, job: Job, *, repair: bool = False) -> None:
        """Write the job's manifest; it is recorded with the next claim or lease
        renewal (or at shutdown). A process killed before that rewrites it on the
        next start (:meth:`_repair_manifests`), which is harmless."""
        try:
            await asyncio.shield(self.store.write_manifest(job, repair=repair))
        except OSError as exc:
            log.error("could not write the job manifest; will retry", error=str(exc))
            return
        self._manifests.append(job.id)

    def _recorded(self, manifests: Sequence[str]) -> None:
        """These manifests' marks committed: no longer pending."""
        if manifests:
            done = set(manifests)
            self._manifests = [m for m in self._manifests if m not in done]

    async def _flush_manifests(self) -> None:
        manifests = list(self._manifests)
        try:
            await self.repo.mark_manifests_written(manifests)
        except Exception:
            log.exception("could not record written manifests; the next start rewrites them")
            return
        self._recorded(manifests)

    async def _repair_manifests(self, older_than_s: float) -> None:
        try:
            missing = await self.repo.missing_manifests(
                older_than_s=older_than_s, exclude=self._manifests
            )
        except Exception:
            log.exception("manifest repair scan failed")
            return
        for job in missing:
            log.warning("writing a manifest missed by a crash", job_id=job.id)
            await self._manifest(job, repair=True)

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
            removed = 0
            if c.job.id not in self._running:
                removed = self.store.remove_partials(job_id=c.job.id)
            log.warning(
                "taking over job from a vanished worker",
                job_id=c.job.id,
                has_handle=c.job.upstream is not None,
                partial_files_removed=removed,
            )
            self._spawn(c, taken_over=True)

    async def _release_dead_predecessors(self) -> None:
        """Workers of this host whose process is gone (killed, crashed) leave leases
        that would hold their jobs (and their concurrency slots) until ``LEASE_S``
        runs out: expire them now, so recovery takes the jobs over at once."""
        try:
            for w in await self.workers.on_host(self.host):
                if w.id == self.id or not _dead(w.id, w.pid):
                    continue
                released = await self.repo.release_owner(w.id)
                await self.workers.unregister(w.id)
                log.warning("released the leases of a dead worker", dead=w.id, jobs=released)
        except Exception:
            log.exception("could not release the leases of dead workers")

    def _holder_may_live(self, previous: str | None) -> bool:
        """Whether the process that held a lease before us may still be running."""
        if previous is None:
            return False
        holder = lease_holder(previous)
        if holder == self.id:
            return False  # our own earlier task, which has ended
        host, _, rest = holder.rpartition(":")[0].rpartition(":")
        if host != self.host[:32] or not rest.isdigit():
            return True  # another machine: nothing to check from here
        return not _dead(holder, int(rest))

    # --- heartbeat, cancel ---------------------------------------------------------------
    async def _heartbeat(self) -> None:
        interval = max(self.opts.lease_s / 3, 0.2)
        while True:
            await asyncio.sleep(interval)
            try:
                held = [r for r in self._running.values() if not r.lost and not r.task.done()]
                manifests = list(self._manifests)
                kept = await self.repo.renew_leases(
                    [r.lease for r in held], self.opts.lease_s, manifests=manifests
                )
                self._recorded(manifests)
                for r in held:
                    if r.settled or r.task.done():
                        continue
                    if r.lease not in kept:
                        r.lost = True
                        log.warning("lost the lease", job_id=r.job.id, mid_submit=r.in_submit)
                        r.stop("lost")
                    elif kept[r.lease]:
                        r.stop("user")
                await self.workers.heartbeat(self.id)
            except Exception:
                log.exception("heartbeat failed")

    def _on_cancel(self, job_id: str) -> None:
        r = self._running.get(job_id)
        if r is not None:
            r.stop("user")

    # --- running one job ----------------------------------------------------------------
    async def _run(
        self, claimed: Claimed, *, taken_over: bool, after: asyncio.Task[None] | None
    ) -> None:
        job, lease = claimed.job, claimed.lease
        structlog.contextvars.bind_contextvars(job_id=job.id, backend=job.backend)
        try:
            if after is not None:
                await asyncio.gather(after, return_exceptions=True)
            await self._run_job(job, lease, claimed if taken_over else None)
        except LeaseLost:
            log.warning("lost the lease; another worker owns the job now")
        except Exception as exc:
            if is_transient(exc):
                # Not the job's fault: leave it to recovery (which re-attaches to the
                # stored handle), never fail a job because the database hiccuped.
                log.warning("database unavailable; leaving the job for recovery", error=str(exc))
                with contextlib.suppress(Exception):
                    await self.repo.release_leases([lease])
                return
            log.exception("job crashed unexpectedly")
            with contextlib.suppress(Exception):
                await self._fail(
                    job, lease, Code.INTERNAL_ERROR, "internal error while running the job"
                )
        finally:
            self.hub.job_changed(job.id)

    async def _durably(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """Run a write that must not be lost (an upstream handle, a finished result)
        until it succeeds, for as long as this process lives: a locked or unreachable
        database delays it, never fails the job. :class:`LeaseLost` is final."""
        delay = DURABLE_RETRY_FIRST_S
        while True:
            try:
                return await op()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("database write failed; retrying", write=what, error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, DURABLE_RETRY_MAX_S)

    async def _run_job(self, job: Job, lease: str, claimed: Claimed | None) -> None:
        backend = self.backends.get(job.backend)
        if backend is None or not backend.enabled:
            reason = backend.disabled_reason if backend else f"unknown backend {job.backend!r}"
            await self._fail(
                job, lease, Code.BACKEND_DISABLED, f"backend {job.backend} is disabled: {reason}"
            )
            return
        if job.simulated != backend.simulated:
            accepted = "a simulated (demo)" if job.simulated else "a real"
            now = "real" if backend.simulated is False else "simulated"
            await self._fail(
                job,
                lease,
                Code.BACKEND_KIND_CHANGED,
                f"the job was accepted for {accepted} {job.backend} backend, but this "
                f"worker's {job.backend} backend is {now}; it is never sent to the other "
                "kind. Retry the job to run it on this one.",
            )
            return
        if claimed is not None:
            job = await self._recovered(job, lease, claimed, backend)
            if job.status.terminal:
                return
        r = self._running.get(job.id)
        remaining = (job.deadline_at - datetime.now(UTC)).total_seconds()
        handle = job.upstream
        held = handle  # what this process holds upstream for the job, released at the end
        try:
            if remaining <= 0:
                raise errors.DeadlineExceeded("the deadline passed before the job could start")
            async with asyncio.timeout(remaining) as deadline:
                if handle is None:
                    marked = claimed is None and self._submits_at_once(job.backend)
                    if r is not None:
                        r.submit_started = True
                    planned = backend.plan(job)
                    held = planned or held
                    if planned is not None:
                        # Our own id: stored first, so a crash mid-submit re-attaches.
                        await self.repo.set_upstream(job.id, lease, planned, None)
                        handle = planned
                    elif not marked:
                        # (a fresh claim of a backend that submits at once was marked
                        # as submitting by the claim itself)
                        await self.repo.mark_submitting(job.id, lease)
                    if r is not None:
                        r.in_submit = True
                    try:
                        t0 = time.monotonic()
                        submitted = await backend.submit(job, planned)
                        self._timed(job, "submit", t0)
                        if submitted.handle != planned or submitted.cost is not None:
                            await self._durably(
                                "upstream handle",
                                lambda: self.repo.set_upstream(
                                    job.id, lease, submitted.handle, submitted.cost
                                ),
                            )
                        handle = held = submitted.handle
                    finally:
                        if r is not None:
                            r.submit_done()
                    self.hub.job_changed(job.id)
                    log.info("submitted upstream", task_id=handle.task_id, cost=submitted.cost)
                else:
                    log.info("re-attached to upstream task", task_id=handle.task_id)
                t0 = time.monotonic()
                completed = await backend.wait(job, handle, self._progress_writer(job, lease))
                if completed.record:
                    record = completed.record
                    await self._durably(
                        "upstream result",
                        lambda: self.repo.add_event(
                            job.id, "info", f"{job.backend} result", record
                        ),
                    )
                t1 = self._timed(job, "wait", t0)
                outputs = await self._store_outputs(job, backend, handle, completed, deadline)
                self._timed(job, "fetch", t1)
            done = await self._durably(
                "result",
                lambda: self.repo.finish(
                    job.id,
                    lease,
                    JobStatus.SUCCEEDED,
                    outputs=outputs,
                    gpu_seconds=_number(completed.details.get("gpu_seconds")),
                    tokens=_int(completed.details.get("tokens")),
                ),
            )
            self._settle(job.id)
            self._observe(job, JobStatus.SUCCEEDED)
            log.info("job succeeded", outputs=len(outputs))
            await self._manifest(done)
            # Waiters in this process get the job once its manifest is written too.
            self.hub.job_finished(done)
        except TimeoutError:
            note = await self._stop_upstream(job, backend, held)
            await self._fail(job, lease, Code.DEADLINE_EXCEEDED, f"the job's deadline passed{note}")
        except errors.DeadlineExceeded as exc:
            note = await self._stop_upstream(job, backend, held)
            await self._fail(job, lease, Code.DEADLINE_EXCEEDED, f"{exc.detail}{note}")
        except errors.Requeue as exc:
            if exc.counts and job.attempts >= MAX_REQUEUES:
                await self._fail(
                    job, lease, exc.code, f"{exc.detail} (gave up after {job.attempts} tries)"
                )
                return
            log.warning("requeued: nothing ran upstream", reason=exc.detail, counts=exc.counts)
            await self.repo.requeue(job.id, lease, f"requeued: {exc.detail}", counts=exc.counts)
            if isinstance(exc, errors.WaitForBackend):
                self._park(job)
            self._settle(job.id)
            if self.metrics is not None:
                self.metrics.requeued(job.backend)
            self.hub.job_queued()
        except errors.UpstreamError as exc:
            await self._fail(job, lease, exc.code, exc.detail, exc.extra)
        except asyncio.CancelledError:
            reason = r.stop_reason if r is not None else None
            if reason == "user":
                await self._finish_canceled(
                    job,
                    lease,
                    backend,
                    "canceled by request",
                    handle,
                    submit_started=r.submit_started if r is not None else True,
                )
                return
            if reason == "shutdown":
                await self._leave_for_later(job, lease, handle)
            raise
        finally:
            if held is not None:
                backend.release(held)

    async def _stop_upstream(
        self, job: Job, backend: Backend, handle: UpstreamHandle | None
    ) -> str:
        """A job that ends early (its deadline passed) while upstream may still work
        on it: cancel it there first (ComfyUI: delete if pending, interrupt if
        running, and wait for the confirmation), so its slot stays taken until the
        GPU is free. Returns a note for the job's message."""
        if handle is None:
            return ""
        try:
            outcome = await asyncio.shield(backend.cancel(job, handle, submit_started=True))
        except Exception as exc:
            log.exception("could not cancel upstream")
            return f"; could not cancel it upstream: {exc}"
        log.info("stopped upstream", stopped=outcome.stopped_upstream, note=outcome.note)
        return f"; {outcome.note}"

    async def _recovered(self, job: Job, lease: str, claimed: Claimed, backend: Backend) -> Job:
        """A job taken over from a vanished (or stalled) lease holder: re-attach,
        requeue, cancel or fail it, by ``recovery.decide``. Returns the job to run on
        (terminal when nothing more is to be done here)."""
        action = recovery.decide(
            has_handle=job.upstream is not None,
            submitting=claimed.submitting_at is not None,
            cancel_requested=job.cancel_requested,
            holder_may_live=self._holder_may_live(claimed.previous),
        )
        if action == recovery.Action.AWAIT_HANDLE:
            log.warning(
                "taken over mid-submit from a holder that may be alive; waiting for its handle",
                previous=claimed.previous,
                grace_s=self.opts.handle_grace_s,
            )
            give_up = time.monotonic() + self.opts.handle_grace_s
            while time.monotonic() < give_up:
                await self.hub.wait_job(job.id, min(0.5, self.opts.lease_s / 4))
                current = await self.repo.get(job.id)
                if current.upstream is not None:
                    log.info("the previous holder recorded the handle; re-attaching")
                    return current.model_copy(update={"status": JobStatus.RUNNING})
                if current.status.terminal:
                    return current
            action = recovery.Action.FAIL_SUBMIT_INTERRUPTED
        if action == recovery.Action.REQUEUE:
            await self.repo.requeue(job.id, lease, "worker vanished before submitting; requeued")
            self._settle(job.id)
            self.hub.job_queued()
            return job.model_copy(update={"status": JobStatus.QUEUED})
        if action == recovery.Action.CANCEL:
            await self._finish_canceled(
                job, lease, backend, "canceled", submit_started=claimed.submitting_at is not None
            )
            return job.model_copy(update={"status": JobStatus.CANCELED})
        if action == recovery.Action.FAIL_SUBMIT_INTERRUPTED:
            try:
                await self._fail(
                    job,
                    lease,
                    Code.SUBMIT_INTERRUPTED,
                    "the worker stopped while submitting; not resubmitted because upstream "
                    "may have accepted (and billed) it. Retry the job to run it again.",
                    unless_upstream=True,
                )
            except LeaseLost:
                current = await self.repo.get(job.id)
                if current.upstream is None or current.status != JobStatus.RUNNING:
                    raise
                log.info("the handle came at the last moment; re-attaching")
                return current
            return job.model_copy(update={"status": JobStatus.FAILED})
        return job

    async def _store_outputs(
        self,
        job: Job,
        backend: Backend,
        handle: UpstreamHandle,
        completed: Completed,
        deadline: asyncio.Timeout,
    ) -> list[NewOutput]:
        """Fetch and store a finished job's outputs. A full output folder is not the
        end of a paid result: back off and fetch again while upstream keeps it. The
        job's deadline bounds the downloads, not the waits for disk space."""
        give_up = time.monotonic() + self.opts.storage_retry_window_s
        delay = STORAGE_RETRY_FIRST_S
        while True:
            try:
                return await backend.fetch_outputs(job, handle, completed, self.store)
            except errors.StorageFull as exc:
                self.store.remove_partials(job_id=job.id)
                if time.monotonic() + delay > give_up:
                    raise
                log.warning(
                    "output folder full; will fetch again", error=exc.detail, retry_in_s=delay
                )
                with contextlib.suppress(Exception):
                    await self.repo.add_event(
                        job.id,
                        "info",
                        f"{exc.detail}; the result is kept upstream and fetched again in "
                        f"{delay:g} s",
                    )
                when = deadline.when()
                left = None if when is None else when - asyncio.get_running_loop().time()
                deadline.reschedule(None)
                await asyncio.sleep(delay)
                if left is not None:
                    deadline.reschedule(asyncio.get_running_loop().time() + max(left, 0.1))
                delay = min(delay * 2, STORAGE_RETRY_MAX_S)

    def _settle(self, job_id: str) -> None:
        r = self._running.get(job_id)
        if r is not None:
            r.settled = True

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

    def _progress_writer(self, job: Job, lease: str) -> ProgressFn:
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
            try:
                await self.repo.set_progress(job.id, lease, progress, message)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                # Progress is a nicety: a busy database must not fail the job.
                log.warning("could not record progress", error=str(exc))
                return
            self.hub.job_changed(job.id)

        return write

    async def _fail(
        self,
        job: Job,
        lease: str,
        code: errors.ErrorCode,
        message: str,
        details: Mapping[str, object] | None = None,
        *,
        unless_upstream: bool = False,
    ) -> None:
        clean = {k: v for k, v in (details or {}).items() if v is not None}
        err = JobError.model_validate({"code": code, "message": message, "details": clean})
        never_submitted = self._never_submitted(job.id)
        ended = await asyncio.shield(
            self._durably(
                "failure",
                lambda: self.repo.finish(
                    job.id,
                    lease,
                    JobStatus.FAILED,
                    error=err,
                    gpu_seconds=_number(clean.get("gpu_seconds")),
                    tokens=_int(clean.get("tokens")),
                    unless_upstream=unless_upstream,
                    never_submitted=never_submitted,
                ),
            )
        )
        self._settle(job.id)
        self.hub.job_finished(ended)
        self._observe(job, JobStatus.FAILED, code)
        log.warning("job failed", code=code.value, error=message)

    def _never_submitted(self, job_id: str) -> bool:
        """Whether this process knows nothing was sent upstream for the job under its
        current claim: claimed here from the queue, and its submit never started (a
        claim may have marked it as submitting ahead of the submit)."""
        r = self._running.get(job_id)
        return r is not None and r.fresh and not r.submit_started

    async def _finish_canceled(
        self,
        job: Job,
        lease: str,
        backend: Backend,
        message: str,
        handle: UpstreamHandle | None = None,
        *,
        submit_started: bool = False,
    ) -> None:
        outcome = await asyncio.shield(
            backend.cancel(job, handle or job.upstream, submit_started=submit_started)
        )
        ended = await asyncio.shield(
            self.repo.finish(
                job.id,
                lease,
                JobStatus.CANCELED,
                message=f"{message}; {outcome.note}",
                never_submitted=self._never_submitted(job.id),
            )
        )
        self._settle(job.id)
        self.hub.job_finished(ended)
        self._observe(job, JobStatus.CANCELED)
        log.info("job canceled", note=outcome.note)

    async def _leave_for_later(self, job: Job, lease: str, handle: UpstreamHandle | None) -> None:
        """Shutdown: requeue if nothing was sent upstream, else release the lease so
        the next process re-attaches (or, mid-submit, reports it) at once."""
        r = self._running.get(job.id)
        submit_started = r.submit_started if r is not None else True
        if handle is None and not submit_started:
            with contextlib.suppress(LeaseLost):
                await asyncio.shield(self.repo.requeue(job.id, lease, "worker shut down; requeued"))
                self.hub.job_queued()  # another process's worker may take it at once
            return
        await asyncio.shield(self.repo.release_leases([lease]))
        self.hub.leases_released()  # another process's worker may re-attach it at once
        log.info("left running upstream for the next start to re-attach")


# Workers running in this process (tests run several; ``serve`` runs one).
_LIVE_HERE: set[str] = set()


def _dead(worker_id: str, pid: int) -> bool:
    """Whether worker ``worker_id`` of this machine, process ``pid``, is gone. Our own
    pid under a worker id not running here is a predecessor whose pid we were given."""
    if pid == os.getpid():
        return worker_id not in _LIVE_HERE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists (another user's, say)
    return False


def _number(value: object) -> float | None:
    """A float from backend details (None when absent or not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
