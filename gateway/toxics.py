"""Toxics: Toxiproxy-style faults on in-process links, for rehearsals in virtual time.

:class:`ToxicTransport` wraps another :class:`~gateway.transport.Transport`. Each request
travels on a *link* (``link_of(request)``, e.g. "AG001->gateway"); a link carries named
*toxics* in insertion order, as a Toxiproxy proxy does. An exchange has two *streams*:
``upstream`` carries the request (client -> server), ``downstream`` the response (server
-> client). A toxic acts on one stream or on both, and on each stream it affects an
exchange with probability ``toxicity`` (an independent draw per stream).

Kinds: ``latency`` and ``bandwidth`` delay the data, ``slicer`` cuts it into late slices,
``timeout`` holds it and then closes the connection, ``reset`` resets the connection,
``down`` refuses it. A downstream fault means the server *did* process the request and
only the response was lost, which is exactly what a retry policy must survive.

Every delay is an ``asyncio.sleep`` (virtual in :mod:`scenarios.virtual`) and every draw
comes from the injected ``rng``, so a run is deterministic for a seed. With no toxic on
any link, :meth:`ToxicTransport.send` is one check and a straight call to ``inner``.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from gateway.transport import Transport, TransportError, WireRequest, WireResponse

__all__ = ["Stream", "Toxic", "ToxicKind", "ToxicTransport"]


class Stream(StrEnum):
    """Direction of the data a toxic acts on (Toxiproxy's terms)."""

    UPSTREAM = "upstream"  # the request, client -> server
    DOWNSTREAM = "downstream"  # the response, server -> client
    BOTH = "both"

    def covers(self, stream: Stream) -> bool:
        return self is Stream.BOTH or self is stream


class ToxicKind(StrEnum):
    """What a toxic does to the data it catches (Toxiproxy's toxic types)."""

    LATENCY = "latency"  # latency_ms +/- jitter_ms (uniform), then the data passes
    BANDWIDTH = "bandwidth"  # rate_kbps kilobytes per second
    SLICER = "slicer"  # slices of average_size +/- size_variation bytes, delay_us after each
    TIMEOUT = "timeout"  # held; closed after timeout_ms (0: held until the caller gives up)
    RESET = "reset"  # connection reset by peer after timeout_ms
    DOWN = "down"  # connection refused at once


@dataclass(frozen=True, slots=True, kw_only=True)
class Toxic:
    """One fault; only the fields of its kind matter, the others stay 0."""

    kind: ToxicKind
    stream: Stream = Stream.BOTH
    toxicity: float = 1.0  # probability that an exchange is affected, per stream
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    rate_kbps: float = 0.0
    timeout_ms: float = 0.0
    average_size: int = 0
    size_variation: int = 0
    delay_us: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.toxicity <= 1.0:
            raise ValueError(f"toxicity must be within [0, 1], got {self.toxicity}")
        for name in ("latency_ms", "jitter_ms", "rate_kbps", "timeout_ms", "delay_us"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        for name in ("average_size", "size_variation"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.kind is ToxicKind.BANDWIDTH and self.rate_kbps <= 0:
            raise ValueError("a bandwidth toxic needs rate_kbps > 0")
        if self.kind is ToxicKind.SLICER:
            if self.average_size <= 0:
                raise ValueError("a slicer toxic needs average_size > 0")
            if self.size_variation >= self.average_size:
                raise ValueError("a slicer toxic needs size_variation < average_size")


def _effect(toxic: Toxic, stream: Stream, size: int, rng: random.Random) -> tuple[float, str]:
    """What ``toxic`` does to ``size`` bytes on ``stream``: (delay in s, failure or "").

    The delay is ``math.inf`` when the data is held until the caller's timeout.
    """
    kind = toxic.kind
    if kind is ToxicKind.LATENCY:
        jitter = rng.uniform(-toxic.jitter_ms, toxic.jitter_ms) if toxic.jitter_ms else 0.0
        return max(0.0, toxic.latency_ms + jitter) / 1e3, ""
    if kind is ToxicKind.BANDWIDTH:
        return size / (toxic.rate_kbps * 1000), ""
    if kind is ToxicKind.SLICER:
        slices, left = 0, size
        while left > 0:
            variation = toxic.size_variation
            left -= toxic.average_size + (rng.randint(-variation, variation) if variation else 0)
            slices += 1
        return slices * toxic.delay_us / 1e6, ""
    if kind is ToxicKind.TIMEOUT:
        return (toxic.timeout_ms / 1e3 if toxic.timeout_ms else math.inf), "timed out"
    if kind is ToxicKind.RESET:
        return toxic.timeout_ms / 1e3, "connection reset by peer"
    refused = stream is Stream.UPSTREAM  # DOWN: downstream, the server already answered
    return 0.0, "connection refused" if refused else "connection reset"


class ToxicTransport(Transport):
    """Wraps another Transport; applies the toxics of the link each request travels on."""

    def __init__(
        self, inner: Transport, *, link_of: Callable[[WireRequest], str | None], rng: random.Random
    ) -> None:
        self.inner = inner
        self._link_of = link_of
        self._rng = rng
        self._links: dict[str, dict[str, Toxic]] = {}  # only links with at least one toxic
        self.affected: Counter[str] = Counter()  # toxic name -> exchanges it affected

    def add(self, link: str, name: str, toxic: Toxic) -> None:
        """Put ``toxic`` on ``link`` under ``name``, after the toxics already there."""
        toxics = self._links.setdefault(link, {})
        if name in toxics:
            raise ValueError(f"link {link!r} already has a toxic named {name!r}")
        toxics[name] = toxic

    def remove(self, link: str, name: str) -> None:
        """Take toxic ``name`` off ``link`` (KeyError if absent); exchanges in flight keep it."""
        toxics = self._links.get(link, {})
        if name not in toxics:
            raise KeyError(f"link {link!r} has no toxic named {name!r}")
        del toxics[name]
        if not toxics:
            del self._links[link]

    def toxics(self, link: str) -> Mapping[str, Toxic]:
        """A read-only view of ``link``'s toxics, in the order they apply."""
        return MappingProxyType(self._links.get(link, {}))

    @property
    def active(self) -> bool:
        """Whether any link has a toxic."""
        return bool(self._links)

    async def send(self, request: WireRequest, *, timeout: float = 30.0) -> WireResponse:
        if not self._links:  # the hot path: one check
            return await self.inner.send(request, timeout=timeout)
        link = self._link_of(request)
        toxics = self._links.get(link) if link is not None else None
        if not toxics:
            return await self.inner.send(request, timeout=timeout)
        chain = tuple(toxics.items())  # a snapshot: add/remove never disturb this exchange
        hit: set[str] = set()
        try:
            async with asyncio.timeout(timeout):
                await self._pass(chain, Stream.UPSTREAM, request, len(request.body), hit)
                response = await self.inner.send(request, timeout=timeout)
                await self._pass(chain, Stream.DOWNSTREAM, request, len(response.body), hit)
                return response
        except TimeoutError as exc:
            raise TransportError(f"{request.method} {request.url}: timed out") from exc
        finally:
            self.affected.update(hit)

    async def _pass(
        self,
        chain: tuple[tuple[str, Toxic], ...],
        stream: Stream,
        request: WireRequest,
        size: int,
        hit: set[str],
    ) -> None:
        """Carry ``size`` bytes on ``stream`` through the toxics that cover it and hit."""
        for name, toxic in chain:
            if not toxic.stream.covers(stream) or not self._hits(toxic.toxicity):
                continue
            hit.add(name)
            delay, failure = _effect(toxic, stream, size, self._rng)
            if delay == math.inf:
                await asyncio.get_running_loop().create_future()  # until the caller's timeout
            elif delay > 0:
                await asyncio.sleep(delay)
            if failure:
                message = f"{request.method} {request.url}: {failure} (toxic {name!r}, {stream})"
                raise TransportError(message)

    def _hits(self, toxicity: float) -> bool:
        if toxicity >= 1.0:
            return True
        return toxicity > 0.0 and self._rng.random() < toxicity

    async def aclose(self) -> None:
        await self.inner.aclose()
