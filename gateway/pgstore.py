"""PostgreSQL persistence for the message log (asyncpg), beside SQLite's.

A store lives in one schema of a database, named by the URL's ``schema`` parameter
(default ``pasarela``), so several gateways or test runs can share a server without
seeing each other::

    postgresql://pasarela@db.internal:5432/pisee?schema=gateway_1

The schema is created and migrated when the store opens: ``schema_migrations`` records
each applied version, the migrations run under an advisory lock (replicas starting
together apply them once), and a schema newer than this pasarela knows is refused.

A write is one transaction: it checks that the records continue the stored chain, inserts
them, and commits (PostgreSQL's ``synchronous_commit`` default: durable on return). The
gateway acknowledges a message only after that.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from gateway.log import (
    GENESIS_HASH,
    LogRecord,
    StoreUnavailable,
    canonical_json,
    check_continues,
)
from gateway.store import decode_row

__all__ = [
    "COMMAND_TIMEOUT",
    "MIGRATIONS",
    "PostgresDocuments",
    "PostgresLogStore",
    "StoreUnavailable",
    "postgres_target",
]

#: (version, what it does, statements): applied in order, each once, in one transaction.
MIGRATIONS: Final[tuple[tuple[int, str, tuple[str, ...]], ...]] = (
    (
        1,
        "the message log and named documents",
        (
            "CREATE TABLE log (seq BIGINT PRIMARY KEY, at DOUBLE PRECISION NOT NULL,"
            " kind TEXT NOT NULL, fields TEXT NOT NULL, prev TEXT NOT NULL, hash TEXT NOT NULL)",
            "CREATE TABLE documents (name TEXT PRIMARY KEY, value BYTEA NOT NULL,"
            " updated_seq BIGINT)",
        ),
    ),
    (
        2,
        "one hash chain per replica in the same log table",
        (
            "ALTER TABLE log ADD COLUMN chain TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE log DROP CONSTRAINT log_pkey",
            "ALTER TABLE log ADD PRIMARY KEY (chain, seq)",
        ),
    ),
)

#: Seconds a statement may take before the store counts as unavailable.
COMMAND_TIMEOUT: Final = 5.0
#: What a lost or refusing server raises: the store is unavailable, not the input wrong.
_LOST: Final = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_LOCK_KEY: Final = 0x70617361  # "pasa": the advisory lock the migrations run under
_PAGE_SIZE: Final = 1000
_CHAIN_LOCK: Final = 0x63686E  # "chn": with hashtext(chain), one writer per chain
_HEAD = "SELECT seq, hash FROM log WHERE chain = $1 ORDER BY seq DESC LIMIT 1"
_PAGE = (
    "SELECT seq, at, kind, fields, prev, hash FROM log"
    " WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT $3"
)
_COLUMNS: Final = ("seq", "at", "kind", "fields", "prev", "hash", "chain")


@dataclass(frozen=True, slots=True)
class PostgresTarget:
    dsn: str  # the URL without pasarela's own parameters
    schema: str
    shown: str  # the URL without its password, for messages


def postgres_target(url: str) -> PostgresTarget:
    """Split a ``postgresql://`` URL into what asyncpg takes and the schema to use."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL (scheme {parts.scheme!r})")
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), "pasarela")
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(
            f"schema {schema!r} is not a plain lower-case identifier ([a-z_][a-z0-9_]*)"
        )
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    dsn = urlunsplit((parts.scheme, parts.netloc, parts.path, rest, ""))
    netloc = parts.netloc.rpartition("@")
    host = netloc[2]
    user = netloc[0].partition(":")[0]
    shown = f"{parts.scheme}://{user + '@' if user else ''}{host}{parts.path}?schema={schema}"
    return PostgresTarget(dsn=dsn, schema=schema, shown=shown)


async def _migrate(conn: Any, schema: str) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(f'SET LOCAL search_path TO "{schema}"')
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
            " description TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        applied = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
        known = MIGRATIONS[-1][0]
        if applied > known:
            raise StoreUnavailable(
                f"schema {schema} is at version {applied}; this pasarela knows up to {known}"
            )
        for version, description, statements in MIGRATIONS:
            if version <= applied:
                continue
            for statement in statements:
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_migrations (version, description) VALUES ($1, $2)",
                version,
                description,
            )


