"""The live commands: ``init``, ``serve``, ``agents serve``, ``send``, ``log verify``, ``demo``.

A state directory, the gateway and the agency host as real servers, one message sent through
them, the hash chain of a log, and the demo that does it all at once. Each command's options
(``add_<command>_parser``) are next to its handler.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.clock import SystemClock, SystemRandomness
from gateway.state import init_state, state_path
from pasarela.cli import EXIT_FAILED, EXIT_INFRA, EXIT_OK, EXIT_USAGE, console, errors

if TYPE_CHECKING:
    from gateway.detection import DetectionPolicy
    from gateway.guard import GuardPolicy
    from gateway.pipeline import Limits
    from gateway.state import StateDir

DEFAULT_GATEWAY_URL = "http://127.0.0.1:8700"


def add_init_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("init", help="create a state directory (CA, gateway, agencies)")
    parser.add_argument("state_dir", type=Path, metavar="STATE_DIR")
    parser.add_argument("--agencies", type=int, default=145, help="central agencies (default 145)")
    parser.add_argument(
        "--agents-url",
        default="http://127.0.0.1:8701",
        help="base URL of the agency host (default http://127.0.0.1:8701)",
    )
    parser.add_argument("--gateway-code", default="PASARELA", help="the gateway's code")


def add_serve_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
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
    parser.add_argument("--state", type=Path, required=True, metavar="STATE_DIR")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8700)
    parser.add_argument("--rate", type=float, default=100.0, help="messages/s per agency")
    parser.add_argument(
        "--quarantine-after",
        type=int,
        default=20,
        metavar="N",
        help="quarantine an agency after N anomalies signed by its own key in the window "
        "(default 20; 0: never)",
    )
    parser.add_argument(
        "--flood-after",
        type=int,
        default=200,
        metavar="N",
        help="quarantine an agency after N rate-limit refusals in the window "
        "(default 200; 0: never)",
    )
    parser.add_argument(
        "--alert-window", type=float, default=60.0, metavar="S", help="detection window (60 s)"
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="close a connection whose request headers take longer (default 10 s: slowloris)",
    )
    parser.add_argument(
        "--max-connections-per-ip",
        type=int,
        default=64,
        metavar="N",
        help="open connections one address may hold (default 64)",
    )
    parser.add_argument("--burst", type=float, default=200.0, help="token-bucket burst per agency")
    parser.add_argument(
        "--cache",
        default=None,
        metavar="URL",
        help="share replay memory and rate buckets with other replicas: "
        "redis://HOST:PORT/DB?prefix=NAME (default: this process's own)",
    )
    parser.add_argument(
        "--replica",
        default=None,
        metavar="NAME",
        help="this replica's name: its hash chain in a shared PostgreSQL log, its owner name "
        "in the cache and health (default: the one chain of a single gateway; HOST-PID)",
    )
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        help="listen with SO_REUSEPORT: several replicas on one port, connections spread "
        "by the kernel",
    )
    parser.add_argument(
        "--store",
        default=None,
        metavar="URL",
        help="the message log: postgresql://USER@HOST:PORT/DB?schema=NAME, sqlite:///PATH or "
        "a file path (default: the state's state.db)",
    )


def add_agents_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("agents", help="the agency host")
    actions = parser.add_subparsers(dest="agents_command", required=True, metavar="ACTION")
    action = actions.add_parser("serve", help="serve every agency's endpoint")
    action.add_argument("--state", type=Path, required=True, metavar="STATE_DIR")
    action.add_argument("--host", default="127.0.0.1")
    action.add_argument("--port", type=int, default=8701)


def add_send_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("send", help="send one message through a running gateway")
    parser.add_argument("--state", type=Path, required=True, metavar="STATE_DIR")
    parser.add_argument("--from", dest="sender", required=True, metavar="CODE")
    parser.add_argument("--to", dest="receiver", required=True, metavar="CODE")
    parser.add_argument("--service", default="ping", metavar="SVC")
    parser.add_argument("--body", default="{}", metavar="JSON")
    parser.add_argument("--gateway-url", default=DEFAULT_GATEWAY_URL)
    parser.add_argument("--jti", default=None, help="message id (default: random)")


def add_log_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("log", help="the message log")
    actions = parser.add_subparsers(dest="log_command", required=True, metavar="ACTION")
    action = actions.add_parser("verify", help="check the hash chain")
    source = action.add_mutually_exclusive_group(required=True)
    source.add_argument("--state", type=Path, metavar="STATE_DIR", help="a gateway's state")
    source.add_argument(
        "--log",
        action="append",
        metavar="FILE|URL",
        help="a log file (a run's log.db), sqlite:///PATH, or the postgresql://...?schema=NAME "
        "a gateway was served with (--store); repeat it for the logs of several replicas",
    )
    action.add_argument("--json", action="store_true", help="print the result as JSON")


def add_demo_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("demo", help="start a gateway and agency host, exchange, verify")
    parser.add_argument("--agencies", type=int, default=145)
    parser.add_argument("--keep", type=Path, default=None, help="keep the state in this directory")


def init(args: argparse.Namespace) -> int:
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


def serve(args: argparse.Namespace) -> int:
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


def agents_serve(args: argparse.Namespace) -> int:
    from gateway.guard import GuardPolicy
    from pasarela.runtime import build_host_app, configure_logging, run_app

    configure_logging()
    app, _ = build_host_app(state_path(args.state))
    # The gateway pools up to 256 connections to the host from one address: allow them.
    guard = GuardPolicy(max_connections_per_ip=512)
    asyncio.run(run_app(app, host=args.host, port=args.port, name="agency-host", guard=guard))
    return EXIT_OK


def send(args: argparse.Namespace) -> int:
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


def log_verify(args: argparse.Namespace) -> int:
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


def demo(args: argparse.Namespace) -> int:
    from pasarela.demo import run_demo

    return run_demo(agencies=args.agencies, keep=args.keep, console=console)
