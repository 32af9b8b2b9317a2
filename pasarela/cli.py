"""The ``pasarela`` command line.

Exit codes of every command: 0 success (all checks held), 1 a check failed, 2 usage or
input error, 3 infrastructure error (a server or file that should be there is not).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from gateway.clock import SystemClock, SystemRandomness
from gateway.state import StateError, init_state, state_path

if TYPE_CHECKING:
    from gateway.detection import DetectionPolicy
    from gateway.guard import GuardPolicy
    from gateway.pipeline import Limits
    from gateway.state import StateDir
    from scenarios.model import Scenario

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INFRA = 0, 1, 2, 3
DEFAULT_GATEWAY_URL = "http://127.0.0.1:8700"

console = Console(highlight=False, soft_wrap=True)
errors = Console(stderr=True, highlight=False, soft_wrap=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pasarela",
        description="Simulator of a national agency-interoperability gateway.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = commands.add_parser("init", help="create a state directory (CA, gateway, agencies)")
    init.add_argument("state_dir", type=Path, metavar="STATE_DIR")
    init.add_argument("--agencies", type=int, default=145, help="central agencies (default 145)")
    init.add_argument(
        "--agents-url",
        default="http://127.0.0.1:8701",
        help="base URL of the agency host (default http://127.0.0.1:8701)",
    )
    init.add_argument("--gateway-code", default="PASARELA", help="the gateway's code")

    serve = commands.add_parser(
        "serve",
        help="run the gateway",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""replicas (docs/deploy.md): one schema (a chain each), one cache, one port
  for n in 1 2; do
    pasarela serve --state STATE --port 8700 --reuse-port --replica gw$n \\
      --store "postgresql://pasarela@127.0.0.1:5432/pisee?schema=gateway" \\
      --cache "redis://127.0.0.1:6379/0?prefix=pisee" &
  done
  pasarela log verify --log "postgresql://pasarela@127.0.0.1:5432/pisee?schema=gateway"

exit codes: 0 stopped cleanly, 2 bad --store/--cache URL or state, 3 PostgreSQL or Redis
unreachable at start""",
    )
    serve.add_argument("--state", type=Path, required=True, metavar="STATE_DIR")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8700)
    serve.add_argument("--rate", type=float, default=100.0, help="messages/s per agency")
    serve.add_argument(
        "--quarantine-after",
        type=int,
        default=20,
        metavar="N",
        help="quarantine an agency after N anomalies signed by its own key in the window "
        "(default 20; 0: never)",
    )
    serve.add_argument(
        "--flood-after",
        type=int,
        default=200,
        metavar="N",
        help="quarantine an agency after N rate-limit refusals in the window "
        "(default 200; 0: never)",
    )
    serve.add_argument(
        "--alert-window", type=float, default=60.0, metavar="S", help="detection window (60 s)"
    )
    serve.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="close a connection whose request headers take longer (default 10 s: slowloris)",
    )
    serve.add_argument(
        "--max-connections-per-ip",
        type=int,
        default=64,
        metavar="N",
        help="open connections one address may hold (default 64)",
    )
    serve.add_argument("--burst", type=float, default=200.0, help="token-bucket burst per agency")
    serve.add_argument(
        "--cache",
        default=None,
        metavar="URL",
        help="share replay memory and rate buckets with other replicas: "
        "redis://HOST:PORT/DB?prefix=NAME (default: this process's own)",
    )
    serve.add_argument(
        "--replica",
        default=None,
        metavar="NAME",
        help="this replica's name: its hash chain in a shared PostgreSQL log, its owner name "
        "in the cache and health (default: the one chain of a single gateway; HOST-PID)",
    )
    serve.add_argument(
        "--reuse-port",
        action="store_true",
        help="listen with SO_REUSEPORT: several replicas on one port, connections spread "
        "by the kernel",
    )
    serve.add_argument(
        "--store",
        default=None,
        metavar="URL",
        help="the message log: postgresql://USER@HOST:PORT/DB?schema=NAME, sqlite:///PATH or "
        "a file path (default: the state's state.db)",
    )

    agents = commands.add_parser("agents", help="the agency host")
    agents_commands = agents.add_subparsers(dest="agents_command", required=True, metavar="ACTION")
    agents_serve = agents_commands.add_parser("serve", help="serve every agency's endpoint")
    agents_serve.add_argument("--state", type=Path, required=True, metavar="STATE_DIR")
    agents_serve.add_argument("--host", default="127.0.0.1")
    agents_serve.add_argument("--port", type=int, default=8701)

    send = commands.add_parser("send", help="send one message through a running gateway")
    send.add_argument("--state", type=Path, required=True, metavar="STATE_DIR")
    send.add_argument("--from", dest="sender", required=True, metavar="CODE")
    send.add_argument("--to", dest="receiver", required=True, metavar="CODE")
    send.add_argument("--service", default="ping", metavar="SVC")
    send.add_argument("--body", default="{}", metavar="JSON")
    send.add_argument("--gateway-url", default=DEFAULT_GATEWAY_URL)
    send.add_argument("--jti", default=None, help="message id (default: random)")

    log = commands.add_parser("log", help="the message log")
    log_commands = log.add_subparsers(dest="log_command", required=True, metavar="ACTION")
    log_verify = log_commands.add_parser("verify", help="check the hash chain")
    source = log_verify.add_mutually_exclusive_group(required=True)
    source.add_argument("--state", type=Path, metavar="STATE_DIR", help="a gateway's state")
    source.add_argument(
        "--log",
        action="append",
        metavar="FILE|URL",
        help="a log file (a run's log.db), sqlite:///PATH, or the postgresql://...?schema=NAME "
        "a gateway was served with (--store); repeat it for the logs of several replicas",
    )
    log_verify.add_argument("--json", action="store_true", help="print the result as JSON")

    _add_rehearsal_parsers(commands)

    demo = commands.add_parser("demo", help="start a gateway and agency host, exchange, verify")
    demo.add_argument("--agencies", type=int, default=145)
    demo.add_argument("--keep", type=Path, default=None, help="keep the state in this directory")
    return parser


