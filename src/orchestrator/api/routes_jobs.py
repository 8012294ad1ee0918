"""Jobs: submit, list, read, cancel, retry, follow, and fetch outputs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response, status
from fastapi.responses import RedirectResponse

from orchestrator.api.deps import PrincipalDep, ServiceDep, get_service
from orchestrator.api.files import ProblemFileResponse, ProblemObjectResponse
from orchestrator.api.problems import Problem
from orchestrator.api.sse import EventStreamResponse
from orchestrator.domain.auth import Principal
from orchestrator.domain.jobs import Job, JobPage, JobStatus
from orchestrator.domain.params import AnyRequest, BackendName, GenerateRequest

router = APIRouter(prefix="/api", tags=["jobs"])
Wait = Annotated[bool, Query(description="Wait until the job is finished.")]
WaitTimeout = Annotated[float, Query(gt=0, le=600, description="How long to wait, seconds.")]
Priority = Annotated[int, Query(ge=-1000, le=1000, description="Higher runs first.")]
PROBLEMS: dict[int | str, dict[str, object]] = {
    404: {"model": Problem, "description": "No such job"},
    409: {"model": Problem, "description": "Conflict"},
    422: {"model": Problem, "description": "Invalid request"},
}
WAITED_RESPONSES: dict[int | str, dict[str, object]] = {
    **PROBLEMS,
    202: {"model": Job, "description": "Queued (or still running)"},
}
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Repeat a submit safely: the same key and body return the same job; "
        "the same key with another body is a 409.",
    ),
]


@router.post(
    "/generate",
    status_code=status.HTTP_202_ACCEPTED,
    responses=PROBLEMS,
    summary="Queue a generation job on any backend",
)
async def generate(
    body: GenerateRequest,
    service: ServiceDep,
    principal: PrincipalDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> Job:
    """One request shape for every backend: ``backend`` selects the parameter model;
    for ``flux``, ``params.model`` selects the BFL endpoint and its fields.

    Cancelling a FLUX job stops polling, but BFL has no cancel: a task already
    submitted may still finish upstream and be billed."""
    job, created = await service.submit(body, idempotency_key, principal=principal)
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/api/jobs/{job.id}"
    return job


# The read routes take the service from the request rather than through ServiceDep:
# FastAPI runs a plain-function dependency in a worker thread, one thread hop per
# request, which the GET path cannot afford.


@router.get("/jobs", responses=PROBLEMS, summary="List jobs, newest first")
async def list_jobs(
    request: Request,
    status_: Annotated[list[JobStatus] | None, Query(alias="status")] = None,
    backend: Annotated[list[BackendName] | None, Query()] = None,
    cursor: Annotated[
        str | None,
        Query(
            max_length=512,
            pattern=r"^[A-Za-z0-9_-]+$",
            description="The next_cursor of the previous page (opaque).",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> JobPage:
    return await get_service(request).list_jobs(
        status=status_ or (), backend=backend or (), cursor=cursor, limit=limit
    )


@router.get("/jobs/{job_id}", responses=PROBLEMS, summary="One job")
async def get_job(job_id: str, request: Request) -> Job:
    return await get_service(request).get_job(job_id)


@router.post("/jobs/{job_id}/cancel", responses=PROBLEMS, summary="Cancel a job")
async def cancel_job(job_id: str, service: ServiceDep, principal: PrincipalDep) -> Job:
    """A queued job is canceled at once. A running job is canceled by its worker
    (the returned job has ``cancel_requested``). FLUX tasks cannot be stopped
    upstream: polling stops, and BFL may still bill the task."""
    return await service.cancel_job(job_id, principal=principal)


@router.post(
    "/jobs/{job_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    responses=PROBLEMS,
    summary="Run a finished job again, as a new job",
)
async def retry_job(
    job_id: str, service: ServiceDep, principal: PrincipalDep, response: Response
) -> Job:
    """Queues a new job with the same backend, model, parameters, priority and
    webhook settings, and a fresh deadline; its ``retry_of`` names this job. Any
    finished job (succeeded, failed or canceled) can be retried; a queued or running
    one is a 409 ``invalid-transition`` problem."""
    job = await service.retry_job(job_id, principal=principal)
    response.headers["Location"] = f"/api/jobs/{job.id}"
    return job


@router.get(
    "/jobs/{job_id}/events",
    responses={**PROBLEMS, 200: {"content": {"text/event-stream": {}}}},
    response_class=EventStreamResponse,
    summary="Follow a job (Server-Sent Events)",
)
async def job_events(
    job_id: str,
    service: ServiceDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=1024)] = None,
    after: Annotated[int | None, Query(ge=0, le=2**62)] = None,
) -> EventStreamResponse:
    """Progress and transitions as they happen; the stream ends when the job is
    finished. Each event's ``id`` is a position token; resume with ``Last-Event-ID``
    (or ``?after=<event id>``): nothing is skipped, also an event that committed late.
    If both are given, ``Last-Event-ID`` wins (what ``EventSource`` sends on reconnect)."""
    resume = last_event_id or (str(after) if after is not None else None)
    # Served by the process's one event reader (404 for an unknown job).
    return EventStreamResponse(await service.subscribe_job(job_id, resume))


OUTPUT_CACHE = {"Cache-Control": "private, max-age=31536000, immutable"}


@router.get(
    "/outputs/{job_id}/{n}",
    responses={**PROBLEMS, 200: {"content": {"image/*": {}, "video/*": {}}}},
    response_class=ProblemFileResponse,
    summary="Download an output (supports Range)",
)
async def get_output(
    job_id: str, n: Annotated[int, Path(ge=0, le=10_000)], service: ServiceDep
) -> Response:
    """From the local output folder, or streamed from the S3 output store; with
    OUTPUT_STORE_PRESIGN_S, a redirect to a short-lived presigned URL instead."""
    store = service.store
    if store.is_local:
        out, path = await service.output(job_id, n)
        return ProblemFileResponse(
            path,
            media_type=out.mime_type,
            filename=path.name,
            content_disposition_type="inline",
            headers=OUTPUT_CACHE,
        )
    out = await service.find_output(job_id, n)
    presign_s = service.settings.output_store_presign_s
    if presign_s > 0:
        url = await store.presign_output(out.path, presign_s)
        if url is not None:
            # the redirect expires with the URL: never cached
            return RedirectResponse(url, 307, headers={"Cache-Control": "private, no-store"})
    info = await store.stat_output(out.path)
    return ProblemObjectResponse(
        store.objects,
        info,
        media_type=out.mime_type,
        filename=out.path.rsplit("/", 1)[-1],
        etag=f'"{out.sha256}"',
        headers=OUTPUT_CACHE,
    )


async def submit_and_maybe_wait(
    service: ServiceDep,
    req: AnyRequest,
    response: Response,
    *,
    principal: Principal,
    idempotency_key: str | None,
    wait: bool,
    timeout_s: float,
) -> Job:
    """Queue ``req``; with ``wait``, answer when the job is finished (200), or after
    ``timeout_s`` with the job still going (202)."""
    job, _ = await service.submit(req, idempotency_key, principal=principal)
    if wait:
        job = await service.wait_for(job.id, timeout_s)
    response.status_code = status.HTTP_200_OK if job.status.terminal else status.HTTP_202_ACCEPTED
    return job
