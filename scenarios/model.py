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

from agents.adversaries.profiles import profile_names
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
    "attacks-blocked": (),
    "exposure": ("at_most",),
    "gate-failures": ("at_most",),
}
#: How a wave's agencies can be chosen when they are not listed (``agencies = { by = ... }``).
SELECTORS: Final = ("ati-volume", "kind", "readiness", "dependency-order")
#: What a failing gate does: hold the next wave, or send the wave's failing agencies away.
ROLLBACKS: Final = ("pause", "quarantine", "fallback")
#: Gate criteria (``[plan.waves.gate]``); docs/scenarios.md says how each is measured.
GATE_KEYS: Final = ("soak_days", "max_error_rate", "max_p99_ms", "max_alerts", "checks_passed",
                    "on_failure")  # fmt: skip
#: Toxiproxy's toxics, applied to one party's link with the gateway.
LINK_FAULTS: Final = ("latency", "bandwidth", "slicer", "timeout", "reset", "down")
#: Fault kind -> the keys it takes besides the common ones (``FAULT_COMMON``).
FAULT_KINDS: Final[Mapping[str, tuple[str, ...]]] = {
    "latency": ("latency_ms", "jitter_ms"),
    "bandwidth": ("rate_kbps",),
    "slicer": ("average_size", "size_variation", "delay_us"),
    "timeout": ("timeout_ms",),
    "reset": ("timeout_ms",),
    "down": (),
    "gateway-crash": (),
    "clock-skew": ("skew_seconds",),
    "stolen-key": (),
    "second-incident": ("new_generation_hours",),
    "attack": ("profile",),
}
FAULT_COMMON: Final = ("kind", "target", "at", "when", "after_hours", "duration_hours")
LINK_COMMON: Final = ("stream", "toxicity")
STREAMS: Final = ("upstream", "downstream", "both")
#: Plan events a fault can wait for: ``when = "gate-passed:pilot"``.
WHEN_EVENTS: Final = ("wave-start", "wave-connected", "gate-passed")
#: The kind every central agency has unless ``world.kinds`` says otherwise.
DEFAULT_KIND: Final = "service"
#: Section -> the keys it accepts ("" is the top level); docs/scenarios.md has a table each.
KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "": ("schema", "scenario", "world", "growth", "demand", "behaviour", "incident", "plan",
         "faults", "expect"),
    "scenario": ("name", "description", "seed", "start", "end", "report_dates"),
    "world": ("central_agencies", "central_target", "municipalities", "autonomous",
              "gateway_code", "kinds"),
    "growth": SERIES,
    "demand": ("municipal", "central", "autonomous", "offline_municipal", "central_spread"),
    "behaviour": GROUPS,
    "behaviour.*": ("answer_days_median", "answer_days_sigma", "never_answer",
                    "capacity_per_day", "extension_share", "outage_per_year", "outage_days"),
    "incident": ("detected", "disconnect", "new_generation", "stale_senders"),
    "plan": ("name", "approval_delay_days", "verify_delay_days", "check_failure",
             "onboarding_capacity", "rollback", "quarantine_days", "dependencies", "fallback",
             "fallback_start", "fallback_capacity", "waves"),
    "plan.waves": ("name", "start", "agencies", "deadline", "gate"),
    "selector": ("by", "count", "kind"),
    "expect": ("kind", "date", "at_least", "at_most", "scope"),
}  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class World:
    central_agencies: int
    central_target: int
    municipalities: int
    autonomous: int
    gateway_code: str = "PASARELA"
    #: Kind -> how many central agencies have it, given in code order; the rest are
    #: ``service`` (e.g. ``{"ministry": 24}``: AG001..AG024 are ministries).
    kinds: Mapping[str, int] = field(default_factory=dict, hash=False)

    def kind_of(self, code: str) -> str:
        """The kind of central agency ``code`` (``AG007`` -> ``ministry``)."""
        number = int(code[2:])
        for kind, count in self.kinds.items():
            if number <= count:
                return kind
            number -= count
        return DEFAULT_KIND

    def kind_names(self) -> tuple[str, ...]:
        return (*self.kinds, DEFAULT_KIND)

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
    #: Spread of ATI volume between central agencies: the sigma of a lognormal weight
    #: with mean 1 (0: every agency draws requests at the same rate).
    central_spread: float = 0.0


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
class Selector:
    """Agencies chosen when the wave starts, from those no wave or fallback names."""

    by: str  # one of SELECTORS
    count: int | None = None  # None: every agency left (of ``kind``, for by = "kind")
    kind: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Gate:
    """What must hold after a wave before the next one may start."""

    soak_days: int = 0  # business days after the wave's last connection
    max_error_rate: float | None = None  # failed / all exchanges of the wave's agencies
    max_p99_ms: float | None = None  # 99th percentile round trip of their exchanges
    max_alerts: int | None = None  # security alerts about them
    checks_passed: bool = False  # every agency of the wave passed its checks and connected
    on_failure: str = "pause"  # one of ROLLBACKS

    def criteria(self) -> dict[str, object]:
        """The criteria that are set, by key."""
        set_ = {
            "max_error_rate": self.max_error_rate,
            "max_p99_ms": self.max_p99_ms,
            "max_alerts": self.max_alerts,
            "checks_passed": self.checks_passed or None,
        }
        return {key: value for key, value in set_.items() if value is not None}


