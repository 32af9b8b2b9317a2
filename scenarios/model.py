"""Scenario file format v1: the typed model and its loader.

A scenario file (TOML, described in ``docs/scenarios.md``) is read once by
:func:`load_scenario` into frozen values; nothing downstream sees raw TOML. Every mistake
is a :class:`ScenarioError` naming the file, the key path and the line, e.g.
``pisee.toml:41: plan.waves[1].agencies: asks for 300 agencies; only 208 central agencies
are not in an earlier wave``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from scenarios.toml_source import (
    DateRange,
    ScenarioError,
    SourceIndex,
    TableReader,
    describe,
    read_source,
    render_key,
    split_key,
    syntax_error,
)

__all__ = [
    "CALENDAR_END",
    "CALENDAR_START",
    "EXPECTATION_KINDS",
    "GROUPS",
    "KEYS",
    "PORTAL_CODE",
    "SCHEMA_VERSION",
    "SCOPES",
    "SERIES",
    "Behaviour",
    "Demand",
    "Expectation",
    "Growth",
    "Incident",
    "Plan",
    "Point",
    "Scenario",
    "ScenarioError",
    "Wave",
    "World",
    "load_scenario",
    "parse_scenario",
    "with_overrides",
]

SCHEMA_VERSION: Final = 1
#: The range the business-day calendar covers; every date of a scenario lies within it.
CALENDAR_START: Final = dt.date(2013, 1, 1)
CALENDAR_END: Final = dt.date(2016, 12, 31)
PORTAL_CODE: Final = "PORTAL"
#: Institution groups with their own answering behaviour (``[behaviour.<group>]``).
GROUPS: Final = ("central", "municipality", "autonomous", "offline_municipality")
SERIES: Final = ("central_linked", "municipalities_on_portal", "autonomous_on_portal")
SCOPES: Final = ("all", "central", "municipality", "autonomous")
#: Expectation kind -> the keys it takes besides ``kind``.
EXPECTATION_KINDS: Final[Mapping[str, tuple[str, ...]]] = {
    "no-superseded-key-accepted": (),
    "connected-by": ("date", "at_least"),
    "answered-in-time": ("at_least", "scope"),
    "max-backlog": ("at_most",),
}
#: Section -> the keys it accepts ("" is the top level); docs/scenarios.md has a table each.
KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "": ("schema", "scenario", "world", "growth", "demand", "behaviour", "incident", "plan",
         "expect"),
    "scenario": ("name", "description", "seed", "start", "end", "report_dates"),
    "world": ("central_agencies", "central_target", "municipalities", "autonomous",
              "gateway_code"),
    "growth": SERIES,
    "demand": ("municipal", "central", "autonomous", "offline_municipal"),
    "behaviour": GROUPS,
    "behaviour.*": ("answer_days_median", "answer_days_sigma", "never_answer",
                    "capacity_per_day", "extension_share", "outage_per_year", "outage_days"),
    "incident": ("detected", "disconnect", "new_generation", "stale_senders"),
    "plan": ("name", "approval_delay_days", "verify_delay_days", "check_failure",
             "onboarding_capacity", "fallback", "fallback_start", "fallback_capacity", "waves"),
    "plan.waves": ("name", "start", "agencies"),
    "expect": ("kind", "date", "at_least", "at_most", "scope"),
}  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class World:
    central_agencies: int
    central_target: int
    municipalities: int
    autonomous: int
    gateway_code: str = "PASARELA"

    def central_codes(self) -> tuple[str, ...]:
        """``AG001`` .. ``AG{central_target:03d}``."""
        return tuple(f"AG{n:03d}" for n in range(1, self.central_target + 1))

    def linked_codes(self) -> tuple[str, ...]:
        """The first ``central_agencies`` central codes: linked when the incident hits."""
        return self.central_codes()[: self.central_agencies]

    def municipality_codes(self) -> tuple[str, ...]:
        return tuple(f"MUN{n:03d}" for n in range(1, self.municipalities + 1))

    def autonomous_codes(self) -> tuple[str, ...]:
        return tuple(f"AUT{n:02d}" for n in range(1, self.autonomous + 1))


@dataclass(frozen=True, slots=True, kw_only=True)
class Point:
    day: dt.date
    count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Growth:
    central_linked: tuple[Point, ...]
    municipalities_on_portal: tuple[Point, ...]
    autonomous_on_portal: tuple[Point, ...]

    def count_at(self, series_name: str, day: dt.date) -> int:
        """Piecewise-linear count of a series on ``day`` (floored; flat before and after)."""
        if series_name not in SERIES:
            raise KeyError(series_name)
        points: tuple[Point, ...] = getattr(self, series_name)
        if not points:
            return 0
        if day <= points[0].day:
            return points[0].count
        for a, b in itertools.pairwise(points):
            if day < b.day:
                elapsed, span = (day - a.day).days, (b.day - a.day).days
                return a.count + (b.count - a.count) * elapsed // span
        return points[-1].count


@dataclass(frozen=True, slots=True, kw_only=True)
class Demand:
    municipal: float
    central: float
    autonomous: float
    offline_municipal: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Behaviour:
    answer_days_median: float
    answer_days_sigma: float
    never_answer: float
    capacity_per_day: tuple[int, int]
    extension_share: float
    outage_per_year: float = 0.0
    outage_days: float = 2.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Incident:
    detected: dt.datetime
    disconnect: dt.datetime
    new_generation: dt.datetime
    stale_senders: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Wave:
    name: str
    start: dt.date
    agencies: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    name: str
    approval_delay_days: tuple[int, int]
    verify_delay_days: tuple[int, int]
    check_failure: float
    #: Agencies per week the support team can take through approval; 0 means no limit.
    onboarding_capacity: int = 0
    fallback: tuple[str, ...] = ()
    fallback_start: dt.date | None = None
    fallback_capacity: float = 1.0
    waves: tuple[Wave, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Expectation:
    kind: str
    date: dt.date | None = None
    at_least: float | None = None  # an int count for connected-by, a share for answered-in-time
    at_most: int | None = None
    scope: str = "all"
    key: str = ""  # e.g. "expect[2]", for messages about this expectation


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    path: Path
    schema: int
    name: str
    description: str
    seed: int
    start: dt.date
    end: dt.date
    report_dates: tuple[dt.date, ...]
    world: World
    growth: Growth
    demand: Demand
    behaviour: Mapping[str, Behaviour] = field(hash=False)  # one per name in GROUPS
    incident: Incident | None
    plan: Plan
    expectations: tuple[Expectation, ...]


def load_scenario(path: Path | str, *, overrides: Mapping[str, str] | None = None) -> Scenario:
    """Read and validate a scenario file; any problem is a :class:`ScenarioError`."""
    path = Path(path)
    text = read_source(path)
    return parse_scenario(text, path=path, overrides=overrides)


def parse_scenario(
    text: str, *, path: Path, overrides: Mapping[str, str] | None = None
) -> Scenario:
    """Validate scenario source ``text``; ``path`` is named in errors and kept in the result.

    ``overrides`` maps key paths (``plan.check_failure``, ``plan.waves[0].agencies``) to
    TOML values (``0.2``, ``25``, ``2015-05-04``, ``["AG001"]``), set before validation:
    what-if runs without editing the file, checked like the file itself.
    """
    index = SourceIndex(text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise syntax_error(exc, text=text, path=path, index=index) from exc
    for key, value in (overrides or {}).items():
        _override(data, key, value, path=path, index=index)
    return _scenario(TableReader(data, path=path, index=index), path)


def _override(
    data: dict[str, Any], key: str, value: str, *, path: Path, index: SourceIndex
) -> None:
    """Set ``key`` (a dotted path with indices) to the TOML ``value`` inside ``data``."""

    def fail(message: str) -> ScenarioError:
        return ScenarioError(path, key, None, f"--set: {message}")

    try:
        parts = split_key(key)
    except ValueError as exc:
        raise fail(f"not a key path: {exc}") from exc
    try:
        parsed = tomllib.loads(f"value = {value}")["value"]
    except tomllib.TOMLDecodeError as exc:
        raise fail(f"{value!r} is not a TOML value ({exc})") from exc
    if not parts:
        raise fail("empty key path")
    node: Any = data
    for part, following in zip(parts, (*parts[1:], None), strict=True):
        if following is None:
            break
        child = node[part] if _present(node, part) else None
        if child is None:
            if isinstance(part, int):
                raise fail(f"no element [{part}] to set inside")
            child = [] if isinstance(following, int) else {}
            node[part] = child
        node = child
    last = parts[-1]
    if isinstance(last, int) and not (isinstance(node, list) and 0 <= last < len(node)):
        raise fail(f"no element [{last}] to replace")
    if not isinstance(last, int) and not isinstance(node, dict):
        raise fail(f"{render_key(parts[:-1])} is not a table")
    node[last] = parsed


def _present(node: Any, part: str | int) -> bool:
    if isinstance(part, int):
        return isinstance(node, list) and 0 <= part < len(node)
    return isinstance(node, dict) and part in node


def with_overrides(scenario: Scenario, *, seed: int | None = None) -> Scenario:
    """The scenario with command-line overrides applied (``--seed`` replaces scenario.seed)."""
    return scenario if seed is None else replace(scenario, seed=seed)


# -- one pass over the parsed document -------------------------------------------------------


_CALENDAR = DateRange(CALENDAR_START, CALENDAR_END, "calendar")


def _scenario(root: TableReader, path: Path) -> Scenario:
    root.only(*KEYS[""])
    schema = root.integer("schema")
    if schema != SCHEMA_VERSION:
        raise root.error("schema", f"unsupported schema {schema}; this is schema {SCHEMA_VERSION}")
    r = root.table("scenario")
    r.only(*KEYS["scenario"])
    name, description = r.text("name", nonempty=True), r.text("description", default="")
    seed, start, end = r.integer("seed", default=0), r.date("start"), r.date("end")
    _CALENDAR.check(r, "start", start)
    _CALENDAR.check(r, "end", end)
    if end <= start:
        raise r.error("end", f"must be after scenario.start ({start}), got {end}")
    span = DateRange(start, end, "scenario span")
    report_dates = r.dates("report_dates")
    for i, day in enumerate(report_dates):
        span.check(r, ("report_dates", i), day)
        if i and day <= report_dates[i - 1]:
            raise r.error(("report_dates", i), f"must be after {report_dates[i - 1]}")
    world = _world(root.table("world"))
    incident = _incident(root.table("incident"), span) if root.has("incident") else None
    behaviour = root.table("behaviour")
    behaviour.only(*GROUPS)
    return Scenario(
        path=path,
        schema=schema,
        name=name,
        description=description,
        seed=seed,
        start=start,
        end=end,
        report_dates=report_dates,
        world=world,
        growth=_growth(root.table("growth"), world, span, incident),
        demand=_demand(root.table("demand")),
        behaviour={group: _behaviour(behaviour.table(group)) for group in GROUPS},
        incident=incident,
        plan=_plan(root.table("plan"), world, span, incident),
        expectations=tuple(_expectation(e, span) for e in root.tables("expect")),
    )


def _world(r: TableReader) -> World:
    r.only(*KEYS["world"])
    central = r.integer("central_agencies", minimum=1)
    world = World(
        central_agencies=central,
        central_target=r.integer("central_target", minimum=central, maximum=999),
        municipalities=r.integer("municipalities", minimum=0, maximum=999),
        autonomous=r.integer("autonomous", minimum=0, maximum=99),
        gateway_code=r.text("gateway_code", default="PASARELA", nonempty=True),
    )
    codes = (PORTAL_CODE, *world.central_codes(), *world.municipality_codes())
    if world.gateway_code in (*codes, *world.autonomous_codes()):
        raise r.error("gateway_code", f"'{world.gateway_code}' is already an agency's code")
    return world


def _growth(r: TableReader, world: World, span: DateRange, incident: Incident | None) -> Growth:
    r.only(*SERIES)
    central = _series(r, "central_linked", world.central_agencies)
    last = r.tables("central_linked")[-1]
    if central[-1].count != world.central_agencies:
        raise last.error("count", f"the last count must equal world.central_agencies "
                         f"({world.central_agencies}), got {central[-1].count}")  # fmt: skip
    if incident is not None and central[-1].day > incident.detected.date():
        raise last.error("date", "the last point (all linked agencies) must be on or before "
                         f"incident.detected ({incident.detected.date()})")  # fmt: skip
    return Growth(
        central_linked=central,
        municipalities_on_portal=_series(r, "municipalities_on_portal", world.municipalities),
        autonomous_on_portal=(
            _series(r, "autonomous_on_portal", world.autonomous)
            if r.has("autonomous_on_portal")
            else (Point(day=span.start, count=world.autonomous),)
        ),
    )


def _series(r: TableReader, name: str, total: int) -> tuple[Point, ...]:
    r.raw(name)  # required
    points: list[Point] = []
    for row in r.tables(name):
        row.only("date", "count")
        point = Point(day=row.date("date"), count=row.integer("count", minimum=0))
        _CALENDAR.check(row, "date", point.day)
        if point.count > total:
            raise row.error("count", f"must be <= {total} (the world's total), got {point.count}")
        if points and point.day <= points[-1].day:
            raise row.error("date", f"must be after {points[-1].day} (the point before)")
        if points and point.count < points[-1].count:
            raise row.error("count", f"must not decrease: {point.count} < {points[-1].count}")
        points.append(point)
    if not points:
        raise r.error(name, "needs at least one { date = ..., count = ... } point")
    return tuple(points)


def _demand(r: TableReader) -> Demand:
    r.only(*KEYS["demand"])
    return Demand(**{name: r.number(name, minimum=0.0) for name in KEYS["demand"]})


def _behaviour(r: TableReader) -> Behaviour:
    r.only(*KEYS["behaviour.*"])
    return Behaviour(
        answer_days_median=r.number("answer_days_median", above=0.0),
        answer_days_sigma=r.number("answer_days_sigma", minimum=0.0),
        never_answer=r.probability("never_answer"),
        capacity_per_day=r.pair("capacity_per_day"),
        extension_share=r.probability("extension_share"),
        outage_per_year=r.number("outage_per_year", minimum=0.0, default=0.0),
        outage_days=r.number("outage_days", above=0.0, default=2.0),
    )


def _incident(r: TableReader, span: DateRange) -> Incident:
    r.only(*KEYS["incident"])
    names = ("detected", "disconnect", "new_generation")
    moments = [r.datetime(name) for name in names]
    for i, name in enumerate(names):
        span.check(r, name, moments[i])
        if i and moments[i] < moments[i - 1]:
            raise r.error(name, f"must be on or after incident.{names[i - 1]} "
                          f"({moments[i - 1].isoformat()})")  # fmt: skip
    return Incident(
        detected=moments[0],
        disconnect=moments[1],
        new_generation=moments[2],
        stale_senders=r.probability("stale_senders", default=0.0),
    )


def _plan(r: TableReader, world: World, span: DateRange, incident: Incident | None) -> Plan:
    r.only(*KEYS["plan"])
    name = r.text("name", nonempty=True)
    delays = r.pair("approval_delay_days"), r.pair("verify_delay_days")
    check_failure = r.probability("check_failure")
    capacity = r.integer("onboarding_capacity", minimum=1, default=0)
    fallback = _agencies(r, "fallback", world, {}, pool=world.linked_codes(), pool_what="linked")
    for needed in ("fallback_start", "fallback_capacity"):
        if fallback and not r.has(needed):
            raise r.error(needed, f"missing required key '{needed}' (plan.fallback is set)")
    fallback_start = r.date("fallback_start") if r.has("fallback_start") else None
    if fallback_start is not None:
        span.check(r, "fallback_start", fallback_start)
    fallback_capacity = r.number("fallback_capacity", above=0.0, maximum=1.0, default=1.0)
    waves: list[Wave] = []
    taken: dict[str, str] = {}  # agency code -> the wave that has it
    for w in r.tables("waves"):
        w.only(*KEYS["plan.waves"])
        wave = Wave(
            name=w.text("name", nonempty=True),
            start=w.date("start"),
            agencies=_agencies(w, "agencies", world, taken, pool=world.central_codes(),
                               pool_what="not in an earlier wave"),
        )  # fmt: skip
        _check_wave(w, wave, waves, span, incident)
        taken.update(dict.fromkeys(wave.agencies, wave.name))
        waves.append(wave)
    return Plan(
        name=name,
        approval_delay_days=delays[0],
        verify_delay_days=delays[1],
        check_failure=check_failure,
        onboarding_capacity=capacity,
        fallback=fallback,
        fallback_start=fallback_start,
        fallback_capacity=fallback_capacity,
        waves=tuple(waves),
    )


def _check_wave(
    w: TableReader, wave: Wave, earlier: list[Wave], span: DateRange, incident: Incident | None
) -> None:
    for i, other in enumerate(earlier):
        if other.name == wave.name:
            raise w.error("name", f"'{wave.name}' is already the name of plan.waves[{i}]")
    span.check(w, "start", wave.start)
    if incident is not None and wave.start <= incident.new_generation.date():
        generation = incident.new_generation.date()
        raise w.error("start", f"must be after the day of incident.new_generation ({generation})")
    if earlier and wave.start <= earlier[-1].start:
        raise w.error("start", f"must be after the previous wave's start ({earlier[-1].start})")


def _agencies(
    r: TableReader,
    name: str,
    world: World,
    taken: Mapping[str, str],
    *,
    pool: tuple[str, ...],
    pool_what: str,
) -> tuple[str, ...]:
    """A count (the first N of ``pool`` not ``taken``) or a list of central agency codes."""
    value = r.raw(name)
    if isinstance(value, int) and not isinstance(value, bool):
        count = r.integer(name, minimum=0)
        left = [code for code in pool if code not in taken]
        if count > len(left):
            raise r.error(name, f"asks for {count} agencies; only {len(left)} central "
                          f"agencies are {pool_what}")  # fmt: skip
        return tuple(left[:count])
    if not isinstance(value, list):
        raise r.error(name, f"expected a count or an array of agency codes, got {describe(value)}")
    central = world.central_codes()
    codes: list[str] = []
    for i, code in enumerate(value):
        if not isinstance(code, str):
            raise r.error((name, i), f"expected an agency code, got {describe(code)}")
        if code not in central:
            raise r.error((name, i), f"unknown agency code '{code}': only central agencies "
                          f"({central[0]}..{central[-1]}) can be named here")  # fmt: skip
        if code in codes:
            raise r.error((name, i), f"{code} is listed twice")
        if code in taken:
            raise r.error((name, i), f"{code} is already in wave '{taken[code]}'")
        codes.append(code)
    return tuple(codes)


def _expectation(r: TableReader, span: DateRange) -> Expectation:
    r.only(*KEYS["expect"])
    kind = r.choice("kind", tuple(EXPECTATION_KINDS), what="expectation kind")
    r.only("kind", *EXPECTATION_KINDS[kind], context=f" for kind '{kind}'")
    key = r.key()
    if kind == "connected-by":
        day = r.date("date")
        span.check(r, "date", day)
        return Expectation(kind=kind, date=day, at_least=r.integer("at_least", minimum=0), key=key)
    if kind == "answered-in-time":
        scope = r.choice("scope", SCOPES, what="scope", default="all")
        return Expectation(kind=kind, at_least=r.probability("at_least"), scope=scope, key=key)
    if kind == "max-backlog":
        return Expectation(kind=kind, at_most=r.integer("at_most", minimum=0), key=key)
    return Expectation(kind=kind, key=key)
