"""Connection guard: a deadline for request headers and caps on open connections.

aiohttp reads request headers with no deadline of its own, so a *slowloris* client
(many connections, each sending header bytes a few at a time and never finishing)
can hold every connection slot of the server. The guard closes such connections.

The rules, with the defaults of :class:`GuardPolicy`:

* **Header deadline** (``header_timeout`` = 10 s). A new connection must deliver a
  complete request line and headers within 10 s of being accepted; one that sends
  nothing at all is closed at the same moment. On a kept-alive connection the clock
  of the next request starts at its *first byte*, and from then on the headers must
  be complete within 10 s. When the deadline passes the connection is closed: with
  ``408 Request Timeout`` if some of the request arrived (and the 408 fits in the
  socket buffer at once), silently if nothing did.
* **Idle keep-alive** (``keepalive_timeout`` = 15 s). Between a response and the
  first byte of the next request, a kept-alive connection may stay idle for 15 s
  (aiohttp's own keep-alive timer, set from the policy): an idle connection costs a
  socket and no work, and is bounded by the caps below. A header deadline from the
  end of each response would cut well-behaved clients that pool connections, which
  is why idle time and header time are separate clocks.
* **Caps** (``max_connections_per_ip`` = 64, ``max_connections`` = 4096). A new
  connection beyond either cap is closed at once, before any byte is read. IPv6
  peers are counted per /64 network (one host usually owns a whole /64), IPv4 per
  address; IPv4-mapped IPv6 addresses count as their IPv4 address.

What the guard does not cover: once the headers are complete, the body and the
handler's work are the handler's business (a body trickled slowly is not cut by the
header clock; aiohttp's ``client_max_size`` and the handler's own timeouts bound it).
Bytes of a pipelined next request that arrive while a request is still being handled
start their clock at the next byte that arrives after the response; if none follows,
the keep-alive timer closes the connection.

So under the defaults one IP holds at most 64 connections and the server 4096, none of
them for longer than 10 s without a complete request head, or 15 s idle after a
response. (Without the guard, an unfinished head on a new connection was bounded only
by aiohttp's keep-alive default of 3630 s, and that only in releases with
aio-libs/aiohttp#13681; before it, not at all.)
Measured on loopback (``tests/gateway/test_guard.py``, deadline 0.5 s, 200 attacking
connections from one IP sending a header byte every 0.2 s, five runs, aiohttp 3.14):
every attacking connection was closed 0.497-0.508 s after it opened, all 200 were gone
0.53 s after the attack began, and a normal client opening a new connection every
20 ms was answered every time during the attack: 24 requests, median 0.9 ms, worst
24-31 ms (the worst while the 200 attackers connected, in the same event loop).

The rules are the sans-I/O :class:`HeaderClock` and :class:`ConnectionGuard`; the
aiohttp shell is :class:`GuardedRequestHandler` (a ``RequestHandler`` that feeds them
and owns the timer), :class:`GuardedServer` and :class:`GuardedAppRunner`, a drop-in
``web.AppRunner``::

    runner = GuardedAppRunner(app, policy=GuardPolicy(), on_event=count_event)
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from gateway.protocol import PROBLEM_CONTENT_TYPE, ProblemCode, problem_document

__all__ = [
    "ConnectionGuard",
    "GuardEventKind",
    "GuardPolicy",
    "GuardStats",
    "GuardUnsupportedError",
    "GuardedAppRunner",
    "GuardedRequestHandler",
    "GuardedServer",
    "HeaderClock",
    "peer_key",
]

GuardEventKind = Literal["slow-headers", "too-many-connections-ip", "too-many-connections"]

_log = logging.getLogger(__name__)

_TIMEOUT_BODY = b"request headers did not arrive in time\n"
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"Connection: close\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: %d\r\n"
    b"\r\n" % len(_TIMEOUT_BODY)
) + _TIMEOUT_BODY


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardPolicy:
    """How long a client may take over its request headers, and how many connections it may hold.

    ``header_timeout``: seconds from a new connection's start, or from the first byte of
    a next request on a kept-alive connection, until the request line and all headers
    have arrived. ``keepalive_timeout``: seconds a kept-alive connection may stay idle
    after a response. ``max_connections_per_ip`` and ``max_connections``: open
    connections from one IP (IPv6: one /64) and in the whole server.

    aiohttp releases with aio-libs/aiohttp#13681 (3.14 is one) also close a new
    connection still without a request head at ``keepalive_timeout``, so there a
    ``header_timeout`` above the keep-alive timeout is in effect the keep-alive timeout.
    """

    header_timeout: float = 10.0
    max_connections_per_ip: int = 64
    max_connections: int = 4096
    keepalive_timeout: float = 15.0

    def __post_init__(self) -> None:
        for name in ("header_timeout", "keepalive_timeout"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
        for name in ("max_connections_per_ip", "max_connections"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if self.max_connections_per_ip > self.max_connections:
            raise ValueError(
                f"max_connections_per_ip ({self.max_connections_per_ip}) exceeds "
                f"max_connections ({self.max_connections})"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardStats:
    """Counters of one guard since it was made.

    ``refused_per_ip``: new connections closed because their IP held the per-IP cap;
    ``refused_total``: new connections closed because the server held ``max_connections``.
    """

    connections_open: int
    closed_slow_headers: int
    refused_per_ip: int
    refused_total: int


class GuardUnsupportedError(RuntimeError):
    """The installed aiohttp lacks a request-handler attribute the guard relies on."""


def peer_key(peername: object) -> str | None:
    """The key a peer's connections are counted under: its IPv4 address or its IPv6 /64.

    ``None`` for a peer without an IP address (a Unix socket): only the server-wide cap
    applies to it.
    """
    if not isinstance(peername, tuple) or not peername or not isinstance(peername[0], str):
        return None
    try:
        address = ipaddress.ip_address(peername[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address.packed, 64), strict=False))
    return str(address)


@dataclass(slots=True)
class HeaderClock:
    """When the request head a connection owes must have arrived (``None``: no deadline).

    The shell reports what happens on the connection, with the event loop's ``now``, and
    arms a timer for :attr:`deadline`.
    """

    timeout: float
    deadline: float | None = None
    started: bool = False
    """Some bytes of the awaited head have arrived (a 408 is owed, not silence)."""

    def opened(self, now: float) -> None:
        """A new connection: its first request head is due ``timeout`` from now."""
        self.deadline = now + self.timeout
        self.started = False

    def received(self, now: float, *, awaiting_request: bool) -> None:
        """Bytes arrived that did not complete a head.

        They start the clock if the server was waiting for a request; otherwise they
        are a body, or a pipelined head the server is not reading yet.
        """
        if self.deadline is None and awaiting_request:
            self.deadline = now + self.timeout
        if self.deadline is not None:
            self.started = True

    def head_completed(self) -> None:
        """A request line and its headers were parsed: the request is the handler's now."""
        self.deadline = None
        self.started = False

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline


