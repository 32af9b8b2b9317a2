"""Live-mode wiring: build a gateway or an agency host from a state directory and serve it."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import structlog
from aiohttp import web

from agents.host import AgencyHost, load_identities
from agents.verification import Directory
from gateway.clock import SystemClock, SystemRandomness
from gateway.http import create_app
from gateway.log import MessageLog
from gateway.pipeline import Limits
from gateway.service import Gateway, GatewayConfig
from gateway.state import StateDir, StateError
from gateway.transport import HttpTransport
from gateway.trust import TrustStore

__all__ = [
    "build_gateway_app",
    "build_host_app",
    "configure_logging",
    "directory_from_trust",
    "run_app",
    "state_directory",
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


def build_gateway_app(state: StateDir, *, limits: Limits | None = None) -> web.Application:
    """The live gateway over ``state``: SQLite log, real HTTP to agencies, wall clock."""
    gateway = Gateway(
        config=GatewayConfig(code=state.gateway_code, limits=limits or Limits()),
        key=state.gateway_key,
        trust=state.trust,
        registry=state.registry,
        log=MessageLog(state.open_log_store()),
        transport=HttpTransport(),
        clock=SystemClock(),
        randomness=SystemRandomness(),
        persist=state.persist,
    )
    app = create_app(gateway, operators=state.operators)

    async def close_state(app: web.Application) -> None:
        state.close()

    app.on_cleanup.append(close_state)
    return app


def directory_from_trust(trust: TrustStore, *, gateway_code: str) -> Directory:
    """What an agency host needs to know of keys, taken straight from the trust store."""
    gateway_keys = trust.current_keys(gateway_code)
    if not gateway_keys:
        raise StateError(f"no current certificate for the gateway {gateway_code}")
    certificates = {
        record.kid: (record.agency, record.public_key)
        for record in trust.records()
        if not record.revoked and record.agency != gateway_code
    }
    return Directory(
        gateway_code=gateway_code,
        gateway_key=gateway_keys[-1].public_key,
        gateway_kid=gateway_keys[-1].kid,
        certificates=certificates,
    )


def state_directory(state_dir: Path) -> Callable[[], Directory]:
    """A directory of keys read from the state, re-read when the state file changes."""
    database = state_dir / "state.db"
    cache: dict[str, object] = {}

    def current() -> Directory:
        stamp = database.stat().st_mtime_ns
        cached = cache.get("directory")
        if cached is None or cache.get("stamp") != stamp:
            state = StateDir(state_dir)
            try:
                cached = directory_from_trust(state.trust, gateway_code=state.gateway_code)
            finally:
                state.close()
            cache.update(directory=cached, stamp=stamp)
        assert isinstance(cached, Directory)
        return cached

    return current


def build_host_app(state_dir: Path) -> tuple[web.Application, AgencyHost]:
    identities = load_identities(state_dir)
    host = AgencyHost(
        identities=identities,
        directory=state_directory(state_dir),
        clock=SystemClock(),
        randomness=SystemRandomness(),
    )
    return host.app(), host


async def run_app(app: web.Application, *, host: str, port: int, name: str) -> None:
    """Serve until SIGTERM or SIGINT, then shut down cleanly."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
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
