"""The portal's outbox: requests held across a disconnection, delivered exactly once.

The Transparency Portal routes citizens' access-to-information requests (``ati.request``)
to agencies over the gateway. An agency may be off the gateway for weeks (disconnected by
the operator, quarantined, re-enrolling, on the ``direct`` fallback): its requests must
wait for it, survive a restart of the portal, and reach it exactly once when it is back.

:class:`Outbox` keeps the requests in a SQLite file. Each gets its ``jti`` when it is
enqueued, so every send of it, after a refusal, a timeout or a crash of the portal,
carries the same ``jti`` and the same body bytes: within the gateway's memory a re-send is
answered with the original outcome without being delivered again (protocol.md section
8), and a receiver that deduplicates ``(iss, jti)`` (section 6) takes it in once however
late it comes. A request is in one of four states:

- ``pending``: to be sent at the next pass;
- ``held``: its agency, or the portal itself, is not ``connected``; it waits;
- ``delivered``: the receiver's verified answer (status below 400) came back;
- ``failed``: refused for good; ``problem`` says why.

:class:`agents.dispatch.Dispatcher` sends them.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from agents.verification import (
    encode_json,
)
from gateway.clock import Clock
from gateway.protocol import AGENCY_CODE, MESSAGE_ID, SERVICE_CODE

__all__ = ["Item", "ItemState", "Outbox"]

SCHEMA_VERSION: Final = 1

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS outbox ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " receiver TEXT NOT NULL,"
    " service TEXT NOT NULL,"
    " body BLOB NOT NULL,"
    " jti TEXT NOT NULL UNIQUE,"
    " state TEXT NOT NULL CHECK (state IN ('pending', 'held', 'delivered', 'failed')),"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " problem TEXT,"
    " enqueued_at REAL NOT NULL,"
    " updated_at REAL NOT NULL,"
    " delivered_at REAL,"
    " reply_status INTEGER,"
    " reply_body BLOB)",
    "CREATE INDEX IF NOT EXISTS outbox_open ON outbox (receiver, id)"
    " WHERE state IN ('pending', 'held')",
)
_SELECT_BY_JTI: Final = (
    "SELECT id, receiver, service, body, jti, state, attempts, problem, enqueued_at,"
    " updated_at, delivered_at, reply_status, reply_body FROM outbox WHERE jti = ?"
)
_SELECT_BY_ID: Final = (
    "SELECT id, receiver, service, body, jti, state, attempts, problem, enqueued_at,"
    " updated_at, delivered_at, reply_status, reply_body FROM outbox WHERE id = ?"
)
_SELECT_SOME: Final = (
    "SELECT id, receiver, service, body, jti, state, attempts, problem, enqueued_at,"
    " updated_at, delivered_at, reply_status, reply_body FROM outbox"
    " WHERE (?1 IS NULL OR receiver = ?1) AND (?2 IS NULL OR state = ?2) ORDER BY id"
)
_SELECT_OPEN: Final = (
    "SELECT id, receiver, service, body, jti, state, attempts, problem, enqueued_at,"
    " updated_at, delivered_at, reply_status, reply_body FROM outbox"
    " WHERE state IN ('pending', 'held') ORDER BY id"
)
_INSERT: Final = (
    "INSERT INTO outbox (receiver, service, body, jti, state, enqueued_at, updated_at)"
    " VALUES (?, ?, ?, ?, 'pending', ?, ?)"
)
_COUNT: Final = (
    "SELECT receiver, state, count(*) FROM outbox GROUP BY receiver, state ORDER BY receiver"
)
# Each change applies to an open request only: a delivered or failed one never changes.
# The last two parameters are always updated_at and the id.
_BEGIN: Final = (
    "UPDATE outbox SET attempts = attempts + 1, updated_at = ?"
    " WHERE id = ? AND state IN ('pending', 'held')"
)
_DELIVER: Final = (
    "UPDATE outbox SET state = 'delivered', problem = NULL, delivered_at = ?,"
    " reply_status = ?, reply_body = ?, updated_at = ?"
    " WHERE id = ? AND state IN ('pending', 'held')"
)
_HOLD_ONE: Final = (
    "UPDATE outbox SET state = 'held', problem = ?, updated_at = ?"
    " WHERE id = ? AND state IN ('pending', 'held')"
)
_RETRY_LATER: Final = (
    "UPDATE outbox SET state = 'pending', problem = ?, updated_at = ?"
    " WHERE id = ? AND state IN ('pending', 'held')"
)
_FAIL: Final = (
    "UPDATE outbox SET state = 'failed', problem = ?, reply_status = ?, updated_at = ?"
    " WHERE id = ? AND state IN ('pending', 'held')"
)


class ItemState(StrEnum):
    """Where a request stands (see the module's docstring)."""

    PENDING = "pending"
    HELD = "held"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class Item:
    """One request in the outbox, as stored."""

    id: int  # the enqueue order
    to: str
    service: str
    body: bytes
    jti: str  # fixed at enqueue: every send of this request carries it
    state: ItemState
    attempts: int  # sends started (written before each one leaves)
    problem: str | None  # the last refusal or failure, e.g. "403 agency-disconnected: ..."
    enqueued_at: float
    updated_at: float
    delivered_at: float | None = None
    reply_status: int | None = None  # the receiver's status, once an answer verified
    reply_body: bytes | None = None

    @property
    def open(self) -> bool:
        """Still to be delivered (pending or held)."""
        return self.state in (ItemState.PENDING, ItemState.HELD)


def _item(row: tuple[Any, ...]) -> Item:
    (id_, to, service, body, jti, state, attempts, problem, enqueued, updated, delivered,
     reply_status, reply_body) = row  # fmt: skip
    return Item(
        id=id_,
        to=to,
        service=service,
        body=bytes(body),
        jti=jti,
        state=ItemState(state),
        attempts=attempts,
        problem=problem,
        enqueued_at=enqueued,
        updated_at=updated,
        delivered_at=delivered,
        reply_status=reply_status,
        reply_body=None if reply_body is None else bytes(reply_body),
    )


class Outbox:
    """Requests to send, in a SQLite file that outlives the process.

    ``new_jti`` gives each request its message id when it is enqueued (the portal's
    :meth:`Connector.new_jti <agents.connector.Connector.new_jti>`); ``clock`` stamps the
    changes. Every change is one committed transaction (WAL, ``synchronous=FULL``: it
    survives a crash of the process and of the machine).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, clock: Clock, new_jti: Callable[[], str]
    ) -> None:
        self.path = os.fspath(path)
        self._clock = clock
        self._new_jti = new_jti
        self._conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            with self._transaction():
                for statement in _SCHEMA:
                    self._conn.execute(statement)
                (version,) = self._conn.execute(
                    "SELECT max(version) FROM schema_version"
                ).fetchone()
                if version is None:
                    self._conn.execute(
                        "INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,)
                    )
                elif version != SCHEMA_VERSION:
                    raise ValueError(
                        f"{self.path!r} is an outbox of schema version {version}; "
                        f"this pasarela reads version {SCHEMA_VERSION}"
                    )
        except BaseException:
            self._conn.close()
            raise

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    # -- enqueue and read ---------------------------------------------------------------
    def enqueue(self, *, to: str, service: str, body: bytes | Any, jti: str | None = None) -> Item:
        """Add a request (``body`` bytes as they are, anything else as compact JSON).

        With ``jti`` (a message id the caller derives, say, from the request's number),
        enqueueing is idempotent: the same ``jti`` with the same receiver, service and
        body returns the request already there; with anything else it is a ValueError.
        """
        if not AGENCY_CODE.fullmatch(to):
            raise ValueError(f"{to!r} is not an agency code")
        if not SERVICE_CODE.fullmatch(service):
            raise ValueError(f"{service!r} is not a service code")
        payload = body if isinstance(body, bytes) else encode_json(body)
        message_id = self._new_jti() if jti is None else jti
        if not MESSAGE_ID.fullmatch(message_id):
            raise ValueError(f"{message_id!r} is not a message id")
        now = self._clock.now()
        with self._transaction():
            known = self._conn.execute(_SELECT_BY_JTI, (message_id,)).fetchone()
            if known is not None:
                item = _item(known)
                if (item.to, item.service, item.body) != (to, service, payload):
                    raise ValueError(f"jti {message_id} is already used by another request")
                return item
            cursor = self._conn.execute(_INSERT, (to, service, payload, message_id, now, now))
            row_id = cursor.lastrowid
        assert row_id is not None
        return self.require(row_id)

    def get(self, item_id: int) -> Item | None:
        found = self._conn.execute(_SELECT_BY_ID, (item_id,)).fetchone()
        return None if found is None else _item(found)

    def require(self, item_id: int) -> Item:
        item = self.get(item_id)
        if item is None:
            raise KeyError(f"no request {item_id} in the outbox")
        return item

    def find(self, jti: str) -> Item | None:
        """The request enqueued under ``jti``, if any."""
        found = self._conn.execute(_SELECT_BY_JTI, (jti,)).fetchone()
        return None if found is None else _item(found)

    def items(self, *, to: str | None = None, state: ItemState | None = None) -> list[Item]:
        """Requests in enqueue order, of one agency and in one state when given."""
        rows = self._conn.execute(_SELECT_SOME, (to, None if state is None else state.value))
        return [_item(row) for row in rows]

    def open_items(self) -> list[Item]:
        """Every pending or held request, in enqueue order."""
        return [_item(row) for row in self._conn.execute(_SELECT_OPEN)]

    def counts(self) -> dict[str, dict[str, int]]:
        """Requests per agency and state: ``{"AG001": {"pending": 0, "held": 3, ...}}``."""
        out: dict[str, dict[str, int]] = {}
        for receiver, state, count in self._conn.execute(_COUNT):
            out.setdefault(receiver, {s.value: 0 for s in ItemState})[state] = count
        return out

    def totals(self) -> dict[str, int]:
        """Requests per state, over every agency."""
        totals = {s.value: 0 for s in ItemState}
        for states in self.counts().values():
            for state, count in states.items():
                totals[state] += count
        return totals

    # -- state changes (a delivered or failed request never changes again) ---------------
    def _change(self, statement: str, item_id: int, *values: object) -> bool:
        with self._transaction():
            cursor = self._conn.execute(statement, (*values, self._clock.now(), item_id))
        return cursor.rowcount == 1

    def begin(self, item_id: int) -> bool:
        """Count a send of the request, before it leaves (False: it is no longer open)."""
        return self._change(_BEGIN, item_id)

    def deliver(self, item_id: int, *, status: int, body: bytes) -> bool:
        """The receiver's verified answer is in hand: the request is delivered."""
        return self._change(_DELIVER, item_id, self._clock.now(), status, body)

    def hold(self, item_id: int, problem: str) -> bool:
        """Its agency (or the portal) is not connected: wait for it."""
        return self._change(_HOLD_ONE, item_id, problem)

    def retry_later(self, item_id: int, problem: str) -> bool:
        """A passing failure: pending again, sent at a later pass."""
        return self._change(_RETRY_LATER, item_id, problem)

    def fail(self, item_id: int, problem: str, *, status: int | None = None) -> bool:
        """Refused for good (``status``: the receiver's, when it answered)."""
        return self._change(_FAIL, item_id, problem, status)
