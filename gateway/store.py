"""SQLite persistence for the message log and the registry snapshot.

One SQLite file holds three tables: ``log`` (the hash-chained records), ``documents``
(named blobs such as the registry snapshot) and ``schema_version``. The log is reached
through the :class:`~gateway.log.LogStore` protocol so a PostgreSQL store can sit beside
:class:`SqliteLogStore` later; :func:`open_log_store` picks one from a URL.

Rows are read back faithfully, even when someone has edited the file by hand: a store
never judges the chain, :func:`gateway.log.verify` does, and it can only name a tampered
record if the store hands it over instead of failing.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from gateway.log import (
    JSONValue,
    LogRecord,
    LogStore,
    StoreUnavailable,
    canonical_json,
    check_continues,
)

__all__ = [
    "SCHEMA_VERSION",
    "UNREADABLE_FIELDS_KEY",
    "SqliteDocumentStore",
    "SqliteLogStore",
    "decode_row",
    "open_log_store",
    "read_documents",
]

SCHEMA_VERSION = 1
"""The version written to ``schema_version``; a file with another version is refused."""

UNREADABLE_FIELDS_KEY = "<unreadable>"
"""The key under which a row's raw ``fields`` text is returned when it is not a JSON object."""

_PAGE_SIZE = 512  # records() reads this many rows per query, so memory stays bounded

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS log ("
    " seq INTEGER PRIMARY KEY, at REAL NOT NULL, kind TEXT NOT NULL,"
    " fields TEXT NOT NULL, prev TEXT NOT NULL, hash TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS documents ("
    " name TEXT PRIMARY KEY, value BLOB NOT NULL, updated_seq INTEGER)",
)

_SELECT_RECORDS = (
    "SELECT seq, at, kind, fields, prev, hash FROM log WHERE seq > ? ORDER BY seq LIMIT ?"
)
_SELECT_HEAD = "SELECT seq, hash FROM log ORDER BY seq DESC LIMIT 1"


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back if the body raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _check_schema_version(conn: sqlite3.Connection, path: str | os.PathLike[str]) -> None:
    """Stamp a new file with SCHEMA_VERSION; refuse a file stamped with another one."""
    (version,) = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    if version is None:
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
    elif version != SCHEMA_VERSION:
        raise ValueError(
            f"{os.fspath(path)!r} has schema version {version}; "
            f"this pasarela reads version {SCHEMA_VERSION}"
        )


