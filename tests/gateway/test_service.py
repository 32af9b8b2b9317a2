"""The relay's effects: concurrent retries, transient failures, replay-cache expiry, receipts."""

from __future__ import annotations

import asyncio
import json

from gateway.log import verify
from gateway.protocol import HEADER_RECEIPT, TYP_RECEIPT, parse_compact, receipt_claims
from gateway.testing import RECEIVER_URL, GatewayWorld
from gateway.transport import Handler, TransportError, WireRequest, WireResponse


def _receiver(world: GatewayWorld) -> Handler:
    handler = world.transport.route(RECEIVER_URL)
    assert handler is not None
    return handler


async def test_retry_during_the_first_attempt_shares_its_outcome(world: GatewayWorld) -> None:
    """A retry that arrives while the first attempt is in flight waits for the same answer."""
    gate = asyncio.Event()
    echo = _receiver(world)
    calls = 0

    async def slow(request: WireRequest) -> WireResponse:
        nonlocal calls
        calls += 1
        await gate.wait()
        return await echo(request)

    world.transport.mount(RECEIVER_URL, slow)
    token_body = b'{"n":1}'
    first = asyncio.create_task(world.send("AG001", to="AG002", body=token_body, jti="c1"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    second = asyncio.create_task(world.send("AG001", to="AG002", body=token_body, jti="c1"))
    await asyncio.sleep(0.01)
    gate.set()
    a, b = await asyncio.gather(first, second)
    assert a == b
    assert a.status == 200
    assert calls == 1
    await world.gateway.log.sync()
    assert [r.kind for r in world.store.rows] == ["request", "retry", "response"]


async def test_retry_after_a_transient_failure_goes_through(world: GatewayWorld) -> None:
    """If the first attempt fails transiently, a concurrent retry is delivered anew."""
    gate = asyncio.Event()
    echo = _receiver(world)
    calls = 0

    async def flaky(request: WireRequest) -> WireResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            await gate.wait()
            raise TransportError("connection reset")
        return await echo(request)

    world.transport.mount(RECEIVER_URL, flaky)
    first = asyncio.create_task(world.send("AG001", to="AG002", jti="t1"))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(world.send("AG001", to="AG002", jti="t1"))
    await asyncio.sleep(0.01)
    gate.set()
    a, b = await asyncio.gather(first, second)
    assert a.status == 503
    assert b.status == 200
    assert calls == 2


async def test_replay_cache_forgets_after_expiry(world: GatewayWorld) -> None:
    """Accepted message ids are remembered until exp + leeway, then dropped."""
    await world.send("AG001", to="AG002", jti="e1")
    assert ("AG001", "e1") in world.gateway._seen
    world.clock.advance(60 + 31)
    response = await world.send("AG001", to="AG002", jti="e2")
    assert response.status == 200
    assert ("AG001", "e1") not in world.gateway._seen


async def test_receipts_name_the_log_record(world: GatewayWorld) -> None:
    """The receipt's seq and lh are the sequence number and hash of the logged response."""
    response = await world.send("AG001", to="AG002", body=b"[1]", jti="r1")
    receipt = receipt_claims(parse_compact(response.headers[HEADER_RECEIPT], typ=TYP_RECEIPT))
    await world.gateway.log.sync()
    record = world.store.rows[receipt.seq - 1]
    assert record.kind == "response"
    assert record.hash == receipt.lh
    assert receipt.corr == "r1"
    assert verify(world.store.records()).ok


async def test_receiver_gets_the_senders_signature_and_a_receipt(world: GatewayWorld) -> None:
    """The forwarded request carries the original signature and a receipt for the request."""
    await world.send("AG001", to="AG002", body=b'{"q":1}', jti="f1")
    forwarded = world.handled[0]
    receipt = receipt_claims(parse_compact(forwarded.headers[HEADER_RECEIPT], typ=TYP_RECEIPT))
    assert receipt.jti == "f1"
    assert receipt.seq == 1
    assert receipt.corr is None
    assert forwarded.body == b'{"q":1}'


async def test_receiver_error_status_is_relayed_when_signed(world: GatewayWorld) -> None:
    """A signed 404 from the receiver is relayed as is (it is the receiver's answer)."""
    echo = _receiver(world)

    async def not_found(request: WireRequest) -> WireResponse:
        answer = await echo(request)
        return WireResponse(status=404, headers=answer.headers, body=answer.body)

    world.transport.mount(RECEIVER_URL, not_found)
    response = await world.send("AG001", to="AG002", body=b"{}", jti="nf")
    assert response.status == 404
    assert response.headers[HEADER_RECEIPT]


async def test_receiver_5xx_is_receiver_unavailable(world: GatewayWorld) -> None:
    """A receiver answering 500 makes the gateway say 503 receiver-unavailable."""

    async def broken(request: WireRequest) -> WireResponse:
        return WireResponse(status=500, body=b"oops")

    world.transport.mount(RECEIVER_URL, broken)
    response = await world.send("AG001", to="AG002", jti="b1")
    assert response.status == 503
    assert json.loads(response.body)["type"].endswith("receiver-unavailable")
