"""The HTML report: self-contained, deterministic, plans overlaid, and it renders in Chromium."""

from __future__ import annotations

import copy
import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest

from pasarela.cli import main
from scenarios.model import load_scenario
from scenarios.report_html import render_report, write_report
from scenarios.runner import run_scenario

SMALL = Path(__file__).parent / "data" / "small.toml"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FIGURES = ("chart-connected", "chart-backlog", "chart-waves")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    ticks = iter(range(1_000_000))
    out = tmp_path_factory.mktemp("small")
    return run_scenario(load_scenario(SMALL), out, wall_clock=lambda: float(next(ticks))).results


#: The fields results gained for gates, faults and the per-agency table (schema additions).
WAVE_FIELDS = ("planned_start", "codes", "gate", "quarantined", "fell_back")
PLAN_FIELDS = ("gate_failures", "exposure_seconds", "agency_table")
AGENCY_ROW = {
    "code": "AG003",
    "kind": "ministry",
    "wave": "pilot",
    "back": None,
    "route": None,
    "state": "quarantined",
    "check_failures": 2,
    "requests": 41,
    "answered_late": 3,
    "never_answered": 5,
}


def _older(results: dict[str, Any]) -> dict[str, Any]:
    """A copy without any of the gate, fault and agency-table fields (an older results.json)."""
    older = copy.deepcopy(results)
    for figures in older["agencies"]["waves"].values():
        for key in WAVE_FIELDS:
            figures.pop(key, None)
    for key in PLAN_FIELDS:
        older["plan"].pop(key, None)
    older.pop("faults", None)
    return older


def _days_after(day: str, days: int) -> str:
    return (dt.date.fromisoformat(day) + dt.timedelta(days=days)).isoformat()


def _enriched(results: dict[str, Any]) -> dict[str, Any]:
    """A copy whose pilot wave has a gate that failed once, quarantined AG003, then passed;
    with one latency fault on AG003 and a per-agency table."""
    enriched = _older(results)
    pilot = enriched["agencies"]["waves"]["pilot"]
    last = pilot["last_connected"] or pilot["start"]
    failed_on, passed_on = _days_after(last, 7), _days_after(last, 14)
    pilot.update(
        planned_start=_days_after(pilot["start"], -7),
        codes=["AG001", "AG002", "AG003", "AG004"],
        quarantined=["AG003"],
        fell_back=[],
        gate={
            "soak_days": 5,
            "on_failure": "quarantine",
            "criteria": {
                "max_error_rate": 0.02,
                "max_p99_ms": 800.0,
                "max_alerts": 0,
                "checks_passed": True,
            },
            "passed": passed_on,
            "evaluations": [
                {
                    "date": failed_on,
                    "passed": False,
                    "failed": ["error_rate", "p99_ms"],
                    "metrics": {
                        "error_rate": 0.05,
                        "p99_ms": 1200.0,
                        "alerts": 0,
                        "checks_failed": 0,
                    },
                },
                {
                    "date": passed_on,
                    "passed": True,
                    "failed": [],
                    "metrics": {
                        "error_rate": 0.01,
                        "p99_ms": 300.0,
                        "alerts": 0,
                        "checks_failed": 0,
                    },
                },
            ],
        },
    )
    for name, figures in enriched["agencies"]["waves"].items():
        if name != "pilot":
            figures.update(planned_start=figures["start"], codes=[], gate=None)
            figures.update(quarantined=[], fell_back=[])
    enriched["faults"] = [
        {
            "key": "faults[0]",
            "kind": "latency",
            "target": "AG003",
            "start": f"{_days_after(last, 3)}T09:00:00",
            "end": f"{_days_after(last, 5)}T17:30:00",
            "affected": 37,
        }
    ]
    enriched["plan"].update(gate_failures=1, exposure_seconds=42.5, agency_table=[AGENCY_ROW])
    enriched["timeline"] += [
        {"date": failed_on, "event": "gate-failed", "wave": "pilot", "failed": ["error_rate"]},
        {"date": failed_on, "event": "quarantine", "wave": "pilot", "agencies": ["AG003"]},
        {"date": passed_on, "event": "gate-passed", "wave": "pilot"},
    ]
    return enriched


def _section(html: str, heading: str) -> str:
    found = re.search(rf"<section><h2>{re.escape(heading)}</h2>(.*?)</section>", html, re.DOTALL)
    assert found is not None, f"no section {heading!r}"
    return found.group(1)


def _cells(row: str) -> list[str]:
    return re.findall(r"<td>(.*?)</td>", row)


def _figure(html: str, figure_id: str) -> str:
    found = re.search(rf'<figure id="{figure_id}">(.*?)</figure>', html, re.DOTALL)
    assert found is not None, f"no <figure id={figure_id!r}>"
    return found.group(1)