class PostgresLogStore:
    """One replica's hash chain of the message log in a PostgreSQL schema, and the
    schema's shared documents. Open it with :meth:`open`.

    Several replicas share a schema, each writing its own chain (``chain``: the replica's
    name; ``""`` for a gateway of one process). A chain has one writer at a time: opening
    a chain another process holds is :class:`StoreUnavailable`.
    """

    def __init__(
        self,
        pool: Any,
        target: PostgresTarget,
        head: tuple[int, str] | None,
        *,
        chain: str,
        holder: Any = None,
    ) -> None:
        self._pool = pool
        self.target = target
        self.chain = chain
        self._head = head
        self._holder = holder  # the connection holding the chain's advisory lock

    @classmethod
    async def open(
        cls, url: str, *, chain: str = "", timeout: float = 10.0, create: bool = True
    ) -> PostgresLogStore:
        """Connect, create or migrate the schema, take the chain, read its head.

        With ``create=False`` (reading someone's log) nothing is created, migrated or
        taken, and a schema without a log is a ``ValueError``. Raises
        :class:`StoreUnavailable` when the server cannot be reached or refuses, or when
        another process writes the chain.
        """
        target = postgres_target(url)
        holder = None
        try:
            conn = await asyncpg.connect(target.dsn, timeout=timeout)
            try:
                if create:
                    await _migrate(conn, target.schema)
                elif (
                    await conn.fetchval("SELECT to_regclass($1)", f'"{target.schema}".log') is None
                ):
                    raise ValueError(f"{target.shown} holds no pasarela log")
            except BaseException:
                await conn.close()
                raise
            if create:
                holder = conn
                lock = f"{target.schema}/{chain}"
                taken = await conn.fetchval(
                    "SELECT pg_try_advisory_lock($1, hashtext($2))", _CHAIN_LOCK, lock
                )
                if not taken:
                    await conn.close()
                    name = f"chain {chain!r}" if chain else "the default chain"
                    raise StoreUnavailable(
                        f"{name} of {target.shown} is written by another gateway process: "
                        "give each replica its own --replica NAME"
                    )
            else:
                await conn.close()
            pool = await asyncpg.create_pool(
                target.dsn,
                min_size=1,
                max_size=4,
                timeout=timeout,
                command_timeout=COMMAND_TIMEOUT,
                server_settings={"search_path": target.schema},
            )
            row = await pool.fetchrow(_HEAD, chain)
        except StoreUnavailable:
            raise
        except _LOST as exc:
            if holder is not None:
                await holder.close()
            raise StoreUnavailable(
                f"PostgreSQL at {target.shown} is unavailable: {type(exc).__name__}: {exc}"
            ) from exc
        head = None if row is None else (int(row["seq"]), str(row["hash"]))
        return cls(pool, target, head, chain=chain, holder=holder)

    def head(self) -> tuple[int, str] | None:
        """The chain's head as of the last write (read when the store opened)."""
        return self._head

    async def write(self, records: Sequence[LogRecord]) -> None:
        """Append ``records`` to the chain in one transaction, after checking they continue it.

        Writing records that are already stored, identical (a commit whose acknowledgement
        the connection lost), is not an error: they are skipped. Raises
        :class:`~gateway.log.StoreUnavailable` when the server is lost or times out.
        """
        if not records:
            return
        try:
            await self._write(records)
        except _LOST as exc:
            raise StoreUnavailable(
                f"PostgreSQL at {self.target.shown}: {type(exc).__name__}: {exc}"
            ) from exc
        self._head = (records[-1].seq, records[-1].hash)

    async def _write(self, records: Sequence[LogRecord]) -> None:
        # The chain has one writer (the advisory lock), so the head this store last wrote
        # is the stored one: append without reading it back. Only when the rows are already
        # there (a commit whose acknowledgement was lost) is the stored chain read.
        if self._continues_head(records):
            try:
                async with self._pool.acquire() as conn, conn.transaction():
                    await self._copy(conn, records)
            except asyncpg.UniqueViolationError:
                pass
            else:
                return
        await self._reconcile(records)

    def _continues_head(self, records: Sequence[LogRecord]) -> bool:
        seq, digest = self._head or (0, GENESIS_HASH)
        try:
            check_continues(records, (seq, digest) if seq else None)
        except ValueError:
            return False
        return True

    async def _copy(self, conn: Any, records: Sequence[LogRecord]) -> None:
        rows = [
            (r.seq, r.at, r.kind, canonical_json(r.fields), r.prev, r.hash, self.chain)
            for r in records
        ]
        await conn.copy_records_to_table("log", records=rows, columns=_COLUMNS)

    async def _reconcile(self, records: Sequence[LogRecord]) -> None:
        """Write ``records`` after what the chain really holds (skipping stored ones)."""
        async with self._pool.acquire() as conn, conn.transaction():
            head = await conn.fetchrow(_HEAD, self.chain)
            seq, digest = (0, GENESIS_HASH) if head is None else (head["seq"], head["hash"])
            if records[0].seq <= seq:
                stored = await conn.fetch(
                    "SELECT seq, hash FROM log WHERE chain = $1 AND seq >= $2 AND seq <= $3"
                    " ORDER BY seq",
                    self.chain,
                    records[0].seq,
                    min(seq, records[-1].seq),
                )
                if [(r["seq"], r["hash"]) for r in stored] != [
                    (r.seq, r.hash) for r in records[: len(stored)]
                ]:
                    raise ValueError(
                        f"records {records[0].seq}.. differ from the stored chain "
                        f"(stored head is record {seq})"
                    )
                records = records[len(stored) :]
            check_continues(records, (seq, digest) if seq else None)
            if records:
                await self._copy(conn, records)

    async def chains(self) -> list[str]:
        """The chains the schema holds (one per replica that wrote), by name."""
        rows = await self._pool.fetch("SELECT DISTINCT chain FROM log ORDER BY chain")
        return [str(row["chain"]) for row in rows]

    async def iter_records(
        self, *, after: int = 0, chain: str | None = None
    ) -> AsyncIterator[LogRecord]:
        """Records of ``chain`` (default: this store's) with seq greater than ``after``,
        ascending, a page at a time."""
        name = self.chain if chain is None else chain
        last = after
        while True:
            rows = await self._pool.fetch(_PAGE, name, last, _PAGE_SIZE)
            for row in rows:
                yield decode_row(tuple(row))
            if len(rows) < _PAGE_SIZE:
                return
            last = rows[-1]["seq"]

    def documents(self) -> PostgresDocuments:
        """The schema's named documents (trust store, registry), shared by its replicas."""
        return PostgresDocuments(self._pool, self.target)

    async def close(self) -> None:
        await self._pool.close()
        if self._holder is not None:
            await self._holder.close()
            self._holder = None

    async def drop(self) -> None:
        """Remove the whole schema (tests, throwaway rehearsals)."""
        async with self._pool.acquire() as conn:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{self.target.schema}" CASCADE')


