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

:class:`Dispatcher` sends. At each pass it reads the agencies' states from the gateway's
signed configuration document (:class:`ConfStates`) and, agency by agency, in enqueue
order: holds the requests of an agency that is not ``connected`` (``direct`` included:
they go over the gateway when it is back) without sending them, and sends the others with
an :class:`agents.connector.Connector` (which retries 429 and 503 itself). What an answer
does to a request:

============================================  ======================================
the send ends with                            the request is
============================================  ======================================
a verified answer, status < 400               ``delivered``
a verified answer, status >= 400              ``failed`` (the receiver refused it)
``403 agency-disconnected``                   ``held`` (and the agency's later ones)
``404 unknown-receiver``, ``403               ``failed``
not-authorized``, any other 4xx about the
request, ``502 bad-response-signature``
a refusal of the portal itself (its key       ``pending``; the pass stops
superseded, revoked or unknown, its clock,
429), ``503 store-unavailable``, no answer,
no configuration document
``503 receiver-unavailable``, an answer       ``pending``; the agency's queue waits
that does not verify                          for the next pass
============================================  ======================================

``unknown-receiver`` fails rather than waits: disconnecting an agency never removes it
from the registry, so an unknown code is a misaddressed request that no reconnection will
fix. A request that has to wait stops its agency's queue for the pass, so no request
overtakes another of the same agency.

A request becomes ``delivered`` only once its verified answer is in hand; every send is
counted in ``attempts`` (written before the request leaves). A portal that crashes between
sending and recording the answer sends it again after its restart with the same ``jti``:
still exactly once. Time, randomness and the transport are injected, as everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agents.conf import ConfUnavailable, EventSink
from agents.connector import Connector, Reply
from agents.verification import (
    ConnectorError,
    Refused,
    Unreachable,
    VerificationFailed,
    encode_json,
    verify_conf,
)
from gateway.clock import Clock
from gateway.protocol import AGENCY_CODE, HEADER_SIGNATURE, MESSAGE_ID, SERVICE_CODE, ProblemCode
from gateway.registry import ConnectionState
from gateway.transport import Transport, TransportError, WireRequest

__all__ = [
    "AgencyStates",
    "ConfStates",
    "DispatchReport",
    "Dispatcher",
    "Item",
    "ItemState",
    "Outbox",
]

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


class AgencyStates(Protocol):
    """Where the dispatcher learns the agencies' connection states: code -> state."""

    def __call__(self) -> Awaitable[Mapping[str, str]]: ...


class ConfStates:
    """Agency states from the gateway's signed configuration document (``GET /v1/conf``).

    The document is verified as :class:`agents.conf.ConfCache` verifies it
    (:func:`~agents.verification.verify_conf`: against ``ca_certificate``, or else the
    first gateway key seen, pinned) and fetched at each call: the states change with the
    operator's actions, not with the document's expiry, and a pass of the dispatcher needs
    them as they are now. (The cache's :class:`~agents.verification.Directory` keeps keys,
    not states.)

    :raises agents.conf.ConfUnavailable: no answer, an error status, or a document that
        does not verify.
    """

    def __init__(
        self,
        *,
        gateway_url: str,
        transport: Transport,
        clock: Clock,
        ca_certificate: x509.Certificate | None = None,
        timeout: float = 5.0,
    ) -> None:
        self._url = f"{gateway_url.rstrip('/')}/v1/conf"
        self._transport = transport
        self._clock = clock
        self._ca = ca_certificate
        self._timeout = timeout
        self._pinned: Ed25519PublicKey | None = None

    async def __call__(self) -> dict[str, str]:
        try:
            response = await self._transport.send(
                WireRequest(method="GET", url=self._url), timeout=self._timeout
            )
        except TransportError as exc:
            raise ConfUnavailable(f"GET {self._url}: {exc}") from exc
        if response.status != 200:
            raise ConfUnavailable(f"GET {self._url} answered HTTP {response.status}")
        try:
            directory = verify_conf(
                body=response.body,
                signature=response.header(HEADER_SIGNATURE),
                now=self._clock.now(),
                ca_certificate=self._ca,
                pinned_key=self._pinned,
            )
            agencies = json.loads(response.body)["agencies"]
            states = {str(a["code"]): str(a["state"]) for a in agencies}
        except VerificationFailed as exc:
            raise ConfUnavailable(f"configuration document: {exc}") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfUnavailable(f"configuration document without agency states: {exc}") from exc
        self._pinned = directory.gateway_key
        return states


@dataclass(slots=True)
class DispatchReport:
    """What one pass did (request ids in the order they were dealt with)."""

    delivered: list[int] = field(default_factory=list)
    held: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    retry: list[int] = field(default_factory=list)  # sent, passing failure: pending
    #: Why the pass stopped early (the configuration document or the gateway unavailable,
    #: the portal rate-limited), or None.
    stopped: str | None = None

    @property
    def sent(self) -> int:
        return len(self.delivered) + len(self.failed) + len(self.retry)


_HOLD: Final = ProblemCode.AGENCY_DISCONNECTED.value
#: Refusals that are final for the message (the gateway remembers a 502 as its outcome).
_FINAL_5XX: Final = frozenset({ProblemCode.BAD_RESPONSE_SIGNATURE.value})
#: Refusals about the sender itself, not the request: its key (distrusted by a new key
#: generation during an incident, revoked, expired), its clock, its rate, or the gateway's
#: log. Every request would get them: they stay pending and the pass stops until the
#: portal (re-enrolled, its clock put right) or the gateway is fit again.
_STOP: Final = frozenset(
    code.value
    for code in (
        ProblemCode.BAD_SIGNATURE,
        ProblemCode.UNKNOWN_KEY,
        ProblemCode.REVOKED_KEY,
        ProblemCode.KEY_EXPIRED,
        ProblemCode.SUPERSEDED_KEY,
        ProblemCode.SENDER_MISMATCH,
        ProblemCode.EXPIRED,
        ProblemCode.CLOCK_SKEW,
        ProblemCode.RATE_LIMITED,
        ProblemCode.STORE_UNAVAILABLE,
    )
)


class Dispatcher:
    """Sends the outbox's requests with ``connector``; holds them while their agency is away.

    ``states`` gives the agencies' connection states (a :class:`ConfStates` for the
    gateway the connector talks to). :meth:`dispatch_once` makes one pass;
    :meth:`run` makes one every ``interval`` seconds, and at once after :meth:`wake`.
    At most ``concurrency`` agencies are served at a time, each queue in enqueue order.
    ``log``, when given, is told of each pass that did something (``outbox-pass``).
    """

    def __init__(
        self,
        outbox: Outbox,
        connector: Connector,
        *,
        states: AgencyStates,
        interval: float = 5.0,
        concurrency: int = 8,
        log: EventSink | None = None,
    ) -> None:
        if interval <= 0 or concurrency < 1:
            raise ValueError("interval must be > 0 and concurrency >= 1")
        self.outbox = outbox
        self.connector = connector
        self._states = states
        self._interval = interval
        self._concurrency = concurrency
        self._log = log
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def sender(self) -> str:
        return self.connector.identity.code

    def counts(self) -> dict[str, dict[str, int]]:
        """The outbox's requests per agency and state (see :meth:`Outbox.counts`)."""
        return self.outbox.counts()

    # -- one pass -------------------------------------------------------------------------
    async def dispatch_once(self) -> DispatchReport:
        """Hold what must wait, send what can go; return what happened."""
        report = DispatchReport()
        queues: dict[str, list[Item]] = {}
        for item in self.outbox.open_items():
            queues.setdefault(item.to, []).append(item)
        if not queues:
            return report
        try:
            states = await self._states()
        except ConnectorError as exc:
            report.stopped = f"agency states unavailable: {exc}"
            return report
        limit = asyncio.Semaphore(self._concurrency)

        async def serve(agency: str, items: list[Item]) -> None:
            async with limit:
                await self._serve(agency, items, states, report)

        await asyncio.gather(*(serve(agency, items) for agency, items in queues.items()))
        if self._log is not None and (report.sent or report.held or report.stopped):
            self._log(
                "outbox-pass",
                delivered=len(report.delivered),
                held=len(report.held),
                failed=len(report.failed),
                retry=len(report.retry),
                stopped=report.stopped,
            )
        return report

    def _away(self, agency: str, states: Mapping[str, str]) -> str | None:
        """Why ``agency``'s requests must wait (None: both ends are connected).

        An agency the document does not list is sent to: the gateway's refusal
        (``unknown-receiver``) fails the request.
        """
        connected = ConnectionState.CONNECTED.value
        own = states.get(self.sender)
        if own != connected:
            return f"{self.sender} is {own or 'not registered'} in the configuration document"
        state = states.get(agency)
        if state is not None and state != connected:
            return f"{agency} is {state} in the configuration document"
        return None

    async def _serve(
        self, agency: str, items: list[Item], states: Mapping[str, str], report: DispatchReport
    ) -> None:
        """One agency's queue, in order, until the first request that must wait."""
        why = self._away(agency, states)
        if why is not None:
            self._hold(items, why, report)
            return
        for index, item in enumerate(items):
            if report.stopped is not None:
                return
            outcome = await self._send(item, report)
            if outcome is ItemState.HELD:
                self._hold(items[index + 1 :], f"held behind {item.jti}", report)
                return
            if outcome is ItemState.PENDING:
                return  # the rest wait for the next pass: nothing overtakes it

    def _hold(self, items: list[Item], why: str, report: DispatchReport) -> None:
        for item in items:
            if item.state is ItemState.PENDING:
                if self.outbox.hold(item.id, why):
                    report.held.append(item.id)
            elif item.problem != why:  # held already: keep the reason current
                self.outbox.hold(item.id, why)

    async def _send(self, item: Item, report: DispatchReport) -> ItemState:
        """Send one request; record and return what became of it."""
        outbox = self.outbox
        if not outbox.begin(item.id):  # settled meanwhile (by another dispatcher): skip it
            return outbox.require(item.id).state
        try:
            reply = await self.connector.send(
                to=item.to, service=item.service, body=item.body, jti=item.jti
            )
        except Refused as exc:
            return self._refused(item, exc, report)
        except (Unreachable, ConfUnavailable) as exc:
            outbox.retry_later(item.id, f"{type(exc).__name__}: {exc}")
            report.retry.append(item.id)
            report.stopped = f"gateway unavailable: {exc}"
            return ItemState.PENDING
        except ConnectorError as exc:  # the answer does not verify, or another such failure
            outbox.retry_later(item.id, f"{type(exc).__name__}: {exc}")
            report.retry.append(item.id)
            return ItemState.PENDING
        return self._answered(item, reply, report)

    def _answered(self, item: Item, reply: Reply, report: DispatchReport) -> ItemState:
        if reply.status < 400:
            self.outbox.deliver(item.id, status=reply.status, body=reply.body)
            report.delivered.append(item.id)
            return ItemState.DELIVERED
        problem = f"{item.to} answered {reply.status}: {_problem_text(reply.body)}"
        self.outbox.fail(item.id, problem, status=reply.status)
        report.failed.append(item.id)
        return ItemState.FAILED

    def _refused(self, item: Item, exc: Refused, report: DispatchReport) -> ItemState:
        problem = f"{exc.status} {exc.code}: {exc.detail}"
        if exc.code == _HOLD:
            self.outbox.hold(item.id, problem)
            report.held.append(item.id)
            return ItemState.HELD
        if exc.code not in _STOP and (exc.status < 500 or exc.code in _FINAL_5XX):
            self.outbox.fail(item.id, problem)
            report.failed.append(item.id)
            return ItemState.FAILED
        self.outbox.retry_later(item.id, problem)
        report.retry.append(item.id)
        if exc.code in _STOP:
            report.stopped = problem
        return ItemState.PENDING

    # -- the loop -------------------------------------------------------------------------
    def wake(self) -> None:
        """Make :meth:`run` pass now (after an enqueue) instead of at its next interval."""
        self._wakeup.set()

    async def run(self) -> None:
        """Pass, then wait ``interval`` seconds or a :meth:`wake`; forever (an unexpected
        error, such as a disk that cannot be written, ends it: the task's exception)."""
        while True:
            self._wakeup.clear()
            await self.dispatch_once()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wakeup.wait()

    def start(self) -> asyncio.Task[None]:
        """Run :meth:`run` as a task of the running loop (once)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run())
        return self._task

    async def stop(self) -> None:
        """Cancel the task :meth:`start` made and wait for it (a pass in flight is cut:
        its request stays open and is sent again, with its ``jti``, at the next start)."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _problem_text(body: bytes) -> str:
    """A receiver's refusal in a line: its problem ``type`` code and ``detail``."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        document = None
    if isinstance(document, dict):
        kind = str(document.get("type", "")).rsplit(":", 1)[-1]
        detail = document.get("detail")
        return f"{kind}: {detail}" if isinstance(detail, str) else kind or "no detail"
    return body[:200].decode(errors="replace") or "no detail"