def _add_report_option(*commands: argparse.ArgumentParser) -> None:
    for command in commands:
        command.add_argument(
            "--report",
            type=Path,
            default=None,
            metavar="PATH",
            help="also write a self-contained HTML report (charts and tables) to PATH",
        )


def _add_rehearsal_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``run`` and ``compare``: the rehearsal's commands."""
    run = commands.add_parser("run", help="rehearse a scenario in virtual time")
    run.add_argument("scenario", type=Path, metavar="SCENARIO.toml")
    run.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    run.add_argument("--out", type=Path, default=Path("out"), help="output directory (out/)")
    run.add_argument("--quiet", action="store_true", help="no progress bar or tables")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a key (TOML value) without editing the file, e.g. plan.waves[0].agencies=25",
    )

    attack = commands.add_parser(
        "attack", help="run adversary profiles against a live gateway; print a scorecard"
    )
    attack.add_argument(
        "--profile",
        default=None,
        metavar="NAME|all|FILE",
        help="a shipped profile (scenarios/library/attacks/), all, or a profile file",
    )
    attack.add_argument("--gateway", default="http://127.0.0.1:8700", metavar="URL")
    attack.add_argument("--state", type=Path, metavar="STATE_DIR", help="keys of the lab")
    attack.add_argument(
        "--out", type=Path, default=Path("."), help="attack-results.json and .xml go here (.)"
    )
    attack.add_argument(
        "--allow-destructive",
        action="store_true",
        help="also run techniques that change the gateway for good (a new key generation)",
    )
    attack.add_argument("--list", action="store_true", help="list profiles and techniques")

    conformance = commands.add_parser(
        "conformance",
        help="check an agency connector at a URL against the wire protocol (black box)",
        description="Play the gateway and a peer agency against the connector and run named "
        "checks of the wire protocol, as provider and as consumer. Exit codes: 0 conformant, "
        "1 a check failed (or nothing was exchanged successfully), 2 usage error, "
        "3 infrastructure error (connector unreachable, port taken).",
    )
    conformance.add_argument("--connector", metavar="URL", help="the connector's base URL")
    conformance.add_argument("--agency", metavar="CODE", help="the agency the connector serves")
    conformance.add_argument(
        "--state", type=Path, metavar="STATE_DIR", help="the state whose keys the connector holds"
    )
    conformance.add_argument(
        "--listen",
        default="127.0.0.1:8700",
        metavar="HOST:PORT",
        help="where the kit's gateway listens: the connector's gateway URL (127.0.0.1:8700)",
    )
    conformance.add_argument(
        "--peer", default="PORTAL", metavar="CODE", help="the agency the kit plays (PORTAL)"
    )
    conformance.add_argument(
        "--service", default="ping", metavar="CODE", help="the service exchanged (ping)"
    )
    conformance.add_argument(
        "--checks", action="append", default=[], metavar="IDS",
        help="run only these checks: ids or glob patterns, comma-separated (repeatable)",
    )  # fmt: skip
    conformance.add_argument(
        "--exclude-checks", action="append", default=[], metavar="IDS",
        help="leave these checks out: ids or glob patterns, comma-separated (repeatable)",
    )  # fmt: skip
    conformance.add_argument("--seed", type=int, default=None, help="the kit's randomness")
    conformance.add_argument(
        "--timeout", type=float, default=15.0, metavar="S", help="per exchange (15)"
    )
    conformance.add_argument(
        "--wait", type=float, default=0.0, metavar="S",
        help="wait up to S seconds for the connector to come up (0)",
    )  # fmt: skip
    conformance.add_argument("--junit-xml", type=Path, metavar="FILE", help="JUnit XML report")
    conformance.add_argument("--json", type=Path, metavar="FILE", help="JSON report")
    conformance.add_argument(
        "--transcript", type=Path, metavar="FILE", help="every exchange, as JSON lines"
    )
    conformance.add_argument("--list-checks", action="store_true", help="list the checks")

    plan = commands.add_parser("plan", help="reconnection plans")
    plan_commands = plan.add_subparsers(dest="plan_command", required=True)
    validate = plan_commands.add_parser(
        "validate", help="check a plan can finish (before running it); exit 2 if it cannot"
    )
    validate.add_argument("scenario", type=Path, metavar="SCENARIO.toml")
    validate.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a key (TOML value) before checking, e.g. plan.onboarding_capacity=5",
    )

    compare = commands.add_parser("compare", help="run several plans and compare them")
    compare.add_argument("scenarios", type=Path, nargs="+", metavar="SCENARIO.toml")
    compare.add_argument("--seed", type=int, default=None, help="the same seed for every plan")
    compare.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a key (TOML value) in every scenario, e.g. plan.check_failure=0.3",
    )
    compare.add_argument(
        "--sweep",
        default=None,
        metavar="KEY=A,B,C",
        help="run the one scenario once per value of KEY, e.g. plan.onboarding_capacity=5,10,20",
    )
    compare.add_argument("--out", type=Path, default=Path("out/compare"), help="out/compare/")
    compare.add_argument("--jobs", type=int, default=None, help="plans run at once (cores)")
    _add_report_option(run, compare)


