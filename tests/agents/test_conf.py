"""Tests for agents.conf.ConfCache: when the configuration document is fetched, and kept.

The gateway is :func:`gateway.testing.make_gateway`'s, in memory; ``GET /v1/conf`` is
answered with its real signed document (:func:`gateway.admin.conf_document`), and every
clock, the once-a-second limit's included, is the world's manual clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest

from agents.conf import ConfCache, ConfUnavailable
from agents.verification import Identity, sign_message
from gateway.admin import TYP_CONF, conf_document
from gateway.protocol import HEADER_RECEIPT, HEADER_SIGNATURE, body_digest
from gateway.testing import GATEWAY_URL, GatewayWorld
from gateway.testing import sign_message as forge
from gateway.transport import WireRequest, WireResponse
from gateway.trust import CertificateAuthority, generate_key


@dataclass
class ConfServer:
    """``GET /v1/conf`` of the world's gateway, counted, and broken on demand."""

    world: GatewayWorld
    fetches: int = 0
    status: int = 200
    lifetime: int | None = None  # re-sign the document with this exp - iat
    tamper: bool = False

    async def handle(self, request: WireRequest) -> WireResponse:
        assert urlsplit(request.url).path == "/v1/conf"
        self.fetches += 1
        if self.status != 200:
            return WireResponse(status=self.status, body=b'{"type":"oops"}')
        body, signature = conf_document(self.world.gateway)
        if self.lifetime is not None:
            now = int(self.world.clock.now())
            claims = {"iss": "PASARELA", "iat": now, "exp": now + self.lifetime}
            signature = self.world.gateway.sign({**claims, "bh": body_digest(body)}, typ=TYP_CONF)
        if self.tamper:
            body += b" "
        return WireResponse(status=200, headers={HEADER_SIGNATURE: signature}, body=body)


@dataclass
class Setup:
    world: GatewayWorld
    server: ConfServer
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def log(self, event: str, /, **fields: Any) -> None:
        self.events.append((event, fields))

    def cache(self, **options: Any) -> ConfCache:
        clock = self.world.clock
        defaults: dict[str, Any] = {"monotonic": clock.now, "log": self.log}
        return ConfCache(
            gateway_url=GATEWAY_URL,
            transport=self.world.transport,
            clock=clock,
            **(defaults | options),
        )

    def advance(self, seconds: float) -> None:
        self.world.clock.advance(seconds)


@pytest.fixture
def setup(world: GatewayWorld) -> Setup:
    server = ConfServer(world)
    world.transport.mount(GATEWAY_URL, server.handle)
    return Setup(world, server)


def token(world: GatewayWorld, sender: Identity, *, to: str = "AG002", jti: str = "m-1") -> str:
    return sign_message(
        sender, to=to, service="ping", body=b"{}", jti=jti, now=world.clock.now(), lifetime=60
    )


def identity(world: GatewayWorld, code: str) -> Identity:
    party = world.parties[code]
    return Identity(code=code, key=party.key, certificate=party.record.certificate)


async def test_nothing_is_fetched_until_a_directory_is_needed(setup: Setup) -> None:
    """Lazy: a new cache has no document, and its first directory() fetches it once."""
    cache = setup.cache()
    assert not cache.loaded
    with pytest.raises(ConfUnavailable, match="not been fetched"):
        cache.current()
    assert setup.server.fetches == 0

    directory = await cache.directory()
    assert cache.loaded
    assert cache.current() is directory
    assert directory.gateway_code == "PASARELA"
    assert directory.agency_key(setup.world.parties["AG001"].kid) is not None
    assert await cache.directory() is directory
    assert setup.server.fetches == 1
    ((event, fields),) = setup.events
    assert event == "conf"
    assert fields["gateway"] == "PASARELA"
    assert fields["certificates"] == 3
    assert fields["exp"] == int(setup.world.clock.now()) + 3600


async def test_a_document_is_used_for_five_minutes_at_most(setup: Setup) -> None:
    """With the gateway's hour-long signatures, the five-minute bound decides."""
    cache = setup.cache()
    await cache.directory()
    setup.advance(299)
    await cache.directory()
    assert setup.server.fetches == 1
    setup.advance(1)
    await cache.directory()
    assert setup.server.fetches == 2


async def test_a_document_is_fetched_again_a_minute_before_its_signature_expires(
    setup: Setup,
) -> None:
    setup.server.lifetime = 120
    cache = setup.cache()
    await cache.directory()
    setup.advance(59)
    await cache.directory()
    assert setup.server.fetches == 1
    setup.advance(1)  # exp - 60
    await cache.directory()
    assert setup.server.fetches == 2


async def test_a_signature_about_to_expire_is_not_fetched_more_than_once_a_second(
    setup: Setup,
) -> None:
    setup.server.lifetime = 30  # already inside the last minute
    cache = setup.cache()
    await cache.directory()
    await cache.directory()
    assert setup.server.fetches == 1
    setup.advance(1)
    await cache.directory()
    assert setup.server.fetches == 2


async def test_unknown_kid_refetches_at_most_once_a_second(setup: Setup) -> None:
    cache = setup.cache()
    first = await cache.directory()
    again = await cache.refetch_for_unknown_kid()
    assert setup.server.fetches == 2
    assert again is not first
    setup.advance(0.5)
    assert await cache.refetch_for_unknown_kid() is again  # within the second: as it is
    assert setup.server.fetches == 2
    setup.advance(0.5)
    await cache.refetch_for_unknown_kid()
    assert setup.server.fetches == 3


