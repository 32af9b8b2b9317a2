"""The rehearsal end to end on a small world: determinism, plans, the incident's guarantees."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.log import verify
from gateway.store import SqliteLogStore
from scenarios.model import Scenario, load_scenario, with_overrides
from scenarios.runner import RunOutput, run_scenario

SMALL = Path(__file__).parent / "data" / "small.toml"


def _run(scenario: Scenario, out: Path) -> RunOutput:
    ticks = iter(range(1_000_000))
    return run_scenario(scenario, out, wall_clock=lambda: float(next(ticks)))


def _without_run(results: dict[str, Any]) -> dict[str, Any]:
    stripped = copy.deepcopy(results)
    del stripped["run"]
    return stripped


@pytest.fixture(scope="module")
def small() -> Scenario:
    return load_scenario(SMALL)


@pytest.fixture(scope="module")
def first(small: Scenario, tmp_path_factory: pytest.TempPathFactory) -> RunOutput:
    return _run(small, tmp_path_factory.mktemp("first"))


def test_same_seed_gives_identical_results_bytes(
    small: Scenario, first: RunOutput, tmp_path: Path
) -> None:
    """Two runs with one seed write the same results.json, apart from the wall-clock block."""
    second = _run(small, tmp_path)
    one = json.loads(first.results_path.read_text())
    two = json.loads(second.results_path.read_text())
    assert _without_run(one) == _without_run(two)
    assert one["gateway"]["log_head"] == two["gateway"]["log_head"]


def test_another_seed_gives_another_run(small: Scenario, first: RunOutput, tmp_path: Path) -> None:
    """A different --seed changes the world (and so the log)."""
    other = _run(with_overrides(small, seed=8), tmp_path)
    assert other.results["gateway"]["log_head"] != first.results["gateway"]["log_head"]
    assert other.results["scenario"]["seed"] == 8


def test_bigger_pilot_connects_more_agencies_by_july(
    small: Scenario, first: RunOutput, tmp_path: Path
) -> None:
    """A plan whose pilot wave is bigger has more agencies connected on 2015-07-31."""
    plan = small.plan
    pilot, rest = plan.waves[0], plan.waves[1:]
    taken = set(pilot.agencies) | {c for w in rest for c in w.agencies}
    extra = tuple(
        c for c in small.world.linked_codes() if c not in taken and c not in plan.fallback
    )
    bigger = dataclasses.replace(pilot, agencies=pilot.agencies + extra[:6])
    scenario = dataclasses.replace(small, plan=dataclasses.replace(plan, waves=(bigger, *rest)))
    out = _run(scenario, tmp_path)
    july = "2015-07-31"
    base = first.results["agencies"]["report_dates"][july]["central_connected"]
    more = out.results["agencies"]["report_dates"][july]["central_connected"]
    assert more > base


def test_no_message_under_a_superseded_key_is_accepted(first: RunOutput) -> None:
    """Stale senders try their old keys after the new generation; every try is refused."""
    gateway = first.results["gateway"]
    assert gateway["superseded_key_accepted"] == 0
    assert gateway["stale_key_attempts"].get("superseded-key", 0) > 0
    assert set(gateway["stale_key_attempts"]) == {"superseded-key"}
    assert gateway["rejected_by_reason"]["superseded-key"] >= 1


def test_the_log_on_disk_verifies_and_matches_the_results(first: RunOutput) -> None:
    """log.db is a real hash-chained SQLite log whose head is the one in results.json."""
    store = SqliteLogStore(first.log_path)
    try:
        records = list(store.records())
    finally:
        store.close()
    assert verify(records).ok
    assert records[-1].hash == first.results["gateway"]["log_head"]
    actions = [r.fields.get("action") for r in records if r.kind == "admin"]
    assert "disconnect-all" in actions
    assert "open-generation" in actions


def test_messages_are_really_relayed(first: RunOutput) -> None:
    """ATI requests and answers to linked agencies go through the gateway as signed messages."""
    kinds = first.results["gateway"]["records_by_kind"]
    assert kinds["request"] > 100
    assert kinds["response"] > 100


def test_incident_timeline_and_waves_are_reported(first: RunOutput) -> None:
    """The timeline lists the incident's steps; each wave reports how many it reconnected."""
    events = [e["event"] for e in first.results["timeline"]]
    for step in ("attack-detected", "disconnect-all", "new-key-generation", "fallback"):
        assert step in events
    waves = first.results["agencies"]["waves"]
    assert waves["pilot"]["connected"] == 4
    assert first.results["agencies"]["linked_at_incident"] == 20


def test_expectations_are_evaluated(first: RunOutput) -> None:
    """Each [[expect]] has a result with the key it came from."""
    results = first.results["expectations"]
    assert [r["key"] for r in results] == ["expect[0]", "expect[1]", "expect[2]"]
    assert first.held == all(r["held"] for r in results)


def test_calibration_rows_have_report_and_simulated(first: RunOutput) -> None:
    """Each calibration row carries the report's figure and a simulated one (or null)."""
    for row in first.results["calibration"]:
        assert {"figure", "report", "simulated"} <= set(row)


def test_deadline_accounting_by_group(first: RunOutput) -> None:
    """Per group: filed >= answered, and breaches + in time == due."""
    for name, group in first.results["ati"]["groups"].items():
        assert group["filed"] >= group["answered"], name
        assert group["deadline_breaches"] + group["answered_in_time"] == group["due_by_end"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_more_onboarding_capacity_never_delays_full_reconnection(
    small: Scenario, tmp_path: Path, seed: int
) -> None:
    """Raising plan.onboarding_capacity never makes full reconnection later."""
    days = []
    for capacity in (1, 3, 0):  # 0: no limit
        plan = dataclasses.replace(small.plan, onboarding_capacity=capacity)
        scenario = dataclasses.replace(small, plan=plan, seed=seed)
        out = _run(scenario, tmp_path / f"c{capacity}")
        day = out.results["plan"]["days_to_full_reconnection"]
        days.append(10_000 if day is None else day)
    assert days == sorted(days, reverse=True)
    assert days[0] > days[-1]


@pytest.mark.parametrize("seed", [1, 2])
def test_without_fallback_more_central_requests_go_unanswered(
    small: Scenario, tmp_path: Path, seed: int
) -> None:
    """Dropping the direct-access fallback leaves more central ATI requests never answered."""

    def never(fallback: tuple[str, ...]) -> int:
        plan = dataclasses.replace(small.plan, fallback=fallback)
        out = _run(dataclasses.replace(small, plan=plan, seed=seed), tmp_path / str(len(fallback)))
        central = out.results["ati"]["groups"]["central"]
        return int(central["due_by_end"] - central["answered_in_time"] - central["answered_late"])

    assert never(()) > never(small.plan.fallback)


def test_a_work_time_past_the_calendar_never_crashes_the_run(
    small: Scenario, tmp_path: Path
) -> None:
    """A work time drawn far in the tail (hundreds of business days) leaves the request open."""
    slow = dataclasses.replace(
        small.behaviour["offline_municipality"], answer_days_median=400.0, answer_days_sigma=0.1
    )
    behaviour = {**small.behaviour, "offline_municipality": slow}
    out = _run(dataclasses.replace(small, behaviour=behaviour), tmp_path)
    offline = out.results["ati"]["groups"]["offline_municipality"]
    assert offline["filed"] > 0
    assert offline["answered"] == 0