def _init(args: argparse.Namespace) -> int:
    from gateway.state import PORTAL_CODE

    summary = init_state(
        state_path(args.state_dir),
        agencies=args.agencies,
        agents_url=args.agents_url,
        gateway_code=args.gateway_code,
        randomness=SystemRandomness(),
        now=SystemClock().now(),
    )
    root = summary.state_dir
    console.print(f"Initialised pasarela state in {root}")
    console.print(f"  platform CA        {root / 'ca' / 'cert.pem'}")
    console.print(f"  gateway {summary.gateway_code:<10} {root / 'gateway' / 'cert.pem'}")
    console.print(
        f"  agencies           {summary.agencies} central agencies + {PORTAL_CODE}, "
        f"in {root / 'agencies'}/<CODE>/key.pem and cert.pem"
    )
    console.print(f"  agency endpoints   {summary.agents_url}/agencies/<CODE>/messages")
    console.print(f"  operator token     {summary.operator_token}")
    console.print(f"  log and registry   {summary.database}")
    console.print("Next: pasarela agents serve --state DIR; pasarela serve --state DIR")
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    from gateway.detection import DetectionPolicy
    from gateway.guard import GuardPolicy
    from gateway.pgstore import StoreUnavailable
    from gateway.pipeline import Limits
    from gateway.state import StateDir
    from pasarela.runtime import configure_logging

    state = StateDir(state_path(args.state))
    detection = DetectionPolicy(
        window_seconds=args.alert_window,
        quarantine_after=args.quarantine_after,
        flood_after=args.flood_after,
    )
    limits = Limits(rate_per_second=args.rate, burst=args.burst)
    guard = GuardPolicy(
        header_timeout=args.header_timeout, max_connections_per_ip=args.max_connections_per_ip
    )
    configure_logging()
    try:
        asyncio.run(_serve_gateway(args, state, limits, detection, guard))
    except StoreUnavailable as exc:
        errors.print(f"pasarela: {exc}", markup=False)
        return EXIT_INFRA
    except ValueError as exc:
        errors.print(f"pasarela: --store/--cache: {exc}", markup=False)
        return EXIT_USAGE
    return EXIT_OK


