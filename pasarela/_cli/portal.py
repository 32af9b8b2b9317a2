"""The portal's commands: ``portal enqueue``, ``portal status``, ``portal dispatch``.

The Transparency Portal's outbox of access-to-information requests (:mod:`agents.outbox`)
and its dispatcher (:mod:`agents.dispatch`) from the command line: add a request, see
what waits and why, and send what can go, once or until stopped. Each command's options
(``add_<command>_parser``) are next to its handler.

Exit codes: 0 done; 1 ``dispatch --once``: a request failed for good in the pass, or the
gateway refused the portal itself; 2 bad input (the message names the option); 3
``dispatch``: the gateway could not be reached, or the outbox could not be written.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from gateway.protocol import AGENCY_CODE, MESSAGE_ID, SERVICE_CODE
from gateway.state import PORTAL_CODE, state_path
from pasarela._cli.live import DEFAULT_GATEWAY_URL
from pasarela.cli import EXIT_FAILED, EXIT_INFRA, EXIT_OK, EXIT_USAGE, console, errors

if TYPE_CHECKING:
    from cryptography import x509

    from agents.connector import Connector
    from agents.dispatch import Dispatcher, DispatchReport
    from agents.outbox import Item, Outbox
    from agents.verification import ConnectorError, Identity
    from gateway.transport import Transport

DEFAULT_SERVICE = "ati.request"


class _Abort(Exception):
    """Stop the command with ``code`` after printing ``message`` on standard error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds > 0")
    return seconds


def add_portal_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "portal",
        help="the Transparency Portal's outbox of ATI requests",
        description="The portal's durable outbox (docs/portal.md): requests wait while their "
        "agency is off the gateway and reach it exactly once when it is back.",
        epilog="exit codes: 0 done; 1 dispatch --once: a request failed for good, or the "
        "gateway refused the portal itself; 2 bad input; 3 dispatch: gateway unreachable",
    )
    actions = parser.add_subparsers(dest="portal_command", required=True, metavar="ACTION")

    enqueue = actions.add_parser("enqueue", help="add one request to the outbox")
    enqueue.add_argument("--state", type=Path, required=True, metavar="STATE_DIR")
    enqueue.add_argument(
        "--outbox", type=Path, required=True, metavar="FILE", help="created if absent"
    )
    enqueue.add_argument("--to", dest="receiver", required=True, metavar="CODE")
    enqueue.add_argument(
        "--service", default=DEFAULT_SERVICE, metavar="SVC", help=f"default {DEFAULT_SERVICE}"
    )
    body = enqueue.add_mutually_exclusive_group(required=True)
    body.add_argument("--body", metavar="JSON", help="the request body")
    body.add_argument(
        "--body-file", type=Path, metavar="FILE", help="the request body from a file (- stdin)"
    )
    enqueue.add_argument(
        "--jti",
        default=None,
        metavar="ID",
        help="the request's message id (default: random); the same request under the same "
        "--jti is enqueued once",
    )

    status = actions.add_parser(
        "status", help="requests per agency and state, and the held and failed ones"
    )
    status.add_argument("--outbox", type=Path, required=True, metavar="FILE")
    status.add_argument("--json", action="store_true", help="print the status as JSON")

    dispatch = actions.add_parser(
        "dispatch", help="send what can go, hold what must wait (as the portal)"
    )
    dispatch.add_argument("--state", type=Path, required=True, metavar="STATE_DIR")
    dispatch.add_argument("--outbox", type=Path, required=True, metavar="FILE")
    dispatch.add_argument("--gateway-url", default=DEFAULT_GATEWAY_URL, metavar="URL")
    when = dispatch.add_mutually_exclusive_group()
    when.add_argument("--once", action="store_true", help="make one pass, print it and exit")
    when.add_argument(
        "--interval",
        type=_seconds,
        default=5.0,
        metavar="S",
        help="seconds between passes until SIGINT/SIGTERM (default 5)",
    )


def run(args: argparse.Namespace) -> int:
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "enqueue": enqueue,
        "status": status,
        "dispatch": dispatch,
    }
    try:
        return handlers[args.portal_command](args)
    except _Abort as exc:
        errors.print(f"pasarela: {exc.message}", markup=False)
        return exc.code
    except sqlite3.OperationalError as exc:  # locked for too long, a disk that is full...
        errors.print(f"pasarela: --outbox {args.outbox}: {exc}", markup=False)
        return EXIT_INFRA


