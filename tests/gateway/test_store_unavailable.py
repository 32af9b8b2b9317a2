"""A log store that fails: nothing is accepted, the sender may retry, nothing is lost."""

from __future__ import annotations

import json
from collections.abc import Sequence

from gateway.log import LogRecord, MessageLog, StoreUnavailable, verify
from gateway.testing import RECEIVER_URL, MemoryLogStore, make_gateway
from gateway.transport import WireRequest, WireResponse


class FlakyStore(MemoryLogStore):
    """A memory store that refuses writes while ``down``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def write(self, records: Sequence[LogRecord]) -> None:
        if self.down:
            raise StoreUnavailable("the disk is gone")
        super().write(records)


async def test_a_store_that_cannot_write_refuses_messages_with_503_until_it_is_back() -> None:
    world = make_gateway()
    store = FlakyStore()
    world.gateway.log = MessageLog(store)
    store.down = True
    refused = await world.send("AG001", to="AG002", jti="m-1")
    assert refused.status == 503
    assert json.loads(refused.body)["type"] == "urn:pasarela:problem:store-unavailable"
    assert world.handled == []  # never delivered without its log record
    assert world.gateway.log.healthy is False
    store.down = False
    accepted = await world.send("AG001", to="AG002", jti="m-1")
    assert accepted.status == 200
    assert len(world.handled) == 1
    assert world.gateway.log.healthy is True
    records = list(store.records())
    assert verify(records).ok
    # The request appended while the store was down reached it afterwards, in order.
    assert [(r.kind, r.fields.get("jti")) for r in records] == [
        ("request", "m-1"),
        ("delivery-failure", "m-1"),
        ("request", "m-1"),
        ("response", records[-1].fields["jti"]),
    ]


async def test_a_store_lost_between_delivery_and_answer_does_not_acknowledge() -> None:
    """The receiver answered, but its answer cannot be logged: the sender gets 503, and its
    retry is delivered again (the receiver deduplicates), then acknowledged."""
    world = make_gateway()
    store = FlakyStore()
    world.gateway.log = MessageLog(store)
    route = world.transport.route(RECEIVER_URL)
    assert route is not None

    async def answer_then_fail(request: WireRequest) -> WireResponse:
        answer = await route(request)
        store.down = True
        return answer

    world.transport.mount(RECEIVER_URL, answer_then_fail)
    first = await world.send("AG001", to="AG002", jti="m-2")
    assert first.status == 503
    world.transport.mount(RECEIVER_URL, route)
    store.down = False
    again = await world.send("AG001", to="AG002", jti="m-2")
    assert again.status == 200
    # Delivered twice (the first answer could not be logged), acknowledged once.
    assert len(world.handled) == 2
    # The log tells it as it happened, once the store is back: the first answer was logged
    # but not relayed, the retry was.
    kinds = [(r.kind, r.fields.get("reason")) for r in store.records()]
    assert kinds == [
        ("request", None),
        ("response", None),
        ("delivery-failure", "store-unavailable"),
        ("request", None),
        ("response", None),
    ]
