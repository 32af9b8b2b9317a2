"""Tests for scenarios.virtual: an asyncio loop on virtual time."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from gateway.clock import SystemClock
from scenarios.virtual import (
    LoopClock,
    VirtualTimeDeadlock,
    VirtualTimeLoop,
    run_virtual,
    sleep_until,
)

EPOCH = 1_420_070_400.0  # 2015-01-01T00:00:00Z
DAY = 86_400.0
T = TypeVar("T")


def _run_guarded(main: Callable[[LoopClock], Coroutine[Any, Any, T]]) -> T:
    """Run run_virtual(main) in a thread, so a hang fails the test instead of stalling CI."""
    results: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            results.append(run_virtual(main, epoch=EPOCH))
        except BaseException as exc:  # handed back to the test thread
            errors.append(exc)

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "run_virtual hung in real time"
    if errors:
        raise errors[0]
    return results[0]


def test_month_long_sleep_takes_no_real_time() -> None:
    """A 30-day asyncio.sleep returns at once and moves the clock by exactly 30 days."""

    async def main(clock: LoopClock) -> tuple[float, float]:
        before = clock.now()
        await asyncio.sleep(30 * DAY)
        return before, clock.now()

    started = time.perf_counter()
    before, after = run_virtual(main, epoch=EPOCH)
    assert time.perf_counter() - started < 1.0
    assert before == EPOCH
    assert after - before == pytest.approx(30 * DAY, abs=1e-6)


def test_loop_time_starts_at_zero_and_advanced_counts_jumps() -> None:
    """The loop's time starts at 0.0 and `advanced` reports the virtual seconds jumped."""

    async def main(clock: LoopClock) -> tuple[float, float, float]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        start = loop.time()
        await asyncio.sleep(90)
        return start, loop.time(), loop.advanced

    assert run_virtual(main, epoch=EPOCH) == (0.0, 90.0, 90.0)


def test_timers_fire_exactly_at_their_deadline() -> None:
    """call_at callbacks run when loop.time() equals their deadline exactly, at any scale."""

    async def main(clock: LoopClock) -> list[tuple[float, float]]:
        loop = asyncio.get_running_loop()
        seen: list[tuple[float, float]] = []
        done = loop.create_future()

        def record(deadline: float) -> None:
            seen.append((deadline, loop.time()))

        await asyncio.sleep(0.1)
        for when in (0.3, 0.7, 1e7 + 0.1, 1e9 / 3):
            loop.call_at(when, record, when)
        loop.call_later(2e9, done.set_result, None)
        await done
        return seen

    seen = _run_guarded(main)
    assert len(seen) == 4
    for deadline, fired_at in seen:
        assert fired_at == deadline


def test_timers_years_ahead_still_fire() -> None:
    """Daily wake-ups keep firing for three years (past where 1 ns is below float precision)."""

    async def main(clock: LoopClock) -> float:
        for _ in range(3 * 365):
            await asyncio.sleep(DAY)
        return asyncio.get_running_loop().time()

    assert _run_guarded(main) == 3 * 365 * DAY


def test_sleepers_wake_in_deadline_order() -> None:
    """Concurrent sleepers wake in the order of their deadlines, each at its deadline."""

    async def main(clock: LoopClock) -> list[tuple[int, float]]:
        woke: list[tuple[int, float]] = []

        async def sleeper(seconds: int) -> None:
            await asyncio.sleep(seconds)
            woke.append((seconds, clock.now() - EPOCH))

        await asyncio.gather(*(sleeper(s) for s in (50, 10, 40, 20, 30, 5)))
        return woke

    woke = run_virtual(main, epoch=EPOCH)
    assert [s for s, _ in woke] == [5, 10, 20, 30, 40, 50]
    assert all(at == pytest.approx(s, abs=1e-6) for s, at in woke)


def test_same_deadline_sleepers_wake_in_scheduling_order() -> None:
    """Sleepers due at the same instant wake first-scheduled first (asyncio leaves it open)."""

    async def main(clock: LoopClock) -> list[int]:
        woke: list[int] = []

        async def sleeper(n: int) -> None:
            await asyncio.sleep(60)
            woke.append(n)

        await asyncio.gather(*(sleeper(n) for n in range(200)))
        return woke

    assert run_virtual(main, epoch=EPOCH) == list(range(200))


