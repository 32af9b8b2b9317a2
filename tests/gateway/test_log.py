"""Tests for gateway.log: hashing, chaining, verification and the group-commit MessageLog."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.log import (
    GENESIS_HASH,
    JSONValue,
    LogEntry,
    LogRecord,
    MessageLog,
    Verification,
    canonical_bytes,
    chain,
    record_hash,
    verify,
)
from gateway.store import SqliteLogStore

T0 = 1_420_070_400.0


def entry(i: int) -> LogEntry:
    return LogEntry(kind="request", at=T0 + i, fields={"iss": "A1", "aud": "B2", "jti": f"m-{i}"})


def build_chain(entries: Sequence[LogEntry]) -> list[LogRecord]:
    records: list[LogRecord] = []
    prev = GENESIS_HASH
    for seq, e in enumerate(entries, start=1):
        record = chain(e, seq=seq, prev=prev)
        records.append(record)
        prev = record.hash
    return records


class CountingStore:
    """A real SQLite store that counts how often it is written to."""

    def __init__(self, inner: SqliteLogStore, *, fail_writes: int = 0) -> None:
        self.inner = inner
        self.writes = 0
        self.fail_writes = fail_writes

    def head(self) -> tuple[int, str] | None:
        return self.inner.head()

    def write(self, records: Sequence[LogRecord]) -> None:
        self.writes += 1
        if self.fail_writes > 0:
            self.fail_writes -= 1
            raise OSError("disk full")
        self.inner.write(records)

    def records(self, *, after: int = 0) -> Iterator[LogRecord]:
        return self.inner.records(after=after)

    def close(self) -> None:
        self.inner.close()


def test_genesis_hash_is_32_zero_bytes() -> None:
    """GENESIS_HASH is base64url without padding of 32 zero bytes."""
    assert base64.urlsafe_b64encode(bytes(32)).decode().rstrip("=") == GENESIS_HASH
    assert "=" not in GENESIS_HASH


def test_canonical_bytes_are_sorted_compact_utf8() -> None:
    """canonical_bytes is sorted, compact, UTF-8 JSON with ``at`` as integer milliseconds."""
    data = canonical_bytes(3, 5.0015, "admin", {"b": 1, "a": "ñ"}, "p")
    assert (
        data == '{"at_ms":5002,"fields":{"a":"ñ","b":1},"kind":"admin","prev":"p","seq":3}'.encode()
    )


def test_record_hash_is_sha256_of_canonical_bytes() -> None:
    """record_hash is base64url (no padding) of SHA-256 over canonical_bytes."""
    digest = hashlib.sha256(canonical_bytes(1, T0, "state", {"x": [1, None]}, GENESIS_HASH))
    expected = base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")
    assert record_hash(1, T0, "state", {"x": [1, None]}, GENESIS_HASH) == expected


def test_chain_snapshots_fields() -> None:
    """A record keeps the fields as appended even if the caller's dict changes later."""
    fields: dict[str, JSONValue] = {"jti": "m-1"}
    record = chain(LogEntry(kind="request", at=T0, fields=fields), seq=1, prev=GENESIS_HASH)
    fields["jti"] = "changed"
    assert record.fields == {"jti": "m-1"}
    assert verify([record]).ok


def test_chain_rejects_nan() -> None:
    """A NaN in the fields cannot be chained (it has no canonical JSON)."""
    with pytest.raises(ValueError, match="JSON"):
        chain(LogEntry(kind="state", at=T0, fields={"x": float("nan")}), seq=1, prev=GENESIS_HASH)


def test_verify_accepts_a_valid_chain() -> None:
    """A chain built by chain() verifies, with its record count."""
    result = verify(build_chain([entry(i) for i in range(5)]))
    assert result == Verification(ok=True, records=5, first_bad_seq=None, problem=None)


def test_verify_accepts_an_empty_log_with_genesis_head() -> None:
    """An empty log is valid, and matches the expected head (0, GENESIS_HASH)."""
    assert verify([], expected_head=(0, GENESIS_HASH)).ok


def test_verify_names_a_modified_record() -> None:
    """Changing a record's content is reported as a hash mismatch at that record."""
    records = build_chain([entry(i) for i in range(6)])
    records[3] = dataclasses.replace(records[3], kind="response")
    result = verify(records)
    assert (result.ok, result.first_bad_seq) == (False, 4)
    assert result.problem == "record 4 was modified (hash mismatch)"


def test_verify_names_a_missing_record() -> None:
    """A gap in the sequence names the first missing number."""
    records = build_chain([entry(i) for i in range(6)])
    del records[4]
    result = verify(records)
    assert result.first_bad_seq == 5
    assert result.problem == "record 5 is missing (sequence jumps from 4 to 6)"


def test_verify_names_a_repeated_record() -> None:
    """A record repeated out of order is reported at the position it occupies."""
    records = build_chain([entry(i) for i in range(4)])
    records.insert(3, records[1])
    result = verify(records)
    assert (result.first_bad_seq, result.records) == (4, 4)