# -- enqueue -------------------------------------------------------------------------------
def enqueue(args: argparse.Namespace) -> int:
    from agents.verification import encode_json, new_message_id
    from gateway.clock import SystemRandomness

    _portal_folder(args.state)
    if not AGENCY_CODE.fullmatch(args.receiver):
        raise _Abort(
            EXIT_USAGE,
            f"--to: {args.receiver!r} is not an agency code "
            "(2 to 32 of A-Z, 0-9 and '-', not starting with '-')",
        )
    if not SERVICE_CODE.fullmatch(args.service):
        raise _Abort(
            EXIT_USAGE,
            f"--service: {args.service!r} is not a service code "
            "(1 to 64 of a-z, 0-9, '.', '_' and '-')",
        )
    if args.jti is not None and not MESSAGE_ID.fullmatch(args.jti):
        raise _Abort(
            EXIT_USAGE,
            f"--jti: {args.jti!r} is not a message id (1 to 128 of A-Z, a-z, 0-9, '.', '_', "
            "':' and '-')",
        )
    payload = encode_json(_body(args))  # compact: the same document is the same request
    randomness = SystemRandomness()
    with _open_outbox(
        args.outbox, create=True, new_jti=lambda: new_message_id(PORTAL_CODE, randomness)
    ) as outbox:
        known = outbox.find(args.jti) if args.jti is not None else None
        if known is not None and (known.to, known.service, known.body) != (
            args.receiver,
            args.service,
            payload,
        ):
            raise _Abort(
                EXIT_USAGE,
                f"--jti: {args.jti} is already request {known.id} (to {known.to}, service "
                f"{known.service}, {_differs(known, args.receiver, args.service, payload)}); "
                "another request needs another --jti",
            )
        try:
            item = outbox.enqueue(
                to=args.receiver, service=args.service, body=payload, jti=args.jti
            )
        except ValueError as exc:  # enqueued meanwhile by another process
            raise _Abort(EXIT_USAGE, f"--jti: {exc}") from exc
    verb = "enqueued" if known is None else f"already enqueued ({item.state})"
    console.print(
        f"{verb}: request {item.id} to {item.to}, service {item.service}, jti {item.jti}",
        markup=False,
    )
    return EXIT_OK


def _differs(known: Item, receiver: str, service: str, payload: bytes) -> str:
    if known.to != receiver:
        return f"not to {receiver}"
    if known.service != service:
        return f"not service {service}"
    return f"another body: {known.body[:80].decode(errors='replace')}"


def _body(args: argparse.Namespace) -> Any:
    """The request body given with --body or --body-file, parsed as JSON."""
    import sys

    if args.body is not None:
        option, text = "--body", args.body
    else:
        option = "--body-file"
        source: Path = args.body_file
        try:
            text = sys.stdin.buffer.read() if str(source) == "-" else source.read_bytes()
        except OSError as exc:
            raise _Abort(EXIT_USAGE, f"--body-file: cannot read {source}: {exc.strerror}") from exc
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _Abort(EXIT_USAGE, f"{option} is not JSON: {exc}") from exc


# -- status --------------------------------------------------------------------------------
def status(args: argparse.Namespace) -> int:
    from agents.outbox import ItemState

    with _open_outbox(args.outbox, create=False) as outbox:
        counts = outbox.counts()
        totals = outbox.totals()
        held = outbox.items(state=ItemState.HELD)
        failed = outbox.items(state=ItemState.FAILED)
        where = outbox.path
    if args.json:
        document = {
            "outbox": where,
            "agencies": counts,
            "totals": totals,
            "held": [_item_dict(item) for item in held],
            "failed": [_item_dict(item) for item in failed],
        }
        console.print_json(json.dumps(document, ensure_ascii=False))
        return EXIT_OK
    _print_status(where, counts, totals, held + failed)
    return EXIT_OK


