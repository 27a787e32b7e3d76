"""Alembic environment: migrations run on the connection the caller puts in `config.attributes`.

There is no alembic.ini and no URL here, so no credential lives in a file; the schema is plain SQL
(no SQLAlchemy models to keep in step with it).
"""

from __future__ import annotations

from alembic import context

context.configure(connection=context.config.attributes["connection"], transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()
