"""partial indexes for the queue, expired leases and missing manifests; job counts
kept by triggers

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04

- ``ix_jobs_queued``: the queued jobs only, in claim order (priority, then oldest):
  a claim reads the head of the queue, never the finished jobs. It replaces
  ``ix_jobs_queue`` (status, priority, created_at), which SQLite preferred for its
  equality on the status, then sorted.
- ``ix_jobs_lease``: running jobs by lease expiry (the take-over scan).
- ``ix_jobs_manifest_missing``: succeeded jobs without a manifest (the repair scan
  every ``LEASE_S / 2``; was a scan of every succeeded job: 567 ms at 1M rows).
- ``job_counts``: jobs per (backend, status), kept by triggers in the transaction
  that inserts, moves or deletes a job, so the counts the dashboard and ``/metrics``
  show no longer scan the table (74 ms at 1M rows).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

QUEUED = sa.text("status = 'queued'")
RUNNING = sa.text("status = 'running'")
NO_MANIFEST = sa.text("status = 'succeeded' AND manifest_at IS NULL")

SQLITE_TRIGGERS = [
    """CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs BEGIN
        INSERT INTO job_counts (backend, status, n) VALUES (NEW.backend, NEW.status, 1)
        ON CONFLICT (backend, status) DO UPDATE SET n = n + 1;
    END""",
    """CREATE TRIGGER jobs_count_update AFTER UPDATE OF status ON jobs
    WHEN OLD.status IS NOT NEW.status BEGIN
        UPDATE job_counts SET n = n - 1 WHERE backend = OLD.backend AND status = OLD.status;
        INSERT INTO job_counts (backend, status, n) VALUES (NEW.backend, NEW.status, 1)
        ON CONFLICT (backend, status) DO UPDATE SET n = n + 1;
    END""",
    """CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs BEGIN
        UPDATE job_counts SET n = n - 1 WHERE backend = OLD.backend AND status = OLD.status;
    END""",
]

POSTGRES_TRIGGERS = [
    """CREATE FUNCTION jobs_count() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            UPDATE job_counts SET n = n - 1
            WHERE backend = OLD.backend AND status = OLD.status;
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            INSERT INTO job_counts (backend, status, n) VALUES (NEW.backend, NEW.status, 1)
            ON CONFLICT (backend, status) DO UPDATE SET n = job_counts.n + 1;
        END IF;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER jobs_count_insert AFTER INSERT OR DELETE ON jobs
    FOR EACH ROW EXECUTE FUNCTION jobs_count()""",
    """CREATE TRIGGER jobs_count_update AFTER UPDATE OF status ON jobs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION jobs_count()""",
]


def upgrade() -> None:
    op.drop_index("ix_jobs_queue", "jobs")
    op.create_index(
        "ix_jobs_queued",
        "jobs",
        [sa.text("priority DESC"), "created_at", "id"],
        sqlite_where=QUEUED,
        postgresql_where=QUEUED,
    )
    op.create_index(
        "ix_jobs_lease",
        "jobs",
        ["lease_expires_at"],
        sqlite_where=RUNNING,
        postgresql_where=RUNNING,
    )
    op.create_index(
        "ix_jobs_manifest_missing",
        "jobs",
        ["finished_at"],
        sqlite_where=NO_MANIFEST,
        postgresql_where=NO_MANIFEST,
    )
    op.create_table(
        "job_counts",
        sa.Column("backend", sa.String(32), primary_key=True),
        sa.Column("status", sa.String(16), primary_key=True),
        sa.Column("n", sa.BigInteger, nullable=False),
    )
    op.execute(
        "INSERT INTO job_counts (backend, status, n) "
        "SELECT backend, status, count(*) FROM jobs GROUP BY backend, status"
    )
    triggers = SQLITE_TRIGGERS if op.get_bind().dialect.name == "sqlite" else POSTGRES_TRIGGERS
    for ddl in triggers:
        op.execute(ddl)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in ("jobs_count_insert", "jobs_count_update", "jobs_count_delete"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    else:
        op.execute("DROP TRIGGER IF EXISTS jobs_count_insert ON jobs")
        op.execute("DROP TRIGGER IF EXISTS jobs_count_update ON jobs")
        op.execute("DROP FUNCTION IF EXISTS jobs_count()")
    op.drop_table("job_counts")
    op.drop_index("ix_jobs_manifest_missing", "jobs")
    op.drop_index("ix_jobs_lease", "jobs")
    op.drop_index("ix_jobs_queued", "jobs")
    op.create_index("ix_jobs_queue", "jobs", ["status", "priority", "created_at"])
