"""The one exception tree. Services raise these; ``api/problems.py`` maps them to
RFC 9457 problem responses in one place, the CLI to exit codes and messages.

::

    OrchestratorError                      500  (base; never raised bare)
    ├── ConfigError                         -   settings invalid (exit code 2)
    ├── NotFound                           404
    │   ├── JobNotFound
    │   ├── OutputNotFound
    │   ├── DeliveryNotFound                a webhook delivery
    │   ├── TokenNotFound                   an API token
    │   └── SiteNotFound                    an imported Tilda site, page, asset or import run
    ├── Conflict                           409
    │   ├── IdempotencyConflict             same Idempotency-Key, different body
    │   ├── InvalidTransition               e.g. cancelling a finished job
    │   ├── BackendDisabled                 backend not configured (reason given)
    │   └── WebhooksDisabled                a webhook was asked for without WEBHOOK_SECRET
    ├── InvalidRequest                     422  (field errors)
    │   └── InvalidExport                   a Tilda export refused (carries an ErrorCode)
    ├── Forbidden                          403  the token's scope does not allow it
    ├── ImportPathNotAllowed               403  a server-side import path outside the roots
    ├── TildaApiError                      502  the Tilda API failed (import through the API)
    ├── BudgetExceeded                     402  a daily budget would be exceeded
    ├── DatabaseUnavailable                503  locked past its busy timeout, or unreachable
    │   └── DatabaseCorrupt                     the SQLite file fails its integrity check
    └── UpstreamError                      502  (a backend failed; carries an ErrorCode)
        ├── TransientUpstreamError               may be retried
        │   └── RateLimited                      429 with Retry-After
        ├── Requeue                              nothing ran: run the job again elsewhere
        ├── StorageFull                          the output folder is full: fetch again later
        ├── StorageUnavailable                   the object store failed past its retries
        └── DeadlineExceeded

Job failures are recorded with a machine-readable :class:`ErrorCode`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import JsonValue


class ErrorCode(StrEnum):
    """Machine-readable reasons a job failed (stored in ``jobs.error_code``)."""

    INVALID_PARAMS = "invalid_params"
    UPSTREAM_AUTH = "upstream_auth"
    INSUFFICIENT_CREDITS = "insufficient_credits"
    RATE_LIMITED = "rate_limited"
    MODERATED = "moderated"
    UPSTREAM_ERROR = "upstream_error"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    BACKEND_UNAVAILABLE = "backend_unavailable"
    GENERATION_FAILED = "generation_failed"
    TASK_NOT_FOUND = "task_not_found"
    RESULT_EXPIRED = "result_expired"
    BAD_RESPONSE = "bad_response"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    SUBMIT_INTERRUPTED = "submit_interrupted"
    SUBMIT_UNCERTAIN = "submit_uncertain"
    BACKEND_DISABLED = "backend_disabled"
    # a job accepted for a simulated (demo) backend found by a worker whose backend is
    # real, or the other way round: it is never sent to the other kind
    BACKEND_KIND_CHANGED = "backend_kind_changed"
    STORAGE_ERROR = "storage_error"
    # the object store (S3) could not be reached or refused the upload, retries spent
    STORAGE_UNAVAILABLE = "storage_unavailable"
    # an upstream handed over a URL we may not follow (host, scheme, private address)
    UNTRUSTED_URL = "untrusted_url"
    OUTPUT_TOO_LARGE = "output_too_large"  # a download passed its backend's size cap
    DOWNLOAD_TIMEOUT = "download_timeout"  # a download took longer than DOWNLOAD_TIMEOUT_S
    INVALID_OUTPUT = "invalid_output"  # an output is not what the backend makes (HTML…)
    INVALID_WORKFLOW = "invalid_workflow"
    MISSING_MODEL = "missing_model"
    EXECUTION_ERROR = "execution_error"
    INTERRUPTED = "interrupted"
    PROMPT_LOST = "prompt_lost"
    INVALID_INPUT = "invalid_input"
    INTERNAL_ERROR = "internal_error"
    STREAM_INTERRUPTED = "stream_interrupted"  # a streamed answer (v0) broke off, retries spent
    # Tilda import runs (stored in ``tilda_imports.error_code``)
    UNSAFE_ARCHIVE = "unsafe_archive"
    CORRUPT_ARCHIVE = "corrupt_archive"
    ARCHIVE_TOO_LARGE = "archive_too_large"
    NOT_TILDA_EXPORT = "not_tilda_export"
    IMPORT_FAILED = "import_failed"


class OrchestratorError(Exception):
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"
    type_slug: ClassVar[str] = "internal-error"

    def __init__(self, detail: str = "", **extra: JsonValue) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra: dict[str, JsonValue] = dict(extra)


class ConfigError(OrchestratorError):
    title = "Invalid configuration"
    type_slug = "invalid-configuration"

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems), problems=list(problems))
        self.problems = problems


class NotFound(OrchestratorError):
    status = 404
    title = "Not found"
    type_slug = "not-found"


class JobNotFound(NotFound):
    title = "Job not found"
    type_slug = "job-not-found"


class OutputNotFound(NotFound):
    title = "Output not found"
    type_slug = "output-not-found"


class DeliveryNotFound(NotFound):
    title = "Webhook delivery not found"
    type_slug = "webhook-delivery-not-found"


class SiteNotFound(NotFound):
    title = "Imported site content not found"
    type_slug = "site-not-found"


class TokenNotFound(NotFound):
    title = "API token not found"
    type_slug = "token-not-found"


class Conflict(OrchestratorError):
    status = 409
    title = "Conflict"
    type_slug = "conflict"


class IdempotencyConflict(Conflict):
    title = "Idempotency key reused with a different request"
    type_slug = "idempotency-conflict"


class InvalidTransition(Conflict):
    title = "Job cannot make that transition"
    type_slug = "invalid-transition"


class BackendDisabled(Conflict):
    title = "Backend disabled"
    type_slug = "backend-disabled"


class WebhooksDisabled(Conflict):
    title = "Webhooks disabled"
    type_slug = "webhooks-disabled"


class InvalidRequest(OrchestratorError):
    status = 422
    title = "Invalid request"
    type_slug = "invalid-request"


class InvalidExport(InvalidRequest):
    """A Tilda export that is refused: unsafe, corrupt, too large or not Tilda's.
    ``code`` names the problem (unsafe_archive, corrupt_archive, archive_too_large,
    not_tilda_export)."""

    title = "Tilda export refused"
    type_slug = "invalid-export"

    def __init__(self, code: ErrorCode, detail: str, **extra: JsonValue) -> None:
        super().__init__(detail, code=code.value, **extra)
        self.code = code


class Forbidden(OrchestratorError):
    """Authenticated, but the token's scope (or ownership of the job) does not
    allow the action."""

    status = 403
    title = "Forbidden"
    type_slug = "forbidden"


class ImportPathNotAllowed(OrchestratorError):
    status = 403
    title = "Import path not allowed"
    type_slug = "import-path-not-allowed"


class BudgetExceeded(OrchestratorError):
    """A job was refused before anything was spent: it would take a daily budget
    (global or its token's) over its limit."""

    status = 402
    title = "Budget exceeded"
    type_slug = "budget-exceeded"


class TildaApiError(OrchestratorError):
    """The Tilda API refused a call or answered something unusable."""

    status = 502
    title = "Tilda API error"
    type_slug = "tilda-api-error"


class DatabaseUnavailable(OrchestratorError):
    """The database is locked past its busy timeout or cannot be reached: answered
    503 with ``Retry-After``, so clients try again instead of seeing a 500."""

    status = 503
    title = "Database unavailable"
    type_slug = "database-unavailable"
    retry_after_s = 2


class DatabaseCorrupt(DatabaseUnavailable):
    title = "Database corrupt"
    type_slug = "database-corrupt"

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(
            f"the database file {path} failed its integrity check ({problem}); restore it "
            "from a backup, or move it aside to start with an empty one"
        )


class UpstreamError(OrchestratorError):
    """A backend failed. ``code`` is what the job records."""

    status = 502
    title = "Upstream error"
    type_slug = "upstream-error"

    def __init__(self, code: ErrorCode, detail: str, **extra: JsonValue) -> None:
        super().__init__(detail, **extra)
        self.code = code


class TransientUpstreamError(UpstreamError):
    """Worth retrying (connect errors, 5xx on idempotent calls)."""


class RateLimited(TransientUpstreamError):
    def __init__(self, detail: str, retry_after_s: float | None) -> None:
        super().__init__(ErrorCode.RATE_LIMITED, detail, retry_after_s=retry_after_s)
        self.retry_after_s = retry_after_s


class StorageFull(UpstreamError):
    """The output folder is out of space (ENOSPC, EDQUOT). Transient: the worker keeps
    the job and its upstream handle, backs off and fetches the result again while it
    is still available upstream, instead of failing a paid, finished generation."""

    def __init__(self, detail: str) -> None:
        super().__init__(ErrorCode.STORAGE_ERROR, detail)


class StorageUnavailable(UpstreamError):
    """The output store (an S3 bucket) could not store an output: unreachable,
    refusing, or failing, after a few tries with backoff. The job fails with
    ``storage_unavailable``; it is never marked succeeded without its object."""

    def __init__(self, detail: str) -> None:
        super().__init__(ErrorCode.STORAGE_UNAVAILABLE, detail)


class Requeue(UpstreamError):
    """Nothing ran upstream and the work can go elsewhere: the worker puts the job
    back in the queue (e.g. a ComfyUI prompt that vanished before it started).

    ``counts``: whether this try counts against the job's requeue limit. A requeue
    that is not the job's doing (the server restarted and forgot a prompt that had
    not run) does not; the job's deadline still bounds it."""

    def __init__(
        self, detail: str, *, counts: bool = True, code: ErrorCode = ErrorCode.PROMPT_LOST
    ) -> None:
        super().__init__(code, detail)
        self.counts = counts


class WaitForBackend(Requeue):
    """No upstream instance can take the job now (all down, or restarting): the job
    goes back to the queue without counting a try and waits, until its deadline, for
    an instance to come back. ``detail`` is what the job's events say, e.g. "waiting
    for a ComfyUI instance: ...". If the job cannot be failed for it, it fails
    ``backend_unavailable``."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, counts=False, code=ErrorCode.BACKEND_UNAVAILABLE)


class DeadlineExceeded(UpstreamError):
    status = 504
    title = "Deadline exceeded"
    type_slug = "deadline-exceeded"

    def __init__(self, detail: str = "the job's deadline passed") -> None:
        super().__init__(ErrorCode.DEADLINE_EXCEEDED, detail)
