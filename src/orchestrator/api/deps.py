"""FastAPI dependencies: the service of the running app."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from orchestrator.services import Service


def get_service(request: Request) -> Service:
    service: Service = request.app.state.runtime.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]
