"""API tokens and web UI sessions: create, list, revoke, authenticate.

A token is ``orch_`` followed by 43 URL-safe characters (256 random bits). It is
shown once, when created; the database keeps its sha256 (looked up by that hash,
then compared in constant time) and a short display prefix. A UI session cookie is
``orchs_`` plus 256 random bits, also stored only as a hash; the session dies when it
expires, on logout, or when its token is revoked. Both prefixes let the log
redactor (``logs.py``) recognise a secret wherever it appears.

The :class:`Service` holds one :class:`Tokens`; every entry point goes through it.

**The token cache.** A verified bearer token is remembered in this process for
:data:`TOKEN_CACHE_TTL_S` seconds (its hash -> its row), so a busy client costs no token
query per request. Revoking a token through this ``Tokens`` (the API, or the service in
this process) drops it from the cache at once; another process (``orchestrator token
revoke`` while ``serve`` runs, or another server on the same database) sees the
revocation after at most the TTL. A lookup that was in flight while a token was revoked
does not put it back (a generation counter). Unknown tokens are not cached, and neither
are session cookies (each is checked against the database).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
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
TOKEN_CACHE_TTL_S = 5.0  # a verified token is trusted this long without a query
TOKEN_CACHE_MAX = 4096  # entries; the cache is emptied when it is full
_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,64}$")
# What the schema says of a name as sent: no control character, and at least one
# character that str.strip() keeps (anything but a control or a Python whitespace
# character), so a name the schema allows is one create() takes once stripped. The
# escapes read the same in Python, Rust (pydantic) and ECMA (JSON Schema) regexes.
_WHITE = r"\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NAME_PATTERN = rf"^[^\x00-\x1f\x7f]*[^\x00-\x20\x7f{_WHITE}][^\x00-\x1f\x7f]*$"


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
    name: str = Field(
        min_length=1,
        max_length=64,
        pattern=NAME_PATTERN,
        description="1 to 64 characters, no control character, not only spaces "
        "(leading and trailing spaces are dropped).",
    )
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


@dataclass(frozen=True, slots=True)
class _Verified:
    token_id: str
    principal: Principal
    until: float  # on the cache's clock


class Tokens:
    def __init__(
        self,
        repo: TokenRepo,
        *,
        session_ttl_s: float,
        cache_ttl_s: float = TOKEN_CACHE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.repo = repo
        self.session_ttl_s = session_ttl_s
        self.cache_ttl_s = cache_ttl_s
        self._clock = clock
        self._touched: dict[str, float] = {}
        self._verified: dict[str, _Verified] = {}  # token hash -> principal
        self._generation = 0  # bumped by every revocation: see forget()

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
        """Revoke a token: this process refuses it at once, others within
        :data:`TOKEN_CACHE_TTL_S`; its UI sessions end at once."""
        auth.require(principal, auth.Action.MANAGE_TOKENS)
        try:
            row = await self.repo.revoke(token_id)
        finally:
            self.forget(token_id)
        log.info("api token revoked", id=token_id, name=row.name)
        return _info(row)

    async def count_active(self) -> int:
        return await self.repo.count_active()

    # --- authentication -------------------------------------------------------------
    def forget(self, token_id: str) -> None:
        """Drop a token from this process's cache, at once. Whatever revokes or changes
        a token calls this (after its transaction, and also when it fails)."""
        self._generation += 1
        self._touched.pop(token_id, None)
        for digest in [d for d, v in self._verified.items() if v.token_id == token_id]:
            del self._verified[digest]

    async def authenticate(self, secret: str) -> Principal | None:
        """The principal of a live bearer token, or None (from the cache when the token
        was verified less than :data:`TOKEN_CACHE_TTL_S` ago)."""
        if not _plausible(secret, TOKEN_PREFIX):
            return None
        digest = hash_secret(secret)
        now = self._clock()
        hit = self._verified.get(digest)
        if hit is not None:
            if now < hit.until:
                await self._touch(hit.token_id)
                return hit.principal
            del self._verified[digest]
        generation = self._generation
        row = await self._lookup(secret)
        if row is None:
            return None
        principal = Principal(token_id=row.id, name=row.name, scope=row.scope, via="token")
        if generation == self._generation:  # no revocation while we were reading
            if len(self._verified) >= TOKEN_CACHE_MAX:
                self._verified.clear()
            self._verified[digest] = _Verified(row.id, principal, now + self.cache_ttl_s)
        return principal

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
