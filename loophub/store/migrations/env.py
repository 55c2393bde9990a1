"""Alembic environment: always driven programmatically by loophub.store.db.upgrade."""

from alembic import context

from loophub.store.models import load_tables

config = context.config
connection = config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=load_tables().metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
