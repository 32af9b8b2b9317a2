"""`pasarela compare` and `--set`: plans side by side, what-ifs without editing files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pasarela.cli import main
from scenarios.model import ScenarioError, load_scenario

SMALL = Path(__file__).parent / "data" / "small.toml"


def test_set_overrides_are_validated_like_the_file() -> None:
    """--set values go through the same checks, and errors name the key."""
    scenario = load_scenario(SMALL, overrides={"plan.waves[0].agencies": "8"})
    assert len(scenario.plan.waves[0].agencies) == 8
    with pytest.raises(ScenarioError, match="probability") as caught:
        load_scenario(SMALL, overrides={"plan.check_failure": "1.5"})
    assert caught.value.key == "plan.check_failure"
    with pytest.raises(ScenarioError, match="not a TOML value"):
        load_scenario(SMALL, overrides={"plan.check_failure": "abc"})
    with pytest.raises(ScenarioError, match=r"no element \[9\]"):
        load_scenario(SMALL, overrides={"plan.waves[9].agencies": "3"})


def test_run_with_a_bad_set_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A --set naming an unknown key is a usage error that names it."""
    args = ["run", str(SMALL), "--out", str(tmp_path), "--set", "plan.check_failur=0.1"]
    assert main(args) == 2
    assert "plan.check_failur" in capsys.readouterr().err


def test_compare_prints_the_table_and_writes_each_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two plans run side by side; the bigger pilot has more agencies back by July 2015."""
    bigger = tmp_path / "bigger-pilot.toml"
    bigger.write_text(SMALL.read_text().replace("agencies = 4", "agencies = 8"))
    out = tmp_path / "out"
    assert main(["compare", str(SMALL), str(bigger), "--out", str(out), "--jobs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "Plans side by side" in printed
    assert "exposure" in printed
    summary = json.loads((out / "compare.json").read_text())
    plans = summary["plans"]
    assert set(plans) == {"small", "bigger-pilot"}
    july = "2015-07-31"
    assert (
        plans["bigger-pilot"]["on_portal_by_date"][july] > plans["small"]["on_portal_by_date"][july]
    )
    assert all(p["exposure_superseded_accepted"] == 0 for p in plans.values())
    for label in plans:
        assert (out / label / "results.json").is_file()
        assert (out / label / "log.db").is_file()


def test_compare_refuses_a_bad_scenario_before_running_any(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One broken file among several: exit 2 at once, nothing run."""
    broken = tmp_path / "broken.toml"
    broken.write_text(SMALL.read_text().replace("seed = 7", 'seed = "seven"'))
    out = tmp_path / "out"
    assert main(["compare", str(SMALL), str(broken), "--out", str(out)]) == 2
    assert "scenario.seed" in capsys.readouterr().err
    assert not (out / "small").exists()


def test_sweep_runs_one_scenario_per_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--sweep KEY=A,B runs the scenario once per value; less capacity never reconnects sooner."""
    out = tmp_path / "out"
    args = ["compare", str(SMALL), "--sweep", "plan.onboarding_capacity=1,4", "--out", str(out)]
    assert main(args) == 0
    summary = json.loads((out / "compare.json").read_text())
    plans = summary["plans"]
    assert set(plans) == {"plan.onboarding_capacity=1", "plan.onboarding_capacity=4"}
    slow = plans["plan.onboarding_capacity=1"]["days_to_full_reconnection"]
    fast = plans["plan.onboarding_capacity=4"]["days_to_full_reconnection"]
    assert slow >= fast
    assert summary["variants"]["plan.onboarding_capacity=1"]["overrides"] == {
        "plan.onboarding_capacity": "1"
    }


def test_sweep_needs_key_and_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed --sweep is a usage error."""
    assert (
        main(["compare", str(SMALL), "--sweep", "plan.onboarding_capacity", "--out", str(tmp_path)])
        == 2
    )
    assert "KEY=A,B,C" in capsys.readouterr().err