def _connect(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """Open ``path`` in WAL mode and create the schema if it is missing (idempotent)."""
    # isolation_level=None: the sqlite3 module opens no implicit transactions; we do.
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        with _transaction(conn):
            for statement in _SCHEMA:
                conn.execute(statement)
            _check_schema_version(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _number(value: object) -> float:
    """A REAL column as a float; NaN (which never hashes) when it holds something else."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return math.nan


def _fields(raw: object) -> dict[str, JSONValue]:
    text = _text(raw)
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return {UNREADABLE_FIELDS_KEY: text}
    if not isinstance(value, dict):
        return {UNREADABLE_FIELDS_KEY: text}
    return value


def decode_row(row: tuple[object, ...]) -> LogRecord:
    """A ``(seq, at, kind, fields, prev, hash)`` row as a record, read faithfully."""
    seq, at, kind, fields, prev, digest = row
    return LogRecord(
        seq=seq if isinstance(seq, int) else -1,
        at=_number(at),
        kind=_text(kind),
        fields=_fields(fields),
        prev=_text(prev),
        hash=_text(digest),
    )


class SqliteLogStore:
    """The message log in a SQLite file (WAL mode, ``synchronous=NORMAL``).

    With ``synchronous=NORMAL`` a committed write survives a crash of the process; a power
    failure or OS crash may lose the last transactions (never corrupt the file).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._conn = _connect(path)

    def head(self) -> tuple[int, str] | None:
        row = self._conn.execute(_SELECT_HEAD).fetchone()
        return None if row is None else (row[0], _text(row[1]))

    def write(self, records: Sequence[LogRecord]) -> None:
        """Append ``records`` in one transaction.

        Raises ``ValueError`` (and writes nothing) unless they continue the stored chain:
        contiguous seqs starting after the stored head, each ``prev`` the hash before it.
        """
        if not records:
            return
        try:
            self._write(records)
        except sqlite3.OperationalError as exc:  # locked, disk full, I/O error: not the input
            raise StoreUnavailable(f"SQLite: {exc}") from exc

    def _write(self, records: Sequence[LogRecord]) -> None:
        rows = [(r.seq, r.at, r.kind, canonical_json(r.fields), r.prev, r.hash) for r in records]
        with _transaction(self._conn):
            head = self._conn.execute(_SELECT_HEAD).fetchone()
            check_continues(records, None if head is None else (head[0], _text(head[1])))
            self._conn.executemany("INSERT INTO log VALUES (?, ?, ?, ?, ?, ?)", rows)

    def records(self, *, after: int = 0) -> Iterator[LogRecord]:
        """Records with seq greater than ``after``, ascending, read a page at a time."""
        last = after
        while True:
            rows = self._conn.execute(_SELECT_RECORDS, (last, _PAGE_SIZE)).fetchall()
            for row in rows:
                yield decode_row(row)
            if len(rows) < _PAGE_SIZE:
                return
            last = rows[-1][0]

    def close(self) -> None:
        self._conn.close()


class SqliteDocumentStore:
    """Named blobs (the registry snapshot) in the same SQLite file as the log."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._conn = _connect(path)

    def get(self, name: str) -> bytes | None:
        row = self._conn.execute("SELECT value FROM documents WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        value = row[0]
        return value.encode("utf-8") if isinstance(value, str) else bytes(value)

    def put(self, name: str, value: bytes, *, updated_seq: int | None = None) -> None:
        """Insert or replace the document ``name``; committed on return.

        ``updated_seq`` may record the log sequence number the document reflects.
        """
        with _transaction(self._conn):
            self._conn.execute(
                "INSERT INTO documents (name, value, updated_seq) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE"
                " SET value = excluded.value, updated_seq = excluded.updated_seq",
                (name, value, updated_seq),
            )

    def close(self) -> None:
        self._conn.close()


def read_documents(path: str | os.PathLike[str], *names: str) -> dict[str, bytes]:
    """Read documents through a read-only connection (another process may own the file).

    Never creates tables or takes the write lock: safe beside a running gateway.
    """
    uri = f"file:{os.fspath(path)}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=5.0)
    try:
        marks = ",".join("?" * len(names))
        rows = conn.execute(
            f"SELECT name, value FROM documents WHERE name IN ({marks})",  # noqa: S608 - only ? marks
            names,
        ).fetchall()
    finally:
        conn.close()
    return {
        str(name): value.encode("utf-8") if isinstance(value, str) else bytes(value)
        for name, value in rows
    }


def open_log_store(url_or_path: str) -> LogStore:
    """Open the log store named by ``sqlite:///abs/path.db`` or a plain file path.

    Any other scheme raises ``ValueError`` naming the scheme (the rest of the URL is left
    out of the message: it may carry a password).
    """
    scheme, separator, rest = url_or_path.partition("://")
    if not separator:
        path = url_or_path
    elif scheme.lower() == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise ValueError(
                "a sqlite URL needs an absolute file path after 'sqlite://', "
                "as in sqlite:///var/lib/pasarela/state.db"
            )
        path = rest
    else:
        raise ValueError(
            f"unsupported log store scheme {scheme!r} here: use sqlite:///absolute/path.db "
            "or a file path (a PostgreSQL log opens with gateway.backends.open_store)"
        )
    if not path:
        raise ValueError("the log store path is empty")
    return SqliteLogStore(path)
