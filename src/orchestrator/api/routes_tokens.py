"""API tokens (admin) and who the caller is."""

from __future__ import annotations

from fastapi import APIRouter, status

from orchestrator.api.deps import PrincipalDep, ServiceDep
from orchestrator.api.problems import Problem
from orchestrator.auth_service import NewToken, TokenCreate, TokenInfo, WhoAmI

router = APIRouter(prefix="/api", tags=["auth"])
PROBLEMS: dict[int | str, dict[str, object]] = {
    404: {"model": Problem, "description": "No such token"},
    422: {"model": Problem, "description": "Invalid request"},
}


@router.post(
    "/tokens",
    status_code=status.HTTP_201_CREATED,
    responses=PROBLEMS,
    summary="Create an API token (admin); its secret is returned only now",
)
async def create_token(body: TokenCreate, service: ServiceDep, principal: PrincipalDep) -> NewToken:
    """``read`` tokens see everything; ``generate`` tokens also submit jobs and
    cancel or retry their own; ``admin`` tokens manage everything. Store
    ``secret``: only its hash is kept."""
    return await service.tokens.create(body.name, body.scope, principal=principal)


@router.get("/tokens", responses=PROBLEMS, summary="List API tokens (admin)")
async def list_tokens(service: ServiceDep, principal: PrincipalDep) -> list[TokenInfo]:
    """Every token, revoked ones included, with its display prefix (never the secret)."""
    return await service.tokens.all(principal=principal)


@router.delete("/tokens/{token_id}", responses=PROBLEMS, summary="Revoke an API token (admin)")
async def revoke_token(token_id: str, service: ServiceDep, principal: PrincipalDep) -> TokenInfo:
    """The token stops working at once in this process (other processes sharing the
    database refuse it within 5 s, the time they may keep a verified token) and its web
    UI sessions end. Revoking a revoked token changes nothing."""
    return await service.tokens.revoke(token_id, principal=principal)


@router.get("/auth/whoami", summary="The caller's token, name and scope")
async def whoami(service: ServiceDep, principal: PrincipalDep) -> WhoAmI:
    """The principal this request acts for: a token (``via: token``), a UI session
    (``via: session``), or everyone when authentication is disabled."""
    return WhoAmI(principal=principal, auth_enabled=not service.settings.auth_disabled)
