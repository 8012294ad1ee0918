"""FastAPI dependencies: the service of the running app, and who is asking."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from orchestrator import errors
from orchestrator.domain.auth import Principal
from orchestrator.services import Service


def get_service(request: Request) -> Service:
    service: Service = request.app.state.runtime.service
    return service


async def _service(request: Request) -> Service:
    # async: FastAPI runs a plain-function dependency in a worker thread, a thread hop
    # per request.
    return get_service(request)


ServiceDep = Annotated[Service, Depends(_service)]


def get_principal(request: Request) -> Principal:
    """The principal the auth middleware (``api/auth.py``) put on the request."""
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):
        # Only public routes lack one, and they must not ask for it.
        raise errors.Forbidden("this route is public and acts for no one")
    return principal


async def _principal(request: Request) -> Principal:
    return get_principal(request)  # async: see _service


PrincipalDep = Annotated[Principal, Depends(_principal)]
