"""The rehearsal's commands: ``run``, ``compare``, ``plan validate``.

Scenarios in virtual time: one run, several plans (or one plan swept over a key) side by side,
and whether a plan can finish, checked before it runs. Each command's options
(``add_<command>_parser``) are next to its handler.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from pasarela.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, console, errors

if TYPE_CHECKING:
    from scenarios.model import Scenario


def add_run_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("run", help="rehearse a scenario in virtual time")
    parser.add_argument("scenario", type=Path, metavar="SCENARIO.toml")
    parser.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    parser.add_argument("--out", type=Path, default=Path("out"), help="output directory (out/)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or tables")
    _add_set_option(
        parser, "set a key (TOML value) without editing the file, e.g. plan.waves[0].agencies=25"
    )
    _add_report_option(parser)


def add_plan_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("plan", help="reconnection plans")
    actions = parser.add_subparsers(dest="plan_command", required=True)
    action = actions.add_parser(
        "validate", help="check a plan can finish (before running it); exit 2 if it cannot"
    )
    action.add_argument("scenario", type=Path, metavar="SCENARIO.toml")
    _add_set_option(
        action, "set a key (TOML value) before checking, e.g. plan.onboarding_capacity=5"
    )


def add_compare_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("compare", help="run several plans and compare them")
    parser.add_argument("scenarios", type=Path, nargs="+", metavar="SCENARIO.toml")
    parser.add_argument("--seed", type=int, default=None, help="the same seed for every plan")
    _add_set_option(parser, "set a key (TOML value) in every scenario, e.g. plan.check_failure=0.3")
    parser.add_argument(
        "--sweep",
        default=None,
        metavar="KEY=A,B,C",
        help="run the one scenario once per value of KEY, e.g. plan.onboarding_capacity=5,10,20",
    )
    parser.add_argument("--out", type=Path, default=Path("out/compare"), help="out/compare/")
    parser.add_argument("--jobs", type=int, default=None, help="plans run at once (cores)")
    _add_report_option(parser)


def _add_set_option(parser: argparse.ArgumentParser, text: str) -> None:
    """``--set KEY=VALUE``, repeatable: a scenario key (TOML value) without editing the file."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=text
    )


def _add_report_option(*commands: argparse.ArgumentParser) -> None:
    for command in commands:
        command.add_argument(
            "--report",
            type=Path,
            default=None,
            metavar="PATH",
            help="also write a self-contained HTML report (charts and tables) to PATH",
        )


def run(args: argparse.Namespace) -> int:
    import logging
    import time

    import structlog

    from scenarios.console import print_summary, progress_bar
    from scenarios.model import ScenarioError, load_scenario, with_overrides
    from scenarios.runner import run_scenario

    try:
        overrides = _overrides(args.overrides)
        scenario = with_overrides(load_scenario(args.scenario, overrides=overrides), seed=args.seed)
    except ScenarioError as exc:
        errors.print(f"pasarela: {exc}", markup=False)
        return EXIT_USAGE
    _warn_infeasible(scenario)
    # The gateway's per-refusal events would drown the terminal; they are in the log.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with progress_bar(console, scenario.start, scenario.end, enabled=not args.quiet) as tick:
        output = run_scenario(scenario, args.out, wall_clock=time.time, progress=tick)
    if not args.quiet:
        print_summary(console, output.results, str(output.results_path))
    if args.report is not None:
        from scenarios.report_html import write_report

        write_report([(args.scenario.stem, output.results)], args.report)
        if not args.quiet:
            console.print(f"report: {args.report}")
    return EXIT_OK if output.held else EXIT_FAILED


def _warn_infeasible(scenario: Scenario) -> None:
    """A plan that cannot finish still runs (what-ifs want to see how bad), with a warning."""
    from scenarios.feasibility import plan_problems

    for problem in plan_problems(scenario):
        errors.print(f"pasarela: warning: {problem}", markup=False)


def plan_validate(args: argparse.Namespace) -> int:
    from rich.table import Table

    from scenarios.feasibility import earliest_schedule, plan_problems
    from scenarios.model import ScenarioError, load_scenario

    try:
        scenario = load_scenario(args.scenario, overrides=_overrides(args.overrides))
    except ScenarioError as exc:
        errors.print(f"pasarela: {exc}", markup=False)
        return EXIT_USAGE
    problems = plan_problems(scenario)
    for problem in problems:
        errors.print(f"pasarela: {problem}", markup=False)
    plan = scenario.plan
    table = Table(title=f"{plan.name}: the earliest schedule the plan allows")
    for column in ("wave", "agencies", "starts", "all back", "gate passes", "deadline"):
        table.add_column(column, justify="left" if column == "wave" else "right")
    for estimate in earliest_schedule(scenario):
        table.add_row(
            estimate.name,
            str(estimate.size),
            estimate.start.isoformat(),
            "never" if estimate.back is None else estimate.back.isoformat(),
            "-" if estimate.gate_passed is None else estimate.gate_passed.isoformat(),
            estimate.deadline.isoformat(),
        )
    console.print(table)
    capacity = plan.onboarding_capacity
    console.print(
        f"{len(plan.waves)} waves, {len(scenario.faults)} faults, onboarding capacity "
        f"{f'{capacity} a week' if capacity else 'unlimited'}, "
        f"{sum(len(v) for v in plan.dependencies.values())} dependencies; every delay at its "
        "minimum and no check failing"
    )
    if problems:
        console.print(f"{args.scenario}: the plan cannot finish ({len(problems)} problem(s))")
        return EXIT_USAGE
    console.print(f"{args.scenario}: plan OK")
    return EXIT_OK


def _overrides(pairs: list[str]) -> dict[str, str]:
    from scenarios.model import ScenarioError

    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ScenarioError(Path("--set"), pair, None, "expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def compare(args: argparse.Namespace) -> int:
    import logging

    import structlog

    from scenarios.compare import compare_plans, compare_variants, print_comparison, sweep_variants
    from scenarios.model import ScenarioError

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    try:
        overrides = _overrides(args.overrides)
        if args.sweep is None:
            runs = compare_plans(
                args.scenarios, args.out, overrides=overrides, seed=args.seed, jobs=args.jobs
            )
        else:
            key, sep, values = args.sweep.partition("=")
            choices = [v.strip() for v in values.split(",") if v.strip()]
            if not sep or not key.strip() or not choices:
                raise ScenarioError(Path("--sweep"), args.sweep, None, "expected KEY=A,B,C")
            if len(args.scenarios) != 1:
                raise ScenarioError(Path("--sweep"), key, None, "sweeps one scenario at a time")
            variants = sweep_variants(args.scenarios[0], key.strip(), choices, overrides=overrides)
            runs = compare_variants(variants, args.out, seed=args.seed, jobs=args.jobs)
    except ScenarioError as exc:
        errors.print(f"pasarela: {exc}", markup=False)
        return EXIT_USAGE
    print_comparison(console, runs, args.out)
    if args.report is not None:
        from scenarios.report_html import write_report

        write_report([(run.label, run.results) for run in runs], args.report)
        console.print(f"report: {args.report}")
    return EXIT_OK if all(run.results["held"] for run in runs) else EXIT_FAILED
