"""data sets and their versions; a model version's lineage

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'datasets',
        sa.Column('name', sa.String(length=128), nullable=False),
        sa.Column('created_by', sa.String(length=64), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('name'),
    )
    op.create_index('ix_datasets_created_by', 'datasets', ['created_by'])
    op.create_table(
        'dataset_versions',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('dataset_name', sa.String(length=128), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('source', sa.String(length=16), nullable=False),
        sa.Column('format', sa.String(length=16), nullable=False),
        sa.Column('uri', sa.String(length=2048), nullable=False),
        sa.Column('sha256', sa.String(length=64), nullable=True),
        sa.Column('upload_sha256', sa.String(length=64), nullable=True),
        sa.Column('bytes', sa.BigInteger(), nullable=True),
        sa.Column('rows', sa.BigInteger(), nullable=True),
        sa.Column('columns', sa.JSON(), nullable=True),
        sa.Column('value_counts', sa.JSON(), nullable=True),
        sa.Column('created_by', sa.String(length=64), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['dataset_name'], ['datasets.name'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('dataset_name', 'version', name='uq_dataset_version'),
    )
    with op.batch_alter_table('model_versions') as batch:
        batch.add_column(sa.Column('dataset', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('model_versions') as batch:
        batch.drop_column('dataset')
    op.drop_table('dataset_versions')
    op.drop_index('ix_datasets_created_by', table_name='datasets')
    op.drop_table('datasets')