class ConnectionGuard:
    """Admission of connections by the caps, and the counters of what was refused or cut."""

    def __init__(
        self,
        policy: GuardPolicy,
        *,
        on_event: Callable[[GuardEventKind], None] | None = None,
    ) -> None:
        self.policy = policy
        self._on_event = on_event
        self._open = 0
        self._open_by_peer: dict[str, int] = {}
        self._closed_slow_headers = 0
        self._refused_per_ip = 0
        self._refused_total = 0

    @property
    def stats(self) -> GuardStats:
        return GuardStats(
            connections_open=self._open,
            closed_slow_headers=self._closed_slow_headers,
            refused_per_ip=self._refused_per_ip,
            refused_total=self._refused_total,
        )

    def admit(self, peer: str | None) -> GuardEventKind | None:
        """Count a new connection in, or say which cap refuses it (then nothing is counted)."""
        if self._open >= self.policy.max_connections:
            self._refused_total += 1
            return self._emit("too-many-connections")
        if peer is not None:
            held = self._open_by_peer.get(peer, 0)
            if held >= self.policy.max_connections_per_ip:
                self._refused_per_ip += 1
                return self._emit("too-many-connections-ip")
            self._open_by_peer[peer] = held + 1
        self._open += 1
        return None

    def release(self, peer: str | None) -> None:
        """An admitted connection closed."""
        self._open -= 1
        if peer is not None:
            held = self._open_by_peer.pop(peer) - 1
            if held:
                self._open_by_peer[peer] = held

    def header_deadline_passed(self) -> None:
        """A connection was closed because its request head did not arrive in time."""
        self._closed_slow_headers += 1
        self._emit("slow-headers")

    def _emit(self, kind: GuardEventKind) -> GuardEventKind:
        if self._on_event is not None:
            try:
                self._on_event(kind)
            except Exception:  # a failing metrics hook must not break admission
                _log.exception("guard on_event callback failed for %s", kind)
        return kind


#: Longest request line or header field the guarded servers parse.
MAX_HEADER_BYTES = 16_384


