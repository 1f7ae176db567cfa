"""The lease row (ports.Leases) on PostgreSQL and the in-memory fake: claim, renew, expiry, release, fencing.

On PostgreSQL the expiry runs on the database's clock, so those tests let real time pass
(leases of a fraction of a second); the fake runs on a clock the test moves.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from fleetwatch.adapters.postgres import PostgresStore
from fleetwatch.core.model import TxnWrite
from fleetwatch.errors import LeaseLost, StoreError
from fleetwatch.testing import MemoryStore
from tests.store.builders import txn
from tests.store.conftest import Db, make_db

LEASE = 0.6


@dataclass
class Backend:
    store: Any
    pass_time: Callable[[float], Awaitable[None]]


@pytest.fixture(params=["postgresql", "memory"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "memory":
        now = [1000.0]

        async def advance(s: float) -> None:
            now[0] += s

        mem = MemoryStore(clock=lambda: now[0])
        yield Backend(mem, advance)
        await mem.close()
        return
    db = make_db("postgresql", tmp_path, request)
    pg = await db.open()
    yield Backend(pg, asyncio.sleep)
    await pg.close()


async def test_the_first_claim_takes_the_lease_and_the_next_is_told_who_holds_it(backend: Backend) -> None:
    a = await backend.store.claim("a", LEASE)
    assert (a.held, a.token, a.holder) == (True, 1, "a")
    b = await backend.store.claim("b", LEASE)
    assert (b.held, b.token, b.holder) == (False, 1, "a")
    assert 0 < b.remaining_s <= LEASE + 1e-6


async def test_renewing_keeps_the_lease_and_a_wrong_token_or_holder_does_not(backend: Backend) -> None:
    token = (await backend.store.claim("a", LEASE)).token
    for _ in range(3):
        await backend.pass_time(LEASE / 2)
        renewed = await backend.store.renew("a", token, LEASE)
        assert renewed.held
        assert LEASE / 2 < renewed.remaining_s <= LEASE + 1e-6
    assert not (await backend.store.claim("b", LEASE)).held  # renewed: never expired
    assert not (await backend.store.renew("a", token + 1, LEASE)).held
    assert not (await backend.store.renew("b", token, LEASE)).held


async def test_an_expired_lease_is_taken_with_a_new_token_and_its_old_holder_told(backend: Backend) -> None:
    token = (await backend.store.claim("a", LEASE)).token
    await backend.pass_time(LEASE * 1.5)
    b = await backend.store.claim("b", LEASE)
    assert (b.held, b.token, b.holder) == (True, token + 1, "b")
    old = await backend.store.renew("a", token, LEASE)
    assert (old.held, old.holder, old.token) == (False, "b", token + 1)


async def test_a_released_lease_is_taken_at_once(backend: Backend) -> None:
    token = (await backend.store.claim("a", LEASE)).token
    await backend.store.release("b", token)  # not the holder: nothing happens
    assert not (await backend.store.claim("b", LEASE)).held
    await backend.store.release("a", token)
    assert (await backend.store.claim("b", LEASE)).held


# ---- PostgreSQL: two instances, one database -----------------------------------------


@pytest.fixture
def pg_db(tmp_path: Path, request: pytest.FixtureRequest) -> Db:
    return make_db("postgresql", tmp_path, request)


async def test_after_a_takeover_the_old_active_can_write_nothing(pg_db: Db) -> None:
    """Two stores on one database: once B took the expired lease, A's fenced writes are refused
    (LeaseLost, nothing kept) and B's commit."""
    a, b = await pg_db.open(), await pg_db.open()
    try:
        token_a = (await a.claim("a", LEASE)).token
        a.fence(token_a)
        await a.write([TxnWrite(txn("T1", "before"))])
        await asyncio.sleep(LEASE * 1.5)
        token_b = (await b.claim("b", LEASE)).token
        b.fence(token_b)
        with pytest.raises(LeaseLost, match="lease"):
            await a.write([TxnWrite(txn("T1", "after-a"))])
        await b.write([TxnWrite(txn("T1", "after-b"))])
        assert sorted(r[0] for r in await pg_db.rows("SELECT txn_id FROM transactions")) == ["after-b", "before"]
    finally:
        await a.close()
        await b.close()


async def test_a_takeover_waits_for_the_old_actives_write_in_progress_and_a_renewal_does_not(pg_db: Db) -> None:
    """A commit holds the lease row FOR KEY SHARE (the fence check): a claim of the expired lease
    waits until that transaction ends, so everything the old active committed precedes the
    takeover; a renewal does not wait for it."""
    a = await pg_db.open()
    conn = await asyncpg.connect(pg_db.location)
    try:
        token = (await a.claim("a", LEASE)).token
        assert token is not None
        await conn.execute("BEGIN")
        await conn.fetchval("SELECT token FROM leases WHERE name = 'active' FOR KEY SHARE")  # as a write does
        renewed = await asyncio.wait_for(a.renew("a", token, LEASE), 2)
        assert renewed.held
        await asyncio.sleep(LEASE * 1.5)
        claim = asyncio.create_task(a.claim("b", LEASE))
        await asyncio.sleep(0.3)
        assert not claim.done()
        await conn.execute("COMMIT")
        view = await asyncio.wait_for(claim, 5)
        assert (view.held, view.token) == (True, token + 1)
    finally:
        await conn.close()
        await a.close()


async def test_a_lost_lease_connection_costs_at_most_one_call(pg_db: Db) -> None:
    """The lease's connection killed by the server: a closed connection is replaced before the
    next call, one that dies under a call fails that call (StoreError), and the next reconnects."""
    store: PostgresStore = await pg_db.open(application_name="fleetwatch lease-test")
    try:
        token = (await store.claim("a", 30)).token
        assert token is not None
        killed = await pg_db.rows("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                                  "WHERE application_name = 'fleetwatch lease-test'")
        assert killed
        assert all(r[0] for r in killed)
        errors: list[str] = []
        for _ in range(2):
            try:
                assert (await store.renew("a", token, 30)).held
            except StoreError as exc:
                errors.append(str(exc))
        assert len(errors) <= 1
        assert all("renewing the lease" in e for e in errors)
        assert (await store.renew("a", token, 30)).held
    finally:
        await store.close()
