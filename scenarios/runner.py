"""Run a scenario in virtual time and write its results.

``run_scenario`` is what ``pasarela run`` calls: it builds the world inside a
virtual-time loop, runs it to the scenario's end, checks the message log, evaluates the
expectations and the calibration, and writes ``results.json`` and the gateway's SQLite
log (``log.db``, which ``pasarela log verify`` reads) into the output directory.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.store import SqliteLogStore
from scenarios.model import Scenario
from scenarios.results import build_results, gateway_figures
from scenarios.simulation import Simulation, SimulationOutcome, epoch
from scenarios.virtual import LoopClock, run_virtual

__all__ = ["RunOutput", "run_scenario", "write_results"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOutput:
    results: dict[str, Any]
    results_path: Path
    log_path: Path

    @property
    def held(self) -> bool:
        return bool(self.results["held"])


def write_results(results: dict[str, Any], path: Path) -> None:
    """Stable bytes: sorted keys, two-space indent, UTF-8, newline at the end."""
    text = json.dumps(results, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    path.write_text(text, encoding="utf-8")


def run_scenario(
    scenario: Scenario,
    out_dir: Path,
    *,
    wall_clock: Callable[[], float],
    progress: Callable[[dt.date], None] | None = None,
    prepare: Callable[[Simulation], None] | None = None,
) -> RunOutput:
    """Simulate ``scenario``; ``wall_clock`` (seconds) only times the run for the report.

    ``prepare`` sees the simulation before it starts (a test of a defence turns it off).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "log.db"
    for stale in (log_path, log_path.with_name("log.db-wal"), log_path.with_name("log.db-shm")):
        stale.unlink(missing_ok=True)
    store = SqliteLogStore(log_path)
    started = wall_clock()
    try:

        async def main(clock: LoopClock) -> tuple[SimulationOutcome, Simulation]:
            simulation = Simulation(scenario, clock, log_store=store, progress=progress)
            if prepare is not None:
                prepare(simulation)
            return await simulation.run(), simulation

        outcome, simulation = run_virtual(main, epoch=epoch(scenario.start))
        figures = gateway_figures(store.records(), simulation.plumbing.trust)
    finally:
        store.close()
    wall = wall_clock() - started
    span_days = (scenario.end - scenario.start).days + 1
    run = {
        "started_at": dt.datetime.fromtimestamp(started, tz=dt.UTC).isoformat(timespec="seconds"),
        "wall_seconds": round(wall, 3),
        "simulated_days_per_second": round(span_days / wall, 1) if wall > 0 else None,
        "events_per_second": round(outcome.events / wall, 1) if wall > 0 else None,
        "messages_per_second": round(figures.records / wall, 1) if wall > 0 else None,
    }
    results = build_results(scenario, outcome, figures, run=run)
    results_path = out_dir / "results.json"
    write_results(results, results_path)
    return RunOutput(results=results, results_path=results_path, log_path=log_path)
