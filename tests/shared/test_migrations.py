from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from shared.db.migrate import downgrade, upgrade
from shared.db.models import Base
from shared.db.session import get_engine
from tests.helpers import drop_postgres, fresh_postgres

TABLES = {
    "alembic_version",
    "api_keys",
    "datasets",
    "dataset_versions",
    "jobs",
    "job_events",
    "locks",
    "models",
    "model_aliases",
    "model_alias_events",
    "model_families",
    "sweeps",
    "sweep_trials",
    "webhooks",
    "webhook_deliveries",
    "model_versions",
    "workers",
}


def _check_upgrade_from_empty(url: str) -> None:
    upgrade(url)
    engine = get_engine(url)
    assert set(sa.inspect(engine).get_table_names()) == TABLES
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], "the models and the migrations disagree"
    downgrade(url)
    assert set(sa.inspect(engine).get_table_names()) == {"alembic_version"}
    upgrade(url)
    engine.dispose()


def test_upgrade_from_empty_on_sqlite(tmp_path: Path) -> None:
    _check_upgrade_from_empty(f"sqlite:///{tmp_path / 'fresh.db'}")


@pytest.mark.skipif(
    not os.environ.get("TORCHQUEUE_TEST_DATABASE_URL"),
    reason="set TORCHQUEUE_TEST_DATABASE_URL to a PostgreSQL URL",
)
def test_upgrade_from_empty_on_postgresql() -> None:
    admin = os.environ["TORCHQUEUE_TEST_DATABASE_URL"]
    url, name = fresh_postgres(admin)
    try:
        _check_upgrade_from_empty(url)
    finally:
        drop_postgres(admin, name)
