"""The message log behaves the same on every backend: SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from gateway.backends import open_store
from gateway.log import GENESIS_HASH, LogEntry, LogRecord, LogStore, MessageLog, averify, chain
from gateway.pgstore import MIGRATIONS, PostgresLogStore, StoreUnavailable, postgres_target
from gateway.store import SqliteLogStore
from tests.backends.conftest import POSTGRES

T0 = 1_420_070_400.0


def entry(i: int) -> LogEntry:
    return LogEntry(kind="request", at=T0 + i, fields={"iss": "A1", "jti": f"m-{i}", "n": i})


def build_records(n: int, *, start: int = 1, prev: str = GENESIS_HASH) -> list[LogRecord]:
    records = []
    for seq in range(start, start + n):
        record = chain(entry(seq), seq=seq, prev=prev)
        records.append(record)
        prev = record.hash
    return records


async def _records(store: LogStore) -> list[LogRecord]:
    if isinstance(store, PostgresLogStore):
        return [r async for r in store.iter_records()]
    assert isinstance(store, SqliteLogStore)
    return list(store.records())


async def _write(store: LogStore, records: list[LogRecord]) -> None:
    written = store.write(records)
    if written is not None:
        await written


async def _close(store: LogStore) -> None:
    closed = store.close()
    if closed is not None:
        await closed


async def test_synced_records_survive_a_reopen_with_their_head(store_url: str) -> None:
    """What MessageLog made durable is read back equal, and a reopened log continues it."""
    log = MessageLog(await open_store(store_url))
    appended = [log.append(entry(i)) for i in range(1, 1_201)]  # more than a page
    await log.sync()
    await log.aclose()
    store = await open_store(store_url)
    try:
        assert store.head() == (1_200, appended[-1].hash)
        assert await _records(store) == appended
        reopened = MessageLog(store)
        later = reopened.append(entry(1_201))
        assert later.seq == 1_201
        assert later.prev == appended[-1].hash
        await reopened.sync()
    finally:
        await _close(store)


async def test_a_write_that_does_not_continue_the_chain_is_refused_whole(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        first = build_records(3)
        await _write(store, first)
        stray = build_records(2, start=5, prev=first[-1].hash)
        with pytest.raises(ValueError, match="does not continue the stored chain"):
            await _write(store, stray)
        assert await _records(store) == first
    finally:
        await _close(store)


async def test_the_postgres_log_verifies_and_names_a_tampered_record(postgres_url: str) -> None:
    store = await PostgresLogStore.open(postgres_url)
    try:
        await store.write(build_records(20))
        assert (await averify(store.iter_records())).ok
        target = postgres_target(postgres_url)
        conn = await asyncpg.connect(target.dsn)
        try:
            await conn.execute(
                f'UPDATE "{target.schema}".log SET fields = $1 WHERE seq = 7', '{"iss":"X"}'
            )
        finally:
            await conn.close()
        result = await averify(store.iter_records())
        assert (result.ok, result.first_bad_seq) == (False, 7)
    finally:
        await store.close()


async def test_migrations_run_once_and_a_newer_schema_is_refused(postgres_url: str) -> None:
    """Two stores opening at once apply the migrations once; a version from the future
    stops a store from opening."""
    first, second = await asyncio.gather(
        PostgresLogStore.open(postgres_url, chain="a"),
        PostgresLogStore.open(postgres_url, chain="b"),
    )
    await first.close()
    await second.close()
    target = postgres_target(postgres_url)
    conn = await asyncpg.connect(target.dsn)
    try:
        rows = await conn.fetch(f'SELECT version FROM "{target.schema}".schema_migrations')
        assert [r["version"] for r in rows] == [v for v, _, _ in MIGRATIONS]
        await conn.execute(
            f'INSERT INTO "{target.schema}".schema_migrations (version, description) '
            "VALUES (999, 'from the future')"
        )
    finally:
        await conn.close()
    with pytest.raises(StoreUnavailable, match="version 999"):
        await PostgresLogStore.open(postgres_url)


async def test_schemas_keep_logs_apart(postgres_url: str) -> None:
    other = postgres_url.replace("?schema=", "?schema=o")
    one = await PostgresLogStore.open(postgres_url)
    two = await PostgresLogStore.open(other)
    try:
        await one.write(build_records(3))
        assert two.head() is None
        assert [r async for r in two.iter_records()] == []
    finally:
        await one.close()
        await two.drop()
        await two.close()


async def test_reading_a_schema_without_a_log_creates_nothing(postgres_url: str) -> None:
    with pytest.raises(ValueError, match="holds no pasarela log"):
        await PostgresLogStore.open(postgres_url, create=False)
    conn = await asyncpg.connect(POSTGRES)
    try:
        schema = postgres_target(postgres_url).schema
        found = await conn.fetchval(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = $1", schema
        )
        assert found == 0
    finally:
        await conn.close()


async def test_an_unreachable_server_is_store_unavailable_without_the_password() -> None:
    with pytest.raises(StoreUnavailable) as info:
        await PostgresLogStore.open("postgresql://gw:s3cret@127.0.0.1:1/test?schema=x", timeout=2.0)
    assert "is unavailable" in str(info.value)
    assert "s3cret" not in str(info.value)


def test_postgres_urls_are_checked_before_connecting() -> None:
    target = postgres_target("postgresql://gw:pw@db:5432/pisee?schema=gw_1&sslmode=disable")
    assert target.schema == "gw_1"
    assert target.dsn == "postgresql://gw:pw@db:5432/pisee?sslmode=disable"
    assert "pw" not in target.shown
    assert postgres_target("postgresql://db/pisee").schema == "pasarela"
    with pytest.raises(ValueError, match="plain lower-case identifier"):
        postgres_target('postgresql://db/x?schema=a";drop')


async def test_replicas_write_their_own_chains_in_one_schema(postgres_url: str) -> None:
    """Each chain has its own sequence and head; a chain has one writer at a time."""
    one = await PostgresLogStore.open(postgres_url, chain="r1")
    two = await PostgresLogStore.open(postgres_url, chain="r2")
    try:
        await one.write(build_records(3))
        await two.write(build_records(5))
        assert await one.chains() == ["r1", "r2"]
        assert [r.seq async for r in one.iter_records()] == [1, 2, 3]
        assert [r.seq async for r in one.iter_records(chain="r2")] == [1, 2, 3, 4, 5]
        with pytest.raises(StoreUnavailable, match="give each replica its own --replica"):
            await PostgresLogStore.open(postgres_url, chain="r1")
    finally:
        await one.close()
        await two.close()
    again = await PostgresLogStore.open(postgres_url, chain="r1")  # released on close
    try:
        assert again.head() == (3, build_records(3)[-1].hash)
    finally:
        await again.close()


async def test_documents_are_seeded_once_and_bumped_atomically(postgres_url: str) -> None:
    store = await PostgresLogStore.open(postgres_url)
    try:
        documents = store.documents()
        assert await documents.seed({"registry": b"first", "revision": b"1"}) is True
        assert await documents.seed({"registry": b"second", "revision": b"1"}) is False
        revisions = await asyncio.gather(*(documents.bump({"registry": b"x"}) for _ in range(5)))
        assert sorted(revisions) == [2, 3, 4, 5, 6]
        assert await documents.get("registry", "revision", "absent") == {
            "registry": b"x",
            "revision": b"6",
        }
    finally:
        await store.close()


async def test_records_whose_commit_was_not_acknowledged_are_not_written_twice(
    postgres_url: str,
) -> None:
    """The connection lost after COMMIT: the store still holds the old head, the log sends
    the batch again, and only what is missing is added."""
    store = await PostgresLogStore.open(postgres_url)
    try:
        records = build_records(5)
        await store.write(records[:3])
        store._head = None  # as if the acknowledgement of that commit never came
        await store.write(records)
        assert [r.seq async for r in store.iter_records()] == [1, 2, 3, 4, 5]
        assert store.head() == (5, records[-1].hash)
        with pytest.raises(ValueError, match="differ from the stored chain"):
            await store.write(build_records(2, prev="x" * 43))
    finally:
        await store.close()