def _print_status(
    where: str,
    counts: Mapping[str, Mapping[str, int]],
    totals: Mapping[str, int],
    stuck: list[Item],
) -> None:
    from rich.table import Table

    if not counts:
        console.print(f"{where}: the outbox is empty", markup=False)
        return
    table = Table(title=f"Outbox {where}", title_justify="left")
    table.add_column("agency")
    states = list(totals)
    for state in states:
        table.add_column(state, justify="right")
    table.add_column("total", justify="right")
    for agency, by_state in counts.items():
        table.add_row(agency, *(str(by_state[s]) for s in states), str(sum(by_state.values())))
    table.add_section()
    table.add_row("all", *(str(totals[s]) for s in states), str(sum(totals.values())))
    console.print(table)
    if not stuck:
        return
    # One row per agency, state and problem: a backlog held for weeks is a line, not a page
    # (--json lists every request with its jti and attempts).
    groups: dict[tuple[str, str, str], list[int]] = {}
    for item in sorted(stuck, key=lambda i: i.id):
        groups.setdefault((item.to, item.state.value, item.problem or ""), []).append(item.id)
    requests = Table(title="Held and failed requests", title_justify="left")
    requests.add_column("agency", no_wrap=True)
    requests.add_column("state", no_wrap=True)
    requests.add_column("requests", overflow="fold")
    requests.add_column("problem", overflow="fold")
    for (agency, state, problem), ids in groups.items():
        requests.add_row(agency, state, _ranges(ids), problem)
    console.print(requests)


