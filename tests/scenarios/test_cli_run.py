"""`pasarela run`: exit codes, outputs, and scenario errors that name file, key and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pasarela.cli import main

SMALL = Path(__file__).parent / "data" / "small.toml"


def test_run_writes_results_and_exits_0_when_expectations_hold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every expectation holds: exit 0, results.json and log.db in --out, tables printed."""
    assert main(["run", str(SMALL), "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["schema"] == "pasarela.results/1"
    assert (tmp_path / "log.db").is_file()
    out = capsys.readouterr().out
    assert "Calibration against the source report" in out
    assert str(tmp_path / "results.json") in out
    assert main(["log", "verify", "--log", str(tmp_path / "log.db")]) == 0


def test_run_exits_1_when_an_expectation_fails(tmp_path: Path) -> None:
    """An expectation that cannot hold makes the run exit 1."""
    text = SMALL.read_text().replace("at_least = 5", "at_least = 999")
    scenario = tmp_path / "strict.toml"
    scenario.write_text(text)
    assert main(["run", str(scenario), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [e["held"] for e in results["expectations"]] == [True, False, True]


def test_run_on_a_bad_scenario_exits_2_naming_file_key_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo in a key: exit 2, and stderr says file:line: key: what is wrong."""
    text = SMALL.read_text().replace("check_failure = 0.2", "check_failur = 0.2")
    scenario = tmp_path / "typo.toml"
    scenario.write_text(text)
    line = text.splitlines().index("check_failur = 0.2") + 1
    assert main(["run", str(scenario), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{scenario}:{line}: plan.check_failur:" in err
    assert not (tmp_path / "out").exists()


def test_run_on_a_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A scenario path that does not exist is a usage error."""
    assert main(["run", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml" in capsys.readouterr().err