class GuardedRequestHandler(RequestHandler):
    """aiohttp's HTTP/1 protocol with the header deadline and the connection caps."""

    __slots__ = ("_admitted", "_event_loop", "_guard", "_header_clock", "_peer", "_timer")

    def __init__(
        self,
        manager: web.Server,
        *,
        loop: asyncio.AbstractEventLoop,
        guard: ConnectionGuard,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        # Private attributes of aiohttp's RequestHandler read below (3.9 to 3.14 have them):
        # _request_count grows when a head is parsed; _waiter is pending while the
        # handler waits for the next request. Fail loudly rather than guard nothing.
        for name in ("_request_count", "_waiter"):
            if not hasattr(self, name):
                raise GuardUnsupportedError(f"aiohttp RequestHandler has no {name}")
        self._guard = guard
        self._event_loop = loop
        self._header_clock = HeaderClock(guard.policy.header_timeout)
        self._peer: str | None = None
        self._admitted = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._peer = peer_key(transport.get_extra_info("peername"))
        refusal = self._guard.admit(self._peer)
        super().connection_made(transport)
        if refusal is not None:
            self.force_close()
            return
        self._admitted = True
        self._header_clock.opened(self._event_loop.time())
        self._sync_timer()

    def data_received(self, data: bytes) -> None:
        awaiting_request = self._waiter is not None and not self._waiter.done()
        heads_before = self._request_count
        super().data_received(data)
        if not self._admitted:
            return
        if self._request_count != heads_before:
            self._header_clock.head_completed()
        elif data:
            self._header_clock.received(self._event_loop.time(), awaiting_request=awaiting_request)
        self._sync_timer()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> StreamResponse:
        """What aiohttp's own parser refuses (a header too long, two Content-Types, an
        encoding it cannot decode) is answered as problem+json too, not text/plain."""
        if not 400 <= status < 500:
            return super().handle_error(request, status, exc, message)
        code = ProblemCode.PAYLOAD_TOO_LARGE if status == 413 else ProblemCode.MALFORMED
        detail = f"the HTTP request could not be parsed: {exc or message or status}"[:300]
        body = json.dumps(problem_document(code, detail)).encode()
        response = web.Response(
            status=code.status, body=body, content_type=PROBLEM_CONTENT_TYPE.split(";")[0]
        )
        response.force_close()
        return response

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._admitted:
            self._admitted = False
            self._guard.release(self._peer)
        super().connection_lost(exc)

    def _sync_timer(self) -> None:
        deadline = self._header_clock.deadline
        if self._timer is not None:
            if self._timer.when() == deadline:
                return
            self._timer.cancel()
            self._timer = None
        if deadline is not None and self.transport is not None:
            self._timer = self._event_loop.call_at(deadline, self._header_deadline_reached)

    def _header_deadline_reached(self) -> None:
        self._timer = None
        if not self._header_clock.expired(self._event_loop.time()):
            self._sync_timer()  # the loop may run a timer a hair early
            return
        self._header_clock.deadline = None
        self._guard.header_deadline_passed()
        transport = self.transport
        if transport is not None and self._header_clock.started:
            transport.write(_REQUEST_TIMEOUT)
            if transport.get_write_buffer_size():
                transport.abort()  # the client is not reading: no waiting to flush the 408
        self.force_close()


class GuardedServer(web.Server):
    """A ``web.Server`` whose connections are :class:`GuardedRequestHandler`."""

    def __init__(
        self,
        handler: Any,
        *,
        guard: ConnectionGuard,
        loop: asyncio.AbstractEventLoop | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, loop=loop, **kwargs)
        self.guard = guard

    @classmethod
    def around(cls, server: web.Server, *, guard: ConnectionGuard) -> GuardedServer:
        """The same server (handler, request factory, handler arguments), guarded."""
        kwargs = dict(server._kwargs)  # the handler arguments, as aiohttp passes them on
        if hasattr(server, "handler_cancellation"):  # aiohttp >= 3.9
            kwargs["handler_cancellation"] = server.handler_cancellation
        return cls(
            server.request_handler,
            guard=guard,
            request_factory=server.request_factory,
            loop=server._loop,
            **kwargs,
        )

    def __call__(self) -> GuardedRequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, guard=self.guard, **self._kwargs)


class GuardedAppRunner(web.AppRunner):
    """A ``web.AppRunner`` that serves through a :class:`ConnectionGuard` of ``policy``.

    The keep-alive timeout is the policy's; pass it there, not as ``keepalive_timeout``.
    """

    __slots__ = ("_guard",)

    def __init__(
        self,
        app: web.Application,
        *,
        policy: GuardPolicy | None = None,
        on_event: Callable[[GuardEventKind], None] | None = None,
        **kwargs: Any,
    ) -> None:
        if "keepalive_timeout" in kwargs:
            raise TypeError("set the keep-alive timeout in GuardPolicy.keepalive_timeout")
        policy = policy or GuardPolicy()
        # A Pasarela-Signature may be 8,192 characters (protocol.md, limits): aiohttp's
        # default of 8,190 bytes per header would refuse the longest before the gateway.
        kwargs.setdefault("max_field_size", MAX_HEADER_BYTES)
        kwargs.setdefault("max_line_size", MAX_HEADER_BYTES)
        super().__init__(app, keepalive_timeout=policy.keepalive_timeout, **kwargs)
        self._guard = ConnectionGuard(policy, on_event=on_event)

    @property
    def guard(self) -> ConnectionGuard:
        return self._guard

    @property
    def stats(self) -> GuardStats:
        return self._guard.stats

    async def _make_server(self) -> web.Server:
        return GuardedServer.around(await super()._make_server(), guard=self._guard)
