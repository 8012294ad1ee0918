"""Queries on API tokens and web UI sessions. Only hashes of secrets reach the
database; callers hash (see ``auth_service``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from orchestrator import errors
from orchestrator.db.engine import Database, cancel_safe
from orchestrator.db.schema import api_tokens, ui_sessions
from orchestrator.domain.auth import Scope


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class TokenRow:
    id: str
    name: str
    scope: Scope
    token_hash: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def _row(r: sa.Row[Any]) -> TokenRow:  # a row of the tokens table, read by name
    m = r._mapping
    return TokenRow(
        id=str(m["id"]),
        name=str(m["name"]),
        scope=Scope(m["scope"]),
        token_hash=str(m["token_hash"]),
        prefix=str(m["prefix"]),
        created_at=m["created_at"],
        last_used_at=m["last_used_at"],
        revoked_at=m["revoked_at"],
    )


class TokenRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- tokens -----------------------------------------------------------------------
    @cancel_safe
    async def create(
        self, token_id: str, name: str, scope: Scope, token_hash: str, prefix: str
    ) -> TokenRow:
        now = utcnow()
        async with self.db.write() as conn:
            await conn.execute(
                api_tokens.insert().values(
                    id=token_id,
                    name=name,
                    scope=scope.value,
                    token_hash=token_hash,
                    prefix=prefix,
                    created_at=now,
                )
            )
        return TokenRow(token_id, name, scope, token_hash, prefix, now, None, None)

    @cancel_safe
    async def list_all(self, *, include_revoked: bool = True) -> list[TokenRow]:
        q = sa.select(api_tokens).order_by(api_tokens.c.created_at, api_tokens.c.id)
        if not include_revoked:
            q = q.where(api_tokens.c.revoked_at.is_(None))
        async with self.db.read() as conn:
            return [_row(r) for r in (await conn.execute(q)).all()]

    @cancel_safe
    async def get(self, token_id: str) -> TokenRow:
        async with self.db.read() as conn:
            r = (
                await conn.execute(sa.select(api_tokens).where(api_tokens.c.id == token_id))
            ).one_or_none()
        if r is None:
            raise errors.TokenNotFound(f"no API token with id {token_id!r}", token_id=token_id)
        return _row(r)

    @cancel_safe
    async def count_active(self) -> int:
        async with self.db.read() as conn:
            value = (
                await conn.execute(
                    sa.select(sa.func.count())
                    .select_from(api_tokens)
                    .where(api_tokens.c.revoked_at.is_(None))
                )
            ).scalar()
        return int(value or 0)

    @cancel_safe
    async def by_hash(self, token_hash: str) -> TokenRow | None:
        """The live (not revoked) token with this hash."""
        async with self.db.read() as conn:
            r = (
                await conn.execute(
                    sa.select(api_tokens).where(
                        api_tokens.c.token_hash == token_hash, api_tokens.c.revoked_at.is_(None)
                    )
                )
            ).one_or_none()
        return None if r is None else _row(r)

    @cancel_safe
    async def touch(self, token_id: str, at: datetime) -> None:
        """Record a use (callers throttle this: it is a write)."""
        async with self.db.write() as conn:
            await conn.execute(
                api_tokens.update().where(api_tokens.c.id == token_id).values(last_used_at=at)
            )

    @cancel_safe
    async def revoke(self, token_id: str) -> TokenRow:
        """Revoke a token (again is a no-op) and end its UI sessions."""
        now = utcnow()
        async with self.db.write() as conn:
            r = (
                await conn.execute(sa.select(api_tokens).where(api_tokens.c.id == token_id))
            ).one_or_none()
            if r is None:
                raise errors.TokenNotFound(f"no API token with id {token_id!r}", token_id=token_id)
            row = _row(r)
            if row.revoked_at is None:
                await conn.execute(
                    api_tokens.update().where(api_tokens.c.id == token_id).values(revoked_at=now)
                )
                row = TokenRow(**{**row.__dict__, "revoked_at": now})
            await conn.execute(ui_sessions.delete().where(ui_sessions.c.token_id == token_id))
        return row

    # --- UI sessions ------------------------------------------------------------------
    @cancel_safe
    async def create_session(self, id_hash: str, token_id: str, expires_at: datetime) -> None:
        now = utcnow()
        async with self.db.write() as conn:
            await conn.execute(ui_sessions.delete().where(ui_sessions.c.expires_at <= now))
            await conn.execute(
                ui_sessions.insert().values(
                    id_hash=id_hash, token_id=token_id, created_at=now, expires_at=expires_at
                )
            )

    @cancel_safe
    async def session_token(self, id_hash: str) -> TokenRow | None:
        """The live token behind an unexpired session."""
        now = utcnow()
        q = (
            sa.select(api_tokens)
            .select_from(ui_sessions.join(api_tokens, ui_sessions.c.token_id == api_tokens.c.id))
            .where(
                ui_sessions.c.id_hash == id_hash,
                ui_sessions.c.expires_at > now,
                api_tokens.c.revoked_at.is_(None),
            )
        )
        async with self.db.read() as conn:
            r = (await conn.execute(q)).one_or_none()
        return None if r is None else _row(r)

    @cancel_safe
    async def end_session(self, id_hash: str) -> None:
        async with self.db.write() as conn:
            await conn.execute(ui_sessions.delete().where(ui_sessions.c.id_hash == id_hash))

    @cancel_safe
    async def session_count(self, token_id: str) -> int:
        async with self.db.read() as conn:
            value = (
                await conn.execute(
                    sa.select(sa.func.count())
                    .select_from(ui_sessions)
                    .where(ui_sessions.c.token_id == token_id)
                )
            ).scalar()
        return int(value or 0)
