"""Cost and estimate: ``batches.estimate`` (the forecast the batch was placed on) and
``batches.cost`` (its engine-seconds, pool and USD, from the published manifest).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the columns (nullable: batches made before have neither)."""
    with op.batch_alter_table("batches") as table:
        table.add_column(sa.Column("estimate", sa.JSON(), nullable=True))
        table.add_column(sa.Column("cost", sa.JSON(), nullable=True))


def downgrade() -> None:
    """Drop the columns."""
    with op.batch_alter_table("batches") as table:
        table.drop_column("cost")
        table.drop_column("estimate")
