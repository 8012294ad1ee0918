"""Probes and metrics for orchestration platforms: /healthz, /readyz, /metrics."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from orchestrator import logs
from orchestrator.api.deps import ServiceDep
from orchestrator.api.problems import problem_response
from orchestrator.ledger import today
from orchestrator.metrics import CONTENT_TYPE, Metrics

router = APIRouter(tags=["operations"])
log = logs.get(__name__)


class Alive(BaseModel):
    status: Literal["alive"] = "alive"


class Ready(BaseModel):
    status: Literal["ready"] = "ready"


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> Alive:
    return Alive()


@router.get(
    "/readyz",
    summary="Readiness: database reachable, a backend usable, queue not overfull",
    responses={503: {"description": "Not ready; the detail names the reason."}},
    response_model=Ready,
)
async def readyz(request: Request, service: ServiceDep) -> Ready | JSONResponse:
    reason = await service.readiness()
    if reason is not None:
        return problem_response(
            request, 503, "Not ready", "not-ready", reason, headers={"Retry-After": "5"}
        )
    return Ready()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, service: ServiceDep) -> Response:
    m: Metrics = request.app.state.runtime.metrics
    try:
        m.set_counts(await service.repo.counts())
        spend = await service.ledger.repo.spend(today())
        m.set_spend(spend.spent, spend.reserved)
    except Exception:
        log.warning("metrics: could not read job counts", exc_info=True)
    try:
        m.set_workers(
            (w.kind, w.state == "live", w.backends) for w in await service.worker_statuses()
        )
    except Exception:
        log.warning("metrics: could not read the worker registry", exc_info=True)
    flux = next((h for h in await service.cached_backend_health() if h.name == "flux"), None)
    credits = flux.details.get("credits") if flux is not None and flux.enabled else None
    m.set_credits(float(credits) if isinstance(credits, int | float) else None)
    return Response(m.render(), media_type=CONTENT_TYPE)