def _when(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _item_dict(item: Item) -> dict[str, Any]:
    return {
        "id": item.id,
        "to": item.to,
        "service": item.service,
        "jti": item.jti,
        "state": item.state.value,
        "attempts": item.attempts,
        "problem": item.problem,
        "reply_status": item.reply_status,
        "enqueued_at": _when(item.enqueued_at),
        "updated_at": _when(item.updated_at),
    }


# -- dispatch ------------------------------------------------------------------------------
def dispatch(args: argparse.Namespace) -> int:
    identity, ca = _portal_keys(args.state)
    url = urlsplit(args.gateway_url)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise _Abort(EXIT_USAGE, f"--gateway-url: {args.gateway_url!r} is not an http(s) URL")
    _check_outbox(state_path(args.outbox), create=False)
    if args.once:
        return asyncio.run(_dispatch_once(args, identity, ca))
    from pasarela.runtime import configure_logging

    configure_logging()
    return asyncio.run(_dispatch_forever(args, identity, ca))


class _Setup:
    """The portal's connector and agency states over one transport, with the errors seen:
    they tell a gateway out of reach (exit 3) from one that refuses the portal (exit 1)."""

    def __init__(self, args: argparse.Namespace, identity: Identity, ca: x509.Certificate) -> None:
        from agents.connector import Connector, Reply
        from agents.dispatch import ConfStates
        from agents.verification import ConnectorError
        from gateway.clock import SystemClock, SystemRandomness
        from gateway.transport import HttpTransport

        seen: list[ConnectorError] = []

        class WatchedConnector(Connector):
            async def send(
                self, *, to: str, service: str, body: bytes | Any, jti: str | None = None
            ) -> Reply:
                try:
                    return await super().send(to=to, service=service, body=body, jti=jti)
                except ConnectorError as exc:
                    seen.append(exc)
                    raise

        clock = SystemClock()
        self.seen = seen
        self.transport: Transport = HttpTransport()
        self.connector: Connector = WatchedConnector(
            identity=identity,
            gateway_url=args.gateway_url,
            clock=clock,
            randomness=SystemRandomness(),
            transport=self.transport,
            ca_certificate=ca,
        )
        self._conf = ConfStates(
            gateway_url=args.gateway_url, transport=self.transport, clock=clock, ca_certificate=ca
        )
        self.outbox = _open_outbox(args.outbox, create=False, new_jti=self.connector.new_jti)

    async def states(self) -> Mapping[str, str]:
        from agents.verification import ConnectorError

        try:
            return await self._conf()
        except ConnectorError as exc:
            self.seen.append(exc)
            raise

    def dispatcher(self) -> Dispatcher:
        from agents.dispatch import Dispatcher

        return Dispatcher(self.outbox, self.connector, states=self.states)

    async def aclose(self) -> None:
        self.outbox.close()
        await self.transport.aclose()


def _out_of_reach(exc: ConnectorError) -> bool:
    """Whether ``exc`` says the gateway could not be reached or could not serve (no
    answer, an error status for the configuration document, its store unavailable)."""
    from agents.conf import ConfUnavailable
    from agents.verification import Refused, Unreachable
    from gateway.protocol import ProblemCode
    from gateway.transport import TransportError

    if isinstance(exc, Unreachable):
        return True
    if isinstance(exc, ConfUnavailable):  # else: a document that does not verify
        return exc.__cause__ is None or isinstance(exc.__cause__, TransportError)
    return isinstance(exc, Refused) and exc.code == ProblemCode.STORE_UNAVAILABLE.value


async def _dispatch_once(args: argparse.Namespace, identity: Identity, ca: x509.Certificate) -> int:
    setup = _Setup(args, identity, ca)
    try:
        if not setup.outbox.open_items():  # a pass would not even ask the gateway
            console.print(
                f"{setup.outbox.path}: nothing to send (no pending or held request)", markup=False
            )
            return EXIT_OK
        report = await setup.dispatcher().dispatch_once()
        _print_report(setup.outbox, report, args.gateway_url)
    finally:
        await setup.aclose()
    # Why the pass stopped, if it did: the gateway out of reach, or refusing the portal.
    if report.stopped is not None and any(_out_of_reach(exc) for exc in setup.seen):
        return EXIT_INFRA
    if report.failed or report.stopped is not None:
        return EXIT_FAILED
    return EXIT_OK


def _print_report(outbox: Outbox, report: DispatchReport, gateway_url: str) -> None:
    outcomes = (
        ("delivered", report.delivered),
        ("held", report.held),
        ("failed", report.failed),
        ("retried", report.retry),
    )
    console.print(
        f"one pass over {outbox.path} (gateway {gateway_url}): "
        + ", ".join(f"{len(ids)} {name}" for name, ids in outcomes),
        markup=False,
    )
    for name, ids in outcomes:
        if not ids:
            continue
        if name == "delivered":
            console.print(f"  {name:<10} {_ranges(ids)}", markup=False)
            continue
        by_problem: dict[str, list[int]] = {}
        for item_id in ids:
            problem = outbox.require(item_id).problem or "no problem recorded"
            by_problem.setdefault(problem, []).append(item_id)
        for problem, some in by_problem.items():
            console.print(f"  {name:<10} {_ranges(some)}: {problem}", markup=False)
    if report.stopped is not None:
        console.print(f"  stopped    {report.stopped}", markup=False)
    totals = outbox.totals()
    console.print("outbox: " + ", ".join(f"{n} {s}" for s, n in totals.items()), markup=False)


def _ranges(ids: Sequence[int]) -> str:
    """``[1, 2, 3, 7]`` as ``1-3, 7``."""
    spans: list[list[int]] = []
    for item_id in sorted(ids):
        if spans and item_id == spans[-1][1] + 1:
            spans[-1][1] = item_id
        else:
            spans.append([item_id, item_id])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


async def _dispatch_forever(
    args: argparse.Namespace, identity: Identity, ca: x509.Certificate
) -> int:
    """A pass every ``--interval`` seconds until SIGTERM or SIGINT (which cut a pass in
    flight: its request stays open and is sent again, with its ``jti``, at the next start).
    Each pass that sent, held or stopped is an ``outbox-pass`` event; an idle pass, or one
    that finds the same requests still held, is not (a backlog held for weeks does not log
    every few seconds; a gateway out of reach does)."""
    import signal

    import structlog

    log = structlog.get_logger("pasarela")
    name = "portal-dispatch"
    setup = _Setup(args, identity, ca)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stopping = loop.create_task(stop.wait())
    code = EXIT_OK
    try:
        dispatcher = setup.dispatcher()
        log.info(
            "dispatching",
            service=name,
            outbox=setup.outbox.path,
            gateway=args.gateway_url,
            interval=args.interval,
            **setup.outbox.totals(),
        )
        while not stop.is_set():
            setup.seen.clear()  # (only --once reads them)
            passing = loop.create_task(dispatcher.dispatch_once())
            await asyncio.wait({passing, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not passing.done():
                passing.cancel()
                await asyncio.wait({passing})
                break
            try:
                report = passing.result()
            except Exception as exc:  # an outbox that cannot be written, say
                # (configure_logging renders no traceback: the error's repr says it)
                log.error("dispatcher-failed", service=name, error=repr(exc))  # noqa: TRY400
                code = EXIT_INFRA
                break
            if report.sent or report.held or report.stopped is not None:
                fields = {
                    "delivered": len(report.delivered),
                    "held": len(report.held),
                    "failed": len(report.failed),
                    "retry": len(report.retry),
                    "stopped": report.stopped,
                }
                warn = report.failed or report.stopped is not None
                (log.warning if warn else log.info)("outbox-pass", service=name, **fields)
            await asyncio.wait({stopping}, timeout=args.interval)
        try:
            totals = setup.outbox.totals()
        except sqlite3.Error:  # after dispatcher-failed: the outbox may be unreadable too
            totals = {}
        log.info("stopping", service=name, **totals)
    finally:
        stopping.cancel()
        await setup.aclose()
    return code


# -- files ---------------------------------------------------------------------------------
def _portal_folder(state: Path) -> Path:
    """The portal's folder in the state directory given with --state."""
    root = state_path(state)
    folder = root / "agencies" / PORTAL_CODE
    if not root.is_dir():
        raise _Abort(EXIT_USAGE, f"--state: {state} is not a directory")
    if not folder.is_dir():
        raise _Abort(
            EXIT_USAGE,
            f"--state: {state} is not a pasarela state directory (no agencies/{PORTAL_CODE}; "
            "pasarela init creates one)",
        )
    return folder


def _portal_keys(state: Path) -> tuple[Identity, x509.Certificate]:
    """The portal's identity and the platform CA's certificate from --state."""
    from cryptography import x509

    from agents.verification import Identity

    folder = _portal_folder(state)
    ca = state_path(state) / "ca" / "cert.pem"
    try:
        identity = Identity.from_files(folder / "key.pem", folder / "cert.pem")
        certificate = x509.load_pem_x509_certificate(ca.read_bytes())
    except OSError as exc:
        raise _Abort(
            EXIT_USAGE, f"--state: cannot read {exc.filename or state}: {exc.strerror}"
        ) from exc
    except ValueError as exc:
        raise _Abort(EXIT_USAGE, f"--state: the portal's keys or the CA in {state}: {exc}") from exc
    return identity, certificate


def _check_outbox(path: Path, *, create: bool) -> None:
    """Refuse (exit 2) an --outbox that is missing (unless ``create``) or not an outbox: a
    file of another kind is never turned into one."""
    if path.is_dir():
        raise _Abort(EXIT_USAGE, f"--outbox: {path} is a directory")
    if not path.parent.is_dir():
        raise _Abort(EXIT_USAGE, f"--outbox: {path.parent} does not exist")
    if not path.exists() or path.stat().st_size == 0:
        if create:
            return
        raise _Abort(
            EXIT_USAGE,
            f"--outbox: {path} does not exist (pasarela portal enqueue creates it)"
            if not path.exists()
            else f"--outbox: {path} is empty, not an outbox",
        )
    try:
        connection = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise _Abort(EXIT_USAGE, f"--outbox: cannot open {path}: {exc}") from exc
    try:
        tables = {
            row[0]
            for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
    except sqlite3.Error as exc:
        raise _Abort(EXIT_USAGE, f"--outbox: {path} is not an outbox: {exc}") from exc
    finally:
        connection.close()
    if not {"outbox", "schema_version"} <= tables:
        raise _Abort(EXIT_USAGE, f"--outbox: {path} is a SQLite file but not an outbox")


def _open_outbox(given: Path, *, create: bool, new_jti: Callable[[], str] | None = None) -> Outbox:
    from agents.outbox import Outbox
    from gateway.clock import SystemClock

    path = state_path(given)
    _check_outbox(path, create=create)

    def no_jti() -> str:
        raise AssertionError("this command enqueues nothing")

    try:
        return Outbox(path, clock=SystemClock(), new_jti=new_jti or no_jti)
    except ValueError as exc:  # another schema version
        raise _Abort(EXIT_USAGE, f"--outbox: {exc}") from exc
    except sqlite3.OperationalError as exc:  # locked, or cannot be written
        raise _Abort(EXIT_INFRA, f"--outbox: cannot open {path}: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        raise _Abort(EXIT_USAGE, f"--outbox: {path} is not an outbox: {exc}") from exc
