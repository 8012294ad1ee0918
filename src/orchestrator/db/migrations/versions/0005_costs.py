"""cost ledger: jobs.cost_estimate and jobs.gpu_seconds; per-token daily budgets

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from orchestrator.db.schema import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("cost_estimate", sa.Float, nullable=True))
        batch.add_column(sa.Column("gpu_seconds", sa.Float, nullable=True))
    op.create_table(
        "token_budgets",
        sa.Column("token_id", sa.String(64), primary_key=True),
        sa.Column("daily_limit", sa.Float, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("token_budgets")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("gpu_seconds")
        batch.drop_column("cost_estimate")
