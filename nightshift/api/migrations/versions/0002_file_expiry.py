"""File expiry: ``files.expires_at`` (OpenAI's ``expires_after`` on upload, or the batch's
``output_expires_after`` on its output and error files) and ``batches.output_expires_after``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the expiry columns (nullable: existing files and batches keep no expiry of their own)."""
    with op.batch_alter_table("files") as table:
        table.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        table.create_index("ix_files_expires_at", ["expires_at"])
    with op.batch_alter_table("batches") as table:
        table.add_column(sa.Column("output_expires_after", sa.Integer(), nullable=True))


def downgrade() -> None:
    """Drop the expiry columns."""
    with op.batch_alter_table("batches") as table:
        table.drop_column("output_expires_after")
    with op.batch_alter_table("files") as table:
        table.drop_index("ix_files_expires_at")
        table.drop_column("expires_at")
