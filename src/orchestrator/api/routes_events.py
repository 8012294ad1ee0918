"""The server-wide event stream: every job's events, live (Server-Sent Events)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query
from sse_starlette import EventSourceResponse, ServerSentEvent

from orchestrator.api.deps import ServiceDep
from orchestrator.engine.events import FeedItem, FellBehind

router = APIRouter(prefix="/api", tags=["jobs"])


@router.get(
    "/events",
    responses={200: {"content": {"text/event-stream": {}}}},
    response_class=EventSourceResponse,
    summary="Follow every job (Server-Sent Events)",
)
async def all_events(
    service: ServiceDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=1024)] = None,
    after: Annotated[int | None, Query(ge=0, le=2**62)] = None,
) -> EventSourceResponse:
    """The events of every job (created, transitions, progress) from now on, as they
    happen; the stream never ends. Each event's ``data`` is a job event (with its
    ``job_id``); its ``id`` is a position token (``104``, or ``104~101.103`` while
    earlier events may still commit late). Resume with ``Last-Event-ID`` (or
    ``?after=<event id>``): nothing is skipped, also an event that committed late."""
    resume = last_event_id or (str(after) if after is not None else None)
    # Subscribed before the response starts: what is written once the client has the
    # headers reaches it.
    batches = await service.subscribe_all_events(resume)

    async def stream() -> AsyncIterator[bytes]:
        with contextlib.suppress(FellBehind):  # the client reconnects from its last id
            async for items in batches:
                yield b"".join(sse_bytes(item) for item in items)  # one write per batch

    return EventSourceResponse(stream(), ping=15)


def sse_bytes(item: FeedItem) -> bytes:
    """The item as one SSE message, encoded once however many clients it goes to."""
    if item.encoded is None:
        item.encoded = ServerSentEvent(
            id=item.token, event=item.event.kind, data=item.data
        ).encode()
    return item.encoded