@dataclass(frozen=True, slots=True, kw_only=True)
class Wave:
    name: str
    #: The earliest start; None: the business day after the previous wave's gate passed.
    start: dt.date | None
    agencies: tuple[str, ...] = ()  # listed (or a count resolved in code order)
    selector: Selector | None = None  # chosen when the wave starts
    deadline: dt.date | None = None  # every agency back by this day, or the plan is late
    gate: Gate | None = None
    key: str = ""  # "plan.waves[1]", for messages about this wave

    @property
    def size(self) -> int | None:
        """How many agencies the wave takes (None: every one its selector finds)."""
        if self.selector is None:
            return len(self.agencies)
        return self.selector.count


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    name: str
    approval_delay_days: tuple[int, int]
    verify_delay_days: tuple[int, int]
    check_failure: float
    #: Agencies per week the support team can take through approval; 0 means no limit.
    onboarding_capacity: int = 0
    #: What a failing gate does unless the gate says otherwise (one of ROLLBACKS).
    rollback: str = "pause"
    #: Business days a quarantined agency waits before it re-enrols with a fresh key.
    quarantine_days: int = 10
    #: Agency -> the agencies that must be connected before it may be approved.
    dependencies: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)
    fallback: tuple[str, ...] = ()
    fallback_selector: Selector | None = None
    fallback_start: dt.date | None = None
    fallback_capacity: float = 1.0
    waves: tuple[Wave, ...] = ()

    def listed(self) -> set[str]:
        """Every agency the plan names explicitly (waves and fallback)."""
        return {code for wave in self.waves for code in wave.agencies} | set(self.fallback)


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """A fault injected into the rehearsal at a time or when a plan event happens."""

    kind: str  # one of FAULT_KINDS
    key: str  # "faults[0]"
    target: str = ""  # a party's code, or "" for the gateway / the whole platform
    at: dt.datetime | None = None
    when: tuple[str, str] | None = None  # (event, wave name), e.g. ("gate-passed", "pilot")
    after_hours: float = 0.0
    duration_hours: float | None = None  # None: to the end of the run
    stream: str = "both"
    toxicity: float = 1.0
    params: Mapping[str, float] = field(default_factory=dict, hash=False)
    profile: str = ""  # for kind "attack": an adversary profile (scenarios/library/attacks/)

    @property
    def link(self) -> bool:
        return self.kind in LINK_FAULTS


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
    faults: tuple[Fault, ...] = ()
    #: Where each key is in the file (for messages found after loading, e.g. plan checks).
    index: SourceIndex | None = field(default=None, hash=False, compare=False, repr=False)

    def error(self, key: str, message: str) -> ScenarioError:
        """A :class:`ScenarioError` about ``key`` of this file, with its line."""
        line = self.index.line_of(key) if self.index is not None else None
        return ScenarioError(self.path, key, line, message)


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
    return _scenario(TableReader(data, path=path, index=index), path, index)


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


