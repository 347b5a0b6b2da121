"""a model's own batching settings

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('models') as batch:
        batch.add_column(sa.Column('max_batch_size', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('max_wait_ms', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('models') as batch:
        batch.drop_column('max_wait_ms')
        batch.drop_column('max_batch_size')
