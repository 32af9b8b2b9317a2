"""The portal's dispatcher: sends the outbox's requests, holds those of absent agencies.

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
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agents.conf import ConfUnavailable, EventSink, fetch_conf
from agents.connector import Connector, Reply
from agents.outbox import Item, ItemState, Outbox
from agents.verification import (
    ConnectorError,
    Refused,
    Unreachable,
    VerificationFailed,
)
from gateway.clock import Clock
from gateway.protocol import ProblemCode
from gateway.registry import ConnectionState
from gateway.transport import Transport, TransportError

__all__ = ["AgencyStates", "ConfStates", "DispatchReport", "Dispatcher"]


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
            directory, response = await fetch_conf(
                self._url,
                transport=self._transport,
                now=self._clock.now(),
                ca_certificate=self._ca,
                pinned_key=self._pinned,
                timeout=self._timeout,
            )
            agencies = json.loads(response.body)["agencies"]
            states = {str(a["code"]): str(a["state"]) for a in agencies}
        except TransportError as exc:
            raise ConfUnavailable(f"GET {self._url}: {exc}") from exc
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
        else:
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
