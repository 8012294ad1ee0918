"""The baseline of ``bench/events_fanout.py``: a minimal FastAPI app that broadcasts events
to every connected Server-Sent Events client.

Written the way a small app usually does it: ``GET /events`` gives each client an
``asyncio.Queue`` and a ``StreamingResponse`` whose generator yields what the queue gets;
``POST /emit?n=K`` makes K events (each with its ``at`` time, shaped like a job event of
Orchestrator, about as many bytes) and puts each message in every client's queue. No
database, no authentication, no middleware, no keep-alive.

Served by uvicorn with the settings ``orchestrator serve`` uses (one process, default loop
and HTTP implementation, no access log, lifespan on)::

    .venv/bin/python bench/sse_minimal_app.py --port 8124
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse


def create_app() -> FastAPI:
    app = FastAPI(title="sse-minimal")
    clients: set[asyncio.Queue[bytes]] = set()
    ids = itertools.count(1)
    job_id = str(uuid.uuid4())

    @app.get("/events")
    async def events() -> StreamingResponse:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        clients.add(queue)

        async def stream() -> AsyncIterator[bytes]:
            try:
                while True:
                    yield await queue.get()
            finally:
                clients.discard(queue)

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.post("/emit")
    async def emit(n: int = 1) -> dict[str, int]:
        for _ in range(n):
            event_id = next(ids)
            data = {
                "id": event_id,
                "job_id": job_id,
                "at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "kind": "progress",
                "status": None,
                "progress": 0.5,
                "message": "step 10/20",
                "data": {},
            }
            message = (
                f"id: {event_id}\r\nevent: progress\r\ndata: {json.dumps(data)}\r\n\r\n"
            ).encode()
            for queue in clients:
                queue.put_nowait(message)
        return {"clients": len(clients)}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    config = uvicorn.Config(
        create_app(),
        host="127.0.0.1",
        port=args.port,
        log_config=None,
        lifespan="on",
        access_log=False,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
