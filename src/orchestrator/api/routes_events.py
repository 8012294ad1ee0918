"""The server-wide event stream: every job's events, live (Server-Sent Events)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query

from orchestrator.api.deps import ServiceDep
from orchestrator.api.sse import EventStreamResponse

router = APIRouter(prefix="/api", tags=["jobs"])


@router.get(
    "/events",
    responses={200: {"content": {"text/event-stream": {}}}},
    response_class=EventStreamResponse,
    summary="Follow every job (Server-Sent Events)",
)
async def all_events(
    service: ServiceDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=1024)] = None,
    after: Annotated[int | None, Query(ge=0, le=2**62)] = None,
) -> EventStreamResponse:
    """The events of every job (created, transitions, progress) from now on, as they
    happen; the stream never ends. Each event's ``data`` is a job event (with its
    ``job_id``); its ``id`` is a position token (``104``, or ``104~101.103`` while
    earlier events may still commit late). Resume with ``Last-Event-ID`` (or
    ``?after=<event id>``): nothing is skipped, also an event that committed late.
    If both are given, ``Last-Event-ID`` wins: a browser's ``EventSource`` keeps its
    URL (``?after=`` included) and sends the header, the newer position, when it
    reconnects."""
    resume = last_event_id or (str(after) if after is not None else None)
    # Subscribed before the response starts: what is written once the client has the
    # headers reaches it. The process's one event reader writes to the client itself.
    return EventStreamResponse(await service.subscribe_all_events(resume))
