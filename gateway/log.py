"""The append-only, hash-chained message log.

Every record carries the hash of the record before it, so changing, deleting, inserting
or reordering records breaks the chain where it happened. The pure half of this module
(:func:`canonical_bytes`, :func:`record_hash`, :func:`chain`, :func:`verify`) does no I/O.
:class:`MessageLog` is the shell around a :class:`LogStore`: it keeps the chain head in
memory, hands out sequence numbers synchronously and makes records durable by group
commit, so concurrent requests share one database transaction.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
from collections.abc import AsyncIterable, Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol, TypeAlias

__all__ = [
    "GENESIS_HASH",
    "ChainCheck",
    "JSONValue",
    "LogEntry",
    "LogRecord",
    "LogStore",
    "MessageLog",
    "StoreUnavailable",
    "Verification",
    "averify",
    "canonical_bytes",
    "canonical_json",
    "chain",
    "check_continues",
    "record_hash",
    "verify",
]

JSONValue: TypeAlias = str | int | float | bool | list["JSONValue"] | dict[str, "JSONValue"] | None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


GENESIS_HASH: str = _b64url(bytes(32))


@dataclass(frozen=True, slots=True, kw_only=True)
class LogEntry:
    """What a caller appends: a kind, the injected time and the JSON fields to record."""

    kind: str
    at: float
    fields: Mapping[str, JSONValue]


@dataclass(frozen=True, slots=True, kw_only=True)
class LogRecord:
    """An entry placed in the chain: its sequence number, predecessor hash and own hash."""

    seq: int
    at: float
    kind: str
    fields: Mapping[str, JSONValue]
    prev: str
    hash: str


def canonical_json(value: Mapping[str, object]) -> str:
    """Canonical JSON text of a mapping (sorted keys, no spaces, UTF-8, no NaN)."""
    return json.dumps(
        dict(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def canonical_bytes(
    seq: int, at: float, kind: str, fields: Mapping[str, JSONValue], prev: str
) -> bytes:
    """The exact bytes a record's hash covers.

    ``at`` is hashed as an integer number of milliseconds (``at_ms``), so every language
    writes the same digits and ``0`` and ``0.0`` give the same bytes. Raises ``ValueError``
    for NaN or infinite numbers and ``TypeError`` for values that are not JSON.
    """
    return _document_text(seq, at, kind, canonical_json(fields), prev).encode("utf-8")


def _document_text(seq: int, at: float, kind: str, fields_text: str, prev: str) -> str:
    """canonical_json of the whole record, reusing the fields' canonical text.

    Members in sorted order: at_ms, fields, kind, prev, seq (what sort_keys would give).
    """
    if not math.isfinite(at):
        raise ValueError(f"record time must be a finite number, not {at!r}")
    at_ms = round(float(at) * 1000)
    kind_text = json.dumps(kind, ensure_ascii=False)
    prev_text = json.dumps(prev, ensure_ascii=False)
    return (
        f'{{"at_ms":{at_ms},"fields":{fields_text},"kind":{kind_text},'
        f'"prev":{prev_text},"seq":{int(seq)}}}'
    )


def record_hash(seq: int, at: float, kind: str, fields: Mapping[str, JSONValue], prev: str) -> str:
    """base64url (no padding) of the SHA-256 of :func:`canonical_bytes`."""
    return _b64url(hashlib.sha256(canonical_bytes(seq, at, kind, fields, prev)).digest())


def chain(entry: LogEntry, *, seq: int, prev: str) -> LogRecord:
    """Place ``entry`` at ``seq`` after the record whose hash is ``prev``.

    The fields are snapshotted through their canonical JSON, so the record holds exactly
    what a store will read back (tuples become lists) and later changes to the caller's
    mapping cannot desynchronise the record from its hash.
    """
    text = canonical_json(entry.fields)
    fields: dict[str, JSONValue] = json.loads(text)
    at = float(entry.at)
    document = _document_text(seq, at, entry.kind, text, prev).encode("utf-8")
    digest = _b64url(hashlib.sha256(document).digest())
    return LogRecord(
        seq=seq,
        at=at,
        kind=entry.kind,
        fields=MappingProxyType(fields),
        prev=prev,
        hash=digest,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Verification:
    """The result of :func:`verify`: whether the chain holds and, if not, where it breaks."""

    ok: bool
    records: int
    first_bad_seq: int | None
    problem: str | None


def _bad(records: int, seq: int, problem: str) -> Verification:
    return Verification(ok=False, records=records, first_bad_seq=seq, problem=problem)


def _check_record(record: LogRecord, expected_seq: int, prev_hash: str) -> str | None:
    """The problem with ``record`` at position ``expected_seq``, or None."""
    if record.seq > expected_seq:
        last = expected_seq - 1
        return f"record {expected_seq} is missing (sequence jumps from {last} to {record.seq})"
    if record.seq < expected_seq:
        return (
            f"record {expected_seq} is out of place "
            f"(record {record.seq} appears again after record {expected_seq - 1})"
        )
    if record.prev != prev_hash:
        if expected_seq == 1:
            return "record 1 does not start the chain (prev is not the genesis hash)"
        return (
            f"record {expected_seq} does not follow record {expected_seq - 1} (prev hash mismatch)"
        )
    try:
        computed = record_hash(record.seq, record.at, record.kind, record.fields, record.prev)
    except (TypeError, ValueError):
        return f"record {expected_seq} was modified (its content is not canonical JSON)"
    if computed != record.hash:
        return f"record {expected_seq} was modified (hash mismatch)"
    return None


class ChainCheck:
    """The state of :func:`verify` as records are fed one by one (sync or async sources)."""

    def __init__(self, expected_head: tuple[int, str] | None = None) -> None:
        self._head = expected_head
        self._expected_seq = 1
        self._prev_hash = GENESIS_HASH
        self._count = 0

    def feed(self, record: LogRecord) -> Verification | None:
        """Check the next record; a failed :class:`Verification` ends the check."""
        self._count += 1
        expected_seq, head = self._expected_seq, self._head
        if head is not None and expected_seq > head[0]:
            return _bad(
                self._count,
                expected_seq,
                f"record {expected_seq} is beyond the expected head (record {head[0]})",
            )
        problem = _check_record(record, expected_seq, self._prev_hash)
        if problem is not None:
            return _bad(self._count, expected_seq, problem)
        self._prev_hash = record.hash
        self._expected_seq += 1
        return None

    def finish(self) -> Verification:
        """The verdict once every record was fed."""
        count, expected_seq, last_seq = self._count, self._expected_seq, self._expected_seq - 1
        if self._head is not None:
            head_seq, head_hash = self._head
            if last_seq < head_seq:
                return _bad(
                    count,
                    expected_seq,
                    f"record {expected_seq} is missing (the log ends at record {last_seq}, "
                    f"expected head is record {head_seq})",
                )
            if self._prev_hash != head_hash:
                return _bad(
                    count, head_seq, f"record {head_seq} is not the expected head (hash mismatch)"
                )
        return Verification(ok=True, records=count, first_bad_seq=None, problem=None)


def verify(
    records: Iterable[LogRecord], *, expected_head: tuple[int, str] | None = None
) -> Verification:
    """Check a chain read in store order (seq ascending), stopping at the first problem.

    Detects modified records (hash mismatch), deleted ones (sequence gap), inserted or
    reordered ones (sequence out of step or prev mismatch) and, when ``expected_head`` is
    given, a tail that was truncated or extended. ``first_bad_seq`` is the first sequence
    number at which the log differs from a valid chain; ``records`` counts the records
    read, including the bad one. Uses constant memory.
    """
    check = ChainCheck(expected_head)
    for record in records:
        failed = check.feed(record)
        if failed is not None:
            return failed
    return check.finish()


async def averify(
    records: AsyncIterable[LogRecord], *, expected_head: tuple[int, str] | None = None
) -> Verification:
    """:func:`verify` for an asynchronous source (the PostgreSQL store)."""
    check = ChainCheck(expected_head)
    async for record in records:
        failed = check.feed(record)
        if failed is not None:
            return failed
    return check.finish()


def check_continues(records: Sequence[LogRecord], head: tuple[int, str] | None) -> None:
    """Raise ``ValueError`` unless ``records`` continue a stored chain whose head is
    ``head``: contiguous seqs after it, each ``prev`` the hash before it (stores call this
    before writing, in the write's transaction)."""
    seq, digest = head or (0, GENESIS_HASH)
    for record in records:
        if record.seq != seq + 1 or record.prev != digest:
            raise ValueError(
                f"record {record.seq} does not continue the stored chain "
                f"(stored head is record {seq})"
            )
        seq, digest = record.seq, record.hash


class StoreUnavailable(Exception):
    """The log's store cannot be written or reached now; the write may be tried again.

    Messages must not be accepted meanwhile (``503 store-unavailable``). The message never
    names a password.
    """


class LogStore(Protocol):
    """Durable storage of log records: SQLite (:mod:`gateway.store`) or PostgreSQL
    (:mod:`gateway.pgstore`). ``write`` and ``close`` may be coroutines."""

    def head(self) -> tuple[int, str] | None:
        """(last seq, last hash), or None when the store is empty."""
        ...

    def write(self, records: Sequence[LogRecord]) -> Awaitable[None] | None:
        """Append ``records`` in one transaction; they are durable on return."""
        ...

    def close(self) -> Awaitable[None] | None:
        """Release the store's resources."""
        ...


class MessageLog:
    """In-memory chain head + group commit. append() is synchronous (so the pure pipeline and
    the shell can get seq/hash for a receipt without awaiting); durability is awaited separately.
    """

    def __init__(self, store: LogStore) -> None:
        self._store = store
        self._head: tuple[int, str] = store.head() or (0, GENESIS_HASH)
        self._durable_seq = self._head[0]
        self._buffer: list[LogRecord] = []
        self._flush_done: asyncio.Event | None = None
        self._closed = False
        #: False from a write that failed with StoreUnavailable until one succeeds.
        self.healthy = True

    @property
    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last appended record; (0, GENESIS_HASH) when empty."""
        return self._head

    @property
    def durable_seq(self) -> int:
        """The highest seq known to be written to the store."""
        return self._durable_seq

    def append(self, entry: LogEntry) -> LogRecord:
        """Assign the next seq, chain the entry and buffer it until the next write."""
        if self._closed:
            raise RuntimeError("the message log is closed")
        seq, prev = self._head
        record = chain(entry, seq=seq + 1, prev=prev)
        self._buffer.append(record)
        self._head = (record.seq, record.hash)
        return record

    async def sync(self, seq: int | None = None) -> None:
        """Return once every record up to ``seq`` (default: all appended) is durable.

        Concurrent callers share one ``store.write``. If a write fails, its records go back
        to the front of the buffer and the error is raised to the caller that ran it; the
        others retry the write themselves.
        """
        target = self._head[0] if seq is None else seq
        if target > self._head[0]:
            raise ValueError(f"cannot sync record {target}: the log head is {self._head[0]}")
        while self._durable_seq < target:
            if self._flush_done is not None:
                await self._flush_done.wait()
            else:
                await self._flush()

    async def _flush(self) -> None:
        done = self._flush_done = asyncio.Event()
        try:
            await asyncio.sleep(0)  # let concurrent appends join this batch
            batch, self._buffer = self._buffer, []
            if batch:
                try:
                    written = self._store.write(batch)
                    if written is not None:
                        await written
                except BaseException as exc:
                    self._buffer[:0] = batch
                    if isinstance(exc, StoreUnavailable):
                        self.healthy = False
                    raise
                self._durable_seq = batch[-1].seq
                self.healthy = True
        finally:
            self._flush_done = None
            done.set()

    async def aclose(self) -> None:
        """Make everything durable, then close the store. Closing twice is harmless."""
        if self._closed:
            return
        await self.sync()
        self._closed = True
        closed = self._store.close()
        if closed is not None:
            await closed
