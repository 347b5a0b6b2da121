"""Alembic environment. The URL comes from the config that ``shared.db.migrate`` builds."""

from __future__ import annotations

from alembic import context

from shared.db.models import Base
from shared.db.session import get_engine

config = context.config
target_metadata = Base.metadata


def run() -> None:
    url = config.get_main_option("sqlalchemy.url")
    engine = get_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `torchqueue db upgrade`")
run()