async def _serve_gateway(
    args: argparse.Namespace,
    state: StateDir,
    limits: Limits,
    detection: DetectionPolicy,
    guard: GuardPolicy,
) -> None:
    """Open the log store in the loop that serves (a PostgreSQL pool belongs to it)."""
    import os
    import socket

    from gateway.backends import open_store
    from gateway.cache import ReplayCache
    from gateway.pgstore import PostgresLogStore
    from pasarela.runtime import build_gateway_app, guard_alerts, run_app
    from pasarela.shared import SharedState

    cache = None
    if args.cache:
        replica = args.replica or f"{socket.gethostname()}-{os.getpid()}"
        cache = await ReplayCache.open(args.cache, owner=replica)
    store = await open_store(args.store, chain=args.replica or "") if args.store else None
    shared = None
    if isinstance(store, PostgresLogStore):
        shared = SharedState(state, store.documents())
        await shared.load()
    app = build_gateway_app(
        state, limits=limits, detection=detection, store=store, cache=cache, shared=shared
    )
    await run_app(
        app,
        host=args.host,
        port=args.port,
        name="gateway",
        guard=guard,
        on_guard_event=guard_alerts(app),
        reuse_port=args.reuse_port,
    )


def _agents_serve(args: argparse.Namespace) -> int:
    from gateway.guard import GuardPolicy
    from pasarela.runtime import build_host_app, configure_logging, run_app

    configure_logging()
    app, _ = build_host_app(state_path(args.state))
    # The gateway pools up to 256 connections to the host from one address: allow them.
    guard = GuardPolicy(max_connections_per_ip=512)
    asyncio.run(run_app(app, host=args.host, port=args.port, name="agency-host", guard=guard))
    return EXIT_OK


def _send(args: argparse.Namespace) -> int:
    from pasarela.client import send_one

    try:
        body = json.loads(args.body)
    except json.JSONDecodeError as exc:
        errors.print(f"--body is not JSON: {exc}")
        return EXIT_USAGE
    return asyncio.run(
        send_one(
            state_path(args.state),
            sender=args.sender,
            receiver=args.receiver,
            service=args.service,
            body=body,
            gateway_url=args.gateway_url,
            jti=args.jti,
            console=console,
            errors=errors,
        )
    )


