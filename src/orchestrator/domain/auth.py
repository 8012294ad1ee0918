"""Who is asking, and what they may do: scopes, principals and the pure decisions
every entry point relies on (table-tested in ``tests/unit/test_auth_decisions.py``).

Scopes are ordered: ``read`` < ``generate`` < ``admin``.

* ``read`` sees everything: jobs, outputs, events, backends, metrics.
* ``generate`` also submits jobs, and cancels or retries the jobs it created.
* ``admin`` also manages every job, API tokens, webhook replays, ignite, and raw
  ComfyUI workflows (which can run any node installed on the server).

The CLI and the stdio MCP server run as the machine's owner: :data:`LOCAL`, an admin.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator import errors


class Scope(StrEnum):
    READ = "read"
    GENERATE = "generate"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, needed: Scope) -> bool:
        """True when this scope includes ``needed``."""
        return self.rank >= needed.rank


_RANK = {Scope.READ: 0, Scope.GENERATE: 1, Scope.ADMIN: 2}

Via = Literal["token", "session", "local", "auth-disabled"]


class Principal(BaseModel):
    """Who a request acts for. ``token_id`` is None for the local owner and when
    authentication is disabled."""

    model_config = ConfigDict(frozen=True)

    token_id: str | None = Field(description="The API token's id (None: no token).")
    name: str = Field(description="The token's name, or 'local'.")
    scope: Scope
    via: Via = Field(
        description="token: a bearer token; session: the web UI's session cookie; "
        "local: the CLI or stdio MCP; auth-disabled: AUTH_DISABLED on a loopback server."
    )


LOCAL = Principal(token_id=None, name="local", scope=Scope.ADMIN, via="local")
"""The machine's owner: the CLI and the stdio MCP server."""

AUTH_DISABLED = Principal(
    token_id=None, name="anonymous (auth disabled)", scope=Scope.ADMIN, via="auth-disabled"
)
"""Every HTTP request when AUTH_DISABLED is set (loopback binds only)."""


class Action(StrEnum):
    VIEW = "view"  # jobs, outputs, events, backends, health, metrics
    SUBMIT = "submit"  # queue a job on a template or FLUX backend
    SUBMIT_RAW_WORKFLOW = "submit_raw_workflow"  # queue a raw ComfyUI workflow
    CANCEL_JOB = "cancel_job"
    RETRY_JOB = "retry_job"
    MANAGE_TOKENS = "manage_tokens"
    MANAGE_WEBHOOKS = "manage_webhooks"  # replay deliveries
    IGNITE = "ignite"


REQUIRED: dict[Action, Scope] = {
    Action.VIEW: Scope.READ,
    Action.SUBMIT: Scope.GENERATE,
    Action.SUBMIT_RAW_WORKFLOW: Scope.ADMIN,
    Action.CANCEL_JOB: Scope.GENERATE,
    Action.RETRY_JOB: Scope.GENERATE,
    Action.MANAGE_TOKENS: Scope.ADMIN,
    Action.MANAGE_WEBHOOKS: Scope.ADMIN,
    Action.IGNITE: Scope.ADMIN,
}

# Below admin, these act only on jobs the principal's own token created.
OWN_JOBS_ONLY = frozenset({Action.CANCEL_JOB, Action.RETRY_JOB})

RAW_WORKFLOW_BACKENDS = frozenset({"comfy"})


def submit_action(backend: str) -> Action:
    """What queueing a job on ``backend`` counts as."""
    return Action.SUBMIT_RAW_WORKFLOW if backend in RAW_WORKFLOW_BACKENDS else Action.SUBMIT


def allowed(principal: Principal, action: Action, job_owner: str | None = None) -> bool:
    """May ``principal`` do ``action``? For job actions, ``job_owner`` is the token
    id that created the job (None: created without a token)."""
    if not principal.scope.allows(REQUIRED[action]):
        return False
    if action in OWN_JOBS_ONLY and principal.scope is not Scope.ADMIN:
        return principal.token_id is not None and principal.token_id == job_owner
    return True


def require(principal: Principal, action: Action, job_owner: str | None = None) -> None:
    """Raise :class:`errors.Forbidden` unless :func:`allowed`."""
    if allowed(principal, action, job_owner):
        return
    needed = REQUIRED[action]
    if not principal.scope.allows(needed):
        detail = f"{action.value.replace('_', ' ')} needs the {needed.value} scope; "
        detail += f"this token ({principal.name}) has {principal.scope.value}"
    else:
        detail = (
            f"a {principal.scope.value} token can {action.value.split('_')[0]} only the "
            "jobs it created; this job belongs to another token"
        )
    raise errors.Forbidden(detail, needed=needed.value, scope=principal.scope.value)
