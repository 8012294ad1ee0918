"""System: health."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from orchestrator.api.deps import ServiceDep
from orchestrator.ignite import IgniteReport
from orchestrator.services import ModelInfo, SystemHealth

router = APIRouter(prefix="/api/system", tags=["system"])
models_router = APIRouter(prefix="/api", tags=["system"])


@models_router.get("/models", summary="What every backend can run, with parameter schemas")
async def models(
    service: ServiceDep, backend: Annotated[str | None, Query(max_length=32)] = None
) -> list[ModelInfo]:
    """FLUX models, the ComfyUI job kinds, and each user workflow (backend
    ``workflow``, model = its name) with the JSON Schema of its parameters."""
    return service.models(backend)


@router.get("/health", summary="Database, workers, backends and queue at a glance")
async def health(service: ServiceDep) -> SystemHealth:
    """``demo: true`` means the backends are simulated and outputs are placeholders."""
    return await service.health()


@router.post("/ignite", summary="Check every dependency: database, folders, FLUX, ComfyUI")
async def ignite(service: ServiceDep) -> IgniteReport:
    """``ok`` is false when an essential check failed; warnings name optional parts
    that are off or degraded."""
    return await service.ignite()
