"""Virtual time for asyncio: months of a simulated world in seconds, deterministically.

In virtual mode every party (gateway, agencies, portal, citizens) runs in one event loop
and talks through an in-memory transport. :class:`VirtualTimeLoop` is a stock selector
loop whose :meth:`~VirtualTimeLoop.time` is a number it owns: when nothing is ready to
run, the loop jumps straight to the next timer's deadline instead of sleeping, so
``sleep``, ``call_later``/``call_at``, ``wait_for`` and ``timeout`` all run on virtual
time. Parties read it through :class:`LoopClock` (a :class:`gateway.clock.Clock`).

How: the loop is handed a selector that never blocks. Where the base loop would wait
``timeout`` seconds for I/O, the selector calls back into the loop, which sets its time to
the earliest timer's exact deadline (no float drift, no cap at a day per wait) and then
polls the real selector without waiting, so ``call_soon_threadsafe`` callbacks are still
picked up. Waiting with nothing scheduled (``timeout is None``) would mean waiting
forever: it raises :class:`VirtualTimeDeadlock` instead of hanging.

Differences from a live loop, on purpose:

* Timers due at the same instant run in the order they were scheduled (asyncio leaves
  that order undefined because its heap is not stable); a simulation needs determinism.
* Single-threaded. Virtual time never waits for another thread: a callback posted with
  ``call_soon_threadsafe`` runs at the loop's next iteration, whatever virtual instant
  that is, and ``run_in_executor``/``to_thread`` results are not awaited in virtual time
  (with nothing else scheduled, waiting for one is a deadlock).
* No real I/O. Sockets would see real time; virtual mode keeps every party in process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import selectors
from collections.abc import Callable, Coroutine
from contextvars import Context
from typing import Any, TypeVar, TypeVarTuple

from gateway.clock import Clock

__all__ = ["LoopClock", "VirtualTimeDeadlock", "VirtualTimeLoop", "run_virtual", "sleep_until"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class VirtualTimeDeadlock(RuntimeError):
    """Nothing is left to run and nothing is scheduled: waiting would last forever."""


class _Deadline(float):
    """A timer deadline that breaks ties by scheduling order (heapq is not stable)."""

    __slots__ = ("key",)
    key: tuple[float, int]

    def __new__(cls, when: float, seq: int) -> _Deadline:
        deadline = super().__new__(cls, when)
        deadline.key = (float(when), seq)
        return deadline

    def __lt__(self, other: float) -> bool:  # the heap's only comparison; kept cheap
        if type(other) is _Deadline:
            return self.key < other.key
        return float.__lt__(self, other)


class _NonBlockingSelector(selectors.DefaultSelector):
    """The platform selector, except that waiting is replaced by ``on_wait(timeout)``."""

    def __init__(self, on_wait: Callable[[float | None], None]) -> None:
        super().__init__()
        self._on_wait = on_wait

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None or timeout > 0:
            self._on_wait(timeout)
        return super().select(0)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose time() is virtual: when nothing is ready to run, it jumps
    straight to the next scheduled timer instead of sleeping."""

    _scheduled: list[asyncio.TimerHandle]  # the base loop's timer heap, read to jump exactly

    def __init__(self) -> None:
        self._now = 0.0
        self._sequence = itertools.count()
        super().__init__(_NonBlockingSelector(self._jump))

    def time(self) -> float:
        """Virtual monotonic seconds since the loop was created, starting at 0.0."""
        return self._now

    # The base loop runs the timers due before time() + _clock_resolution, a constant 1 ns
    # for the monotonic clock. Virtual time never ticks on its own: past ~194 days 1 ns is
    # under half an ulp, time() + 1 ns == time(), and a due timer would never run. One ulp
    # makes the rule exact at every magnitude: a timer runs once time() >= its deadline.
    @property
    def _clock_resolution(self) -> float:
        return math.ulp(self._now)

    @_clock_resolution.setter
    def _clock_resolution(self, _monotonic_resolution: float) -> None:
        """Ignore the base loop's setting: virtual time has no clock to measure."""

    @property
    def advanced(self) -> float:
        """Total virtual seconds jumped (only jumps move time, so this equals time())."""
        return self._now

    def call_at(
        self,
        when: float,
        callback: Callable[[*Ts], object],
        *args: *Ts,
        context: Context | None = None,
    ) -> asyncio.TimerHandle:
        """Like the base call_at; timers due at the same instant run first-scheduled first."""
        return super().call_at(
            _Deadline(when, next(self._sequence)), callback, *args, context=context
        )

    def _jump(self, timeout: float | None) -> None:
        """Where the base loop would wait for ``timeout`` seconds, move time instead."""
        if timeout is None:
            raise VirtualTimeDeadlock(self._deadlock_message())
        # timeout > 0 only when nothing is ready and a live timer heads the heap.
        target = self._scheduled[0].when() if self._scheduled else self._now + timeout
        self._now = max(self._now, float(target))

    def _deadlock_message(self) -> str:
        waiting = sorted(
            f"{task.get_name()} ({getattr(task.get_coro(), '__qualname__', '?')})"
            for task in asyncio.all_tasks(self)
        )
        return (
            "nothing left to run and nothing scheduled at virtual time "
            f"{self._now:.6f} s; waiting forever: {', '.join(waiting) or 'no tasks'}"
        )


class LoopClock:
    """Wall-clock-like time for parties in virtual time: epoch + the loop's virtual time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, epoch: float) -> None:
        self._loop = loop
        self._epoch = epoch

    def now(self) -> float:
        return self._epoch + self._loop.time()


def run_virtual(main: Callable[[LoopClock], Coroutine[Any, Any, T]], *, epoch: float) -> T:
    """Run ``main(clock)`` to completion in a fresh VirtualTimeLoop and close the loop.

    Call it from synchronous code. The global event loop and policy are left untouched.
    """
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main(LoopClock(loop, epoch=epoch)))
    finally:
        try:
            _cancel_leftover_tasks(loop)
            with contextlib.suppress(VirtualTimeDeadlock):  # an async generator that hangs
                loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


def _cancel_leftover_tasks(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    with contextlib.suppress(VirtualTimeDeadlock):  # a task that ignores its cancellation
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler(
                {
                    "message": "unhandled exception during run_virtual() shutdown",
                    "exception": task.exception(),
                    "task": task,
                }
            )


async def sleep_until(clock: Clock, when: float) -> None:
    """Sleep until ``clock.now() >= when`` (epoch seconds); return at once if already past.

    Any clock that advances with the running loop works: LoopClock in virtual mode,
    SystemClock live. Waking is re-checked, so float rounding never returns early.
    """
    if math.isnan(when):
        raise ValueError("cannot sleep until NaN")
    while (remaining := when - clock.now()) > 0:  # noqa: ASYNC110 - polls a clock, not a flag
        await asyncio.sleep(remaining)
