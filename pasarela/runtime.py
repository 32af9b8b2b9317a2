"""Live-mode wiring: build a gateway or an agency host from a state directory and serve it."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import structlog
from aiohttp import web

from agents.host import AgencyHost, load_identities
from agents.verification import Directory
from gateway.cache import ReplayCache
from gateway.clock import SystemClock, SystemRandomness
from gateway.detection import DetectionPolicy
from gateway.guard import GuardedAppRunner, GuardEventKind, GuardPolicy
from gateway.http import GATEWAY_KEY, create_app
from gateway.log import LogStore, MessageLog
from gateway.pipeline import Limits
from gateway.service import Gateway, GatewayConfig
from gateway.state import StateDir, StateError
from gateway.store import read_documents
from gateway.transport import HttpTransport
from gateway.trust import TrustStore
from pasarela.shared import SharedState, running

__all__ = [
    "StateWatcher",
    "build_gateway_app",
    "build_host_app",
    "configure_logging",
    "directory_from_trust",
    "run_app",
]


def configure_logging(level: int = logging.INFO) -> None:
    """Structured JSON events on standard error, one object a line."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def guard_alerts(app: web.Application) -> Callable[[GuardEventKind], None]:
    """Report the guard's closures and refusals as the gateway's security alerts."""
    gateway = app[GATEWAY_KEY]
    pending: set[asyncio.Task[object]] = set()

    def on_event(kind: GuardEventKind) -> None:
        task = asyncio.get_running_loop().create_task(
            gateway.alert(kind=kind, agency="", attributed=False, detail=f"connection {kind}")
        )
        pending.add(task)
        task.add_done_callback(pending.discard)

    return on_event


def build_gateway_app(
    state: StateDir,
    *,
    limits: Limits | None = None,
    detection: DetectionPolicy | None = None,
    store: LogStore | None = None,
    cache: ReplayCache | None = None,
    shared: SharedState | None = None,
) -> web.Application:
    """The live gateway over ``state``: its log in ``store`` (default: the state's SQLite
    file), replay memory and rate buckets shared in ``cache`` (default: its own), trust
    store and registry followed in ``shared`` (replicas on one PostgreSQL schema), real
    HTTP to agencies, wall clock."""
    gateway = Gateway(
        config=GatewayConfig(
            code=state.gateway_code,
            limits=limits or Limits(),
            detection=detection or DetectionPolicy(),
        ),
        key=state.gateway_key,
        trust=state.trust,
        registry=state.registry,
        log=MessageLog(store if store is not None else state.open_log_store()),
        transport=HttpTransport(),
        clock=SystemClock(),
        randomness=SystemRandomness(),
        persist=state.persist if shared is None else shared.persist,
        cache=cache,
    )
    app = create_app(gateway, operators=state.operators)
    if shared is not None:
        app.cleanup_ctx.append(lambda _: running(shared, gateway))

    async def close_state(app: web.Application) -> None:
        if cache is not None:
            await cache.aclose()
        state.close()

    app.on_cleanup.append(close_state)
    return app


def directory_from_trust(trust: TrustStore, *, gateway_code: str) -> Directory:
    """What an agency host needs to know of keys, taken straight from the trust store: the
    current generation's unrevoked certificates (read from one copy of the records, so a
    store changed by another thread meanwhile is seen whole or not at all)."""
    records, generation = trust.records(), trust.generation
    current = [r for r in records if r.generation == generation and not r.revoked]
    own = [r for r in current if r.agency == gateway_code]
    if not own:
        raise StateError(f"no current certificate for the gateway {gateway_code}")
    return Directory(
        gateway_code=gateway_code,
        gateway_key=own[-1].public_key,
        gateway_kid=own[-1].kid,
        certificates={r.kid: (r.agency, r.public_key) for r in current if r.agency != gateway_code},
    )


class StateWatcher:
    """The agency host's view of keys, following the gateway's state without stalling.

    Checks the state's ``revision`` document at most once per ``interval`` seconds, through
    a read-only connection, and rebuilds the directory only when the revision changed (an
    enrolment, a revocation, a new generation): the gateway's own log writes to the same
    file never cause a reload.
    """

    def __init__(self, state_dir: Path, *, interval: float = 1.0) -> None:
        self._database = state_dir / "state.db"
        self._interval = interval
        ca = StateDir(state_dir)
        try:
            self._ca = ca.trust.ca
            self._gateway_code = ca.gateway_code
            self._revision = ca.revision
            self._directory = directory_from_trust(ca.trust, gateway_code=ca.gateway_code)
        finally:
            ca.close()
        self._checked = time.monotonic()

    def __call__(self) -> Directory:
        now = time.monotonic()
        if now - self._checked >= self._interval:
            self._checked = now
            self._refresh()
        return self._directory

    def _refresh(self) -> None:
        documents = read_documents(self._database, "revision", "trust")
        revision = int(documents.get("revision", b"0"))
        if revision == self._revision or "trust" not in documents:
            return
        trust = TrustStore.restore(self._ca, json.loads(documents["trust"]))
        self._directory = directory_from_trust(trust, gateway_code=self._gateway_code)
        self._revision = revision


def build_host_app(state_dir: Path) -> tuple[web.Application, AgencyHost]:
    identities = load_identities(state_dir)
    host = AgencyHost(
        identities=identities,
        directory=StateWatcher(state_dir),
        clock=SystemClock(),
        randomness=SystemRandomness(),
    )
    return host.app(), host


async def run_app(
    app: web.Application,
    *,
    host: str,
    port: int,
    name: str,
    guard: GuardPolicy | None = None,
    on_guard_event: Callable[[GuardEventKind], None] | None = None,
    reuse_port: bool = False,
) -> None:
    """Serve until SIGTERM or SIGINT, then shut down cleanly.

    Connections go through the ``guard`` (default :class:`GuardPolicy()`): request headers
    have a deadline, idle keep-alive a timeout, and open connections caps per IP and in all;
    ``on_guard_event`` hears of each connection it closes or refuses.
    """
    runner = GuardedAppRunner(
        app,
        policy=guard or GuardPolicy(),
        on_event=on_guard_event,
        handle_signals=False,
        access_log=None,
    )
    await runner.setup()
    # reuse_port: several replicas listen on one port, the kernel spreads the connections.
    site = web.TCPSite(runner, host, port, reuse_address=True, reuse_port=reuse_port or None)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log = structlog.get_logger("pasarela")
    log.info("listening", service=name, url=f"http://{host}:{port}")
    try:
        await stop.wait()
    finally:
        log.info("stopping", service=name)
        await runner.cleanup()
