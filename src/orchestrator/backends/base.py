"""The one narrow interface every backend implements.

The worker drives a job through it in order: ``submit`` (returns the upstream handle,
which the worker stores before going on), ``wait`` (until upstream finishes,
reporting progress), ``fetch_outputs`` (streams each file into the output store),
and, when asked, ``cancel``. A restarted worker skips ``submit`` and calls ``wait``
with the stored handle.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, JsonValue

from orchestrator.db.jobs import NewOutput
from orchestrator.domain.jobs import Job, UpstreamHandle
from orchestrator.storage import OutputStore

ProgressFn = Callable[[float | None, str | None], Awaitable[None]]


@dataclass(frozen=True)
class Submitted:
    handle: UpstreamHandle
    cost: float | None = None


@dataclass(frozen=True)
class RemoteFile:
    """A finished file upstream, as the backend knows how to fetch it."""

    ref: str
    mime_type: str | None = None


@dataclass(frozen=True)
class Completed:
    files: list[RemoteFile]
    details: dict[str, JsonValue] = field(default_factory=dict)
    # Facts the worker records in the job's events (kind "info"), e.g. token usage.
    record: dict[str, JsonValue] | None = None


@dataclass(frozen=True)
class CancelOutcome:
    stopped_upstream: bool
    note: str


class BackendHealth(BaseModel):
    name: str
    enabled: bool
    simulated: bool
    status: Literal["ok", "degraded", "down", "disabled"]
    reason: str | None = None
    latency_ms: float | None = None
    details: dict[str, JsonValue] = {}


class Backend(ABC):
    name: str
    simulated: bool = False

    @property
    @abstractmethod
    def enabled(self) -> bool: ...

    @property
    @abstractmethod
    def disabled_reason(self) -> str | None: ...

    @abstractmethod
    def limit_groups(self, model: str) -> Sequence[tuple[str, int]]:
        """The (group, max active) pairs a job of ``model`` counts against."""

    @abstractmethod
    def default_deadline_s(self) -> float: ...

    def prepare(self, params: dict[str, JsonValue]) -> dict[str, JsonValue]:
        """Fill in what must be fixed when the job is created (e.g. a random seed,
        so the job records the seed it ran with)."""
        return params

    def waiting_reason(self) -> str | None:
        """Why no job of this backend can be taken now (every upstream instance is
        down or restarting), e.g. "waiting for a ComfyUI instance: ...". The worker
        leaves such jobs queued and claims them again once this is None."""
        return None

    @property
    def availability_epoch(self) -> int:
        """A number that changes whenever an upstream instance comes (back) up: jobs
        set aside to wait for one are tried again at once."""
        return 0

    def on_available(self, wake: Callable[[], None]) -> None:  # noqa: B027 - optional hook
        """Call ``wake`` whenever an upstream instance comes (back) up."""

    def release(self, handle: UpstreamHandle) -> None:  # noqa: B027 - optional hook
        """This process is done with the job's upstream task (ended, failed, canceled,
        requeued or handed over): let go of what was held for it (subscriptions,
        capacity counted against an instance)."""

    def plan(self, job: Job) -> UpstreamHandle | None:
        """A handle chosen before submitting (ComfyUI takes our own prompt id), so the
        worker can store it before the submit; None when upstream assigns it."""
        return None

    @abstractmethod
    async def submit(self, job: Job, planned: UpstreamHandle | None = None) -> Submitted: ...

    @abstractmethod
    async def wait(self, job: Job, handle: UpstreamHandle, progress: ProgressFn) -> Completed: ...

    @abstractmethod
    async def fetch_outputs(
        self, job: Job, handle: UpstreamHandle, completed: Completed, store: OutputStore
    ) -> list[NewOutput]: ...

    @abstractmethod
    async def cancel(
        self, job: Job, handle: UpstreamHandle | None, *, submit_started: bool = False
    ) -> CancelOutcome:
        """Stop the job upstream where the upstream allows it. ``handle``: the stored
        upstream handle (None: none was recorded); ``submit_started``: a submit was
        sent, or may have been, though no handle was recorded (the note must not say
        that nothing was sent)."""

    @abstractmethod
    async def health(self) -> BackendHealth: ...

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release what the backend holds (the HTTP client is owned by the app)."""