def _log_verify(args: argparse.Namespace) -> int:
    from gateway.log import StoreUnavailable
    from pasarela.logcheck import LogCheck, check_log

    targets: list[str | Path] = list(args.log or [])
    if not targets:
        database = state_path(args.state) / "state.db"
        if not database.exists():
            errors.print(f"{database} does not exist; is {args.state} a pasarela state directory?")
            return EXIT_USAGE
        targets = [database]
    checks: list[LogCheck] = []
    for target in targets:
        try:
            checks.extend(check_log(target))
        except StoreUnavailable as exc:
            errors.print(f"pasarela: {exc}", markup=False)
            return EXIT_INFRA
        except (FileNotFoundError, ValueError) as exc:
            errors.print(f"pasarela: --log: {exc}", markup=False)
            return EXIT_USAGE
    ok = all(check.result.ok for check in checks)
    if args.json:
        documents = [check.as_dict() for check in checks]
        if len(documents) == 1:
            del documents[0]["log"]
            console.print_json(json.dumps(documents[0]))
        else:
            console.print_json(json.dumps({"ok": ok, "logs": documents}))
        return EXIT_OK if ok else EXIT_FAILED
    for check in checks:
        result, name = check.result, check.log if len(checks) > 1 else "log"
        if result.ok:
            console.print(f"{name} OK: {result.records} records, hash chain intact", markup=False)
        else:
            console.print(
                f"{name} BROKEN at sequence number {result.first_bad_seq}: {result.problem}",
                markup=False,
            )
    return EXIT_OK if ok else EXIT_FAILED


def _run(args: argparse.Namespace) -> int:
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


def _plan_validate(args: argparse.Namespace) -> int:
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


def _attack(args: argparse.Namespace) -> int:
    import time

    from agents.adversaries.catalogue import CATALOGUE
    from agents.adversaries.lab import LabError
    from agents.adversaries.model import Result, Verdict
    from agents.adversaries.profiles import profile_names, resolve_profile
    from agents.adversaries.runner import (
        print_scorecard,
        results_document,
        run_techniques,
        write_json,
        write_junit,
    )
    from scenarios.model import ScenarioError

    if args.list:
        console.print("profiles: " + ", ".join(profile_names()))
        for technique in CATALOGUE.values():
            mark = " (destructive)" if technique.destructive else ""
            console.print(f"  {technique.id:<24} {technique.title}{mark}")
        return EXIT_OK
    if args.profile is None or args.state is None:
        errors.print("pasarela: attack needs --profile and --state (or --list)")
        return EXIT_USAGE
    try:
        profile = resolve_profile(args.profile)
    except ScenarioError as exc:
        errors.print(f"pasarela: {exc}", markup=False)
        return EXIT_USAGE
    steps = [(s.technique, s.params) for s in profile.steps]
    skipped = []
    if not args.allow_destructive:
        skipped = [t for t, _ in steps if t.destructive]
        steps = [(t, p) for t, p in steps if not t.destructive]
    started = time.time()
    try:
        results = asyncio.run(run_techniques(args.gateway, state_path(args.state), steps))
    except LabError as exc:
        errors.print(f"pasarela: {exc}")
        return EXIT_INFRA
    print_scorecard(console, results, profile=profile.name)
    for technique in skipped:
        console.print(
            f"{Verdict.SKIPPED}: {technique.id} (destructive; run it with --allow-destructive)"
        )
    document = results_document(
        results, profile=profile.name, gateway_url=args.gateway, started=started
    )
    document["skipped"] = [t.id for t in skipped]
    write_json(document, args.out / "attack-results.json")
    write_junit(results, args.out / "attack-results.xml", profile=profile.name, skipped=skipped)
    console.print(f"results: {args.out / 'attack-results.json'}, {args.out / 'attack-results.xml'}")
    failed: list[Result] = [r for r in results if not r.passed]
    return EXIT_FAILED if failed else EXIT_OK


