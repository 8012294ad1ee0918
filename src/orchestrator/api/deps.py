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


ServiceDep = Annotated[Service, Depends(get_service)]


def get_principal(request: Request) -> Principal:
    """The principal the auth middleware (``api/auth.py``) put on the request."""
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):
        # Only public routes lack one, and they must not ask for it.
        raise errors.Forbidden("this route is public and acts for no one")
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]
