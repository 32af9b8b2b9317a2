"""Reconnection plans in the rehearsal: gates, rollback rules, selectors, dependencies, faults.

Every test runs tests/scenarios/data/plan.toml (a small world, three waves: a gated pilot,
a gated wave chosen by ATI volume, the rest in dependency order), with ``--set`` style
overrides for the variation it checks, and asserts on what the simulation reports.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from gateway.log import verify
from gateway.store import SqliteLogStore
from scenarios.model import load_scenario
from scenarios.runner import RunOutput, run_scenario
from scenarios.simulation import Simulation, _dependency_order

PLAN = Path(__file__).parent / "data" / "plan.toml"
#: The latency fault on AG003's link, replaced by the fault a test needs.
FAULT = "faults[0]"


def _run(
    out: Path,
    overrides: Mapping[str, str] | None = None,
    prepare: Callable[[Simulation], None] | None = None,
) -> RunOutput:
    ticks = iter(range(1_000_000))
    scenario = load_scenario(PLAN, overrides=overrides)
    return run_scenario(scenario, out, wall_clock=lambda: float(next(ticks)), prepare=prepare)


def _events(results: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [e for e in results["timeline"] if e["event"] == name]


def _row(results: dict[str, Any], code: str) -> dict[str, Any]:
    return next(r for r in results["plan"]["agency_table"] if r["code"] == code)


def _day(value: str) -> dt.date:
    return dt.date.fromisoformat(value)


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _run(tmp_path_factory.mktemp("gated")).results


def test_failing_gate_quarantines_the_agency_that_failed_it(gated: dict[str, Any]) -> None:
    """The latency toxic on AG003's link breaks the pilot's p99 limit: AG003, and only it,
    goes to quarantine; it re-enrols later with a fresh key and ends connected."""
    pilot = gated["agencies"]["waves"]["pilot"]
    first = pilot["gate"]["evaluations"][0]
    assert first["passed"] is False
    assert "p99_ms" in first["failed"]
    assert first["metrics"]["p99_ms"] >= 4000  # the toxic's latency, measured
    assert pilot["quarantined"] == ["AG003"]
    quarantined_on = _events(gated, "quarantine")[0]["date"]
    ag003 = _row(gated, "AG003")
    assert ag003["state"] == "connected"
    assert _day(ag003["back"]) > _day(quarantined_on)
    assert gated["plan"]["gate_failures"] >= 1


def test_an_alert_anyone_could_cause_holds_the_gate_but_frames_nobody(
    gated: dict[str, Any],
) -> None:
    """The stolen pre-incident key of AG002 is refused and raises an alert: the gate does
    not pass while it is in the window, yet AG002 is not rolled back for it."""
    refused = _events(gated, "stolen-key-refused")
    assert [(e["target"], e["reason"]) for e in refused] == [("AG002", "superseded-key")]
    pilot = gated["agencies"]["waves"]["pilot"]
    assert any("alerts" in e["failed"] for e in pilot["gate"]["evaluations"])
    assert "AG002" not in pilot["quarantined"] + pilot["fell_back"]
    assert pilot["gate"]["evaluations"][-1]["passed"] is True
    assert gated["plan"]["exposure_seconds"] == 0


def test_next_wave_starts_only_after_the_gate_passed(gated: dict[str, Any]) -> None:
    waves = gated["agencies"]["waves"]
    assert _day(waves["volume"]["start"]) > _day(waves["pilot"]["gate"]["passed"])
    assert waves["volume"]["planned_start"] is None
    assert _day(waves["rest"]["start"]) > _day(waves["volume"]["gate"]["passed"])


def test_ati_volume_selector_takes_the_busiest_agencies_left(gated: dict[str, Any]) -> None:
    """Every agency the volume wave chose had filed at least as many requests as the
    busiest agency it left out, and none of them is listed elsewhere in the plan."""
    why = gated["agencies"]["waves"]["volume"]["selector"]
    assert why["by"] == "ati-volume"
    assert len(why["scores"]) == 4
    assert min(why["scores"].values()) >= why["best_left_out"]
    assert not set(why["scores"]) & {"AG001", "AG002", "AG003", "AG004"}


def test_an_agency_is_approved_only_after_its_dependency_is_connected(
    gated: dict[str, Any],
) -> None:
    """plan.dependencies: AG004 needs AG001."""
    assert _day(_row(gated, "AG004")["back"]) >= _day(_row(gated, "AG001")["back"])


def test_agency_table_has_a_row_per_planned_agency(gated: dict[str, Any]) -> None:
    table = gated["plan"]["agency_table"]
    waves = gated["agencies"]["waves"]
    planned = {c for w in waves.values() for c in w["codes"]}
    assert planned <= {r["code"] for r in table}
    assert {r["wave"] for r in table} >= {"pilot", "volume", "rest"}
    assert all(r["requests"] >= r["answered_late"] + r["never_answered"] for r in table)
    assert {r["route"] for r in table if r["wave"] is None} == {"direct"}  # the fallback


def test_link_fault_is_reported_with_its_window_and_exchanges_hit(gated: dict[str, Any]) -> None:
    latency = gated["faults"][0]
    assert (latency["kind"], latency["target"]) == ("latency", "AG003")
    assert latency["affected"] > 0
    start, end = dt.datetime.fromisoformat(latency["start"]), latency["end"]
    assert dt.datetime.fromisoformat(end) - start == dt.timedelta(hours=720)


def test_fallback_rollback_sends_the_failing_agency_to_direct_access(tmp_path: Path) -> None:
    results = _run(tmp_path, {"plan.rollback": '"fallback"'}).results
    pilot = results["agencies"]["waves"]["pilot"]
    assert pilot["fell_back"] == ["AG003"]
    assert pilot["quarantined"] == []
    row = _row(results, "AG003")
    assert (row["route"], row["state"]) == ("direct", "direct")
    assert _events(results, "rollback-fallback")


def test_pause_holds_the_next_wave_until_the_fault_is_over(tmp_path: Path) -> None:
    """With on_failure = pause nobody is rolled back: the gate is judged again each business
    day and passes only once the latency toxic is gone and out of the window."""
    results = _run(tmp_path, {"plan.waves[0].gate.on_failure": '"pause"'}).results
    pilot = results["agencies"]["waves"]["pilot"]
    assert pilot["quarantined"] == pilot["fell_back"] == []
    fault_end = dt.datetime.fromisoformat(results["faults"][0]["end"]).date()
    assert _day(pilot["gate"]["passed"]) > fault_end
    assert len(pilot["gate"]["evaluations"]) > 3
    assert results["plan"]["gate_failures"] == len(pilot["gate"]["evaluations"]) - 1
    assert _day(results["agencies"]["waves"]["volume"]["start"]) > fault_end


def test_stolen_key_defence_off_shows_exposure(tmp_path: Path) -> None:
    """With the trust store's refusal of distrusted keys turned off, the stolen key is
    certified again: the run reports exposure. The defence is what keeps it at zero."""

    def defence_off(simulation: Simulation) -> None:
        simulation.plumbing.trust.refuse_distrusted = False

    results = _run(tmp_path, prepare=defence_off).results
    assert _events(results, "stolen-key-enrolled")
    assert results["plan"]["exposure_seconds"] > 30 * 86_400  # to the end of the run


def test_clock_skew_makes_the_agency_fail_its_checks(tmp_path: Path) -> None:
    """An agency whose clock runs ten minutes ahead has its messages refused for clock
    skew: its error rate breaks the pilot's gate and it alone is quarantined."""
    fault = '{ kind = "clock-skew", target = "AG001", when = "wave-connected:pilot", ' + (
        "skew_seconds = 600 }"
    )
    results = _run(tmp_path, {FAULT: fault}).results
    pilot = results["agencies"]["waves"]["pilot"]
    assert "AG001" in pilot["quarantined"]
    assert "AG004" not in pilot["quarantined"]
    assert results["gateway"]["rejected_by_reason"].get("clock-skew", 0) > 0


