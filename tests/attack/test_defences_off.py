"""The lab sees holes: with one defence switched off, its technique's scorecard fails.

Each test serves a freshly initialised gateway in process (the production app over a real
socket) with one defence disabled by patching it out, runs the technique that defence
stops, and asserts the verdict is a HOLE; the same technique against the intact gateway is
blocked. A lab that only ever reports green would prove nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from agents.adversaries.model import Result, Verdict
from agents.adversaries.runner import run_techniques
from agents.adversaries.tokens import TOKEN_TECHNIQUES
from gateway import pipeline, protocol
from gateway.clock import SystemClock, SystemRandomness
from gateway.detection import DetectionPolicy
from gateway.state import StateDir, init_state
from pasarela.processes import free_ports
from pasarela.runtime import build_gateway_app, build_host_app

TECHNIQUES = {t.id: t for t in TOKEN_TECHNIQUES}


@asynccontextmanager
async def _served(root: Path, *, detection: DetectionPolicy | None = None) -> AsyncIterator[str]:
    """Gateway and agency host of a fresh five-agency state, in this event loop."""
    gateway_port, agents_port = free_ports(2)
    state_dir = root / "state"
    init_state(
        state_dir,
        agencies=5,
        agents_url=f"http://127.0.0.1:{agents_port}",
        randomness=SystemRandomness(),
        now=SystemClock().now(),
    )
    gateway_app = build_gateway_app(StateDir(state_dir), detection=detection)
    host_app, _ = build_host_app(state_dir)
    runners = []
    for app, port in ((gateway_app, gateway_port), (host_app, agents_port)):
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
    try:
        yield f"http://127.0.0.1:{gateway_port}"
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


async def _verdict(root: Path, technique: str, **served: DetectionPolicy) -> Result:
    async with _served(root, **served) as url:
        (result,) = await run_techniques(url, root / "state", [(TECHNIQUES[technique], {})])
    return result


class _Matches(str):
    """A digest equal to every other: the body check that checks nothing."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return True

    def __ne__(self, other: object) -> bool:
        return False

    def __hash__(self) -> int:
        return 0


DEFENCES: dict[str, tuple[str, Callable[[pytest.MonkeyPatch], object]]] = {
    "signature verification": (
        "claims-tampered",
        lambda mp: mp.setattr(pipeline, "signature_valid", lambda parsed, key: True),
    ),
    "body digest": (
        "body-tampered",
        lambda mp: mp.setattr(pipeline, "body_digest", lambda body: _Matches()),
    ),
    "expiry": (
        "expired-token",
        lambda mp: mp.setattr(pipeline, "_time_problem", lambda claims, now, leeway: None),
    ),
    "JOSE header allow-list": (  # both layers: the deny-list and the allow-list
        "jku-header",
        lambda mp: (
            mp.setattr(protocol, "FORBIDDEN_HEADERS", frozenset()),
            mp.setattr(protocol, "ALLOWED_HEADERS", protocol.ALLOWED_HEADERS | {"jku"}),
        ),
    ),
    "algorithm pinning": (
        "alg-none",
        lambda mp: mp.setattr(protocol, "ALGORITHM", "none"),
    ),
}


@pytest.mark.parametrize("defence", sorted(DEFENCES))
async def test_turning_a_defence_off_makes_its_technique_a_hole(
    defence: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    technique, switch_off = DEFENCES[defence]
    intact = await _verdict(tmp_path / "intact", technique)
    assert intact.verdict == Verdict.PASS, intact.problems
    switch_off(monkeypatch)
    broken = await _verdict(tmp_path / "broken", technique)
    assert broken.verdict == Verdict.FAIL
    assert broken.problems


async def test_without_detection_the_missing_alert_is_a_hole(tmp_path: Path) -> None:
    """Alerts are part of the verdict: a refusal nobody noticed is still a HOLE."""
    monkey = pytest.MonkeyPatch()
    try:
        monkey.setattr("gateway.service.ALERT_CODES", frozenset())
        result = await _verdict(tmp_path, "impersonation")
    finally:
        monkey.undo()
    assert result.verdict == Verdict.FAIL
    assert any("no security alert" in p for p in result.problems)
