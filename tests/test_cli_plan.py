"""`pasarela plan validate` and the feasibility check: a plan that can never finish is an
error naming file, key and line (exit 2), and a warning before `pasarela run`."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pasarela.cli import main
from scenarios.feasibility import earliest_schedule, plan_problems
from scenarios.model import Scenario, load_scenario

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "scenarios" / "library"
BIG_BANG = LIBRARY / "pisee-2015-big-bang.toml"
DATA = ROOT / "tests" / "scenarios" / "data"
SMALL = DATA / "small.toml"
PLAN = DATA / "plan.toml"

#: small.toml's second wave (6 agencies from 2015-06-15), late at one agency a week.
LATE_WAVE = ["--set", "plan.onboarding_capacity=1", "--set", "plan.waves[1].deadline=2015-06-30"]


def _line(path: Path, text: str) -> int:
    """The 1-based line of the only line of ``path`` that starts with ``text``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found = [n for n, line in enumerate(lines, 1) if line.startswith(text)]
    assert len(found) == 1, (path, text, found)
    return found[0]


@cache
def _scenario(path: Path) -> Scenario:
    return load_scenario(path)


# -- plan validate ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(LIBRARY.glob("*.toml")), ids=lambda p: p.stem)
def test_library_plans_are_feasible(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every plan shipped in scenarios/library/ validates: exit 0, "plan OK", no stderr."""
    assert main(["plan", "validate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert f"{path}: plan OK" in out
    assert err == ""


def test_validate_prints_the_earliest_schedule(capsys: pytest.CaptureFixture[str]) -> None:
    """The table names each wave, and the summary line the capacity and dependencies."""
    assert main(["plan", "validate", str(PLAN)]) == 0
    out = capsys.readouterr().out
    assert "the earliest schedule the plan allows" in out
    assert all(name in out for name in ("pilot", "volume", "rest"))
    assert "3 waves, 2 faults, onboarding capacity 3 a week, 1 dependencies" in out


def test_wave_too_big_for_the_capacity_before_its_deadline(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Exit 2 at the wave's agencies key and line; the message says how many weeks it needs."""
    assert main(["plan", "validate", str(SMALL), *LATE_WAVE]) == 2
    captured = capsys.readouterr()
    line = _line(SMALL, "agencies = 6")
    assert f"pasarela: {SMALL}:{line}: plan.waves[1].agencies: wave 'wave 2' cannot finish: " in (
        captured.err
    )
    assert (
        "6 agencies through approval at 1 a week (at least 6 weeks) from 2015-06-15" in captured.err
    )
    assert "after its deadline (2015-06-30)" in captured.err
    assert "the plan cannot finish (1 problem(s))" in captured.out


def test_wave_too_big_for_the_capacity_before_the_scenario_end(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without a deadline the scenario's end is the limit: 145 agencies at 2 a week."""
    args = ["plan", "validate", str(BIG_BANG), "--set", "plan.onboarding_capacity=2"]
    assert main(args) == 2
    err = capsys.readouterr().err
    line = _line(BIG_BANG, "agencies = 145")
    assert f"{BIG_BANG}:{line}: plan.waves[0].agencies: wave 'everyone' cannot finish" in err
    assert "145 agencies through approval at 2 a week (at least 73 weeks)" in err
    assert "after the scenario's end (2015-09-30)" in err


def test_weeks_needed_are_counted_past_the_end_of_the_calendar(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """145 agencies at 1 a week need 145 weeks, even past 2016-12-31."""
    args = ["plan", "validate", str(BIG_BANG), "--set", "plan.onboarding_capacity=1"]
    assert main(args) == 2
    assert "at 1 a week (at least 145 weeks)" in capsys.readouterr().err


def test_gate_on_checks_when_every_check_fails(capsys: pytest.CaptureFixture[str]) -> None:
    """checks_passed with plan.check_failure = 1 can never pass: exit 2 at that key."""
    assert main(["plan", "validate", str(PLAN), "--set", "plan.check_failure=1"]) == 2
    err = capsys.readouterr().err
    line = _line(PLAN, "gate = { soak_days = 5, max_error_rate")
    assert f"pasarela: {PLAN}:{line}: plan.waves[0].gate.checks_passed: " in err
    assert "plan.check_failure is 1: no agency ever passes its checks" in err


def test_dependency_cycle_is_a_load_error_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cycle is refused when the file loads: exit 2, the line, the cycle; no schedule."""
    text = PLAN.read_text(encoding="utf-8")
    path = tmp_path / "cycle.toml"
    path.write_text(text.replace('AG004 = ["AG001"]\n', 'AG004 = ["AG001"]\nAG001 = ["AG004"]\n'))
    assert main(["plan", "validate", str(path)]) == 2
    out, err = capsys.readouterr()
    line = _line(path, 'AG001 = ["AG004"]')
    assert f"pasarela: {path}:{line}: plan.dependencies.AG001[0]: " in err
    assert "dependency cycle: AG004 -> AG001 -> AG004" in err
    assert out == ""


def test_validate_a_missing_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A scenario path that does not exist is a usage error."""
    assert main(["plan", "validate", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml: cannot read the file" in capsys.readouterr().err


# -- plan_problems ---------------------------------------------------------------------------


def test_feasible_plan_has_no_problems() -> None:
    """data/plan.toml can finish: no problem, and every wave is back before its deadline."""
    scenario = _scenario(PLAN)
    assert plan_problems(scenario) == []
    schedule = earliest_schedule(scenario)
    assert [e.name for e in schedule] == ["pilot", "volume", "rest"]
    assert all(e.back is not None and e.back <= e.deadline for e in schedule)


def test_late_wave_problem_names_the_wave_agencies_key() -> None:
    """plan_problems returns the late wave as a ScenarioError with its key and line."""
    overrides = {"plan.onboarding_capacity": "1", "plan.waves[1].deadline": "2015-06-30"}
    (problem,) = plan_problems(load_scenario(SMALL, overrides=overrides))
    assert (problem.path, problem.key) == (SMALL, "plan.waves[1].agencies")
    assert problem.line == _line(SMALL, "agencies = 6")
    assert "(at least 6 weeks)" in problem.message


def test_only_the_first_late_wave_is_a_problem() -> None:
    """Later waves wait for a late wave, so only the first one is reported."""
    overrides = {
        "plan.onboarding_capacity": "1",
        "plan.waves[0].deadline": "2015-05-08",
        "plan.waves[1].deadline": "2015-06-30",
    }
    scenario = load_scenario(SMALL, overrides=overrides)
    late = [e.name for e in earliest_schedule(scenario) if e.back and e.back > e.deadline]
    assert late == ["pilot", "wave 2"]
    assert [p.key for p in plan_problems(scenario)] == ["plan.waves[0].agencies"]


def test_gate_on_checks_problem_when_every_check_fails() -> None:
    """plan_problems names the gate's checks_passed key when check_failure is 1."""
    problems = plan_problems(load_scenario(PLAN, overrides={"plan.check_failure": "1"}))
    assert [(p.key, p.line) for p in problems] == [
        ("plan.waves[0].gate.checks_passed", _line(PLAN, "gate = { soak_days = 5, max_error"))
    ]


def _last_back(scenario: Scenario, capacity: int) -> dt.date:
    """The day the plan's last wave is back at the earliest (date.max: never)."""
    plan = replace(scenario.plan, onboarding_capacity=capacity)
    schedule = earliest_schedule(replace(scenario, plan=plan))
    if len(schedule) < len(plan.waves) or schedule[-1].back is None:
        return dt.date.max
    return schedule[-1].back


@pytest.mark.parametrize("path", [PLAN, SMALL, BIG_BANG, LIBRARY / "pisee-2015-by-volume.toml"])
@given(low=st.integers(min_value=1, max_value=40), more=st.integers(min_value=0, max_value=40))
def test_more_onboarding_capacity_never_brings_the_last_wave_back_later(
    path: Path, low: int, more: int
) -> None:
    """Raising the weekly capacity (or lifting it: 0) never delays the earliest schedule."""
    scenario = _scenario(path)
    slower = _last_back(scenario, low)
    assert _last_back(scenario, low + more) <= slower
    assert _last_back(scenario, 0) <= slower


# -- run -------------------------------------------------------------------------------------


def test_run_warns_about_an_infeasible_plan_and_still_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`pasarela run` prints the problem as a warning on stderr, then rehearses anyway."""
    code = main(["run", str(SMALL), "--quiet", "--out", str(tmp_path), *LATE_WAVE])
    assert code in (0, 1)  # ran: the expectations decide, not the feasibility check
    err = capsys.readouterr().err
    line = _line(SMALL, "agencies = 6")
    assert f"pasarela: warning: {SMALL}:{line}: plan.waves[1].agencies: wave 'wave 2'" in err
    results = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert results["schema"] == "pasarela.results/1"
