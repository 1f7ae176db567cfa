"""What is PostgreSQL's own in its store: connection failures and what they say (the shared behaviour
is in tests/store/)."""

from __future__ import annotations

import pytest

from fleetwatch.adapters.postgres import PostgresStore
from fleetwatch.errors import StoreError
from tests.services import Postgres, free_port
from tests.store.builders import dead_letter


async def test_unreachable_server_is_a_store_error_without_the_password() -> None:
    """Nothing listening: StoreError naming the masked URL, never the password."""
    url = f"postgresql://fw:do-not-print@127.0.0.1:{free_port()}/fleetwatch"
    with pytest.raises(StoreError) as caught:
        await PostgresStore.open(url)
    assert "do-not-print" not in str(caught.value)
    assert "postgresql://fw:**********@127.0.0.1" in str(caught.value)


async def test_wrong_password_is_a_store_error_without_the_password(postgres: Postgres) -> None:
    """A refused login is one StoreError saying so, with the password masked."""
    url = postgres.new_database().replace(postgres.password, "wrong-secret")
    with pytest.raises(StoreError, match="password") as caught:
        await PostgresStore.open(url)
    assert "wrong-secret" not in str(caught.value)


async def test_size_is_the_database_size_and_grows(postgres: Postgres) -> None:
    """size_bytes() is pg_database_size: a few MB for an empty schema, more after writes."""
    store = await PostgresStore.open(postgres.new_database(), dead_letters_kept=100_000)
    try:
        empty = await store.size_bytes()
        assert empty > 1_000_000
        await store.write([dead_letter(n) for n in range(20_000)])
        assert await store.size_bytes() > empty
    finally:
        await store.close()
