"""Persistence: SQLAlchemy tables, the job lifecycle, history queries, the result cache, recovery
and API keys. Data functions take a ``session``; views and tasks own the transaction."""
