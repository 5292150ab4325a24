"""alembic's environment: migrations run on the connection `sites.governance.schema`
opened (already inside its transaction). Must never open a connection of its own."""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None,
                  render_as_batch=connection.dialect.name == "sqlite",
                  transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()
