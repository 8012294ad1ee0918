"""Dropping a connection on purpose, for the fakes' fault injection: an ASGI app that
returns :data:`DROPPED` from a ``send`` made by uvicorn makes uvicorn close the socket
without writing a response (any other server just gets no response)."""

from __future__ import annotations

from typing import Final

from starlette.types import Send


class _DroppedConnection:
    """Returned to uvicorn to make it close the connection without a response."""

    def __repr__(self) -> str:
        return "<fake server: connection dropped on purpose>"


DROPPED: Final = _DroppedConnection()


def served_by_uvicorn(send: Send) -> bool:
    """True when ``send`` is uvicorn's own (so returning :data:`DROPPED` works)."""
    module = getattr(send, "__module__", None)
    return isinstance(module, str) and module.startswith("uvicorn.")
