"""``pasarela compare``: several plans run side by side, one table of what each costs.

Each scenario runs in its own process (as many at once as there are cores) and writes its
own ``results.json`` and ``log.db`` under ``OUT/<name>/``; the comparison itself goes to
``OUT/compare.json`` and the terminal.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from rich.console import Console
from rich.table import Table

from scenarios.model import load_scenario, with_overrides
from scenarios.runner import run_scenario, write_results

__all__ = [
    "COMPARE_SCHEMA",
    "PlanRun",
    "Variant",
    "compare_plans",
    "compare_variants",
    "print_comparison",
    "summarise",
    "sweep_variants",
]

COMPARE_SCHEMA = "pasarela.compare/1"


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanRun:
    label: str
    path: Path
    results: dict[str, Any]


def _run_one(path: str, overrides: dict[str, str], seed: int | None, out: str) -> dict[str, Any]:
    """One plan in a worker process (module-level so it can be pickled)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    scenario = with_overrides(load_scenario(path, overrides=overrides), seed=seed)
    return run_scenario(scenario, Path(out), wall_clock=time.time).results


def _labels(paths: Sequence[Path]) -> list[str]:
    labels: list[str] = []
    for path in paths:
        label, n = path.stem, 2
        while label in labels:
            label, n = f"{path.stem}-{n}", n + 1
        labels.append(label)
    return labels


@dataclass(frozen=True, slots=True, kw_only=True)
class Variant:
    """One run of a comparison: a scenario file with its own overrides."""

    label: str
    path: Path
    overrides: Mapping[str, str]


def sweep_variants(
    path: Path, key: str, values: Sequence[str], *, overrides: Mapping[str, str] | None = None
) -> list[Variant]:
    """One variant of ``path`` per value of ``key`` (a one-parameter what-if sweep)."""
    return [
        Variant(label=f"{key}={value}", path=path, overrides={**(overrides or {}), key: value})
        for value in values
    ]


def compare_plans(
    paths: Sequence[Path],
    out_dir: Path,
    *,
    overrides: Mapping[str, str] | None = None,
    seed: int | None = None,
    jobs: int | None = None,
) -> list[PlanRun]:
    """Run every scenario with the same overrides, side by side."""
    variants = [
        Variant(label=label, path=path, overrides=dict(overrides or {}))
        for path, label in zip(paths, _labels(paths), strict=True)
    ]
    return compare_variants(variants, out_dir, seed=seed, jobs=jobs)


def compare_variants(
    variants: Sequence[Variant], out_dir: Path, *, seed: int | None = None, jobs: int | None = None
) -> list[PlanRun]:
    """Run every variant (all validated up front, so a typo fails before any run starts)."""
    for variant in variants:
        load_scenario(variant.path, overrides=variant.overrides)
    workers = max(1, min(len(variants), jobs or os.cpu_count() or 1))
    out_dir.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [
            pool.submit(
                _run_one, str(v.path), dict(v.overrides), seed, str(out_dir / _folder(v.label))
            )
            for v in variants
        ]
        runs = [
            PlanRun(label=v.label, path=v.path, results=future.result())
            for v, future in zip(variants, futures, strict=True)
        ]
    summary = {
        "schema": COMPARE_SCHEMA,
        "variants": {
            v.label: {"file": v.path.name, "overrides": dict(v.overrides)} for v in variants
        },
        "plans": {run.label: summarise(run.results) for run in runs},
    }
    write_results(summary, out_dir / "compare.json")
    return runs


