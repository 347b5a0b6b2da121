"""model families as workers report them, and the families each worker has

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'model_families',
        sa.Column('name', sa.String(32), primary_key=True),
        sa.Column('package', sa.String(128), nullable=False),
        sa.Column('version', sa.String(64), nullable=False),
        sa.Column('info', sa.JSON(), nullable=False),
        sa.Column('reported_by', sa.String(255), nullable=False),
        sa.Column('reported_at', sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table('workers') as batch:
        batch.add_column(sa.Column('families', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('workers') as batch:
        batch.drop_column('families')
    op.drop_table('model_families')
