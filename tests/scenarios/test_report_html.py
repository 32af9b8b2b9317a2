"""The HTML report: self-contained, deterministic, plans overlaid, and it renders in Chromium."""

from __future__ import annotations

import copy
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


def _figure(html: str, figure_id: str) -> str:
    found = re.search(rf'<figure id="{figure_id}">(.*?)</figure>', html, re.DOTALL)
    assert found is not None, f"no <figure id={figure_id!r}>"
    return found.group(1)


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


def test_report_renders_in_chromium(results: dict[str, Any], tmp_path: Path) -> None:
    """Headless Chromium shows the three charts at a real size and logs no error."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (make browser)")
    from playwright.sync_api import ConsoleMessage, sync_playwright

    page_path = tmp_path / "report.html"
    write_report([("small", results)], page_path)
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
            screenshot = tmp_path / "report.png"
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    for figure_id, size in sizes.items():
        assert size is not None, f"{figure_id} has no <svg>"
        assert min(size) > 100, f"{figure_id} is drawn at {size}"
    assert problems == []
    assert screenshot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert screenshot.stat().st_size > 10_000
