"""API tokens and web UI sessions: create, list, revoke, authenticate.

A token is ``orch_`` followed by 43 URL-safe characters (256 random bits). It is
shown once, when created; the database keeps its sha256 (looked up by that hash,
then compared in constant time) and a short display prefix. A UI session cookie is
``orchs_`` plus 256 random bits, also stored only as a hash; the session dies when it
expires, on logout, or when its token is revoked. Both prefixes let the log
redactor (``logs.py``) recognise a secret wherever it appears.

The :class:`Service` holds one :class:`Tokens`; every entry point goes through it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, Field

from orchestrator import errors, logs
from orchestrator.db.tokens import TokenRepo, TokenRow
from orchestrator.domain import auth
from orchestrator.domain.auth import Principal, Scope

log = logs.get(__name__)

SESSION_COOKIE = "orch_session"  # the web UI's session cookie
TOKEN_PREFIX = "orch_"
SESSION_PREFIX = "orchs_"
SHOWN_CHARS = 12  # of a token, kept for display ("orch_AbCdEfG")
SECRET_BYTES = 32
MAX_SECRET_LEN = 200
TOUCH_EVERY_S = 60.0  # last_used_at is written at most this often per token
_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,64}$")


class TokenInfo(BaseModel):
    id: str
    name: str
    scope: Scope
    prefix: str = Field(description="The token's first characters, to recognise it.")
    created_at: datetime
    last_used_at: datetime | None = Field(
        default=None, description="Last use (updated at most once a minute)."
    )
    revoked_at: datetime | None = None


class NewToken(BaseModel):
    token: TokenInfo
    secret: str = Field(
        description="The token itself. Shown only now: store it; only its hash is kept."
    )


class TokenCreate(BaseModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")
    scope: Scope


class WhoAmI(BaseModel):
    principal: Principal
    auth_enabled: bool


def new_secret(prefix: str = TOKEN_PREFIX) -> str:
    return prefix + secrets.token_urlsafe(SECRET_BYTES)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _plausible(secret: str, prefix: str) -> bool:
    return secret.startswith(prefix) and len(secret) <= MAX_SECRET_LEN


def _info(row: TokenRow) -> TokenInfo:
    return TokenInfo(
        id=row.id,
        name=row.name,
        scope=row.scope,
        prefix=row.prefix,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


class Tokens:
    def __init__(self, repo: TokenRepo, *, session_ttl_s: float) -> None:
        self.repo = repo
        self.session_ttl_s = session_ttl_s
        self._touched: dict[str, float] = {}

    # --- management (admin) -----------------------------------------------------------
    async def create(
        self, name: str, scope: Scope, *, principal: Principal = auth.LOCAL
    ) -> NewToken:
        """A new token; its secret is in the result and nowhere else."""
        auth.require(principal, auth.Action.MANAGE_TOKENS)
        name = name.strip()
        if not _NAME.match(name):
            raise errors.InvalidRequest(
                "a token name is 1 to 64 printable characters",
                errors=[{"loc": ["body", "name"], "msg": "invalid name", "type": "value_error"}],
            )
        secret = new_secret()
        row = await self.repo.create(
            secrets.token_hex(8), name, Scope(scope), hash_secret(secret), secret[:SHOWN_CHARS]
        )
        log.info("api token created", id=row.id, name=name, scope=row.scope.value)
        return NewToken(token=_info(row), secret=secret)

    async def all(self, *, principal: Principal = auth.LOCAL) -> list[TokenInfo]:
        auth.require(principal, auth.Action.MANAGE_TOKENS)
        return [_info(r) for r in await self.repo.list_all()]

    async def revoke(self, token_id: str, *, principal: Principal = auth.LOCAL) -> TokenInfo:
        """Revoke a token: it stops working at once, and its UI sessions end."""
        auth.require(principal, auth.Action.MANAGE_TOKENS)
        row = await self.repo.revoke(token_id)
        self._touched.pop(token_id, None)
        log.info("api token revoked", id=token_id, name=row.name)
        return _info(row)

    async def count_active(self) -> int:
        return await self.repo.count_active()

    # --- authentication -------------------------------------------------------------
    async def authenticate(self, secret: str) -> Principal | None:
        """The principal of a live bearer token, or None."""
        row = await self._lookup(secret)
        if row is None:
            return None
        return Principal(token_id=row.id, name=row.name, scope=row.scope, via="token")

    async def _lookup(self, secret: str) -> TokenRow | None:
        if not _plausible(secret, TOKEN_PREFIX):
            return None
        digest = hash_secret(secret)
        row = await self.repo.by_hash(digest)
        if row is None or not hmac.compare_digest(row.token_hash, digest):
            return None
        await self._touch(row.id)
        return row

    async def _touch(self, token_id: str) -> None:
        now = time.monotonic()
        last = self._touched.get(token_id)
        if last is not None and now - last < TOUCH_EVERY_S:
            return
        self._touched[token_id] = now
        await self.repo.touch(token_id, datetime.now(UTC))

    async def start_session(self, secret: str) -> tuple[Principal, str, datetime] | None:
        """Log in with a token: ``(principal, cookie value, expiry)``, or None when the
        token is not valid."""
        row = await self._lookup(secret)
        if row is None:
            return None
        cookie = new_secret(SESSION_PREFIX)
        expires = datetime.now(UTC) + timedelta(seconds=self.session_ttl_s)
        await self.repo.create_session(hash_secret(cookie), row.id, expires)
        log.info("ui session started", id=row.id, name=row.name)
        principal = Principal(token_id=row.id, name=row.name, scope=row.scope, via="session")
        return principal, cookie, expires

    async def session_principal(self, cookie: str) -> Principal | None:
        """The principal of a live session cookie, or None."""
        if not _plausible(cookie, SESSION_PREFIX):
            return None
        row = await self.repo.session_token(hash_secret(cookie))
        if row is None:
            return None
        await self._touch(row.id)
        return Principal(token_id=row.id, name=row.name, scope=row.scope, via="session")

    async def end_session(self, cookie: str) -> None:
        if _plausible(cookie, SESSION_PREFIX):
            await self.repo.end_session(hash_secret(cookie))