def _listen(value: str) -> tuple[str, int] | None:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host.strip("[]"), int(port)


def _conformance(args: argparse.Namespace) -> int:
    import secrets
    from urllib.parse import urlsplit

    from pasarela.conformance import (
        CHECKS,
        InfrastructureError,
        KitSettings,
        UsageError,
        run_conformance,
        select_checks,
    )
    from pasarela.conformance.report import (
        print_report,
        print_result,
        to_json,
        write_junit,
        write_transcript,
    )

    if args.list_checks:
        for check in CHECKS:
            console.print(f"{check.id:<36} {check.title}", markup=False)
        return EXIT_OK
    missing = [f"--{n}" for n in ("connector", "agency", "state") if getattr(args, n) is None]
    if missing:
        errors.print(f"pasarela: conformance needs {', '.join(missing)} (or --list-checks)")
        return EXIT_USAGE
    url = urlsplit(args.connector)
    listen = _listen(args.listen)
    problem = None
    if url.scheme not in ("http", "https") or not url.hostname:
        problem = f"--connector {args.connector!r} is not an http(s) URL"
    elif listen is None:
        problem = f"--listen {args.listen!r} is not HOST:PORT"
    elif args.timeout <= 0 or args.wait < 0:
        problem = "--timeout must be positive and --wait not negative"
    if problem is not None or listen is None:
        errors.print(f"pasarela: {problem}", markup=False)
        return EXIT_USAGE
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    settings = KitSettings(
        connector=args.connector.rstrip("/"),
        agency=args.agency,
        state=state_path(args.state),
        host=listen[0],
        port=listen[1],
        peer=args.peer,
        service=args.service,
        seed=seed,
        timeout=args.timeout,
        wait=args.wait,
    )
    try:
        checks = select_checks(args.checks, args.exclude_checks)
        console.print(
            f"pasarela conformance: {len(checks)} checks against {settings.connector} "
            f"({settings.agency}); the kit's gateway is {settings.gateway_url}; seed {seed}",
            markup=False,
        )
        report = asyncio.run(
            run_conformance(settings, checks, progress=lambda r: print_result(console, r))
        )
    except UsageError as exc:
        errors.print(f"pasarela: {exc}", markup=False)
        return EXIT_USAGE
    except InfrastructureError as exc:
        errors.print(f"pasarela: {exc}", markup=False)
        return EXIT_INFRA
    print_report(console, report)
    if args.json is not None:
        args.json.write_text(json.dumps(to_json(report), indent=2, ensure_ascii=False) + "\n")
    if args.junit_xml is not None:
        write_junit(report, args.junit_xml)
    if args.transcript is not None:
        write_transcript(report, args.transcript)
    return report.exit_code


def _overrides(pairs: list[str]) -> dict[str, str]:
    from scenarios.model import ScenarioError

    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ScenarioError(Path("--set"), pair, None, "expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def _compare(args: argparse.Namespace) -> int:
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


def _demo(args: argparse.Namespace) -> int:
    from pasarela.demo import run_demo

    return run_demo(agencies=args.agencies, keep=args.keep, console=console)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "init":
            return _init(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "agents":
            return _agents_serve(args)
        if args.command == "send":
            return _send(args)
        if args.command == "log":
            return _log_verify(args)
        if args.command == "run":
            return _run(args)
        if args.command == "compare":
            return _compare(args)
        if args.command == "plan":
            return _plan_validate(args)
        if args.command == "attack":
            return _attack(args)
        if args.command == "conformance":
            return _conformance(args)
        return _demo(args)
    except StateError as exc:
        errors.print(f"pasarela: {exc}")
        return EXIT_USAGE
    except OSError as exc:
        errors.print(f"pasarela: {exc}")
        return EXIT_INFRA
    except KeyboardInterrupt:
        return EXIT_FAILED
