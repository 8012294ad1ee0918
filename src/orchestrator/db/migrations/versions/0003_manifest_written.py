"""jobs.manifest_at: when the job's JSON manifest was written

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from orchestrator.db.schema import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("manifest_at", UTCDateTime, nullable=True))
    # Jobs that succeeded before this column existed had their manifests written.
    op.execute("UPDATE jobs SET manifest_at = finished_at WHERE status = 'succeeded'")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("manifest_at")
