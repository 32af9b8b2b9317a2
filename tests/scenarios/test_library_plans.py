"""The shipped plans compared: the directions a planner relies on, over several seeds.

The runs start in October 2014 (``scenario.start``) to keep the suite quick: the world is
the library's, the incident and the plans are unchanged, only the early months before the
attack are skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pasarela.cli import main
from scenarios.compare import Variant, compare_variants

LIBRARY = Path(__file__).resolve().parents[2] / "scenarios" / "library"
SHORT = {"scenario.start": "2014-10-01"}


def _late_or_never(results: dict[str, Any]) -> int:
    """Central-agency requests due by the end and not answered in time."""
    return int(results["ati"]["groups"]["central"]["deadline_breaches"])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_fallback_plan_leaves_more_requests_late_or_unanswered(
    tmp_path: Path, seed: int
) -> None:
    """Without the direct-access fallback more central ATI requests miss their deadline
    than under the 2015 plan, and the portal's backlog peaks higher."""
    variants = [
        Variant(label=name, path=LIBRARY / f"{name}.toml", overrides=SHORT)
        for name in ("pisee-2015", "pisee-2015-no-fallback")
    ]
    plan_2015, no_fallback = (
        run.results for run in compare_variants(variants, tmp_path, seed=seed, jobs=2)
    )
    assert _late_or_never(no_fallback) > _late_or_never(plan_2015)
    assert no_fallback["ati"]["backlog_peak"] > plan_2015["ati"]["backlog_peak"]
    assert no_fallback["plan"]["fallback_answers"] == 0 < plan_2015["plan"]["fallback_answers"]


@pytest.mark.parametrize("seed", [1, 2])
def test_raising_onboarding_capacity_never_delays_full_reconnection(
    tmp_path: Path, seed: int
) -> None:
    """The big-bang plan at 6, 12 and 24 approvals a week: full reconnection comes no
    later as the capacity grows (and strictly earlier from 6 to 24)."""
    path = LIBRARY / "pisee-2015-big-bang.toml"
    variants = [
        Variant(label=f"c{c}", path=path, overrides={**SHORT, "plan.onboarding_capacity": str(c)})
        for c in (6, 12, 24)
    ]
    days = []
    for run in compare_variants(variants, tmp_path, seed=seed, jobs=2):
        day = run.results["plan"]["days_to_full_reconnection"]
        days.append(10_000 if day is None else day)
    assert days == sorted(days, reverse=True)
    assert days[0] > days[-1]


def test_compare_over_the_shipped_plans_prints_the_table_and_writes_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`pasarela compare scenarios/library/*.toml --report`: one column per plan, the rows a
    planner asks for, compare.json and a report overlaying every plan."""
    plans = sorted(LIBRARY.glob("pisee-2015*.toml"))
    report = tmp_path / "compare.html"
    argv = ["compare", *map(str, plans), "--out", str(tmp_path), "--report", str(report)]
    argv += ["--set", "scenario.start=2014-10-01", "--jobs", "2"]
    assert main(argv) in (0, 1)
    out = capsys.readouterr().out
    for row in ("full reconnection", "peak backlog", "fallback load", "gate failures",
                "exposure"):  # fmt: skip
        assert row in out
    summary = json.loads((tmp_path / "compare.json").read_text())
    assert set(summary["plans"]) == {p.stem for p in plans}
    assert all(plan["exposure_seconds"] == 0 for plan in summary["plans"].values())
    html = report.read_text(encoding="utf-8")
    for plan in plans:
        assert f"{plan.stem}: connected through the gateway" in html
