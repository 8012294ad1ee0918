"""Waiting for jobs to end, for every waiter of a process at once.

A job this process runs is answered from the hub: the worker hands over the job as
its final transaction returned it, so a waiter reads the database once (to know the
job exists) and never again. Jobs run elsewhere (another process, or a worker that
lost the lease) are polled by one task, in one query per cycle for all of them.
"""

from __future__ import annotations

import asyncio
import contextlib

from orchestrator import logs
from orchestrator.db.jobs import JobRepo
from orchestrator.domain.jobs import Job
from orchestrator.engine.hub import Hub

log = logs.get(__name__)

POLL_S = 1.0  # how often jobs run by other processes are looked at
LOCAL_SAFETY_S = 10.0  # a waiter of a job run here wakes this often anyway


class Waiters:
    def __init__(self, repo: JobRepo, hub: Hub, poll_s: float = POLL_S) -> None:
        self.repo = repo
        self.hub = hub
        self.poll_s = poll_s
        self._watched: dict[str, int] = {}
        self._poller: asyncio.Task[None] | None = None

    async def wait(self, job_id: str, timeout_s: float | None = None) -> Job:
        """The job once it has ended, or as it is when ``timeout_s`` passes (404
        for an unknown job)."""
        final = self.hub.final_job(job_id)
        if final is not None:
            return final
        job = await self.repo.get(job_id)
        if job.status.terminal:
            return job
        loop = asyncio.get_running_loop()
        until = None if timeout_s is None else loop.time() + timeout_s
        self._watch(job_id)
        try:
            while True:
                wait_s = LOCAL_SAFETY_S
                if until is not None:
                    wait_s = min(wait_s, until - loop.time())
                    if wait_s <= 0:
                        return await self.repo.get(job_id)
                await self.hub.wait_job(job_id, wait_s)
                final = self.hub.final_job(job_id)
                if final is not None:
                    return final
        finally:
            self._unwatch(job_id)

    def _watch(self, job_id: str) -> None:
        self._watched[job_id] = self._watched.get(job_id, 0) + 1
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(), name="job-waiters")

    def _unwatch(self, job_id: str) -> None:
        left = self._watched.get(job_id, 0) - 1
        if left > 0:
            self._watched[job_id] = left
        else:
            self._watched.pop(job_id, None)

    async def _poll(self) -> None:
        """While anybody waits: one query per cycle for the watched jobs that no
        worker of this process runs; those that ended are fetched and handed to
        the hub, which wakes their waiters."""
        while self._watched:
            await asyncio.sleep(self.poll_s)
            remote = [
                j
                for j in self._watched
                if j not in self.hub.local_jobs and self.hub.final_job(j) is None
            ]
            if not remote:
                continue
            try:
                states = await self.repo.status_of(remote)
                for job_id, (status, _cancel) in states.items():
                    if status.terminal:
                        self.hub.job_finished(await self.repo.get(job_id))
            except Exception as exc:
                # A waiter keeps waiting through a database outage; the next cycle
                # looks again.
                log.warning("could not poll the jobs being waited for", error=str(exc))

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(BaseException):
                await self._poller
