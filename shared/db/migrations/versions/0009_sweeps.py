"""hyperparameter sweeps and their trials

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def _enum(name: str, values: list[str]) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=16)


def upgrade() -> None:
    op.create_table(
        'sweeps',
        sa.Column('id', sa.String(36), primary_key=True),
        sa.Column('state', _enum('sweep_state', ['running', 'finished', 'cancelled']), nullable=False),
        sa.Column('model_name', sa.String(128), nullable=False),
        sa.Column('spec', sa.JSON(), nullable=False),
        sa.Column('best_trial', sa.Integer(), nullable=True),
        sa.Column('message', sa.Text(), nullable=True),
        sa.Column('submitted_by', sa.String(64), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index('ix_sweeps_submitted_by', 'sweeps', ['submitted_by'])
    op.create_table(
        'sweep_trials',
        sa.Column('id', sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column('sweep_id', sa.String(36), sa.ForeignKey('sweeps.id', ondelete='CASCADE'), nullable=False),
        sa.Column('number', sa.Integer(), nullable=False),
        sa.Column('job_id', sa.String(36), sa.ForeignKey('jobs.id'), nullable=False, unique=True),
        sa.Column('state', _enum('trial_state', ['pending', 'complete', 'pruned', 'failed', 'cancelled']), nullable=False),
        sa.Column('params', sa.JSON(), nullable=False),
        sa.Column('system_attrs', sa.JSON(), nullable=False),
        sa.Column('value', sa.Float(), nullable=True),
        sa.Column('intermediate', sa.JSON(), nullable=False),
        sa.Column('epoch', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint('sweep_id', 'number', name='uq_sweep_trial'),
    )
    op.create_index('ix_sweep_trials_sweep_id', 'sweep_trials', ['sweep_id'])


def downgrade() -> None:
    op.drop_table('sweep_trials')
    op.drop_table('sweeps')
