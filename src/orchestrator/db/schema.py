"""Table definitions (SQLAlchemy Core). Migrations in ``db/migrations`` create the
same tables; a test keeps the two in step."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Stored as naive UTC (SQLite has no time zones), returned as aware UTC."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


metadata = sa.MetaData()

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("backend", sa.String(32), nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("progress", sa.Float, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("idempotency_key", sa.String(255), nullable=True, unique=True),
    sa.Column("request_hash", sa.String(64), nullable=True),
    sa.Column("error_code", sa.String(64), nullable=True),
    sa.Column("error_message", sa.Text, nullable=True),
    sa.Column("error_details", sa.JSON, nullable=True),
    sa.Column("upstream", sa.JSON, nullable=True),
    sa.Column("submitting_at", UTCDateTime, nullable=True),
    sa.Column("cost", sa.Float, nullable=True),
    sa.Column("simulated", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("lease_owner", sa.String(64), nullable=True),
    sa.Column("lease_expires_at", UTCDateTime, nullable=True),
    sa.Column("deadline_at", UTCDateTime, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=True),
    sa.Column("finished_at", UTCDateTime, nullable=True),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # added in 0002
    sa.Column("deadline_s", sa.Float, nullable=True),
    sa.Column("retry_of", sa.String(36), nullable=True),
    sa.Column("manifest_at", UTCDateTime, nullable=True),
    sa.Column("webhook_url", sa.Text, nullable=True),
    sa.Column("webhook_events", sa.JSON, nullable=True),
    # added in 0004: the API token that created the job (None: the local owner)
    sa.Column("token_id", sa.String(36), nullable=True),
    # added in 0005: the cost ledger (``cost`` is the final or quoted cost)
    sa.Column("cost_estimate", sa.Float, nullable=True),
    sa.Column("gpu_seconds", sa.Float, nullable=True),
    sa.Index("ix_jobs_created", "created_at", "id"),
    sa.Index("ix_jobs_backend_status", "backend", "status"),
    sa.Index("ix_jobs_token", "token_id"),
    # added in 0007: partial indexes (see that migration)
    sa.Index(
        "ix_jobs_queued",
        sa.text("priority DESC"),
        "created_at",
        "id",
        sqlite_where=sa.text("status = 'queued'"),
        postgresql_where=sa.text("status = 'queued'"),
    ),
    sa.Index(
        "ix_jobs_lease",
        "lease_expires_at",
        sqlite_where=sa.text("status = 'running'"),
        postgresql_where=sa.text("status = 'running'"),
    ),
    sa.Index(
        "ix_jobs_manifest_missing",
        "finished_at",
        sqlite_where=sa.text("status = 'succeeded' AND manifest_at IS NULL"),
        postgresql_where=sa.text("status = 'succeeded' AND manifest_at IS NULL"),
    ),
)

# added in 0007: jobs per (backend, status), kept by triggers on ``jobs``
job_counts = sa.Table(
    "job_counts",
    metadata,
    sa.Column("backend", sa.String(32), primary_key=True),
    sa.Column("status", sa.String(16), primary_key=True),
    sa.Column("n", sa.BigInteger, nullable=False),
)

job_outputs = sa.Table(
    "job_outputs",
    metadata,
    sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.id"), primary_key=True),
    sa.Column("n", sa.Integer, primary_key=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("mime_type", sa.String(128), nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("width", sa.Integer, nullable=True),
    sa.Column("height", sa.Integer, nullable=True),
    sa.Column("duration_s", sa.Float, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

job_events = sa.Table(
    "job_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.id"), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=True),
    sa.Column("progress", sa.Float, nullable=True),
    sa.Column("message", sa.Text, nullable=True),
    sa.Column("data", sa.JSON, nullable=True),
    sa.Index("ix_job_events_job", "job_id", "id"),
)

workers = sa.Table(
    "workers",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("hostname", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("heartbeat_at", UTCDateTime, nullable=False),
    # the backends whose jobs it claims, and how many it runs at once (NULL: a row
    # registered before these columns existed)
    sa.Column("backends", sa.JSON, nullable=True),
    sa.Column("concurrency", sa.Integer, nullable=True),
)

# The webhook outbox: a row per (event, target), inserted in the transaction of the
# job transition that causes it, delivered (and retried) by engine/webhooks.py.
webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.id"), nullable=False),
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", UTCDateTime, nullable=True),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("lease_owner", sa.String(64), nullable=True),
    sa.Column("lease_expires_at", UTCDateTime, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("last_attempt_at", UTCDateTime, nullable=True),
    sa.Column("last_status_code", sa.Integer, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    sa.Index("ix_webhook_deliveries_job", "job_id", "created_at"),
    sa.Index("ix_webhook_deliveries_created", "created_at", "id"),
)

webhook_attempts = sa.Table(
    "webhook_attempts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("delivery_id", sa.String(64), sa.ForeignKey("webhook_deliveries.id"), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=True),
    sa.Column("status_code", sa.Integer, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Index("ix_webhook_attempts_delivery", "delivery_id", "id"),
)

# API tokens (0004): only the sha256 of each secret is kept, looked up by that hash.
# Tokens are revoked, never deleted, so jobs.token_id always names one.
api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("scope", sa.String(16), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("last_used_at", UTCDateTime, nullable=True),
    sa.Column("revoked_at", UTCDateTime, nullable=True),
)

# Web UI sessions (0004): the cookie holds a random secret, this table its sha256.
# A session ends when it expires, on logout, or when its token is revoked.
ui_sessions = sa.Table(
    "ui_sessions",
    metadata,
    sa.Column("id_hash", sa.String(64), primary_key=True),
    sa.Column("token_id", sa.String(36), sa.ForeignKey("api_tokens.id"), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Index("ix_ui_sessions_token", "token_id"),
    sa.Index("ix_ui_sessions_expires", "expires_at"),
)

# Per-token daily budgets, in credits (the global one is a setting). Added in 0005.
token_budgets = sa.Table(
    "token_budgets",
    metadata,
    sa.Column("token_id", sa.String(64), primary_key=True),
    sa.Column("daily_limit", sa.Float, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# --- imported Tilda sites (migration 0006) --------------------------------------------
sites = sa.Table(
    "sites",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("tilda_project_id", sa.String(32), nullable=True, unique=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("domain", sa.String(255), nullable=True),
    sa.Column("home_tilda_page_id", sa.String(32), nullable=True),
    sa.Column("last_import_id", sa.String(36), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("imported_at", UTCDateTime, nullable=False),
)

# One row per page file; header and footer pages (role) own the shared layout blocks,
# which other pages reference through header_tilda_id / footer_tilda_id.
site_pages = sa.Table(
    "site_pages",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("site_id", sa.String(36), sa.ForeignKey("sites.id"), nullable=False),
    sa.Column("tilda_page_id", sa.String(32), nullable=False),
    sa.Column("alias", sa.String(512), nullable=True),
    sa.Column("file_name", sa.String(512), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("is_home", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("indexable", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("keywords", sa.Text, nullable=False),
    sa.Column("canonical_url", sa.Text, nullable=True),
    sa.Column("public_url", sa.Text, nullable=True),
    sa.Column("og", sa.JSON, nullable=False),
    sa.Column("header_tilda_id", sa.String(32), nullable=True),
    sa.Column("footer_tilda_id", sa.String(32), nullable=True),
    sa.Column("block_count", sa.Integer, nullable=False),
    sa.Column("image_count", sa.Integer, nullable=False),
    sa.Column("missing_images", sa.JSON, nullable=False),
    sa.Column("search_text", sa.Text, nullable=False),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("site_id", "tilda_page_id", name="uq_site_pages_tilda"),
    sa.Index("ix_site_pages_site", "site_id", "file_name"),
)

site_blocks = sa.Table(
    "site_blocks",
    metadata,
    sa.Column("page_id", sa.String(36), sa.ForeignKey("site_pages.id"), primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("record_id", sa.String(32), nullable=False),
    sa.Column("record_type", sa.String(16), nullable=True),
    sa.Column("code", sa.String(32), nullable=True),
    sa.Column("placement", sa.String(16), nullable=False),
    sa.Column("texts", sa.JSON, nullable=False),
    sa.Column("links", sa.JSON, nullable=False),
    sa.Column("image_asset_ids", sa.JSON, nullable=False),
)

# Files are content-addressed: one row (and one file under DATA_DIR/assets) per sha256.
site_assets = sa.Table(
    "site_assets",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("original_name", sa.String(512), nullable=False),
    sa.Column("mime_type", sa.String(128), nullable=False),
    sa.Column("width", sa.Integer, nullable=True),
    sa.Column("height", sa.Integer, nullable=True),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

site_page_assets = sa.Table(
    "site_page_assets",
    metadata,
    sa.Column("page_id", sa.String(36), sa.ForeignKey("site_pages.id"), primary_key=True),
    sa.Column("asset_id", sa.String(64), sa.ForeignKey("site_assets.id"), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Index("ix_site_page_assets_asset", "asset_id"),
)

tilda_imports = sa.Table(
    "tilda_imports",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("site_id", sa.String(36), nullable=True),
    sa.Column("stage", sa.String(32), nullable=False),
    sa.Column("done", sa.Integer, nullable=False, server_default="0"),
    sa.Column("total", sa.Integer, nullable=False, server_default="0"),
    sa.Column("report", sa.JSON, nullable=True),
    sa.Column("error_code", sa.String(64), nullable=True),
    sa.Column("error_message", sa.Text, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=True),
    sa.Column("finished_at", UTCDateTime, nullable=True),
    sa.Column("heartbeat_at", UTCDateTime, nullable=False),
    sa.Index("ix_tilda_imports_created", "created_at", "id"),
)
