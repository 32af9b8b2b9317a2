"""Tests for gateway.store: SQLite persistence, and tamper detection on real files."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from gateway.log import GENESIS_HASH, LogEntry, LogRecord, Verification, chain, verify
from gateway.store import (
    UNREADABLE_FIELDS_KEY,
    SqliteDocumentStore,
    SqliteLogStore,
    open_log_store,
)

T0 = 1_420_070_400.0


def entry(i: int) -> LogEntry:
    return LogEntry(kind="request", at=T0 + i, fields={"iss": "A1", "svc": "ati", "jti": f"m-{i}"})


def build_records(n: int) -> list[LogRecord]:
    records: list[LogRecord] = []
    prev = GENESIS_HASH
    for seq in range(1, n + 1):
        record = chain(entry(seq), seq=seq, prev=prev)
        records.append(record)
        prev = record.hash
    return records


def build_log(path: Path, n: int = 10) -> tuple[int, str]:
    """Write a valid log of n records to path and return its head."""
    store = SqliteLogStore(path)
    store.write(build_records(n))
    head = store.head()
    store.close()
    assert head is not None
    return head


@contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection, committed and closed on exit: tampering behind the API."""
    with closing(sqlite3.connect(path)) as db:
        yield db
        db.commit()


def verify_file(path: Path, expected_head: tuple[int, str] | None = None) -> Verification:
    store = SqliteLogStore(path)
    try:
        return verify(store.records(), expected_head=expected_head)
    finally:
        store.close()


def test_written_records_read_back_equal(tmp_path: Path) -> None:
    """Records read from the file equal the records written."""
    store = SqliteLogStore(tmp_path / "log.db")
    records = build_records(4)
    store.write(records)
    assert list(store.records()) == records
    assert [r.seq for r in store.records(after=2)] == [3, 4]
    store.close()


def test_records_are_read_across_pages(tmp_path: Path) -> None:
    """A log longer than one read page comes back complete and in order."""
    head = build_log(tmp_path / "log.db", 1300)
    result = verify_file(tmp_path / "log.db", expected_head=head)
    assert (result.ok, result.records) == (True, 1300)


def test_write_refuses_records_that_do_not_continue_the_chain(tmp_path: Path) -> None:
    """A batch that does not follow the stored head is refused and nothing is written."""
    store = SqliteLogStore(tmp_path / "log.db")
    records = build_records(3)
    store.write(records[:1])
    with pytest.raises(ValueError, match="record 3 does not continue"):
        store.write(records[2:])
    assert store.head() == (1, records[0].hash)
    store.close()


def test_schema_creation_is_idempotent(tmp_path: Path) -> None:
    """Opening a file twice keeps its data and a single schema_version row (1)."""
    head = build_log(tmp_path / "log.db", 3)
    store = SqliteLogStore(tmp_path / "log.db")
    assert store.head() == head
    store.close()
    with raw(tmp_path / "log.db") as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    """A file written by another schema version is not opened."""
    build_log(tmp_path / "log.db", 1)
    with raw(tmp_path / "log.db") as db:
        db.execute("UPDATE schema_version SET version = 2")
    with pytest.raises(ValueError, match="schema version 2"):
        SqliteLogStore(tmp_path / "log.db")


def test_modified_record_is_named(tmp_path: Path) -> None:
    """An UPDATE of one row's fields is reported at that row's seq."""
    head = build_log(tmp_path / "log.db")
    with raw(tmp_path / "log.db") as db:
        db.execute("""UPDATE log SET fields = '{"iss":"EVIL"}' WHERE seq = 4""")
    result = verify_file(tmp_path / "log.db", expected_head=head)
    assert (result.ok, result.first_bad_seq) == (False, 4)
    assert result.problem == "record 4 was modified (hash mismatch)"


def test_deleted_record_is_named(tmp_path: Path) -> None:
    """A DELETE of one row is reported as that seq missing."""
    head = build_log(tmp_path / "log.db")
    with raw(tmp_path / "log.db") as db:
        db.execute("DELETE FROM log WHERE seq = 5")
    result = verify_file(tmp_path / "log.db", expected_head=head)
    assert (result.ok, result.first_bad_seq) == (False, 5)
    assert result.problem == "record 5 is missing (sequence jumps from 4 to 6)"


