"""A job may replace the job of another series of its study (per-study selection)

When a better series of an already processed study arrives, its job supersedes the earlier
one's results although the series differ; `replaces_job_id` names that job. Jobs queued
before this revision replace nothing.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("replaces_job_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("replaces_job_id")
