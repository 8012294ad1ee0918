"""The server-wide event stream: every job's events, live (Server-Sent Events)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from orchestrator.api.deps import ServiceDep

router = APIRouter(prefix="/api", tags=["jobs"])


@router.get(
    "/events",
    responses={200: {"content": {"text/event-stream": {}}}},
    response_class=EventSourceResponse,
    summary="Follow every job (Server-Sent Events)",
)
async def all_events(
    request: Request,
    service: ServiceDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=32)] = None,
    after: Annotated[int | None, Query(ge=0, le=2**62)] = None,
) -> EventSourceResponse:
    """The events of every job (created, transitions, progress) from now on, as they
    happen; the stream never ends. Each event's ``data`` is a job event (with its
    ``job_id``). Resume with ``Last-Event-ID`` (or ``?after=``)."""
    start = after
    if last_event_id and last_event_id.isdigit():
        start = min(int(last_event_id), 2**62)  # a larger id is past every event

    async def stream() -> AsyncIterator[ServerSentEvent]:
        async for ev in service.follow_all_events(start):
            if await request.is_disconnected():
                return
            yield ServerSentEvent(
                id=str(ev.id), event=ev.kind, data=json.dumps(ev.model_dump(mode="json"))
            )

    return EventSourceResponse(stream(), ping=15)
