"""System: health."""

from __future__ import annotations

from fastapi import APIRouter

from orchestrator.api.deps import ServiceDep
from orchestrator.services import SystemHealth

router = APIRouter(prefix="/api/system", tags=["system"])


@router.get("/health", summary="Database, workers, backends and queue at a glance")
async def health(service: ServiceDep) -> SystemHealth:
    """``demo: true`` means the backends are simulated and outputs are placeholders."""
    return await service.health()
