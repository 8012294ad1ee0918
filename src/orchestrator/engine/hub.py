"""In-process signals between the service layer, the worker and live streams.

The database stays the source of truth (other processes see changes by polling it);
the hub only makes this process react at once: a new job wakes the worker, a job
event wakes its SSE streams, a cancel reaches the task running the job, a queued
webhook wakes the delivery loop.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable

from orchestrator.domain.jobs import Job

# How many finished jobs the hub remembers for waiters (a few KB each).
FINAL_KEPT = 2048


class Hub:
    def __init__(self) -> None:
        self._job_waiters: dict[str, set[asyncio.Event]] = {}
        self.queue_changed = asyncio.Event()
        # Set with queue_changed by another process's NOTIFY (the queue bus): what it
        # announced may be gone already, so the worker reads before it claims.
        self.queue_changed_elsewhere = False
        # Set when a webhook delivery was queued (or replayed) in this process.
        self.webhooks_changed = asyncio.Event()
        self._cancel_handlers: list[Callable[[str], None]] = []
        # Jobs a worker of this process is running: their changes are always signalled
        # here, so waiters need not poll the database for them.
        self.local_jobs: set[str] = set()
        # Waiters for a change of any job (the server-wide event stream).
        self._any_waiters: set[asyncio.Event] = set()
        # Jobs that ended lately, as their final transaction returned them: what a
        # waiter in this process answers with, without reading the database again.
        self._final: OrderedDict[str, Job] = OrderedDict()
        # Told when a job became claimable here (queued, requeued, a slot freed): the
        # queue bus tells the workers of other processes (PostgreSQL NOTIFY).
        self._claimable_hooks: list[Callable[[], None]] = []
        # Told when a stopping worker here gave back leases of jobs still running
        # upstream: the queue bus tells the workers of other processes.
        self._released_hooks: list[Callable[[], None]] = []
        # Set (with queue_changed) when another process gave back leases: the worker
        # runs its take-over scan at once rather than at the next LEASE_S / 2.
        self.recover_requested = False

    def job_finished(self, job: Job) -> None:
        """``job`` reached its terminal state (committed): remember it and wake its
        waiters."""
        self._final[job.id] = job
        self._final.move_to_end(job.id)
        while len(self._final) > FINAL_KEPT:
            self._final.popitem(last=False)
        self.job_changed(job.id)

    def final_job(self, job_id: str) -> Job | None:
        """The job as it ended, when it ended lately in this process (or a poll of
        this process saw it end); else None."""
        return self._final.get(job_id)

    def job_changed(self, job_id: str) -> None:
        for ev in self._job_waiters.get(job_id, ()):
            ev.set()
        for ev in self._any_waiters:
            ev.set()

    async def wait_any_job(self, timeout_s: float) -> None:
        """Return when any job changes in this process, or after ``timeout_s``."""
        ev = asyncio.Event()
        self._any_waiters.add(ev)
        try:
            async with asyncio.timeout(timeout_s):
                await ev.wait()
        except TimeoutError:
            pass
        finally:
            self._any_waiters.discard(ev)

    async def wait_job(self, job_id: str, timeout_s: float) -> None:
        """Return when ``job_id`` changes in this process, or after ``timeout``."""
        ev = asyncio.Event()
        self._job_waiters.setdefault(job_id, set()).add(ev)
        try:
            async with asyncio.timeout(timeout_s):
                await ev.wait()
        except TimeoutError:
            pass
        finally:
            waiters = self._job_waiters.get(job_id)
            if waiters is not None:
                waiters.discard(ev)
                if not waiters:
                    del self._job_waiters[job_id]

    def job_queued(self) -> None:
        """A job was queued or requeued (committed): wake the worker here, and the
        others through the hooks."""
        self.queue_changed.set()
        for ev in self._any_waiters:
            ev.set()
        self._claimable()

    def slot_freed(self) -> None:
        """A job that held a concurrency slot (a per-backend limit counted across
        processes) ended while queued jobs waited: the workers of other processes may
        now claim one. This process's worker wakes itself."""
        self._claimable()

    def leases_released(self) -> None:
        """A stopping worker here gave back the leases of jobs that still run upstream
        (committed): another process's worker may re-attach them at once."""
        for hook in self._released_hooks:
            hook()

    def on_released(self, hook: Callable[[], None]) -> None:
        self._released_hooks.append(hook)

    def on_claimable(self, hook: Callable[[], None]) -> None:
        self._claimable_hooks.append(hook)

    def _claimable(self) -> None:
        for hook in self._claimable_hooks:
            hook()

    def webhook_queued(self) -> None:
        self.webhooks_changed.set()

    def on_cancel(self, handler: Callable[[str], None]) -> None:
        self._cancel_handlers.append(handler)

    def cancel_requested(self, job_id: str) -> None:
        for handler in self._cancel_handlers:
            handler(job_id)
