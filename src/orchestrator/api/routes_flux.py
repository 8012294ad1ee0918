"""Thin routes over the FLUX backend, through the same service as everything else."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Response, status

from orchestrator.api.deps import ServiceDep
from orchestrator.api.routes_jobs import PROBLEMS, IdempotencyKey
from orchestrator.domain.jobs import Job
from orchestrator.domain.params import FluxParams, FluxRequest
from orchestrator.services import ModelInfo

router = APIRouter(prefix="/api/flux", tags=["flux"])


@router.post(
    "/generate",
    responses={**PROBLEMS, 202: {"model": Job, "description": "Queued (or still running)"}},
    summary="Generate with FLUX; optionally wait for the result",
)
async def flux_generate(
    params: Annotated[FluxParams, Body()],
    service: ServiceDep,
    response: Response,
    wait: Annotated[bool, Query(description="Wait until the job is finished.")] = False,
    timeout_s: Annotated[float, Query(gt=0, le=600)] = 120,
    priority: Annotated[int, Query(ge=-1000, le=1000)] = 0,
    idempotency_key: IdempotencyKey = None,
) -> Job:
    """The body is the FLUX parameter set (``model`` selects the endpoint). With
    ``wait=true`` the answer comes when the job is finished (200), or after
    ``timeout_s`` with the job still running (202)."""
    job, _ = await service.submit(FluxRequest(params=params, priority=priority), idempotency_key)
    if wait:
        job = await service.wait_for(job.id, timeout_s)
    response.status_code = status.HTTP_200_OK if job.status.terminal else status.HTTP_202_ACCEPTED
    return job


@router.get("/models", summary="FLUX models with their parameter schemas and limits")
async def flux_models(service: ServiceDep) -> list[ModelInfo]:
    return service.models("flux")
