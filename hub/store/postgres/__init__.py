"""The store's PostgreSQL dialect: the same concern modules, their statements translated.

:class:`~hub.store.postgres.store.PostgresStore` (a pool, migrations applied at open);
chosen by :func:`hub.store.dialects.open_store` for ``postgresql://`` locations.
"""
