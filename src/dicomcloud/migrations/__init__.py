"""Alembic migrations of the PostgreSQL index; run by `dicomcloud.adapters.postgres_index.migrate`."""
