"""What every store backend shares, whatever the database: no driver, no connection.

The store's *behaviour* is the port (``fleetwatch/ports.py``: the writer, the restore and
the reads). Its *shape* lives here, once, so the SQLite and PostgreSQL adapters and the
in-memory fake (``fleetwatch/testing.py``) cannot drift apart:

- :mod:`~fleetwatch.storage.rows`: effects and records to row tuples and back, the
  tables a write touches and in which order, ``business_day``;
- :mod:`~fleetwatch.storage.paging`: the API's opaque cursors, page limits and status
  filters (keyset order on (opened_at, id) and on terminal_id);
- :mod:`~fleetwatch.storage.migrations`: the versioned schema files of each dialect and
  the rule that a newer schema is refused;
- :mod:`~fleetwatch.storage.retention`: which rows age out, and the background job that
  deletes them in small chunks.

Not under ``adapters/``, because adapters never import each other (tests/test_architecture.py);
and nothing here imports an adapter or a database driver (the same test says so).
"""
