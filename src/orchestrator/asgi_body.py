"""Reading a whole ASGI request body (for middleware and the fakes that need it
before answering)."""

from __future__ import annotations

from starlette.types import Receive


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None if the client disconnected first. The caller
    bounds its size (the body-limit middleware, or a fake's own limits)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
