"""The database: SQLAlchemy models, engines and Alembic migrations."""
