"""model aliases (production, staging, …) and the history of their moves

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'model_aliases',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('model_name', sa.String(length=128), nullable=False),
        sa.Column('alias', sa.String(length=32), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_by', sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(['model_name'], ['models.name'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('model_name', 'alias', name='uq_model_alias'),
    )
    op.create_table(
        'model_alias_events',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('model_name', sa.String(length=128), nullable=False),
        sa.Column('alias', sa.String(length=32), nullable=False),
        sa.Column('from_version', sa.Integer(), nullable=True),
        sa.Column('to_version', sa.Integer(), nullable=True),
        sa.Column('by_key', sa.String(length=64), nullable=False),
        sa.Column('by_name', sa.String(length=128), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['model_name'], ['models.name'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_model_alias_events_model_name', 'model_alias_events', ['model_name'])


def downgrade() -> None:
    op.drop_index('ix_model_alias_events_model_name', table_name='model_alias_events')
    op.drop_table('model_alias_events')
    op.drop_table('model_aliases')
