"""workers.backends, workers.concurrency: what each worker process claims

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05

``orchestrator worker --backends flux,sdxl --concurrency N`` (issue 17): the registry
shows, per worker process, the backends whose jobs it claims and how many it runs at
once. Rows written before this revision have neither (NULL: not known).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("backends", sa.JSON, nullable=True))
        batch.add_column(sa.Column("concurrency", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("concurrency")
        batch.drop_column("backends")