def _scenario(root: TableReader, path: Path, index: SourceIndex) -> Scenario:
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
        plan=(plan := _plan(root.table("plan"), world, span, incident)),
        expectations=tuple(_expectation(e, span) for e in root.tables("expect")),
        faults=tuple(_fault(f, world, plan, span) for f in root.tables("faults")),
        index=index,
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
        kinds=_kinds(r, central),
    )
    codes = (PORTAL_CODE, *world.central_codes(), *world.municipality_codes())
    if world.gateway_code in (*codes, *world.autonomous_codes()):
        raise r.error("gateway_code", f"'{world.gateway_code}' is already an agency's code")
    return world


def _kinds(r: TableReader, central: int) -> dict[str, int]:
    """``world.kinds``: kind -> count, in code order, within the linked agencies' count."""
    if not r.has("kinds"):
        return {}
    table = r.table("kinds")
    if DEFAULT_KIND in table.data:
        raise table.error(DEFAULT_KIND, f"'{DEFAULT_KIND}' is the kind of every agency not "
                          "counted here; it cannot be given a count")  # fmt: skip
    for name in table.data:
        if not name.strip():
            raise table.error(name, "a kind needs a name")
    kinds = {name: table.integer(name, minimum=1) for name in table.data}
    if sum(kinds.values()) > central:
        raise r.error("kinds", f"counts add up to {sum(kinds.values())}; only {central} "
                      "central agencies are linked (world.central_agencies)")  # fmt: skip
    return kinds


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
    rates = {name: r.number(name, minimum=0.0) for name in KEYS["demand"][:4]}
    spread = r.number("central_spread", minimum=0.0, maximum=3.0, default=0.0)
    return Demand(**rates, central_spread=spread)


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
    capacity = r.integer("onboarding_capacity", default=0)
    if r.has("onboarding_capacity") and capacity < 1:
        raise r.error("onboarding_capacity", f"must be >= 1 agency a week, got {capacity} "
                      "(leave the key out for no limit)")  # fmt: skip
    rollback = r.choice("rollback", ROLLBACKS, what="rollback rule", default="pause")
    quarantine_days = r.integer("quarantine_days", minimum=0, maximum=250, default=10)
    fallback_selector = _selector(r, "fallback", world) if _is_selector(r, "fallback") else None
    fallback: tuple[str, ...] = ()
    if r.has("fallback") and fallback_selector is None:
        fallback = _agencies(
            r, "fallback", world, {}, pool=world.linked_codes(), pool_what="linked"
        )
    for needed in ("fallback_start", "fallback_capacity"):
        if (fallback or fallback_selector) and not r.has(needed):
            raise r.error(needed, f"missing required key '{needed}' (plan.fallback is set)")
    fallback_start = r.date("fallback_start") if r.has("fallback_start") else None
    if fallback_start is not None:
        span.check(r, "fallback_start", fallback_start)
    fallback_capacity = r.number("fallback_capacity", above=0.0, maximum=1.0, default=1.0)
    waves: list[Wave] = []
    taken: dict[str, str] = {}  # agency code -> the wave that has it
    for w in r.tables("waves"):
        wave = _wave(w, world, taken, span, incident, earlier=waves, rollback=rollback)
        taken.update(dict.fromkeys(wave.agencies, wave.name))
        waves.append(wave)
    plan = Plan(
        name=name,
        approval_delay_days=delays[0],
        verify_delay_days=delays[1],
        check_failure=check_failure,
        onboarding_capacity=capacity,
        rollback=rollback,
        quarantine_days=quarantine_days,
        dependencies=_dependencies(r, world) if r.has("dependencies") else {},
        fallback=fallback,
        fallback_selector=fallback_selector,
        fallback_start=fallback_start,
        fallback_capacity=fallback_capacity,
        waves=tuple(waves),
    )
    _check_selected(r, plan, world)
    _check_dependencies(r, plan)
    return plan