class PostgresDocuments:
    """Named blobs in the schema's ``documents`` table (the shared trust store and registry)."""

    def __init__(self, pool: Any, target: PostgresTarget) -> None:
        self._pool = pool
        self._target = target

    @property
    def shown(self) -> str:
        return self._target.shown

    def _lost(self, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(f"PostgreSQL at {self._target.shown}: {type(exc).__name__}: {exc}")

    async def get(self, *names: str) -> dict[str, bytes]:
        """The documents among ``names`` that exist."""
        try:
            rows = await self._pool.fetch(
                "SELECT name, value FROM documents WHERE name = ANY($1::text[])", list(names)
            )
        except _LOST as exc:
            raise self._lost(exc) from exc
        return {str(row["name"]): bytes(row["value"]) for row in rows}

    async def put(self, documents: dict[str, bytes]) -> None:
        """Insert or replace ``documents`` in one transaction; committed on return."""
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.executemany(
                    "INSERT INTO documents (name, value) VALUES ($1, $2)"
                    " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    list(documents.items()),
                )
        except _LOST as exc:
            raise self._lost(exc) from exc

    async def seed(self, documents: dict[str, bytes]) -> bool:
        """Insert ``documents`` unless the schema already holds a ``registry`` (the first
        replica to start seeds them); True when this call did."""
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
                if await conn.fetchval("SELECT 1 FROM documents WHERE name = 'registry'"):
                    return False
                await conn.executemany(
                    "INSERT INTO documents (name, value) VALUES ($1, $2)"
                    " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    list(documents.items()),
                )
                return True
        except _LOST as exc:
            raise self._lost(exc) from exc

    async def bump(self, documents: dict[str, bytes]) -> int:
        """Write ``documents`` and increment ``revision`` in one transaction; the new
        revision."""
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
                current = await conn.fetchval("SELECT value FROM documents WHERE name = 'revision'")
                revision = int(bytes(current or b"0")) + 1
                rows = [*documents.items(), ("revision", str(revision).encode())]
                await conn.executemany(
                    "INSERT INTO documents (name, value) VALUES ($1, $2)"
                    " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    rows,
                )
                return revision
        except _LOST as exc:
            raise self._lost(exc) from exc
