"""Alembic environment of the forecasts database; the URL or an open connection comes from the caller."""

from alembic import context
from sqlalchemy import create_engine

from kronos_tasks.storage.models import Base

config = context.config
VERSION_TABLE = "kronos_alembic_version"  # its own name, so the database can be shared with other tools


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    with create_engine(config.get_main_option("sqlalchemy.url")).connect() as fresh:
        _run(fresh)
        fresh.commit()