def test_same_deadline_callbacks_run_in_scheduling_order() -> None:
    """call_at callbacks for one instant run in the order they were scheduled."""

    async def main(clock: LoopClock) -> list[int]:
        loop = asyncio.get_running_loop()
        ran: list[int] = []
        for n in range(100):
            loop.call_at(5.0, ran.append, n)
        await asyncio.sleep(10)
        return ran

    assert run_virtual(main, epoch=EPOCH) == list(range(100))


def test_timeout_fires_in_virtual_time() -> None:
    """asyncio.timeout(10) fires at virtual +10 s while another task sleeps 100 s."""

    async def main(clock: LoopClock) -> tuple[float, float]:
        slow = asyncio.create_task(asyncio.sleep(100))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(10):
                await asyncio.Event().wait()
        timed_out_at = clock.now() - EPOCH
        await slow
        return timed_out_at, clock.now() - EPOCH

    assert run_virtual(main, epoch=EPOCH) == (10.0, 100.0)


def test_wait_for_uses_virtual_time() -> None:
    """asyncio.wait_for gives up at its virtual deadline, not in real time."""

    async def main(clock: LoopClock) -> float:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(3 * DAY), timeout=DAY)
        return clock.now() - EPOCH

    assert run_virtual(main, epoch=EPOCH) == DAY


def test_queue_handoff_happens_at_virtual_time() -> None:
    """A consumer blocked on a Queue receives an item put a week later, at +7 days."""

    async def main(clock: LoopClock) -> tuple[str, float]:
        queue: asyncio.Queue[str] = asyncio.Queue()

        async def producer() -> None:
            await asyncio.sleep(7 * DAY)
            await queue.put("renewal")

        async def consumer() -> tuple[str, float]:
            item = await queue.get()
            return item, clock.now() - EPOCH

        _, received = await asyncio.gather(producer(), consumer())
        return received

    assert run_virtual(main, epoch=EPOCH) == ("renewal", 7 * DAY)


async def _simulation(clock: LoopClock, rng: random.Random) -> list[tuple[float, str]]:
    """Citizens file requests through a queue; two clerks share a lock-guarded register."""
    trace: list[tuple[float, str]] = []
    requests: asyncio.Queue[str] = asyncio.Queue()
    register = asyncio.Lock()
    closing = asyncio.Event()

    def log(event: str) -> None:
        trace.append((clock.now() - EPOCH, event))

    async def citizen(n: int) -> None:
        for k in range(5):
            await asyncio.sleep(rng.expovariate(1 / 3600))
            await requests.put(f"c{n}r{k}")
            log(f"filed c{n}r{k}")

    async def clerk(name: str) -> None:
        while not closing.is_set():
            try:
                request = await asyncio.wait_for(requests.get(), timeout=2 * 3600)
            except TimeoutError:
                log(f"{name} idle")
                continue
            async with register:
                await asyncio.sleep(rng.uniform(60, 900))
                log(f"{name} done {request}")
            requests.task_done()

    clerks = [asyncio.create_task(clerk(name)) for name in ("ana", "luis")]
    await asyncio.gather(*(citizen(n) for n in range(8)))
    await requests.join()
    closing.set()
    await asyncio.gather(*clerks)
    return trace


def test_same_seed_gives_identical_traces() -> None:
    """A simulation with tasks, queues, locks and seeded randomness replays identically."""

    def once(seed: int) -> list[tuple[float, str]]:
        return run_virtual(lambda clock: _simulation(clock, random.Random(seed)), epoch=EPOCH)

    first = once(7)
    assert len(first) > 80
    assert once(7) == first
    assert once(8) != first


def test_unresolvable_future_raises_deadlock() -> None:
    """Awaiting a future nothing will resolve, with nothing scheduled, raises; no hang."""

    async def main(clock: LoopClock) -> None:
        await asyncio.sleep(5)
        await asyncio.get_running_loop().create_future()

    with pytest.raises(VirtualTimeDeadlock, match="nothing left to run and nothing scheduled"):
        _run_guarded(main)


def test_deadlock_message_names_the_waiting_tasks() -> None:
    """The deadlock message says when it happened and which coroutines wait forever."""

    async def stuck_forever() -> None:
        await asyncio.Event().wait()

    async def main(clock: LoopClock) -> None:
        await asyncio.sleep(5)
        await asyncio.create_task(stuck_forever())

    with pytest.raises(VirtualTimeDeadlock, match=r"5\.000000 s.*stuck_forever"):
        _run_guarded(main)


