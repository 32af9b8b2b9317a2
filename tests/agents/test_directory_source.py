"""A connector fed by a shared, caller-kept directory never fetches the configuration."""

from __future__ import annotations

from agents.connector import Connector
from agents.verification import Directory, Identity
from gateway.testing import GATEWAY_URL, GatewayWorld
from gateway.transport import WireRequest, WireResponse
from pasarela.runtime import directory_from_trust


async def test_directory_source_replaces_conf_fetches(world: GatewayWorld) -> None:
    """Sends verify against the source's directory; no GET /v1/conf is ever made."""
    seen: list[WireRequest] = []
    relay = world.transport.route(GATEWAY_URL)
    assert relay is not None

    async def watching(request: WireRequest) -> WireResponse:
        seen.append(request)
        return await relay(request)

    world.transport.mount(GATEWAY_URL, watching)
    calls = 0

    def source() -> Directory:
        nonlocal calls
        calls += 1
        return directory_from_trust(world.trust, gateway_code="PASARELA")

    party = world.parties["AG001"]
    connector = Connector(
        identity=Identity(code="AG001", key=party.key, certificate=party.record.certificate),
        gateway_url=GATEWAY_URL,
        transport=world.transport,
        clock=world.clock,
        randomness=world.randomness,
        directory_source=source,
    )
    reply = await connector.send(to="AG002", service="ping", body={"n": 1})
    assert reply.json() == {"n": 1}
    assert calls >= 1
    assert [r.url.rsplit("/", 1)[-1] for r in seen] == ["messages"]