def test_gateway_crash_pauses_the_plan_without_blaming_any_agency(tmp_path: Path) -> None:
    """While the gateway is down every exchange fails; that is the platform's fault, so the
    gate holds the plan (no quarantine) and passes once the crash is out of the window."""
    crash = '{ kind = "gateway-crash", when = "wave-connected:pilot", duration_hours = 48 }'
    overrides = {
        FAULT: crash,
        "faults[1]": crash.replace("wave-connected:pilot", "wave-start:rest"),
    }
    output = _run(tmp_path, overrides)
    results = output.results
    pilot = results["agencies"]["waves"]["pilot"]
    assert pilot["quarantined"] == pilot["fell_back"] == []
    failed = [e for e in pilot["gate"]["evaluations"] if not e["passed"]]
    assert failed
    assert all(e["metrics"]["error_rate"] > 0 for e in failed)
    assert pilot["gate"]["passed"] is not None
    assert [f["end"] is not None for f in results["faults"]] == [True, True]
    store = SqliteLogStore(output.log_path)
    try:
        assert verify(store.records()).ok
    finally:
        store.close()


def test_second_incident_sends_connected_agencies_back_through_enrolment(tmp_path: Path) -> None:
    """A second attack after the pilot's gate: all off the gateway, a third key generation,
    the pilot's agencies re-enrol and come back; no old key is ever accepted."""
    fault = '{ kind = "second-incident", when = "gate-passed:pilot", after_hours = 2 }'
    results = _run(tmp_path, {FAULT: fault}).results
    incident = _events(results, "second-incident")
    assert len(incident) == 1
    assert incident[0]["agencies"] > 0
    generations = [e["generation"] for e in _events(results, "new-key-generation")]
    assert generations == [2, 3]
    hit = _day(incident[0]["date"])
    for code in ("AG001", "AG002", "AG004"):
        row = _row(results, code)
        assert row["state"] == "connected"
        assert _day(row["back"]) > hit
    assert results["gateway"]["superseded_key_accepted"] == 0
    assert results["plan"]["exposure_seconds"] == 0