def _folder(label: str) -> str:
    """A file-system-safe folder name for a variant's outputs."""
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in label)


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """The figures a plan is judged by, from its results."""
    everything = results["ati"]["groups"]["all"]
    central = results["ati"]["groups"]["central"]
    plan = results["plan"]
    return {
        "plan": results["scenario"]["plan"],
        "seed": results["scenario"]["seed"],
        "agencies_back": f"{plan['back']}/{plan['agencies']}",
        "full_reconnection": plan["full_reconnection"],
        "days_to_full_reconnection": plan["days_to_full_reconnection"],
        "on_portal_by_date": {
            day: v["central_connected"] + v["central_direct"]
            for day, v in results["agencies"]["report_dates"].items()
        },
        "ati_answered_late": everything["answered_late"],
        "ati_never_answered": _never(everything),
        "ati_in_time_rate": everything["in_time_rate"],
        "central_answered_late": central["answered_late"],
        "central_never_answered": _never(central),
        "central_in_time_rate": central["in_time_rate"],
        "backlog_peak": results["ati"]["backlog_peak"],
        "fallback_answers": plan["fallback_answers"],
        "check_failures": plan["check_failures"],
        "gate_failures": plan.get("gate_failures", 0),
        "exposure_seconds": plan.get("exposure_seconds", 0.0),
        "exposure_superseded_accepted": results["gateway"]["superseded_key_accepted"],
        "expectations_held": sum(1 for e in results["expectations"] if e["held"]),
        "expectations": len(results["expectations"]),
        "wall_seconds": results["run"]["wall_seconds"],
    }


def _never(group: Mapping[str, Any]) -> int:
    """Requests due by the end and not answered at all."""
    return int(group["due_by_end"] - group["answered_in_time"] - group["answered_late"])


def print_comparison(console: Console, runs: Sequence[PlanRun], out_dir: Path) -> None:
    summaries = [(run.label, summarise(run.results)) for run in runs]
    table = Table(title="Plans side by side")
    table.add_column("")
    for label, _ in summaries:
        table.add_column(label, justify="right")

    def row(name: str, values: list[Any]) -> None:
        table.add_row(name, *("-" if v is None else str(v) for v in values))

    cells = [s for _, s in summaries]
    row("plan", [s["plan"] for s in cells])
    row("agencies back (named by the plan)", [s["agencies_back"] for s in cells])
    row(
        "full reconnection (days after the disconnection)",
        [
            None
            if s["full_reconnection"] is None
            else f"{s['full_reconnection']} ({s['days_to_full_reconnection']})"
            for s in cells
        ],
    )
    days = sorted({d for s in cells for d in s["on_portal_by_date"]})
    for day in days:
        row(
            f"central agencies on the portal {day}",
            [s["on_portal_by_date"].get(day) for s in cells],
        )
    row("central agencies: ATI answers late", [f"{s['central_answered_late']:,}" for s in cells])
    row(
        "central agencies: ATI answers never given",
        [f"{s['central_never_answered']:,}" for s in cells],
    )
    row("central agencies: answered in time", [_percent(s["central_in_time_rate"]) for s in cells])
    row("all institutions: ATI answers late", [f"{s['ati_answered_late']:,}" for s in cells])
    row(
        "all institutions: ATI answers never given", [f"{s['ati_never_answered']:,}" for s in cells]
    )
    row("all institutions: answered in time", [_percent(s["ati_in_time_rate"]) for s in cells])
    row("peak backlog (requests)", [f"{s['backlog_peak']:,}" for s in cells])
    row("fallback load (answers via direct access)", [f"{s['fallback_answers']:,}" for s in cells])
    row("check failures", [s["check_failures"] for s in cells])
    row("gate failures (failed judgements)", [s["gate_failures"] for s in cells])
    row(
        "exposure: seconds a distrusted key was usable",
        [f"{s['exposure_seconds']:,.0f}" for s in cells],
    )
    row(
        "exposure: messages accepted under distrusted keys",
        [s["exposure_superseded_accepted"] for s in cells],
    )
    row("expectations held", [f"{s['expectations_held']}/{s['expectations']}" for s in cells])
    row("wall time (s)", [s["wall_seconds"] for s in cells])
    # Wide enough for one line per row: a log or a pipe would otherwise wrap every label.
    width = 60 + sum(max(22, len(label) + 5) for label, _ in summaries)
    if not console.is_terminal and console.width < width:
        console = Console(file=console.file, width=width, highlight=False, color_system=None)
    console.print(table)
    console.print(
        f"comparison: {out_dir / 'compare.json'}; each plan's results in {out_dir}/<plan>/"
    )


def _percent(value: float | None) -> str | None:
    return None if value is None else f"{value:.1%}"
