"""The shipped rehearsal, pisee-2015.toml, run in full: calibrated and its expectations hold."""

from __future__ import annotations

from pathlib import Path

import pytest

from scenarios.model import load_scenario
from scenarios.runner import RunOutput, run_scenario

DEFAULT = Path(__file__).resolve().parents[2] / "scenarios" / "library" / "pisee-2015.toml"


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> RunOutput:
    ticks = iter(range(1_000_000))
    return run_scenario(
        load_scenario(DEFAULT),
        tmp_path_factory.mktemp("pisee"),
        wall_clock=lambda: float(next(ticks)),
    )


def test_every_calibration_row_is_within_ten_percent(rehearsal: RunOutput) -> None:
    """Each figure of the source report is matched by the simulation within 10%."""
    rows = rehearsal.results["calibration"]
    assert len(rows) >= 9
    misses = [
        (row["figure"], row["report"], row["simulated"])
        for row in rows
        if row["within_tolerance"] is not True
    ]
    assert misses == []


def test_default_expectations_hold(rehearsal: RunOutput) -> None:
    """The default plan meets its own expectations, superseded keys included."""
    assert [(e["kind"], e["held"]) for e in rehearsal.results["expectations"]] == [
        ("no-superseded-key-accepted", True),
        ("connected-by", True),
        ("answered-in-time", True),
        ("max-backlog", True),
    ]


def test_the_incident_hits_all_145_linked_agencies(rehearsal: RunOutput) -> None:
    """145 agencies are linked when the attack hits; the mass disconnection takes them all."""
    results = rehearsal.results
    assert results["agencies"]["linked_at_incident"] == 145
    disconnect = next(e for e in results["timeline"] if e["event"] == "disconnect-all")
    assert disconnect["agencies"] == 146  # the 145 and the portal itself
