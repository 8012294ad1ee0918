"""Thin routes over the ComfyUI pool, through the same service as everything else."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Response
from pydantic import JsonValue

from orchestrator.api.deps import PrincipalDep, ServiceDep
from orchestrator.api.problems import Problem
from orchestrator.api.routes_jobs import (
    PROBLEMS,
    WAITED_RESPONSES,
    IdempotencyKey,
    Priority,
    Wait,
    WaitTimeout,
    submit_and_maybe_wait,
)
from orchestrator.backends.comfy import InstanceStatus
from orchestrator.domain.jobs import Job
from orchestrator.domain.params import ComfyRawParams, ComfyRequest

router = APIRouter(prefix="/api/comfy", tags=["comfy"])


@router.post(
    "/prompt",
    responses=WAITED_RESPONSES,
    summary="Run a raw API-format ComfyUI workflow as a job",
)
async def comfy_prompt(
    body: Annotated[ComfyRawParams, Body()],
    service: ServiceDep,
    principal: PrincipalDep,
    response: Response,
    wait: Wait = False,
    timeout_s: WaitTimeout = 120,
    priority: Priority = 0,
    idempotency_key: IdempotencyKey = None,
) -> Job:
    """Queued like any job (``backend: comfy``) and dispatched to the least busy
    healthy instance; its outputs are whatever the workflow saves."""
    req = ComfyRequest(params=body, priority=priority)
    return await submit_and_maybe_wait(
        service,
        req,
        response,
        principal=principal,
        idempotency_key=idempotency_key,
        wait=wait,
        timeout_s=timeout_s,
    )


@router.get("/instances", responses=PROBLEMS, summary="ComfyUI instances: health, load, models")
async def comfy_instances(service: ServiceDep) -> list[InstanceStatus]:
    """Each instance with health, in-flight prompts, its models and whether each
    template (sdxl, sd35, svd) can run there (missing nodes or model files)."""
    return service.comfy_instances()


# A node class name: not "." or ".." (nor only dots), which would be a dot segment in
# the upstream URL (/object_info/.. is /).
NODE_PATTERN = r"^[A-Za-z0-9_.+ -]*[A-Za-z0-9_+ -][A-Za-z0-9_.+ -]*$"
UPSTREAM_PROBLEMS: dict[int | str, dict[str, object]] = {
    **PROBLEMS,
    502: {"model": Problem, "description": "ComfyUI answered with an error or is unreachable"},
}


@router.get("/object_info", responses=UPSTREAM_PROBLEMS, summary="An instance's node catalogue")
async def comfy_object_info(
    service: ServiceDep,
    instance: Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9._-]+$")] = None,
    node: Annotated[str | None, Query(max_length=128, pattern=NODE_PATTERN)] = None,
) -> dict[str, JsonValue]:
    return await service.comfy_object_info(instance, node)


@router.get("/queue", responses=PROBLEMS, summary="Each instance's queue")
async def comfy_queue(service: ServiceDep) -> dict[str, JsonValue]:
    return await service.comfy_queue()
