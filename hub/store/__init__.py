"""The hub's store: typed methods by concern behind one :class:`Store` (see
:mod:`hub.store.interface`), the rows they take and give (:mod:`hub.store.rows`), and
its errors. Open one with :func:`hub.store.dialects.open_store`.

This package's ``__init__`` imports only the pure contract, so a pure core may use the
row types without pulling in a database driver.
"""

from hub.store.interface import NotFound, Store, StoreError

__all__ = ["NotFound", "Store", "StoreError"]
