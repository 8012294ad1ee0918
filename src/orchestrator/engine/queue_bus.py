"""PostgreSQL as the queue's bus: the moment a job becomes claimable in one process
(queued, requeued, a concurrency slot freed while jobs waited), the idle workers of
the other processes wake and claim, instead of at their next poll
(``WORKER_POLL_INTERVAL_S``, which stays as the fallback).

Sending: the hub's claimable signal (after the commit) sets a flag; one task sends
one ``NOTIFY orchestrator_queue`` per burst (what happens while one is sent goes in
the next). Closing sends what is still pending, so a one-shot command that queued a
job and exits still wakes the workers. Receiving (only in a process that runs a
worker): ``LISTEN orchestrator_queue`` on the process's one wake-up connection (the
event feed's), setting ``hub.queue_changed``; a lost connection is listened on again.
"""

from __future__ import annotations

import asyncio
import contextlib

from orchestrator import logs
from orchestrator.db.events import QUEUE_CHANNEL, PgWake
from orchestrator.engine.hub import Hub

log = logs.get(__name__)

NOTIFY_GAP_S = 0.005  # at most 200 NOTIFY a second from one process
RETRY_S = 2.0  # after a failed NOTIFY or LISTEN (the workers poll meanwhile)
CHECK_S = 1.0  # how often the listener checks that its connection is still there
FLUSH_TIMEOUT_S = 3.0  # closing: how long the last NOTIFY may take


class QueueBus:
    def __init__(self, pg: PgWake, hub: Hub) -> None:
        self.pg = pg
        self.hub = hub
        self._pending = asyncio.Event()  # claimable here since the last NOTIFY
        self._notifier: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self.sent = 0
        self.heard = 0
        hub.on_claimable(self._pending.set)

    def start(self) -> None:
        if self._notifier is None:
            self._notifier = asyncio.create_task(self._notify_loop(), name="queue-bus-notify")

    @property
    def listening(self) -> bool:
        return self.pg.listening_to(QUEUE_CHANNEL)

    async def listen(self) -> None:
        """Wake this process's worker when another process notifies. Returns once
        the LISTEN is in place (or failed: then it is retried in the background)."""
        if self._keeper is not None:
            return
        with contextlib.suppress(Exception):
            await self._listen()
        self._keeper = asyncio.create_task(self._keep_listening(), name="queue-bus-listen")

    async def _listen(self) -> None:
        try:
            await self.pg.listen(self._heard, QUEUE_CHANNEL)
        except Exception as exc:
            log.warning("queue bus: LISTEN failed; workers poll", error=str(exc))
            raise

    def _heard(self) -> None:
        self.heard += 1
        self.hub.queue_changed_elsewhere = True
        self.hub.queue_changed.set()

    async def _keep_listening(self) -> None:
        while True:
            await asyncio.sleep(CHECK_S)
            if not self.listening:
                with contextlib.suppress(Exception):
                    await self._listen()
                    # what was queued while the connection was down: look now
                    self.hub.queue_changed_elsewhere = True
                    self.hub.queue_changed.set()
                    log.info("queue bus: listening again")

    async def _notify_loop(self) -> None:
        while True:
            await self._pending.wait()
            self._pending.clear()
            try:
                await self.pg.notify(QUEUE_CHANNEL)
                self.sent += 1
            except asyncio.CancelledError:
                self._pending.set()  # cut short: the close sends it
                raise
            except Exception as exc:
                self._pending.set()
                log.debug("queue bus: NOTIFY failed; workers poll", error=str(exc))
                await asyncio.sleep(RETRY_S)
            await asyncio.sleep(NOTIFY_GAP_S)

    async def stop(self) -> None:
        for task in (self._keeper, self._notifier):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._keeper = self._notifier = None
        if self._pending.is_set():
            self._pending.clear()
            try:
                async with asyncio.timeout(FLUSH_TIMEOUT_S):
                    await self.pg.notify(QUEUE_CHANNEL)
                self.sent += 1
            except Exception as exc:
                log.debug("queue bus: the last NOTIFY failed", error=str(exc))
