"""Thin routes over the FLUX backend, through the same service as everything else."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Response

from orchestrator.api.deps import PrincipalDep, ServiceDep
from orchestrator.api.routes_jobs import (
    WAITED_RESPONSES,
    IdempotencyKey,
    Priority,
    Wait,
    WaitTimeout,
    submit_and_maybe_wait,
)
from orchestrator.domain.jobs import Job
from orchestrator.domain.params import FluxParams, FluxRequest
from orchestrator.services import ModelInfo

router = APIRouter(prefix="/api/flux", tags=["flux"])


@router.post(
    "/generate",
    responses=WAITED_RESPONSES,
    summary="Generate with FLUX; optionally wait for the result",
)
async def flux_generate(
    params: Annotated[FluxParams, Body()],
    service: ServiceDep,
    principal: PrincipalDep,
    response: Response,
    wait: Wait = False,
    timeout_s: WaitTimeout = 120,
    priority: Priority = 0,
    idempotency_key: IdempotencyKey = None,
) -> Job:
    """The body is the FLUX parameter set (``model`` selects the endpoint). With
    ``wait=true`` the answer comes when the job is finished (200), or after
    ``timeout_s`` with the job still running (202)."""
    req = FluxRequest(params=params, priority=priority)
    return await submit_and_maybe_wait(
        service,
        req,
        response,
        principal=principal,
        idempotency_key=idempotency_key,
        wait=wait,
        timeout_s=timeout_s,
    )


@router.get("/models", summary="FLUX models with their parameter schemas and limits")
async def flux_models(service: ServiceDep) -> list[ModelInfo]:
    return service.models("flux")