async def test_the_unknown_kid_limit_runs_on_the_monotonic_clock(setup: Setup) -> None:
    """A wall clock that jumps does not lift the limit: ``monotonic`` alone decides."""
    ticks = iter([100.0, 100.0, 100.5, 101.0, 101.0])
    cache = setup.cache(monotonic=lambda: next(ticks))
    await cache.refetch_for_unknown_kid()  # reads 100.0 twice (check, then record)
    setup.advance(3600)  # the wall clock jumps
    await cache.refetch_for_unknown_kid()  # 100.5: not a second yet
    assert setup.server.fetches == 1
    await cache.refetch_for_unknown_kid()  # 101.0
    assert setup.server.fetches == 2


async def test_a_failed_refresh_keeps_the_last_document_while_it_is_valid(setup: Setup) -> None:
    cache = setup.cache()
    directory = await cache.directory()
    setup.world.transport.set_down(GATEWAY_URL)
    setup.advance(300)
    assert await cache.directory() is directory
    assert setup.events[-1][0] == "conf-refresh-failed"
    assert "connection refused" in setup.events[-1][1]["reason"]
    setup.advance(0.5)  # the next try is a second later
    await cache.directory()
    assert [event for event, _ in setup.events].count("conf-refresh-failed") == 1
    setup.advance(0.5)
    await cache.directory()
    assert [event for event, _ in setup.events].count("conf-refresh-failed") == 2

    setup.world.transport.set_down(GATEWAY_URL, down=False)
    setup.server.status = 503
    assert await cache.refetch_for_unknown_kid() is directory
    assert "HTTP 503" in setup.events[-1][1]["reason"]


async def test_the_last_document_is_kept_until_its_exp_and_leeway(setup: Setup) -> None:
    cache = setup.cache()
    directory = await cache.directory()
    setup.server.status = 500
    setup.advance(3600 + 30)  # exp + 30 s: still valid
    assert await cache.directory() is directory
    setup.advance(1)
    with pytest.raises(ConfUnavailable, match="HTTP 500"):
        await cache.directory()


async def test_with_no_document_a_failed_fetch_raises(setup: Setup) -> None:
    cache = setup.cache()
    setup.world.transport.set_down(GATEWAY_URL)
    with pytest.raises(ConfUnavailable, match="connection refused"):
        await cache.directory()
    with pytest.raises(ConfUnavailable):
        await cache.refetch_for_unknown_kid()
    assert not cache.loaded
    setup.world.transport.set_down(GATEWAY_URL, down=False)
    assert (await cache.directory()).gateway_code == "PASARELA"  # tried again at once


async def test_a_document_that_does_not_verify_is_not_used(setup: Setup) -> None:
    setup.server.tamper = True
    with pytest.raises(ConfUnavailable, match="bh"):
        await setup.cache().directory()


async def test_the_gateway_certificate_must_chain_to_the_given_ca(setup: Setup) -> None:
    world = setup.world
    assert (await setup.cache(ca_certificate=world.trust.ca.certificate).directory()).gateway_kid
    other = CertificateAuthority.create(world.randomness, now=world.clock.now())
    with pytest.raises(ConfUnavailable, match="not issued by the CA"):
        await setup.cache(ca_certificate=other.certificate).directory()


async def test_a_delivery_naming_an_unknown_sender_kid_refetches(setup: Setup) -> None:
    """A sender that re-enrolled after the last fetch is found by fetching again."""
    world = setup.world
    cache = setup.cache()
    known = token(world, identity(world, "AG001"))
    directory = await cache.directory_for_delivery(signature=known, receipt=None)
    assert setup.server.fetches == 1
    await cache.directory_for_delivery(signature="not a token", receipt="")
    assert setup.server.fetches == 1  # names no kid

    key = generate_key(world.randomness)
    now = world.clock.now()
    record = world.trust.issue("AG001", key.public_key(), randomness=world.randomness, now=now)
    renewed = Identity(code="AG001", key=key, certificate=record.certificate)
    assert directory.agency_key(record.kid) is None
    fresh = await cache.directory_for_delivery(signature=token(world, renewed), receipt=None)
    assert setup.server.fetches == 2
    assert fresh.agency_key(record.kid) is not None
    # Within the second, a forged kid does not make it fetch again; a second later it does.
    forged = forge(world.parties["AG001"], to="AG002", jti="m-2", now=now, headers={"kid": "x"})
    await cache.directory_for_delivery(signature=forged, receipt=None)
    assert setup.server.fetches == 2
    setup.advance(1)
    await cache.directory_for_delivery(signature=forged, receipt=None)
    assert setup.server.fetches == 3


async def test_a_delivery_whose_receipt_names_another_kid_refetches(setup: Setup) -> None:
    world = setup.world
    cache = setup.cache()
    await cache.directory()
    relayed = await world.send("AG001", to="AG002", jti="AG001-m1")
    assert relayed.status == 200
    (delivered,) = world.handled
    receipt = delivered.headers[HEADER_RECEIPT]
    await cache.directory_for_delivery(signature=None, receipt=receipt)
    assert setup.server.fetches == 1  # the gateway's own kid
    await cache.directory_for_delivery(
        signature=None, receipt=token(world, identity(world, "PORTAL"))
    )
    assert setup.server.fetches == 2  # an agency's kid is not the gateway's