def test_call_soon_threadsafe_from_another_thread_is_delivered() -> None:
    """A callback posted from another thread runs on the virtual loop's next iteration."""

    async def main(clock: LoopClock) -> bool:
        loop = asyncio.get_running_loop()
        delivered = asyncio.Event()

        def tick() -> None:
            # Virtual time never waits for threads: with nothing scheduled, awaiting the
            # thread's callback would be a deadlock. A ticker keeps the loop turning.
            if not delivered.is_set():
                loop.call_later(1, tick)

        tick()
        poster = threading.Thread(target=loop.call_soon_threadsafe, args=(delivered.set,))
        poster.start()
        await delivered.wait()
        poster.join()
        return delivered.is_set()

    assert _run_guarded(main) is True


def test_run_virtual_leaves_no_loop_behind_and_closes_its_own() -> None:
    """After run_virtual no loop is running, the policy is unchanged and its loop is closed."""
    policy = asyncio.get_event_loop_policy()

    async def main(clock: LoopClock) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    loop = run_virtual(main, epoch=EPOCH)
    assert asyncio.events._get_running_loop() is None
    assert asyncio.get_event_loop_policy() is policy
    assert loop.is_closed()


def test_run_virtual_cancels_leftover_tasks() -> None:
    """Tasks still running when main returns are cancelled before the loop closes."""
    cancelled: list[bool] = []

    async def background() -> None:
        try:
            await asyncio.sleep(365 * DAY)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main(clock: LoopClock) -> str:
        asyncio.get_running_loop().create_task(background())
        await asyncio.sleep(1)
        return "done"

    assert run_virtual(main, epoch=EPOCH) == "done"
    assert cancelled == [True]


def test_run_virtual_propagates_main_errors_and_closes_the_loop() -> None:
    """An exception from main reaches the caller and the loop is still closed."""
    loops: list[asyncio.AbstractEventLoop] = []

    async def main(clock: LoopClock) -> None:
        loops.append(asyncio.get_running_loop())
        await asyncio.sleep(DAY)
        raise LookupError("no such agency")

    with pytest.raises(LookupError, match="no such agency"):
        run_virtual(main, epoch=EPOCH)
    assert loops[0].is_closed()


def test_sleep_until_wakes_at_the_epoch_instant() -> None:
    """sleep_until returns with clock.now() at (never before) the requested epoch second."""
    when = EPOCH + 45 * DAY + 0.1

    async def main(clock: LoopClock) -> float:
        await sleep_until(clock, when)
        return clock.now()

    woke = run_virtual(main, epoch=EPOCH)
    assert woke >= when
    assert woke == pytest.approx(when, abs=1e-6)


def test_sleep_until_a_past_instant_returns_at_once() -> None:
    """sleep_until with a time already past returns without moving the clock."""

    async def main(clock: LoopClock) -> float:
        await sleep_until(clock, EPOCH - DAY)
        return clock.now()

    assert run_virtual(main, epoch=EPOCH) == EPOCH


async def test_sleep_until_works_live_with_the_system_clock() -> None:
    """On a real loop, sleep_until(SystemClock(), t) returns once the wall clock reaches t."""
    clock = SystemClock()
    when = clock.now() + 0.02
    await sleep_until(clock, when)
    assert clock.now() >= when


def test_two_hundred_thousand_timers_run_in_seconds() -> None:
    """200,000 sleeps and timer callbacks at distinct instants run in a few real seconds."""

    async def main(clock: LoopClock) -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        fired = 0

        def tick() -> None:
            nonlocal fired
            fired += 1

        for n in range(100_000):
            loop.call_later(n * 0.5 + 0.25, tick)

        async def sleeper(n: int) -> None:
            for _ in range(100):
                await asyncio.sleep(n + 1.0)

        await asyncio.gather(*(sleeper(n) for n in range(1_000)))
        await asyncio.sleep(DAY)
        return fired, clock.now() - EPOCH

    started = time.perf_counter()
    fired, elapsed = run_virtual(main, epoch=EPOCH)
    assert time.perf_counter() - started < 10.0
    assert fired == 100_000
    assert elapsed == 100_000.0 + DAY
