"""Transports: one method that carries a request and returns a response.

Every party talks through a :class:`Transport`. :class:`HttpTransport` uses real aiohttp;
:class:`MemoryTransport` hands the request straight to an in-process handler (tests,
virtual time), so both modes run the same code above the transport.
"""

from __future__ import annotations

import abc
import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDictProxy

__all__ = [
    "Handler",
    "HttpTransport",
    "MemoryTransport",
    "Transport",
    "TransportError",
    "WireRequest",
    "WireResponse",
    "header_value",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class WireRequest:
    """An HTTP request as bytes and headers, independent of any HTTP library."""

    method: str = "POST"
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    peer: str = ""  # the sender's address, when a server received it (alerts name it)


@dataclass(frozen=True, slots=True, kw_only=True)
class WireResponse:
    """An HTTP response as bytes and headers."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """Case-insensitive header lookup."""
        return header_value(self.headers, name)


Handler = Callable[[WireRequest], Awaitable[WireResponse]]


def header_value(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive lookup in a plain mapping of headers (exact spelling tried first)."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


class TransportError(Exception):
    """The request could not be carried (connection refused, timeout, reset)."""


class Transport(abc.ABC):
    """Base of every transport: carry one request, return its response."""

    @abc.abstractmethod
    async def send(self, request: WireRequest, *, timeout: float = 30.0) -> WireResponse:
        """Carry ``request``; raise :class:`TransportError` when it cannot be delivered."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook; most transports hold nothing
        """Release connections; idempotent."""


class HttpTransport(Transport):
    """Real HTTP over aiohttp with one pooled session."""

    def __init__(self, *, limit: int = 256) -> None:
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # Idle connections are dropped after 4 s: shorter than the common servers'
            # keep-alive (Node.js and Apache: 5 s), so a delivery never races the server
            # closing the connection it was about to reuse.
            connector = aiohttp.TCPConnector(
                limit=self._limit, limit_per_host=self._limit, keepalive_timeout=4.0
            )
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        return self._session

    async def send(self, request: WireRequest, *, timeout: float = 30.0) -> WireResponse:
        try:
            async with self._client().request(
                request.method,
                request.url,
                headers=dict(request.headers),
                data=request.body if request.body else None,
                timeout=_timeout(timeout),
                allow_redirects=False,
            ) as response:
                body = await response.read()
                return WireResponse(
                    status=response.status, headers=_plain(response.headers), body=body
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TransportError(f"{request.method} {request.url}: {exc!r}") from exc

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


@functools.lru_cache(maxsize=64)
def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=seconds)


def _plain(headers: CIMultiDictProxy[str]) -> dict[str, str]:
    return dict(headers.items())


class MemoryTransport(Transport):
    """Routes each request to the handler mounted for its scheme://host:port, in process."""

    def __init__(self, routes: Mapping[str, Handler] | None = None) -> None:
        self._routes: dict[str, Handler] = {}
        self._down: set[str] = set()
        for base, handler in (routes or {}).items():
            self.mount(base, handler)

    @staticmethod
    def _origin(url: str) -> str:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}"

    def mount(self, base_url: str, handler: Handler) -> None:
        self._routes[self._origin(base_url)] = handler

    def route(self, base_url: str) -> Handler | None:
        """The handler mounted for ``base_url``'s origin (to wrap it in a test)."""
        return self._routes.get(self._origin(base_url))

    def set_down(self, base_url: str, down: bool = True) -> None:
        """Make an origin refuse connections (outage simulation)."""
        origin = self._origin(base_url)
        if down:
            self._down.add(origin)
        else:
            self._down.discard(origin)

    async def send(self, request: WireRequest, *, timeout: float = 30.0) -> WireResponse:
        origin = self._origin(request.url)
        handler = self._routes.get(origin)
        if handler is None or origin in self._down:
            raise TransportError(f"{request.method} {request.url}: connection refused")
        try:
            async with asyncio.timeout(timeout):
                return await handler(request)
        except TimeoutError as exc:
            raise TransportError(f"{request.method} {request.url}: timed out") from exc