def _waves_svg(html: str) -> str:
    """The waves chart's SVG, without its caption."""
    return _figure(html, "chart-waves").split("<figcaption>")[0]


def test_report_has_the_charts_and_tables_and_fetches_nothing(results: dict[str, Any]) -> None:
    """Three captioned SVG charts, the calibration table, unique ids, no external resource."""
    html = render_report([("small", results)])
    for figure_id in FIGURES:
        figure = _figure(html, figure_id)
        assert "<svg" in figure
        assert "<figcaption>" in figure
    assert "Calibration against the source report" in html
    assert "Central agencies using the portal, July 2015" in html
    assert "target 225" in _figure(html, "chart-connected")
    assert "report, May 2015" in _figure(html, "chart-connected")
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids)), "element ids repeat across the inline SVGs"
    lowered = html.lower()
    for external in ('src="http', "src='http", "<link", "<script src", "url(http", "@import"):
        assert external not in lowered


def test_report_escapes_text_from_the_results(results: dict[str, Any]) -> None:
    """A label or scenario name with markup is shown as text, not parsed as HTML."""
    tricky = copy.deepcopy(results)
    tricky["scenario"]["name"] = "<b>plan</b> & co"
    html = render_report([("<script>x</script>", tricky)])
    assert "<script>x" not in html
    assert "&lt;b&gt;plan&lt;/b&gt; &amp; co" in html


def test_same_results_render_the_same_bytes(results: dict[str, Any]) -> None:
    """Rendering one results dict twice gives identical HTML (no clock, stable SVG ids)."""
    assert render_report([("small", results)]) == render_report([("small", results)])


def test_compare_report_overlays_both_plans(results: dict[str, Any]) -> None:
    """Two runs: both labels appear, and the connected chart's legend names both series."""
    other = copy.deepcopy(results)
    other["scenario"]["plan"] = "other plan"
    html = render_report([("small", results), ("bigger-pilot", other)])
    connected = _figure(html, "chart-connected")
    for label in ("small", "bigger-pilot"):
        assert f"{label}: connected through the gateway" in connected
        assert f"{label}: connected + direct fallback" in connected
        assert f"<th>{label}</th>" in html
    assert "Reconnection plans compared" in html


def test_run_with_report_writes_it_and_prints_its_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`pasarela run --report PATH` writes the page after the run and names it."""
    report = tmp_path / "report" / "small.html"
    assert main(["run", str(SMALL), "--out", str(tmp_path / "out"), "--report", str(report)]) == 0
    assert f"report: {report}" in capsys.readouterr().out
    assert '<figure id="chart-waves">' in report.read_text(encoding="utf-8")


def test_gates_section_states_criteria_evaluations_pass_day_and_rollback(
    results: dict[str, Any],
) -> None:
    """A gated wave gets a row: its criteria in words, evaluations, the pass day, the rollback."""
    enriched = _enriched(results)
    gates = _section(render_report([("small", enriched)]), "Gates")
    rows = re.findall(r"<tr>(.*?)</tr>", gates.split("<tbody>")[1])
    assert len(rows) == 1, "only the pilot wave has a gate"
    wave, criteria, evaluations, passed_on, rollback = _cells(rows[0])
    assert wave == "pilot"
    assert criteria == (
        "soak 5 business days · error rate ≤ 2% · p99 ≤ 800 ms · no alerts · all checks passed"
    )
    assert evaluations.startswith("1 passed / 1 failed")
    assert (
        "failed: error rate \N{MULTIPLICATION SIGN}1, p99 \N{MULTIPLICATION SIGN}1" in evaluations
    )
    assert passed_on == enriched["agencies"]["waves"]["pilot"]["gate"]["passed"]
    assert rollback.startswith("1 quarantined (AG003)")
    assert "(on failure: quarantine)" in rollback


def test_gate_that_never_passed_and_paused_says_so(results: dict[str, Any]) -> None:
    """A gate with only failed evaluations under the pause rule: not passed, paused."""
    enriched = _enriched(results)
    pilot = enriched["agencies"]["waves"]["pilot"]
    pilot["gate"].update(on_failure="pause", passed=None)
    pilot["gate"]["evaluations"] = pilot["gate"]["evaluations"][:1]
    pilot["quarantined"] = []
    _, _, evaluations, passed_on, rollback = _cells(
        _section(render_report([("small", enriched)]), "Gates")
    )
    assert evaluations.startswith("0 passed / 1 failed")
    assert "not passed" in passed_on
    assert rollback.startswith("paused")


def test_waves_chart_marks_gate_evaluations_soak_and_fault_rows(results: dict[str, Any]) -> None:
    """The Gantt's legend names gate passes, failures, the soak, the planned start and faults;
    the fault has its own hatched row and the pilot's bar counts the quarantined agency."""
    waves = _waves_svg(render_report([("small", _enriched(results))]))
    for legend in (
        "gate passed",
        "gate failed",
        "soak: last connection to gate pass",
        "planned start",
        "fault window",
    ):
        assert legend in waves, legend
    assert "fault: latency AG003" in waves
    assert "37 affected" in waves
    assert "4/4 · 1 quarantined" in waves
    assert 'id="chart-waves-h' in waves, "the fault row is drawn with a hatch pattern"


