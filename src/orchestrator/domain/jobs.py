"""Jobs: states, the one transition function, and the typed records the service
layer hands to every entry point."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from orchestrator import errors


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})

# Every legal move. RUNNING -> QUEUED is the one backwards step: a job whose
# worker died (or shut down) before anything was sent upstream goes back in line.
ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.QUEUED}
    ),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELED: frozenset(),
}


def can_transition(current: JobStatus, target: JobStatus) -> bool:
    return target in ALLOWED[current]


def transition(current: JobStatus, target: JobStatus) -> JobStatus:
    """Return ``target`` if moving there from ``current`` is legal, else raise."""
    if not can_transition(current, target):
        raise errors.InvalidTransition(
            f"a {current.value} job cannot become {target.value}",
            current=current.value,
            target=target.value,
        )
    return target


# The events a job may subscribe to with ``webhook_events`` (sent as ``job.<name>``).
WebhookEventName = Literal["started", "progress", "completed"]


class UpstreamHandle(BaseModel):
    """What identifies the work upstream; stored *before* waiting on it, so a
    restarted process re-attaches instead of submitting again."""

    model_config = ConfigDict(extra="forbid")

    task_id: str = Field(description="BFL task id, or ComfyUI prompt_id.")
    polling_url: str | None = Field(default=None, description="BFL's polling_url, used as-is.")
    instance: str | None = Field(default=None, description="ComfyUI instance name.")
    client_id: str | None = None


class JobError(BaseModel):
    code: errors.ErrorCode
    message: str
    details: dict[str, JsonValue] = Field(default_factory=dict)


class JobOutput(BaseModel):
    n: int = Field(description="0-based index of the output within the job.")
    path: str = Field(description="Path relative to OUTPUT_DIR.")
    url: str = Field(description="API path that streams the file.")
    mime_type: str
    size_bytes: int
    sha256: str
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None


class Job(BaseModel):
    id: str
    backend: str
    model: str
    params: dict[str, JsonValue]
    status: JobStatus
    priority: int
    progress: float | None = Field(default=None, description="0..1 when known.")
    attempts: int = 0
    idempotency_key: str | None = None
    error: JobError | None = None
    upstream: UpstreamHandle | None = None
    outputs: list[JobOutput] = Field(default_factory=list)
    cost: float | None = Field(
        default=None,
        description="Cost in credits (1 credit = US$0.01): final once the job ended; "
        "while it runs, BFL's quote if one was sent.",
    )
    cost_estimate: float | None = Field(
        default=None, description="The estimate reserved against budgets when it was queued."
    )
    gpu_seconds: float | None = Field(default=None, description="ComfyUI execution time.")
    simulated: bool = Field(default=False, description="Ran on a simulated (demo) backend.")
    cancel_requested: bool = False
    deadline_at: datetime
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime
    retry_of: str | None = Field(
        default=None, description="The job this one retries (POST /api/jobs/{id}/retry)."
    )
    token_id: str | None = Field(
        default=None,
        description="The API token that created the job (null: the local owner, or "
        "authentication disabled).",
    )
    webhook_url: str | None = Field(
        default=None, description="Where this job's webhook events are sent."
    )
    webhook_events: list[WebhookEventName] | None = Field(
        default=None, description="The events sent to webhook_url; null: all of them."
    )


EventKind = Literal["created", "transition", "progress", "upstream", "info"]


class JobEvent(BaseModel):
    id: int
    job_id: str
    at: datetime
    kind: EventKind
    status: JobStatus | None = None
    progress: float | None = None
    message: str | None = None
    data: dict[str, JsonValue] = Field(default_factory=dict)


class JobPage(BaseModel):
    items: list[Job]
    next_cursor: str | None = Field(default=None, description="Pass as ?cursor= for more.")
