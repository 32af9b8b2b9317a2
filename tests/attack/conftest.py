"""A freshly initialised live gateway and agency host, as real child processes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.clock import SystemClock, SystemRandomness
from gateway.state import init_state
from pasarela.processes import child_process, free_ports, pasarela_argv, wait_healthy


@dataclass(frozen=True, slots=True)
class LiveGateway:
    url: str
    agents_url: str
    state: Path
    logs: Path


@contextlib.contextmanager
def live_gateway(root: Path, *, serve_args: tuple[str, ...] = ()) -> Iterator[LiveGateway]:
    """``pasarela init`` (five agencies), then ``serve`` and ``agents serve`` on free ports."""
    gateway_port, agents_port = free_ports(2)
    agents_url = f"http://127.0.0.1:{agents_port}"
    state = root / "state"
    init_state(
        state,
        agencies=5,
        agents_url=agents_url,
        randomness=SystemRandomness(),
        now=SystemClock().now(),
    )
    gateway_argv = pasarela_argv(
        "serve", "--state", str(state), "--port", str(gateway_port), *serve_args
    )
    agents_argv = pasarela_argv(
        "agents", "serve", "--state", str(state), "--port", str(agents_port)
    )
    with (
        child_process("gateway", gateway_argv, port=gateway_port, log=root / "gateway.log") as gw,
        child_process("agents", agents_argv, port=agents_port, log=root / "agents.log") as agents,
    ):
        asyncio.run(wait_healthy(gw))
        asyncio.run(wait_healthy(agents))
        yield LiveGateway(url=gw.url, agents_url=agents.url, state=state, logs=root)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    with live_gateway(tmp_path_factory.mktemp("live")) as gateway:
        yield gateway
