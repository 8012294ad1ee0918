"""Webhooks: the outbox of deliveries, with their attempts, and replay."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from orchestrator.api.deps import ServiceDep
from orchestrator.api.problems import Problem
from orchestrator.domain.webhooks import DeliveryStatus, WebhookDelivery, WebhookDeliveryPage

router = APIRouter(prefix="/api/webhooks", tags=["webhooks"])
PROBLEMS: dict[int | str, dict[str, object]] = {
    404: {"model": Problem, "description": "No such delivery"},
    409: {"model": Problem, "description": "Webhooks are disabled"},
    422: {"model": Problem, "description": "Invalid request"},
}


@router.get("/deliveries", responses=PROBLEMS, summary="List webhook deliveries, newest first")
async def list_deliveries(
    service: ServiceDep,
    job_id: Annotated[str | None, Query(max_length=64)] = None,
    status_: Annotated[list[DeliveryStatus] | None, Query(alias="status")] = None,
    cursor: Annotated[
        str | None,
        Query(
            max_length=512,
            pattern=r"^[A-Za-z0-9_-]+$",
            description="The next_cursor of the previous page (opaque).",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> WebhookDeliveryPage:
    """Each delivery is one event for one target URL, with every attempt made
    (time, latency, HTTP status, error). Cursor-paginated."""
    return await service.list_deliveries(
        job_id=job_id, status=status_ or (), cursor=cursor, limit=limit
    )


@router.post(
    "/deliveries/{delivery_id}/replay",
    responses=PROBLEMS,
    summary="Send a webhook delivery again",
)
async def replay_delivery(delivery_id: str, service: ServiceDep) -> WebhookDelivery:
    """The delivery becomes pending and due now, with a fresh retry window
    (WEBHOOK_MAX_AGE_S). It keeps its id — the ``webhook-id`` header, which Standard
    Webhooks keeps the same when a message is re-sent — and its attempt log."""
    return await service.replay_delivery(delivery_id)