def test_verify_requires_genesis_prev_for_the_first_record() -> None:
    """Record 1 must point at GENESIS_HASH."""
    record = chain(entry(0), seq=1, prev="x" * 43)
    result = verify([record])
    assert result.first_bad_seq == 1
    assert result.problem is not None
    assert "genesis" in result.problem


def test_verify_expected_head_detects_extra_records() -> None:
    """Records beyond the expected head are reported."""
    records = build_chain([entry(i) for i in range(5)])
    result = verify(records, expected_head=(3, records[2].hash))
    assert result.first_bad_seq == 4


def test_verify_expected_head_detects_a_different_head_hash() -> None:
    """A head with the right seq but another hash is reported at that seq."""
    records = build_chain([entry(i) for i in range(3)])
    result = verify(records, expected_head=(3, GENESIS_HASH))
    assert result.first_bad_seq == 3


_json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
_json = st.recursive(
    _json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
_entries = st.builds(
    LogEntry,
    kind=st.sampled_from(["request", "response", "rejection", "admin", "state"]),
    at=st.floats(min_value=0, max_value=4e9),
    fields=st.dictionaries(st.text(alphabet="abcdefgh", max_size=6), _json, max_size=4),
)


@given(entries=st.lists(_entries, min_size=1, max_size=12), data=st.data())
def test_verify_names_any_single_modified_record(
    entries: list[LogEntry], data: st.DataObject
) -> None:
    """Modifying the record at index i in any chain makes verify name seq i + 1."""
    records = build_chain(entries)
    i = data.draw(st.integers(min_value=0, max_value=len(records) - 1))
    victim = records[i]
    how = data.draw(st.sampled_from(["fields", "at", "kind"]))
    if how == "fields":
        value = data.draw(_json)
        records[i] = dataclasses.replace(victim, fields={**victim.fields, "__tampered__": value})
    elif how == "at":
        records[i] = dataclasses.replace(victim, at=victim.at + 1.0)
    else:
        records[i] = dataclasses.replace(victim, kind=victim.kind + "!")
    result = verify(records)
    assert (result.ok, result.first_bad_seq) == (False, i + 1)


async def test_appending_chains_records(tmp_path: Path) -> None:
    """Appended records get seqs 1, 2, 3 ... and each prev is the hash before it."""
    log = MessageLog(SqliteLogStore(tmp_path / "log.db"))
    records = [log.append(entry(i)) for i in range(5)]
    await log.aclose()
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert records[0].prev == GENESIS_HASH
    assert all(b.prev == a.hash for a, b in itertools.pairwise(records))
    assert log.head == (5, records[-1].hash)


async def test_message_log_resumes_from_an_existing_store(tmp_path: Path) -> None:
    """A reopened log continues the stored chain and the whole file verifies."""
    path = tmp_path / "log.db"
    first = MessageLog(SqliteLogStore(path))
    for i in range(3):
        first.append(entry(i))
    await first.aclose()
    second = MessageLog(SqliteLogStore(path))
    assert second.head == first.head
    assert second.durable_seq == 3
    record = second.append(entry(3))
    await second.aclose()
    assert (record.seq, record.prev) == (4, first.head[1])
    store = SqliteLogStore(path)
    assert verify(store.records(), expected_head=(4, record.hash)).ok
    store.close()


async def test_group_commit_shares_writes(tmp_path: Path) -> None:
    """50 concurrent append+sync tasks share store writes and all end up durable."""
    store = CountingStore(SqliteLogStore(tmp_path / "log.db"))
    log = MessageLog(store)

    async def send(i: int) -> int:
        record = log.append(entry(i))
        await log.sync(record.seq)
        assert log.durable_seq >= record.seq
        return record.seq

    seqs = await asyncio.gather(*(send(i) for i in range(50)))
    assert sorted(seqs) == list(range(1, 51))
    assert store.writes <= 2
    assert store.head() == log.head
    await log.aclose()


async def test_sync_beyond_head_is_refused(tmp_path: Path) -> None:
    """Waiting for a seq that was never appended raises instead of hanging."""
    log = MessageLog(SqliteLogStore(tmp_path / "log.db"))
    log.append(entry(0))
    with pytest.raises(ValueError, match="head is 1"):
        await log.sync(2)
    await log.aclose()


async def test_failed_write_keeps_records_for_the_next_sync(tmp_path: Path) -> None:
    """A store error reaches the caller and the buffered records are written by a later sync."""
    store = CountingStore(SqliteLogStore(tmp_path / "log.db"), fail_writes=1)
    log = MessageLog(store)
    log.append(entry(0))
    with pytest.raises(OSError, match="disk full"):
        await log.sync()
    assert log.durable_seq == 0
    log.append(entry(1))
    await log.sync()
    assert log.durable_seq == 2
    assert verify(store.records(), expected_head=log.head).ok
    await log.aclose()


async def test_aclose_syncs_then_refuses_appends(tmp_path: Path) -> None:
    """aclose() makes buffered records durable; appending afterwards raises."""
    path = tmp_path / "log.db"
    log = MessageLog(SqliteLogStore(path))
    log.append(entry(0))
    await log.aclose()
    await log.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        log.append(entry(1))
    store = SqliteLogStore(path)
    assert store.head() == log.head
    store.close()