def test_waves_chart_of_older_results_has_no_gate_marks(results: dict[str, Any]) -> None:
    """Without gates or faults the Gantt has no legend for them and no fault row."""
    waves = _waves_svg(render_report([("small", _older(results))]))
    for absent in ("gate passed", "gate failed", "soak:", "fault"):
        assert absent not in waves, absent


def test_wave_held_by_a_gate_is_drawn_as_not_started(results: dict[str, Any]) -> None:
    """A wave that never started (start null) still gets its row, marked "not started"."""
    enriched = _enriched(results)
    held = enriched["agencies"]["waves"]["wave 2"]
    held.update(start=None, connected=0, last_connected=None)
    assert "not started" in _waves_svg(render_report([("small", enriched)]))


def test_faults_section_lists_each_fault_with_its_window(results: dict[str, Any]) -> None:
    """Each injected fault: key, kind, target, from, to (or the end of the run), exchanges."""
    enriched = _enriched(results)
    first = enriched["faults"][0]
    enriched["faults"].append(
        {
            "key": "faults[1]",
            "kind": "gateway-crash",
            "target": "",
            "start": first["start"],
            "end": None,
            "affected": 1200,
        }
    )
    html = render_report([("small", enriched)])
    rows = re.findall(r"<tr>(.*?)</tr>", _section(html, "Faults").split("<tbody>")[1])
    day = first["start"][:10]
    assert _cells(rows[0]) == [
        "faults[0]",
        "latency",
        "AG003",
        f"{day} 09:00",
        f"{first['end'][:10]} 17:30",
        "37",
    ]
    assert _cells(rows[1]) == [
        "faults[1]",
        "gateway-crash",
        "\N{EN DASH}",
        f"{day} 09:00",
        "end of the run",
        "1,200",
    ]
    assert "fault: gateway-crash" in _waves_svg(html)


def test_agency_table_has_its_columns_and_a_row_per_agency(results: dict[str, Any]) -> None:
    """plan.agency_table becomes the agencies section: ten columns, one row per agency."""
    html = render_report([("small", _enriched(results))])
    agencies = _section(html, "Agencies: wave, day back, route and final state")
    assert re.findall(r"<th>(.*?)</th>", agencies) == [
        "agency",
        "kind",
        "wave",
        "back on",
        "route",
        "final state",
        "check failures",
        "ATI requests",
        "late",
        "never answered",
    ]
    dash = "\N{EN DASH}"
    row = ["AG003", "ministry", "pilot", dash, dash, "quarantined", "2", "41", "3", "5"]
    assert _cells(agencies.split("<tbody>")[1]) == row
    assert "the day each came back" not in html


def test_long_agency_table_is_folded_away(results: dict[str, Any]) -> None:
    """More than thirty agencies: the table sits in a closed <details>."""
    enriched = _enriched(results)
    enriched["plan"]["agency_table"] = [{**AGENCY_ROW, "code": f"AG{n:03}"} for n in range(1, 41)]
    html = render_report([("small", enriched)])
    assert "<details><summary>40 agencies (show)</summary>" in html


def test_summary_shows_gate_failures_and_exposure_when_present(results: dict[str, Any]) -> None:
    """plan.gate_failures and plan.exposure_seconds get a summary row each."""
    summary = _section(render_report([("small", _enriched(results))]), "Summary")
    assert "<tr><td>gate failures</td><td>1</td></tr>" in summary
    exposure = "<tr><td>exposure (seconds a distrusted key was usable)</td><td>42.5</td></tr>"
    assert exposure in summary


def test_older_results_render_without_the_new_sections(results: dict[str, Any]) -> None:
    """Results without gates, faults or agency_table: no Gates or Faults section, no new
    summary rows, and the agencies section lists the day each came back as before."""
    html = render_report([("small", _older(results))])
    for absent in ("<h2>Gates</h2>", "<h2>Faults</h2>", "gate failures", "exposure ("):
        assert absent not in html, absent
    assert "<h2>Agencies named by the plan: the day each came back</h2>" in html