def _wave(
    w: TableReader,
    world: World,
    taken: Mapping[str, str],
    span: DateRange,
    incident: Incident | None,
    *,
    earlier: list[Wave],
    rollback: str,
) -> Wave:
    w.only(*KEYS["plan.waves"])
    name = w.text("name", nonempty=True)
    for i, other in enumerate(earlier):
        if other.name == name:
            raise w.error("name", f"'{name}' is already the name of plan.waves[{i}]")
    if not earlier and not w.has("start"):
        raise w.error("start", "missing required key 'start' (the first wave needs a date; "
                      "later ones may start when the gate before them passes)")  # fmt: skip
    start = w.date("start") if w.has("start") else None
    if start is not None:
        span.check(w, "start", start)
        if incident is not None and start <= incident.new_generation.date():
            generation = incident.new_generation.date()
            raise w.error("start", f"must be after the day of incident.new_generation "
                          f"({generation})")  # fmt: skip
        before = [other.start for other in earlier if other.start is not None]
        if before and start <= before[-1]:
            raise w.error("start", f"must be after the previous wave's start ({before[-1]})")
    selector = _selector(w, "agencies", world) if _is_selector(w, "agencies") else None
    agencies: tuple[str, ...] = ()
    if selector is None:
        agencies = _agencies(w, "agencies", world, taken, pool=world.central_codes(),
                             pool_what="not in an earlier wave")  # fmt: skip
    deadline = w.date("deadline") if w.has("deadline") else None
    if deadline is not None:
        span.check(w, "deadline", deadline)
        if start is not None and deadline <= start:
            raise w.error("deadline", f"must be after the wave's start ({start})")
    gate = _gate(w.table("gate"), rollback) if w.has("gate") else None
    wave = Wave(
        name=name, start=start, agencies=agencies, selector=selector, deadline=deadline,
        gate=gate, key=w.key(),
    )  # fmt: skip
    return wave


def _gate(g: TableReader, rollback: str) -> Gate:
    g.only(*GATE_KEYS, context=" (not a gate criterion)")
    checks = g.raw("checks_passed") if g.has("checks_passed") else False
    if not isinstance(checks, bool):
        raise g.error("checks_passed", f"expected true or false, got {describe(checks)}")
    return Gate(
        soak_days=g.integer("soak_days", minimum=0, maximum=250, default=0),
        max_error_rate=g.probability("max_error_rate") if g.has("max_error_rate") else None,
        max_p99_ms=g.number("max_p99_ms", above=0.0) if g.has("max_p99_ms") else None,
        max_alerts=g.integer("max_alerts", minimum=0) if g.has("max_alerts") else None,
        checks_passed=checks,
        on_failure=g.choice("on_failure", ROLLBACKS, what="rollback rule", default=rollback),
    )


def _is_selector(r: TableReader, name: str) -> bool:
    return isinstance(r.data.get(name), dict)


def _selector(r: TableReader, name: str, world: World) -> Selector:
    s = r.table(name)
    s.only(*KEYS["selector"])
    by = s.choice("by", SELECTORS, what="selector")
    if by != "kind":
        s.only("by", "count", context=f" for by = '{by}'")
    if by != "kind" and not s.has("count"):
        raise s.error("count", f"missing required key 'count' (by = '{by}' orders every "
                      "agency; say how many to take)")  # fmt: skip
    count = s.integer("count", minimum=1) if s.has("count") else None
    kind = s.choice("kind", world.kind_names(), what="agency kind") if by == "kind" else None
    return Selector(by=by, count=count, kind=kind)


def _check_selected(r: TableReader, plan: Plan, world: World) -> None:
    """Selectors choose among the agencies linked before the incident that the plan does
    not list; their counts, in plan order (waves, then the fallback), must fit in that."""
    listed = plan.listed()
    left = [code for code in world.linked_codes() if code not in listed]
    picks: list[tuple[tuple[str | int, ...], Selector | None]] = [
        (("waves", i, "agencies"), w.selector) for i, w in enumerate(plan.waves)
    ]
    picks.append((("fallback",), plan.fallback_selector))
    taken = 0
    for at, selector in picks:
        if selector is None or selector.count is None:
            continue
        pool = len(left) - taken
        if selector.kind is not None:
            pool = min(pool, sum(1 for code in left if world.kind_of(code) == selector.kind))
        if selector.count > pool:
            what = f"of kind '{selector.kind}' " if selector.kind else ""
            raise r.error((*at, "count"), f"asks for {selector.count} agencies; only {pool} "
                          f"linked agencies {what}are left for selectors (those no wave or "
                          "fallback lists, after the selectors before this one)")  # fmt: skip
        taken += selector.count


