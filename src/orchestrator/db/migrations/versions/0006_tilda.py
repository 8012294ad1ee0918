"""imported Tilda sites, pages, blocks and assets

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from orchestrator.db.schema import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sites",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tilda_project_id", sa.String(32), nullable=True, unique=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("domain", sa.String(255), nullable=True),
        sa.Column("home_tilda_page_id", sa.String(32), nullable=True),
        sa.Column("last_import_id", sa.String(36), nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("imported_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "site_pages",
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
    )
    op.create_index("ix_site_pages_site", "site_pages", ["site_id", "file_name"])
    op.create_table(
        "site_blocks",
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
    op.create_table(
        "site_assets",
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
    op.create_table(
        "site_page_assets",
        sa.Column("page_id", sa.String(36), sa.ForeignKey("site_pages.id"), primary_key=True),
        sa.Column("asset_id", sa.String(64), sa.ForeignKey("site_assets.id"), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
    )
    op.create_index("ix_site_page_assets_asset", "site_page_assets", ["asset_id"])
    op.create_table(
        "tilda_imports",
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
    )
    op.create_index("ix_tilda_imports_created", "tilda_imports", ["created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_tilda_imports_created", table_name="tilda_imports")
    op.drop_table("tilda_imports")
    op.drop_index("ix_site_page_assets_asset", table_name="site_page_assets")
    op.drop_table("site_page_assets")
    op.drop_table("site_assets")
    op.drop_table("site_blocks")
    op.drop_index("ix_site_pages_site", table_name="site_pages")
    op.drop_table("site_pages")
    op.drop_table("sites")
