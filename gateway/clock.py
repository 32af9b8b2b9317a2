"""Injected time and randomness.

Nothing in ``gateway/`` or ``agents/`` reads the wall clock or the OS random source
directly: it is handed a :class:`Clock` and a :class:`Randomness`. Live mode uses
:class:`SystemClock` and :class:`SystemRandomness`; tests and virtual time use
:class:`ManualClock` and :class:`SeededRandomness`, which make runs repeatable.
"""

from __future__ import annotations

import random
import secrets
import time
from typing import Protocol

__all__ = [
    "EPOCH_2015",
    "Clock",
    "ManualClock",
    "Randomness",
    "SeededRandomness",
    "SystemClock",
    "SystemRandomness",
]


class Clock(Protocol):
    """A source of the current time in seconds since the Unix epoch."""

    def now(self) -> float: ...


class Randomness(Protocol):
    """A source of random bytes (keys, serial numbers, message ids)."""

    def token_bytes(self, n: int) -> bytes: ...


class SystemClock:
    """The wall clock (live mode)."""

    def now(self) -> float:
        return time.time()


#: 2015-01-01T00:00:00Z: where tests and rehearsals of the 2015 incident start by default.
EPOCH_2015 = 1_420_070_400.0


class ManualClock:
    """A clock that only moves when told to (tests, virtual time)."""

    def __init__(self, start: float = EPOCH_2015) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._now += seconds

    def set(self, when: float) -> None:
        if when < self._now:
            raise ValueError("a clock cannot go backwards")
        self._now = when


class SystemRandomness:
    """The operating system's CSPRNG (live mode)."""

    def token_bytes(self, n: int) -> bytes:
        return secrets.token_bytes(n)


class SeededRandomness:
    """Deterministic bytes from a seed (tests, virtual time). Never for live keys."""

    def __init__(self, seed: int | str) -> None:
        self._random = random.Random(seed)  # noqa: S311 - determinism is the point here

    def token_bytes(self, n: int) -> bytes:
        return self._random.randbytes(n)