def _dependencies(r: TableReader, world: World) -> dict[str, tuple[str, ...]]:
    d = r.table("dependencies")
    central = world.central_codes()
    out: dict[str, tuple[str, ...]] = {}
    for code in d.data:
        if code not in central:
            raise d.error(code, f"unknown agency code '{code}'{_hint_codes(central)}")
        values = d.array(code)
        needs: list[str] = []
        for i, other in enumerate(values):
            if not isinstance(other, str):
                raise d.error((code, i), f"expected an agency code, got {describe(other)}")
            if other not in central:
                raise d.error((code, i), f"unknown agency code '{other}'{_hint_codes(central)}")
            if other == code:
                raise d.error((code, i), f"{code} cannot depend on itself")
            if other in needs:
                raise d.error((code, i), f"{other} is listed twice")
            needs.append(other)
        out[code] = tuple(needs)
    return out


def _hint_codes(central: tuple[str, ...]) -> str:
    return f": only central agencies ({central[0]}..{central[-1]}) can be named here"


def _check_dependencies(r: TableReader, plan: Plan) -> None:
    """No cycle, and nobody waits for an agency that a later wave (or no wave) brings back."""
    deps = plan.dependencies
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(code: str, path: list[str]) -> None:
        state[code] = 1
        for i, other in enumerate(deps.get(code, ())):
            if state.get(other) == 1:
                cycle = " -> ".join([*path[path.index(other) :], other])
                raise r.error(("dependencies", code, i), f"dependency cycle: {cycle}; "
                              "none of these agencies could ever be approved")  # fmt: skip
            if other not in state:
                visit(other, [*path, other])
        state[code] = 2

    for code in deps:
        if code not in state:
            visit(code, [code])
    wave_of = {code: i for i, wave in enumerate(plan.waves) for code in wave.agencies}
    selectors = any(wave.selector is not None for wave in plan.waves)
    for code, needs in deps.items():
        for i, other in enumerate(needs):
            mine, theirs = wave_of.get(code), wave_of.get(other)
            if mine is not None and theirs is not None and theirs > mine:
                raise r.error(("dependencies", code, i), f"{code} (wave '{plan.waves[mine].name}')"
                              f" needs {other}, which only the later wave "
                              f"'{plan.waves[theirs].name}' reconnects")  # fmt: skip
            if (mine is not None or code in plan.fallback) and theirs is None and not selectors:
                where = "is on the direct fallback" if other in plan.fallback else "is in no wave"
                raise r.error(("dependencies", code, i), f"{code} needs {other}, which {where}: "
                              f"{code} could never be approved")  # fmt: skip


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


_FAULT_NUMBERS: Final[Mapping[str, tuple[float, float | None]]] = {
    # key -> (minimum, maximum)
    "latency_ms": (0.0, 600_000.0),
    "jitter_ms": (0.0, 600_000.0),
    "rate_kbps": (0.001, None),
    "average_size": (1.0, None),
    "size_variation": (0.0, None),
    "delay_us": (0.0, 60_000_000.0),
    "timeout_ms": (0.0, 3_600_000.0),
    "skew_seconds": (-86_400.0 * 365, 86_400.0 * 365),
    "new_generation_hours": (0.0, 24.0 * 60),
}
_FAULT_REQUIRED: Final = {
    "latency": ("latency_ms",), "bandwidth": ("rate_kbps",), "slicer": ("average_size",),
    "clock-skew": ("skew_seconds",),
}  # fmt: skip


