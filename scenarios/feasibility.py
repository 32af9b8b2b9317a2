"""Can the plan finish at all? The earliest schedule its constraints allow, before running.

``pasarela plan validate`` (and a warning before ``run``) walks the waves in order with
every human delay at its minimum, the weekly onboarding capacity shared between waves and
each gate's soak time, and reports what no run could achieve: a wave that the capacity
cannot take through approval before its deadline (or before the scenario ends), or a gate
that can never pass. Each problem is a :class:`~scenarios.model.ScenarioError` naming the
file, the key and the line.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass

from scenarios.calendar import BusinessCalendar
from scenarios.model import CALENDAR_END, Scenario, ScenarioError, Wave

__all__ = ["WaveEstimate", "earliest_schedule", "plan_problems"]


@dataclass(frozen=True, slots=True, kw_only=True)
class WaveEstimate:
    """One wave at best: every delay at its minimum, no check failing."""

    name: str
    key: str
    size: int
    start: dt.date
    back: dt.date | None  # the last agency connected; None: not within the calendar
    gate_passed: dt.date | None
    deadline: dt.date  # the wave's own, else the scenario's end
    weeks: int  # ISO weeks with approvals


def _size(scenario: Scenario, wave: Wave) -> int:
    """Agencies the wave takes (a selector without a count: at most every one of its kind
    that the plan does not list)."""
    if wave.size is not None:
        return wave.size
    world, listed = scenario.world, scenario.plan.listed()
    assert wave.selector is not None
    return sum(
        1
        for code in world.linked_codes()
        if code not in listed
        and (wave.selector.kind is None or world.kind_of(code) == wave.selector.kind)
    )


def earliest_schedule(
    scenario: Scenario, calendar: BusinessCalendar | None = None
) -> list[WaveEstimate]:
    calendar = calendar or BusinessCalendar()
    plan = scenario.plan
    capacity = plan.onboarding_capacity
    used: Counter[tuple[int, int]] = Counter()
    out: list[WaveEstimate] = []
    previous: dt.date | None = None  # the day the previous wave's gate passed (or it was back)
    for index, wave in enumerate(plan.waves):
        size = _size(scenario, wave)
        start = wave.start
        waits = index > 0 and (plan.waves[index - 1].gate is not None or start is None)
        if previous is not None and waits:  # as the run does: after the gate (or the wave)
            after = _add(calendar, previous, 1)
            start = after if start is None or after is None else max(start, after)
        deadline = wave.deadline or scenario.end
        if start is None:
            break  # after a gate that never passes
        delays = plan.approval_delay_days[0], plan.verify_delay_days[0]
        back, weeks = _back(calendar, start, size, capacity=capacity, used=used, delays=delays)
        gate_passed = back
        if back is not None and wave.gate is not None:
            gate_passed = _add(calendar, back, wave.gate.soak_days)
        out.append(
            WaveEstimate(
                name=wave.name,
                key=wave.key,
                size=size,
                start=start,
                back=back,
                gate_passed=gate_passed,
                deadline=deadline,
                weeks=weeks,
            )
        )
        if gate_passed is None:
            break
        previous = gate_passed
    return out


def _add(calendar: BusinessCalendar, day: dt.date, n: int) -> dt.date | None:
    try:
        return calendar.add_business_days(day, n)
    except ValueError:
        return None


def _back(
    calendar: BusinessCalendar,
    start: dt.date,
    size: int,
    *,
    capacity: int,
    used: Counter[tuple[int, int]],
    delays: tuple[int, int],
) -> tuple[dt.date | None, int]:
    """The day the wave's last agency can be connected, and the ISO weeks its approvals use."""
    approval, verify = delays
    if size == 0:
        return start, 0
    day = _add(calendar, start, approval)
    weeks: set[tuple[int, int]] = set()
    last = day
    for _ in range(size):
        if day is None:
            return None, len(weeks)
        if capacity:
            while used[day.isocalendar()[:2]] >= capacity:
                day = _add(calendar, day, 1)
                if day is None:
                    return None, len(weeks)
            used[day.isocalendar()[:2]] += 1
        weeks.add(day.isocalendar()[:2])
        last = day
    assert last is not None
    return _add(calendar, last, verify), len(weeks)


def plan_problems(scenario: Scenario) -> list[ScenarioError]:
    """What makes the plan impossible to finish (empty: it can finish in time)."""
    plan = scenario.plan
    problems: list[ScenarioError] = []
    for wave in plan.waves:
        if wave.gate is not None and wave.gate.checks_passed and plan.check_failure >= 1.0:
            problems.append(scenario.error(f"{wave.key}.gate.checks_passed",
                                           "plan.check_failure is 1: no agency ever passes its "
                                           "checks, so this gate can never pass"))  # fmt: skip
    capacity = plan.onboarding_capacity
    for estimate in earliest_schedule(scenario):
        if estimate.back is not None and estimate.back <= estimate.deadline:
            continue
        limit = "its deadline" if estimate.deadline != scenario.end else "the scenario's end"
        weeks = -(-estimate.size // capacity) if capacity else 0
        pace = f" at {capacity} a week (at least {weeks} weeks)" if capacity else ""
        when = (
            f"would not be back before the calendar ends ({CALENDAR_END})"
            if estimate.back is None
            else f"are back on {estimate.back} at the earliest"
        )
        wave = plan.waves[[w.key for w in plan.waves].index(estimate.key)]
        key = f"{estimate.key}.agencies" if capacity else f"{estimate.key}.start"
        if wave.deadline is not None and not capacity:
            key = f"{estimate.key}.deadline"
        problems.append(
            scenario.error(
                key,
                f"wave '{estimate.name}' cannot finish: {estimate.size} agencies through "
                f"approval{pace} from {estimate.start} {when}, after {limit} "
                f"({estimate.deadline})",
            )
        )
        break  # later waves wait for this one: their problems follow from it
    return problems
