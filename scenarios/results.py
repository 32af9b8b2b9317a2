"""From a finished simulation to ``results.json``: measures, calibration, expectations.

The calibration table sets each figure of the source report (U4 Report 2015:2, DESIGN.md)
beside the same quantity measured in the simulation. The report's figures are constants
here, with their source; the simulated ones are computed from what happened in the run.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from agents.institutions import AtiRequest, Group
from gateway.log import LogRecord, verify
from gateway.trust import TrustStore
from scenarios.model import Expectation, Scenario
from scenarios.simulation import DaySample, SimulationOutcome

__all__ = [
    "CALIBRATION_CUTOFF",
    "RESULTS_SCHEMA",
    "CalibrationRow",
    "ExpectationResult",
    "GatewayFigures",
    "build_results",
    "gateway_figures",
]

RESULTS_SCHEMA = "pasarela.results/1"
#: The report describes the portal as of July 2015.
CALIBRATION_CUTOFF = dt.date(2015, 7, 31)
_MAY_2015 = dt.date(2015, 5, 31)


@dataclass(frozen=True, slots=True, kw_only=True)
class CalibrationRow:
    figure: str
    report: float
    simulated: float | None
    unit: str
    tolerance: float = 0.10

    @property
    def within(self) -> bool | None:
        if self.simulated is None:
            return None
        return abs(self.simulated - self.report) <= self.tolerance * abs(self.report)

    def as_dict(self) -> dict[str, Any]:
        return {
            "figure": self.figure,
            "report": self.report,
            "simulated": self.simulated,
            "unit": self.unit,
            "within_tolerance": self.within,
            "tolerance": self.tolerance,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ExpectationResult:
    kind: str
    key: str
    held: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "held": self.held, "detail": self.detail}


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayFigures:
    """What the message log says happened at the gateway."""

    records: int
    verified: bool
    head: str
    by_kind: dict[str, int]
    rejected: dict[str, int]
    superseded_accepted: int


def gateway_figures(records: Iterable[LogRecord], trust: TrustStore) -> GatewayFigures:
    """One streaming pass over the log: counts by kind and reason, the chain check, and
    messages accepted under superseded keys (constant memory, however long the log)."""
    stream = iter(records)
    by_kind: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    generation = 1
    superseded = 0
    last = ""

    def counted() -> Iterator[LogRecord]:
        nonlocal generation, superseded, last
        for record in stream:
            by_kind[record.kind] += 1
            fields = record.fields
            if record.kind == "admin" and fields.get("action") == "open-generation":
                generation = int(str(fields.get("generation")))
            elif record.kind == "request":
                key = trust.lookup(str(fields.get("kid")))
                if key is None or key.generation < generation:
                    superseded += 1
            elif "reason" in fields and record.kind.endswith("rejection"):
                rejected[str(fields["reason"])] += 1
            last = record.hash
            yield record

    check = verify(counted())
    for _ in counted():  # verify stops at the first bad record; count the rest anyway
        pass
    return GatewayFigures(
        records=sum(by_kind.values()),
        verified=check.ok,
        head=last,
        by_kind=dict(sorted(by_kind.items())),
        rejected=dict(sorted(rejected.items())),
        superseded_accepted=superseded,
    )


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _group_figures(requests: list[AtiRequest], end: dt.date) -> dict[str, Any]:
    filed = len(requests)
    answered = sum(1 for r in requests if r.answered is not None)
    due = [r for r in requests if r.deadline <= end]
    in_time = sum(1 for r in due if r.in_time)
    late = sum(1 for r in due if r.answered is not None and not r.in_time)
    return {
        "filed": filed,
        "answered": answered,
        "answer_rate": _rate(answered, filed),
        "due_by_end": len(due),
        "answered_in_time": in_time,
        "answered_late": late,
        "deadline_breaches": len(due) - in_time,
        "in_time_rate": _rate(in_time, len(due)),
    }


def _sample_on(samples: list[DaySample], day: dt.date) -> DaySample | None:
    return next((s for s in samples if s.day == day), None)


def _calibration(outcome: SimulationOutcome) -> list[CalibrationRow]:
    requests = [r for r in outcome.requests if r.filed <= CALIBRATION_CUTOFF]
    portal = [r for r in requests if r.through_portal]
    by_group: dict[Group, list[AtiRequest]] = {g: [] for g in Group}
    for r in requests:
        by_group[r.group].append(r)

    def answered_share(group: Group) -> float | None:
        rows = by_group[group]
        share = _rate(sum(1 for r in rows if r.answered is not None), len(rows))
        return None if share is None else round(share * 100, 1)

    may = _sample_on(outcome.samples, _MAY_2015)
    july = _sample_on(outcome.samples, CALIBRATION_CUTOFF)
    pilot = next(iter(outcome.waves.values()), None)
    municipal = sum(1 for r in portal if r.group is Group.MUNICIPALITY)
    return [
        CalibrationRow(
            figure="Agencies linked through the gateway when the attack hit",
            report=145,
            simulated=outcome.linked_at_incident or None,
            unit="agencies",
        ),
        CalibrationRow(
            figure="Central agencies using the portal, May 2015",
            report=14,
            simulated=None if may is None else may.central_connected + may.central_direct,
            unit="agencies",
        ),
        CalibrationRow(
            figure="Central agencies using the portal, July 2015",
            report=52,
            simulated=None if july is None else july.central_connected + july.central_direct,
            unit="agencies",
        ),
        CalibrationRow(
            figure="Reconnection pilot, agencies reconnected",
            report=17,
            simulated=None if pilot is None else float(str(pilot["connected"])),
            unit="agencies",
        ),
        CalibrationRow(
            figure="ATI requests processed through the portal by July 2015",
            report=46_636,
            simulated=len(portal) if portal else None,
            unit="requests",
        ),
        CalibrationRow(
            figure="Share of those addressed to municipalities",
            report=90.0,
            simulated=round(municipal / len(portal) * 100, 1) if portal else None,
            unit="%",
        ),
        CalibrationRow(
            figure="ATI requests answered, municipalities on the portal",
            report=84.5,
            simulated=answered_share(Group.MUNICIPALITY),
            unit="%",
        ),
        CalibrationRow(
            figure="ATI requests answered, municipalities not on the portal",
            report=26.9,
            simulated=answered_share(Group.OFFLINE_MUNICIPALITY),
            unit="%",
        ),
        CalibrationRow(
            figure="ATI requests answered, central level",
            report=71.1,
            simulated=answered_share(Group.CENTRAL),
            unit="%",
        ),
    ]


def _check(
    expectation: Expectation,
    outcome: SimulationOutcome,
    gateway: GatewayFigures,
    groups: dict[str, dict[str, Any]],
) -> ExpectationResult:
    kind = expectation.kind
    if kind == "no-superseded-key-accepted":
        accepted = gateway.superseded_accepted + outcome.stale_attempts.get("accepted", 0)
        refused = outcome.stale_attempts.get("superseded-key", 0)
        return ExpectationResult(
            kind=kind,
            key=expectation.key,
            held=accepted == 0,
            detail=f"{accepted} accepted under a superseded key; {refused} attempts refused",
        )
    if kind == "connected-by":
        assert expectation.date is not None
        assert expectation.at_least is not None
        sample = _sample_on(outcome.samples, expectation.date)
        connected = sample.central_connected if sample else 0
        return ExpectationResult(
            kind=kind,
            key=expectation.key,
            held=connected >= expectation.at_least,
            detail=f"{connected} central agencies connected on {expectation.date.isoformat()}"
            f" (at least {expectation.at_least:g})",
        )
    if kind == "answered-in-time":
        assert expectation.at_least is not None
        scope = expectation.scope or "all"
        rate = groups[scope]["in_time_rate"] or 0.0
        return ExpectationResult(
            kind=kind,
            key=expectation.key,
            held=rate >= expectation.at_least,
            detail=f"{rate:.1%} of {scope} requests due by the end were answered in time"
            f" (at least {expectation.at_least:.1%})",
        )
    if kind == "max-backlog":
        assert expectation.at_most is not None
        peak = max((s.backlog for s in outcome.samples), default=0)
        return ExpectationResult(
            kind=kind,
            key=expectation.key,
            held=peak <= expectation.at_most,
            detail=f"backlog peaked at {peak} requests (at most {expectation.at_most:g})",
        )
    if kind == "attacks-blocked":
        holes = sum(a["counts"]["holes"] for a in outcome.attacks)
        ran = sum(a["counts"]["techniques"] for a in outcome.attacks)
        return ExpectationResult(
            kind=kind,
            key=expectation.key,
            held=holes == 0,
            detail=f"{ran - holes} of {ran} attack techniques blocked in "
            f"{len(outcome.attacks)} attack(s)",
        )
    if kind == "exposure":
        assert expectation.at_most is not None
        seconds = outcome.exposure_seconds
        return ExpectationResult(
            kind=kind,
            key=expectation.key,
            held=seconds <= expectation.at_most,
            detail=f"distrusted keys were usable for {seconds:,.0f} s "
            f"(at most {expectation.at_most:g})",
        )
    if kind == "gate-failures":
        assert expectation.at_most is not None
        return ExpectationResult(
            kind=kind,
            key=expectation.key,
            held=outcome.gate_failures <= expectation.at_most,
            detail=f"{outcome.gate_failures} gate evaluations failed "
            f"(at most {expectation.at_most:g})",
        )
    return ExpectationResult(kind=kind, key=expectation.key, held=False, detail="unknown kind")


def _daily(samples: list[DaySample], requests: list[AtiRequest]) -> dict[str, list[Any]]:
    """Day-by-day series for charts: one list per measure, aligned with ``dates``."""
    breaches: Counter[dt.date] = Counter()
    for request in requests:
        if request.through_portal and not request.in_time:
            breaches[request.deadline] += 1
    running, cumulative = 0, []
    for sample in samples:
        running += breaches.get(sample.day, 0)
        cumulative.append(running)
    return {
        "dates": [s.day.isoformat() for s in samples],
        "central_connected": [s.central_connected for s in samples],
        "central_direct": [s.central_direct for s in samples],
        "municipalities_on_portal": [s.municipalities_on_portal for s in samples],
        "backlog": [s.backlog for s in samples],
        "filed_through_portal": [s.filed_through_portal for s in samples],
        "deadline_breaches_cumulative": cumulative,
    }


def _monthly(samples: list[DaySample]) -> list[dict[str, Any]]:
    out = []
    for i, sample in enumerate(samples):
        last_of_month = i + 1 == len(samples) or samples[i + 1].day.month != sample.day.month
        if last_of_month:
            out.append(
                {
                    "date": sample.day.isoformat(),
                    "central_connected": sample.central_connected,
                    "central_direct": sample.central_direct,
                    "municipalities_on_portal": sample.municipalities_on_portal,
                    "autonomous_on_portal": sample.autonomous_on_portal,
                    "backlog": sample.backlog,
                    "filed_through_portal": sample.filed_through_portal,
                }
            )
    return out


def _plan_figures(scenario: Scenario, outcome: SimulationOutcome) -> dict[str, Any]:
    """How far the plan got: agencies back, when the last one came back, what it cost."""
    named = set(outcome.plan_agencies)
    back = {code: day for code, day in outcome.back.items() if code in named}
    complete = bool(named) and len(back) == len(named)
    last = max(back.values()) if complete else None
    start = scenario.incident.disconnect.date() if scenario.incident else scenario.start
    return {
        "agencies": len(named),
        "back": len(back),
        "full_reconnection": last.isoformat() if last else None,
        "days_to_full_reconnection": (last - start).days if last else None,
        "fallback_answers": outcome.fallback_answers,
        "check_failures": outcome.check_failures,
        "gate_failures": outcome.gate_failures,
        "exposure_seconds": round(outcome.exposure_seconds, 3),
        "agencies_back": {code: back[code].isoformat() for code in sorted(back)},
        "agency_table": _agency_table(scenario, outcome),
    }


def _agency_table(scenario: Scenario, outcome: SimulationOutcome) -> list[dict[str, Any]]:
    """One row per agency the plan named or chose: where it went and what its users saw."""
    requests: Counter[str] = Counter()
    late: Counter[str] = Counter()
    never: Counter[str] = Counter()
    for request in outcome.requests:
        if request.group is not Group.CENTRAL or request.institution not in outcome.plan_agencies:
            continue
        requests[request.institution] += 1
        if request.deadline <= scenario.end and not request.in_time:
            if request.answered is None:
                never[request.institution] += 1
            else:
                late[request.institution] += 1
    rows = []
    for code in sorted(outcome.plan_agencies):
        state = outcome.final_states.get(code)
        day = outcome.back.get(code)
        route = None
        if day is not None:
            route = "direct" if state == "direct" else "gateway"
        rows.append(
            {
                "code": code,
                "kind": scenario.world.kind_of(code),
                "wave": outcome.plan_agencies[code],
                "back": day.isoformat() if day else None,
                "route": route,
                "state": state,
                "check_failures": outcome.agency_check_failures.get(code, 0),
                "requests": requests[code],
                "answered_late": late[code],
                "never_answered": never[code],
            }
        )
    return rows


def build_results(
    scenario: Scenario,
    outcome: SimulationOutcome,
    gateway: GatewayFigures,
    *,
    run: dict[str, Any],
) -> dict[str, Any]:
    """The results document; only ``run`` names wall-clock time."""
    portal = [r for r in outcome.requests if r.through_portal]
    groups: dict[str, dict[str, Any]] = {"all": _group_figures(portal, scenario.end)}
    for group in Group:
        groups[group.value] = _group_figures(
            [r for r in outcome.requests if r.group is group], scenario.end
        )
    checks = [_check(e, outcome, gateway, groups) for e in scenario.expectations]
    calibration = _calibration(outcome)
    report_days = {
        day.isoformat(): {
            "central_connected": s.central_connected,
            "central_direct": s.central_direct,
            "municipalities_on_portal": s.municipalities_on_portal,
            "backlog": s.backlog,
        }
        for day in scenario.report_dates
        if (s := _sample_on(outcome.samples, day)) is not None
    }
    return {
        "schema": RESULTS_SCHEMA,
        "scenario": {
            "name": scenario.name,
            "file": scenario.path.name,
            "seed": scenario.seed,
            "start": scenario.start.isoformat(),
            "end": scenario.end.isoformat(),
            "plan": scenario.plan.name,
        },
        "run": run,
        "simulated": {
            "days": len(outcome.samples),
            "events": outcome.events,
            "messages_sent": outcome.messages_sent,
        },
        "gateway": {
            "log_records": gateway.records,
            "log_verified": gateway.verified,
            "log_head": gateway.head,
            "records_by_kind": gateway.by_kind,
            "rejected_by_reason": gateway.rejected,
            "superseded_key_accepted": gateway.superseded_accepted,
            "stale_key_attempts": dict(sorted(outcome.stale_attempts.items())),
        },
        "agencies": {
            "linked_at_incident": outcome.linked_at_incident,
            "check_failures": outcome.check_failures,
            "waves": outcome.waves,
            "report_dates": report_days,
            "monthly": _monthly(outcome.samples),
        },
        "daily": _daily(outcome.samples, outcome.requests),
        "ati": {
            "groups": groups,
            "backlog_peak": max((s.backlog for s in outcome.samples), default=0),
        },
        "plan": _plan_figures(scenario, outcome),
        "faults": outcome.faults,
        "attacks": outcome.attacks,
        "timeline": outcome.timeline,
        "calibration": [row.as_dict() for row in calibration],
        "expectations": [c.as_dict() for c in checks],
        "held": all(c.held for c in checks),
    }
