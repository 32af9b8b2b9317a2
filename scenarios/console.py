"""The terminal side of a rehearsal: a progress bar while it runs, tables at the end."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

__all__ = ["print_summary", "progress_bar"]


@contextmanager
def progress_bar(
    console: Console, start: dt.date, end: dt.date, *, enabled: bool = True
) -> Iterator[Callable[[dt.date], None]]:
    """A callback that advances a bar of simulated days (a no-op when disabled)."""
    if not enabled:
        yield lambda day: None
        return
    total = (end - start).days + 1
    with Progress(
        TextColumn("[bold]simulating[/bold] {task.fields[day]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("days"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("run", total=total, day=start.isoformat())

        def advance(day: dt.date) -> None:
            progress.update(task, completed=(day - start).days + 1, day=day.isoformat())

        yield advance


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def print_summary(console: Console, results: dict[str, Any], results_path: str) -> None:
    """The end-of-run tables: calibration, expectations, and where the results are."""
    scenario, run, sim = results["scenario"], results["run"], results["simulated"]
    gateway = results["gateway"]
    console.print(
        f"[bold]{scenario['name']}[/bold] (seed {scenario['seed']}, plan {scenario['plan']!r}): "
        f"{sim['days']} simulated days ({scenario['start']} to {scenario['end']}) "
        f"in {run['wall_seconds']:.1f} s wall time, "
        f"{_number(sim['events'])} events ({_number(run['events_per_second'])}/s), "
        f"{_number(gateway['log_records'])} log records "
        f"({_number(run['messages_per_second'])}/s), log chain "
        + ("intact" if gateway["log_verified"] else "[red]BROKEN[/red]")
    )
    if results["expectations"]:
        checks = Table(title="Expectations")
        checks.add_column("expectation")
        checks.add_column("held", justify="center")
        checks.add_column("detail")
        for item in results["expectations"]:
            held = "[green]yes[/green]" if item["held"] else "[red]NO[/red]"
            checks.add_row(f"{item['key']} {item['kind']}", held, item["detail"])
        console.print(checks)
    table = Table(title="Calibration against the source report")
    for column, justify in (("figure", "left"), ("report", "right"), ("simulated", "right"),
                            ("unit", "left"), ("within 10%", "center")):  # fmt: skip
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in results["calibration"]:
        within = row["within_tolerance"]
        mark = "-" if within is None else ("[green]yes[/green]" if within else "[red]no[/red]")
        table.add_row(
            row["figure"], _number(row["report"]), _number(row["simulated"]), row["unit"], mark
        )
    console.print(table)
    console.print(f"results: {results_path}")
    console.print(f"message log: {Path(results_path).with_name('log.db')}")