def test_dependency_order_puts_every_agency_after_what_it_needs() -> None:
    order = _dependency_order(
        ["AG005", "AG001", "AG003", "AG002"], {"AG001": ("AG003",), "AG003": ("AG005",)}
    )
    assert order == ["AG002", "AG005", "AG003", "AG001"]
    assert _dependency_order(["AG002", "AG001"], {"AG001": ("AG009",)}) == ["AG001", "AG002"]


def test_attack_during_the_waves_is_blocked_and_holds_the_gate(tmp_path: Path) -> None:
    """An outsider attacks while the pilot soaks: every in-process technique is blocked,
    the alerts hold the pilot's zero-alert gate, and nobody is rolled back for traffic
    they did not sign. The same seed gives the same scorecard."""
    fault = '{ kind = "attack", profile = "outsider", when = "wave-connected:pilot" }'
    overrides = {
        FAULT: fault,
        "faults[1]": fault.replace("wave-connected:pilot", "wave-start:rest"),
    }
    results = _run(tmp_path / "one", overrides).results
    first, second = results["attacks"]
    assert first["counts"]["holes"] == 0
    assert first["counts"]["techniques"] > 10
    assert "slowloris" in first["skipped"]  # needs real sockets: live lab only
    pilot = results["agencies"]["waves"]["pilot"]
    assert any("alerts" in e["failed"] for e in pilot["gate"]["evaluations"])
    assert pilot["quarantined"] == []
    assert [e["event"] for e in results["timeline"]].count("attack") == 2
    again = _run(tmp_path / "two", overrides).results
    assert again["attacks"] == results["attacks"]
    assert again["gateway"]["log_head"] == results["gateway"]["log_head"]
    assert second["counts"]["holes"] == 0