def test_gates_and_faults_sections_are_omitted_when_empty(results: dict[str, Any]) -> None:
    """Waves whose gate is null and an empty faults list: neither section is shown."""
    enriched = _enriched(results)
    for figures in enriched["agencies"]["waves"].values():
        figures["gate"] = None
    enriched["faults"] = []
    html = render_report([("small", enriched)])
    assert "<h2>Gates</h2>" not in html
    assert "<h2>Faults</h2>" not in html
    assert "gate passed" not in _waves_svg(html)


def test_compare_report_shows_gates_faults_and_agencies_per_plan(
    results: dict[str, Any],
) -> None:
    """Two runs: a plan column in Gates and Faults, rows per plan in the Gantt, and one
    agencies table per run (the older run keeps its day-back table)."""
    html = render_report([("gated", _enriched(results)), ("older", _older(results))])
    gates = _section(html, "Gates")
    assert "<th>plan</th>" in gates
    assert _cells(gates.split("<tbody>")[1])[:2] == ["gated", "pilot"]
    assert _cells(_section(html, "Faults").split("<tbody>")[1])[:2] == ["gated", "faults[0]"]
    waves = _waves_svg(html)
    for row in ("gated · pilot", "older · pilot", "gated · fault: latency AG003"):
        assert row in waves, row
    agencies = _section(html, "Agencies: wave, day back, route and final state")
    assert "<h3>gated</h3>" in agencies
    assert "<h3>older</h3>" in agencies
    assert "<th>back on</th>" in agencies.split("<h3>older</h3>")[1]


def test_enriched_report_escapes_fault_and_agency_text(results: dict[str, Any]) -> None:
    """Markup in a fault's target or an agency's state is shown as text."""
    enriched = _enriched(results)
    enriched["faults"][0]["target"] = "<i>AG003</i>"
    enriched["plan"]["agency_table"] = [{**AGENCY_ROW, "state": "<b>odd</b>"}]
    html = render_report([("small", enriched)])
    assert "<i>AG003" not in html
    assert "<b>odd" not in html
    assert "&lt;i&gt;AG003&lt;/i&gt;" in _section(html, "Faults")
    assert "&lt;b&gt;odd&lt;/b&gt;" in html


def test_enriched_report_is_deterministic_with_unique_ids(results: dict[str, Any]) -> None:
    """Gates, faults and hatch patterns keep the same bytes twice and no repeated id."""
    runs = [("gated", _enriched(results)), ("again", _enriched(results))]
    html = render_report(runs)
    assert html == render_report(runs)
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids)), "element ids repeat across the inline SVGs"


def _render_in_chromium(
    runs: list[tuple[str, dict[str, Any]]], tmp_path: Path
) -> tuple[dict[str, Any], list[str], list[str]]:
    """Open the report in headless Chromium: each figure's drawn size, the errors it logged,
    and the section headings it shows."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (make browser)")
    from playwright.sync_api import ConsoleMessage, sync_playwright

    page_path = tmp_path / "report.html"
    write_report(runs, page_path)
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(f"console: {message.text}")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", on_console)
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.goto(page_path.as_uri(), wait_until="load")
            sizes = {
                figure_id: page.evaluate(
                    "id => { const svg = document.querySelector(`figure#${id} svg`);"
                    " if (!svg) return null; const box = svg.getBoundingClientRect();"
                    " return [box.width, box.height]; }",
                    figure_id,
                )
                for figure_id in FIGURES
            }
            headings = [h.inner_text() for h in page.locator("h2").all() if h.is_visible()]
            screenshot = tmp_path / "report.png"
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert screenshot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert screenshot.stat().st_size > 10_000
    return sizes, problems, headings


def test_report_renders_in_chromium(results: dict[str, Any], tmp_path: Path) -> None:
    """Headless Chromium shows the three charts at a real size and logs no error."""
    sizes, problems, _ = _render_in_chromium([("small", results)], tmp_path)
    for figure_id, size in sizes.items():
        assert size is not None, f"{figure_id} has no <svg>"
        assert min(size) > 100, f"{figure_id} is drawn at {size}"
    assert problems == []


def test_report_with_gates_and_faults_renders_in_chromium(
    results: dict[str, Any], tmp_path: Path
) -> None:
    """The enriched page, two plans compared: charts at a real size, the Gates and Faults
    sections shown, and no error logged."""
    runs = [("gated", _enriched(results)), ("older", _older(results))]
    sizes, problems, headings = _render_in_chromium(runs, tmp_path)
    for figure_id, size in sizes.items():
        assert size is not None, f"{figure_id} has no <svg>"
        assert min(size) > 100, f"{figure_id} is drawn at {size}"
    assert "Gates" in headings
    assert "Faults" in headings
    assert problems == []
