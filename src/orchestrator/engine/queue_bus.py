"""PostgreSQL as the queue's bus: the moment a job becomes claimable in one process
(queued, requeued, a concurrency slot freed while jobs waited), the idle workers of
the other processes wake and claim, instead of at their next poll
(``WORKER_POLL_INTERVAL_S``, which stays as the fallback); and when a stopping
worker gives back the leases of jobs still running upstream, another process's
worker re-attaches them at once instead of at its next take-over scan (every
``LEASE_S / 2``).

Sending: the hub's signals (after the commit) set a flag per channel; one task per
channel sends one NOTIFY per burst (what happens while one is sent goes in the
next). Closing sends what is still pending, so a one-shot command that queued a job
and exits, or a worker that stops, still wakes the others. Receiving (only in a
process that runs a worker): LISTEN on the process's one wake-up connection (the
event feed's), setting ``hub.queue_changed``; a lost connection is listened on again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from orchestrator import logs
from orchestrator.db.events import QUEUE_CHANNEL, RELEASED_CHANNEL, PgWake
from orchestrator.engine.hub import Hub

log = logs.get(__name__)

CHANNELS = (QUEUE_CHANNEL, RELEASED_CHANNEL)
NOTIFY_GAP_S = 0.005  # at most 200 NOTIFY a second per channel from one process
RETRY_S = 2.0  # after a failed NOTIFY or LISTEN (the workers poll meanwhile)
CHECK_S = 1.0  # how often the listener checks that its connection is still there
FLUSH_TIMEOUT_S = 3.0  # closing: how long the last NOTIFY may take


class QueueBus:
    def __init__(self, pg: PgWake, hub: Hub) -> None:
        self.pg = pg
        self.hub = hub
        # per channel: something to announce since its last NOTIFY
        self._pending = {channel: asyncio.Event() for channel in CHANNELS}
        self._notifiers: list[asyncio.Task[None]] = []
        self._keeper: asyncio.Task[None] | None = None
        self.sent = 0
        self.heard = 0
        hub.on_claimable(self._pending[QUEUE_CHANNEL].set)
        hub.on_released(self._pending[RELEASED_CHANNEL].set)

    def start(self) -> None:
        if not self._notifiers:
            self._notifiers = [
                asyncio.create_task(self._notify_loop(channel), name=f"queue-bus-{channel}")
                for channel in CHANNELS
            ]

    @property
    def listening(self) -> bool:
        return all(self.pg.listening_to(channel) for channel in CHANNELS)

    async def listen(self) -> None:
        """Wake this process's worker when another process notifies. Returns once
        the LISTEN is in place (or failed: then it is retried in the background)."""
        if self._keeper is not None:
            return
        with contextlib.suppress(Exception):
            await self._listen()
        self._keeper = asyncio.create_task(self._keep_listening(), name="queue-bus-listen")

    async def _listen(self, *, quiet: bool = False) -> None:
        handlers: dict[str, Callable[[], None]] = {
            QUEUE_CHANNEL: self._queued,
            RELEASED_CHANNEL: self._released,
        }
        try:
            for channel, handler in handlers.items():
                await self.pg.listen(handler, channel)
        except Exception as exc:
            level = log.debug if quiet else log.warning
            level("queue bus: LISTEN failed; the worker polls", error=str(exc))
            raise

    def _wake(self) -> None:
        self.hub.queue_changed_elsewhere = True
        self.hub.queue_changed.set()

    def _queued(self) -> None:
        self.heard += 1
        self._wake()

    def _released(self) -> None:
        self.heard += 1
        self.hub.recover_requested = True
        self._wake()

    async def _keep_listening(self) -> None:
        while True:
            await asyncio.sleep(CHECK_S)
            if not self.listening:
                with contextlib.suppress(Exception):
                    await self._listen(quiet=True)
                    # what was queued or given back while the connection was down
                    self.hub.recover_requested = True
                    self._wake()
                    log.info("queue bus: listening again")

    async def _notify_loop(self, channel: str) -> None:
        pending = self._pending[channel]
        while True:
            await pending.wait()
            pending.clear()
            try:
                await self.pg.notify(channel)
                self.sent += 1
            except asyncio.CancelledError:
                pending.set()  # cut short: the close sends it
                raise
            except Exception as exc:
                pending.set()
                log.debug("queue bus: NOTIFY failed; workers poll", error=str(exc))
                await asyncio.sleep(RETRY_S)
            await asyncio.sleep(NOTIFY_GAP_S)

    async def stop(self) -> None:
        for task in [self._keeper, *self._notifiers]:
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._keeper = None
        self._notifiers = []
        for channel, pending in self._pending.items():
            if not pending.is_set():
                continue
            pending.clear()
            try:
                async with asyncio.timeout(FLUSH_TIMEOUT_S):
                    await self.pg.notify(channel)
                self.sent += 1
            except Exception as exc:
                log.debug("queue bus: the last NOTIFY failed", channel=channel, error=str(exc))