def test_inserted_record_is_named(tmp_path: Path) -> None:
    """A forged row with a valid hash inserted at 5 breaks the chain at the next seq, 6."""
    head = build_log(tmp_path / "log.db")
    with raw(tmp_path / "log.db") as db:
        db.execute("UPDATE log SET seq = -(seq + 1) WHERE seq >= 5")
        db.execute("UPDATE log SET seq = -seq WHERE seq < 0")
        (prev,) = db.execute("SELECT hash FROM log WHERE seq = 4").fetchone()
        forged = chain(LogEntry(kind="request", at=T0 + 4.5, fields={"iss": "X"}), seq=5, prev=prev)
        db.execute(
            "INSERT INTO log VALUES (?, ?, ?, ?, ?, ?)",
            (5, forged.at, forged.kind, '{"iss":"X"}', forged.prev, forged.hash),
        )
    result = verify_file(tmp_path / "log.db", expected_head=head)
    assert (result.ok, result.first_bad_seq) == (False, 6)
    assert result.problem == "record 6 does not follow record 5 (prev hash mismatch)"


def test_reordered_records_are_named(tmp_path: Path) -> None:
    """Swapping the contents of rows 3 and 7 is reported at seq 3."""
    head = build_log(tmp_path / "log.db")
    with raw(tmp_path / "log.db") as db:
        db.execute("UPDATE log SET seq = -3 WHERE seq = 7")
        db.execute("UPDATE log SET seq = 7 WHERE seq = 3")
        db.execute("UPDATE log SET seq = 3 WHERE seq = -3")
    result = verify_file(tmp_path / "log.db", expected_head=head)
    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert result.problem == "record 3 does not follow record 2 (prev hash mismatch)"


def test_truncated_tail_is_named_with_expected_head(tmp_path: Path) -> None:
    """Deleting the last two rows is caught only against the expected head, at seq 9."""
    head = build_log(tmp_path / "log.db")
    with raw(tmp_path / "log.db") as db:
        db.execute("DELETE FROM log WHERE seq >= 9")
    assert verify_file(tmp_path / "log.db").ok
    result = verify_file(tmp_path / "log.db", expected_head=head)
    assert (result.ok, result.first_bad_seq) == (False, 9)


def test_unreadable_json_is_reported_not_raised(tmp_path: Path) -> None:
    """A row whose fields are not JSON is read back as <unreadable> and flagged by verify."""
    build_log(tmp_path / "log.db")
    with raw(tmp_path / "log.db") as db:
        db.execute("UPDATE log SET fields = '{not json' WHERE seq = 3")
    store = SqliteLogStore(tmp_path / "log.db")
    records = list(store.records())
    store.close()
    assert records[2].fields == {UNREADABLE_FIELDS_KEY: "{not json"}
    result = verify(records)
    assert (result.ok, result.first_bad_seq) == (False, 3)


def test_unreadable_time_is_reported_not_raised(tmp_path: Path) -> None:
    """A row whose time is not a number is flagged as modified at that seq."""
    build_log(tmp_path / "log.db")
    with raw(tmp_path / "log.db") as db:
        db.execute("UPDATE log SET at = 'yesterday' WHERE seq = 6")
    result = verify_file(tmp_path / "log.db")
    assert (result.ok, result.first_bad_seq) == (False, 6)


def test_open_log_store_accepts_sqlite_url_and_path(tmp_path: Path) -> None:
    """open_log_store opens sqlite:///abs/path and a plain path as the same SQLite log."""
    head = build_log(tmp_path / "log.db", 2)
    for target in (f"sqlite://{tmp_path / 'log.db'}", str(tmp_path / "log.db")):
        store = open_log_store(target)
        assert store.head() == head
        store.close()


def test_open_log_store_rejects_an_unknown_scheme() -> None:
    """An unsupported scheme is a ValueError that names the scheme but not the password."""
    with pytest.raises(ValueError, match="'postgresql'") as info:
        open_log_store("postgresql://gw:s3cret@db/pasarela")
    assert "s3cret" not in str(info.value)


def test_open_log_store_rejects_a_relative_sqlite_url() -> None:
    """sqlite:// must be followed by an absolute path."""
    with pytest.raises(ValueError, match="absolute"):
        open_log_store("sqlite://relative.db")


def test_documents_are_upserted_beside_the_log(tmp_path: Path) -> None:
    """The document store reads back the latest value and shares the file with the log."""
    head = build_log(tmp_path / "state.db", 2)
    documents = SqliteDocumentStore(tmp_path / "state.db")
    assert documents.get("registry") is None
    documents.put("registry", b"v1")
    documents.put("registry", b"v2", updated_seq=2)
    assert documents.get("registry") == b"v2"
    documents.close()
    store = SqliteLogStore(tmp_path / "state.db")
    assert store.head() == head
    store.close()
