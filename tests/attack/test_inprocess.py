"""The lab in process: the same techniques against an in-memory gateway, no sockets."""

from __future__ import annotations

from typing import Any

from agents.adversaries.catalogue import CATALOGUE
from agents.adversaries.inprocess import IN_PROCESS, InProcessLab, run_in_process
from agents.adversaries.model import Technique, Verdict
from agents.verification import Identity
from gateway.admin import Admin
from gateway.memory import gateway_handler
from gateway.registry import ConnectionState
from gateway.testing import GatewayWorld, make_gateway

LAB_URL = "http://gateway.lab"


def _lab() -> tuple[InProcessLab, GatewayWorld]:
    world = make_gateway(("AG001", "AG002", "AG003", "PORTAL"))
    world.transport.mount(LAB_URL, gateway_handler(Admin(world.gateway)))
    identities = {
        code: Identity(code=code, key=party.key, certificate=party.record.certificate)
        for code, party in world.parties.items()
    }
    lab = InProcessLab(
        gateway=world.gateway,
        transport=world.transport,
        gateway_url=LAB_URL,
        identities=identities,
        clock=world.clock,
        randomness=world.randomness,
        sender="AG001",
        other="AG002",
        third="AG003",
        receiver="PORTAL",
    )
    return lab, world


async def test_in_process_techniques_are_all_blocked_and_detected() -> None:
    lab, world = _lab()
    steps: list[tuple[Technique, dict[str, Any]]] = [(t, {}) for t in CATALOGUE.values()]
    results, skipped = await run_in_process(lab, steps)
    holes = {r.technique.id: r.problems for r in results if r.verdict != Verdict.PASS}
    assert holes == {}
    assert {r.technique.id for r in results} == IN_PROCESS
    assert "slowloris" in skipped
    assert "superseded-key" in skipped
    assert world.registry.require("AG001").state is ConnectionState.CONNECTED  # cleaned up