def _fault(r: TableReader, world: World, plan: Plan, span: DateRange) -> Fault:
    kind = r.choice("kind", tuple(FAULT_KINDS), what="fault kind")
    extra = (*FAULT_KINDS[kind], *(LINK_COMMON if kind in LINK_FAULTS else ()))
    r.only(*FAULT_COMMON, *extra, context=f" for kind '{kind}'")
    target = _fault_target(r, kind, world)
    if r.has("at") == r.has("when"):
        raise r.error("at", "give exactly one of 'at' (a datetime) or 'when' "
                      "(a plan event such as \"gate-passed:pilot\")")  # fmt: skip
    at = r.datetime("at") if r.has("at") else None
    if at is not None:
        span.check(r, "at", at)
    when = _when(r, plan) if r.has("when") else None
    for needed in _FAULT_REQUIRED.get(kind, ()):
        r.raw(needed)
    params = {}
    profile = _attack_profile(r) if kind == "attack" else ""
    for name in FAULT_KINDS[kind]:
        if r.has(name) and name != "profile":
            low, high = _FAULT_NUMBERS[name]
            params[name] = r.number(name, minimum=low, maximum=high)
    if kind == "slicer" and params.get("size_variation", 0) >= params["average_size"]:
        raise r.error("size_variation", "must be below average_size (every slice is at "
                      "least one byte)")  # fmt: skip
    duration = r.number("duration_hours", above=0.0) if r.has("duration_hours") else None
    if kind in ("stolen-key", "second-incident", "attack") and duration is not None:
        raise r.error("duration_hours", f"a {kind} happens once; it has no duration")
    if kind == "gateway-crash" and duration is None:
        raise r.error("duration_hours", "missing required key 'duration_hours' "
                      "(how long the gateway stays down before it restarts)")  # fmt: skip
    return Fault(
        kind=kind,
        key=r.key(),
        target=target,
        at=at,
        when=when,
        after_hours=r.number("after_hours", minimum=0.0, default=0.0),
        duration_hours=duration,
        stream=r.choice("stream", STREAMS, what="stream", default="both"),
        toxicity=r.probability("toxicity", default=1.0),
        params=params,
        profile=profile,
    )


def _attack_profile(r: TableReader) -> str:
    """The name of a shipped adversary profile, or ``all``."""
    return r.choice("profile", profile_names(), what="adversary profile")


def _fault_target(r: TableReader, kind: str, world: World) -> str:
    """Links and agencies need a party's code; platform-wide faults take none."""
    if kind in ("gateway-crash", "second-incident", "attack"):
        if r.has("target"):
            raise r.error("target", f"a {kind} has no target (it hits the whole platform)")
        return ""
    target = r.text("target", nonempty=True)
    if kind == "stolen-key":
        parties, what = world.linked_codes(), "a central agency linked before the incident"
    else:
        parties, what = (PORTAL_CODE, *world.central_codes()), f"{PORTAL_CODE} or a central agency"
    if (
        kind == "stolen-key"
        and target not in parties
        and target in (PORTAL_CODE, *world.central_codes())
    ):
        raise r.error("target", f"a stolen-key fault needs an agency that had a key before "
                      f"the incident (linked: {parties[0]}..{parties[-1]}); '{target}' had "
                      "none")  # fmt: skip
    if target not in parties:
        central = world.central_codes()
        raise r.error("target", f"unknown fault target '{target}': expected {what} "
                      f"({central[0]}..{parties[-1]})")  # fmt: skip
    return target


def _when(r: TableReader, plan: Plan) -> tuple[str, str]:
    value = r.text("when", nonempty=True)
    event, _, wave = value.partition(":")
    if event not in WHEN_EVENTS or not wave:
        raise r.error("when", f"expected '<event>:<wave>' with an event among "
                      f"{', '.join(WHEN_EVENTS)}, got '{value}'")  # fmt: skip
    names = [w.name for w in plan.waves]
    if wave not in names:
        raise r.error("when", f"unknown wave '{wave}'{_hint_wave(wave, names)}")
    if event == "gate-passed" and plan.waves[names.index(wave)].gate is None:
        raise r.error("when", f"wave '{wave}' has no gate to pass")
    return event, wave


def _hint_wave(name: str, names: list[str]) -> str:
    return f" (the plan's waves: {', '.join(names)})" if names else " (the plan has no waves)"


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
    if kind in ("max-backlog", "exposure", "gate-failures"):
        return Expectation(kind=kind, at_most=r.integer("at_most", minimum=0), key=key)
    return Expectation(kind=kind, key=key)
