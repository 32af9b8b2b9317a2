"""The lab's commands: ``attack`` and ``conformance``, against a live server.

Adversary profiles run against a running gateway (a scorecard, JSON and JUnit results), and
the connector conformance kit run against an agency's connector at a URL. Each command's
options (``add_<command>_parser``) are next to its handler.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from gateway.state import state_path
from pasarela.cli import EXIT_FAILED, EXIT_INFRA, EXIT_OK, EXIT_USAGE, console, errors


def add_attack_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "attack", help="run adversary profiles against a live gateway; print a scorecard"
    )
    parser.add_argument(
        "--profile",
        default=None,
        metavar="NAME|all|FILE",
        help="a shipped profile (scenarios/library/attacks/), all, or a profile file",
    )
    parser.add_argument("--gateway", default="http://127.0.0.1:8700", metavar="URL")
    parser.add_argument("--state", type=Path, metavar="STATE_DIR", help="keys of the lab")
    parser.add_argument(
        "--out", type=Path, default=Path("."), help="attack-results.json and .xml go here (.)"
    )
    parser.add_argument(
        "--allow-destructive",
        action="store_true",
        help="also run techniques that change the gateway for good (a new key generation)",
    )
    parser.add_argument("--list", action="store_true", help="list profiles and techniques")


def add_conformance_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "conformance",
        help="check an agency connector at a URL against the wire protocol (black box)",
        description="Play the gateway and a peer agency against the connector and run named "
        "checks of the wire protocol, as provider and as consumer. Exit codes: 0 conformant, "
        "1 a check failed (or nothing was exchanged successfully), 2 usage error, "
        "3 infrastructure error (connector unreachable, port taken).",
    )
    parser.add_argument("--connector", metavar="URL", help="the connector's base URL")
    parser.add_argument("--agency", metavar="CODE", help="the agency the connector serves")
    parser.add_argument(
        "--state", type=Path, metavar="STATE_DIR", help="the state whose keys the connector holds"
    )
    parser.add_argument(
        "--listen",
        default="127.0.0.1:8700",
        metavar="HOST:PORT",
        help="where the kit's gateway listens: the connector's gateway URL (127.0.0.1:8700)",
    )
    parser.add_argument(
        "--peer", default="PORTAL", metavar="CODE", help="the agency the kit plays (PORTAL)"
    )
    parser.add_argument(
        "--service", default="ping", metavar="CODE", help="the service exchanged (ping)"
    )
    parser.add_argument(
        "--checks", action="append", default=[], metavar="IDS",
        help="run only these checks: ids or glob patterns, comma-separated (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--exclude-checks", action="append", default=[], metavar="IDS",
        help="leave these checks out: ids or glob patterns, comma-separated (repeatable)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=None, help="the kit's randomness")
    parser.add_argument(
        "--timeout", type=float, default=15.0, metavar="S", help="per exchange (15)"
    )
    parser.add_argument(
        "--wait", type=float, default=0.0, metavar="S",
        help="wait up to S seconds for the connector to come up (0)",
    )  # fmt: skip
    parser.add_argument("--junit-xml", type=Path, metavar="FILE", help="JUnit XML report")
    parser.add_argument("--json", type=Path, metavar="FILE", help="JSON report")
    parser.add_argument(
        "--transcript", type=Path, metavar="FILE", help="every exchange, as JSON lines"
    )
    parser.add_argument("--list-checks", action="store_true", help="list the checks")


def attack(args: argparse.Namespace) -> int:
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


def conformance(args: argparse.Namespace) -> int:
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
