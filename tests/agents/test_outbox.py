"""The portal's outbox (agents.outbox): requests for an agency that is off the gateway are
held, survive a restart of the portal, and reach the agency exactly once, in order, when it
is connected again.

Most tests run in :func:`gateway.testing.make_gateway`'s in-memory world (manual clock,
the real gateway behind a memory transport, ``GET /v1/conf`` included); the receiving
agencies are an :class:`agents.host.AgencyHost` whose ``ati.request`` service counts its
invocations per ``jti``. The last test does it over real HTTP with the pytest plugin's
gateway, agencies and portal, the operator acting through the admin API.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509

from agents.connector import Connector, RetryPolicy
from agents.dispatch import ConfStates, Dispatcher
from agents.host import AgencyHost
from agents.outbox import ItemState, Outbox
from agents.verification import Directory, Identity, encode_json
from gateway.admin import Admin
from gateway.clock import SeededRandomness, SystemClock, SystemRandomness
from gateway.memory import gateway_handler
from gateway.protocol import MessageClaims
from gateway.registry import Grant, StateEvent
from gateway.testing import GATEWAY_URL, RECEIVER_URL, GatewayWorld, make_gateway
from gateway.transport import HttpTransport
from gateway.trust import CertificateAuthority, generate_key
from pasarela.runtime import directory_from_trust

AGENCIES = ("AG001", "AG002", "PORTAL")


@dataclass
class Receiver:
    """The agencies' ``ati.request`` service: counts invocations per ``jti`` and, as a
    receiver that must process a request once (protocol.md section 6), remembers every
    ``(iss, jti)`` it took in and answers a repeat with its first answer."""

    invocations: Counter[str] = field(default_factory=Counter)
    processed: Counter[str] = field(default_factory=Counter)
    order: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    answers: dict[tuple[str, str], bytes] = field(default_factory=dict)

    async def ati_request(self, claims: MessageClaims, body: bytes) -> tuple[int, bytes]:
        self.invocations[claims.jti] += 1
        key = (claims.iss, claims.jti)
        if key not in self.answers:
            self.processed[claims.jti] += 1
            self.order[claims.aud].append(json.loads(body)["n"])
            self.answers[key] = encode_json({"estado": "00", "recibido": claims.jti})
        return 200, self.answers[key]


@dataclass
class Portal:
    """The in-memory world with the portal's outbox and dispatcher."""

    world: GatewayWorld
    admin: Admin
    host: AgencyHost
    receiver: Receiver
    connector: Connector
    path: Path
    outbox: Outbox
    dispatcher: Dispatcher

    def enqueue(self, to: str, n: int, *, service: str = "ati.request") -> int:
        return self.outbox.enqueue(to=to, service=service, body={"n": n}).id

    async def operator(self, code: str, *events: StateEvent) -> None:
        for event in events:
            await self.admin.transition(code, event, actor="ops", reason="test")

    def restart(self, outbox: Outbox | None = None) -> None:
        """The portal process again: the outbox reopened from its file, a new dispatcher."""
        self.outbox = outbox or Outbox(
            self.path, clock=self.world.clock, new_jti=self.connector.new_jti
        )
        self.dispatcher = dispatcher_for(self.world, self.outbox, self.connector)

    def states(self) -> dict[str, ItemState]:
        return {item.jti: item.state for item in self.outbox.items()}

    async def log_kinds(self, jti: str) -> list[str]:
        await self.world.gateway.log.sync()
        rows = self.world.store.rows
        return [r.kind for r in rows if jti in (r.fields.get("jti"), r.fields.get("corr"))]


def states_of(world: GatewayWorld, ca: x509.Certificate | None = None) -> ConfStates:
    return ConfStates(
        gateway_url=GATEWAY_URL,
        transport=world.transport,
        clock=world.clock,
        ca_certificate=ca or world.trust.ca.certificate,
    )


def dispatcher_for(world: GatewayWorld, outbox: Outbox, connector: Connector) -> Dispatcher:
    return Dispatcher(outbox, connector, states=states_of(world))


def portal_connector(world: GatewayWorld, identity: Identity) -> Connector:
    """The portal's connector: keys straight from the trust store, backoff in manual time."""

    async def sleep(seconds: float) -> None:
        world.clock.advance(seconds)

    return Connector(
        identity=identity,
        gateway_url=GATEWAY_URL,
        transport=world.transport,
        clock=world.clock,
        randomness=world.randomness,
        directory_source=lambda: directory_from_trust(world.trust, gateway_code="PASARELA"),
        retry=RetryPolicy(attempts=2),
        sleep=sleep,
    )


def re_enrolled(world: GatewayWorld, code: str) -> Identity:
    """``code`` with a new key, certified in the trust store's current generation."""
    key = generate_key(world.randomness)
    record = world.trust.issue(
        code, key.public_key(), randomness=world.randomness, now=world.clock.now()
    )
    return Identity(code=code, key=key, certificate=record.certificate)


@pytest.fixture
def portal(tmp_path: Path) -> Portal:
    world = make_gateway(AGENCIES)
    for code in ("AG001", "AG002"):
        agency = world.registry.require(code)
        world.registry.add(replace(agency, services=agency.services | {"ati.request"}))
    world.registry.grant(Grant(client="PORTAL", provider="*", service="ati.request"))
    admin = Admin(world.gateway)
    world.transport.mount(GATEWAY_URL, gateway_handler(admin))  # messages and /v1/conf

    def directory() -> Directory:
        return directory_from_trust(world.trust, gateway_code=world.gateway.config.code)

    def identity(code: str) -> Identity:
        party = world.parties[code]
        return Identity(code=code, key=party.key, certificate=party.record.certificate)

    receiver = Receiver()
    host = AgencyHost(
        identities={code: identity(code) for code in ("AG001", "AG002")},
        directory=directory,
        clock=world.clock,
        randomness=world.randomness,
        services={"ati.request": receiver.ati_request},
    )
    world.transport.mount(RECEIVER_URL, host.handle)

    connector = portal_connector(world, identity("PORTAL"))
    path = tmp_path / "outbox.db"
    outbox = Outbox(path, clock=world.clock, new_jti=connector.new_jti)
    return Portal(
        world=world,
        admin=admin,
        host=host,
        receiver=receiver,
        connector=connector,
        path=path,
        outbox=outbox,
        dispatcher=dispatcher_for(world, outbox, connector),
    )


async def test_requests_to_a_connected_agency_are_delivered_in_order(portal: Portal) -> None:
    ids = [portal.enqueue("AG001", n) for n in range(3)]
    report = await portal.dispatcher.dispatch_once()
    assert report.delivered == ids
    items = portal.outbox.items()
    assert [i.state for i in items] == [ItemState.DELIVERED] * 3
    assert portal.receiver.order["AG001"] == [0, 1, 2]
    assert {i.jti for i in items} == set(portal.receiver.processed)  # the enqueued jtis
    assert all(i.reply_status == 200 and i.attempts == 1 for i in items)
    assert json.loads(items[0].reply_body or b"") == {"estado": "00", "recibido": items[0].jti}
    assert portal.outbox.counts() == {
        "AG001": {"pending": 0, "held": 0, "delivered": 3, "failed": 0}
    }
    assert (await portal.dispatcher.dispatch_once()).sent == 0  # nothing left to send


async def test_a_disconnected_agency_gets_its_backlog_once_and_in_order_when_back(
    portal: Portal,
) -> None:
    """The operator disconnects AG001: its requests are held, none sent, none failed,
    pass after pass; AG002's go. Reconnected, AG001 gets each exactly once, in order."""
    await portal.operator("AG001", StateEvent.DISCONNECT)
    held = [portal.enqueue("AG001", n) for n in range(5)]
    other = portal.enqueue("AG002", 100)
    for _ in range(3):
        report = await portal.dispatcher.dispatch_once()
        portal.world.clock.advance(60)
    assert report.delivered == []
    assert [i.id for i in portal.outbox.items(state=ItemState.HELD)] == held
    assert portal.outbox.require(other).state is ItemState.DELIVERED
    assert all(i.attempts == 0 for i in portal.outbox.items(to="AG001"))  # never sent
    assert portal.outbox.require(held[0]).problem == (
        "AG001 is disconnected in the configuration document"
    )
    assert portal.outbox.counts()["AG001"] == {
        "pending": 0,
        "held": 5,
        "delivered": 0,
        "failed": 0,
    }
    portal.enqueue("AG001", 5)  # a request filed while it is away waits behind the others
    await portal.operator("AG001", StateEvent.CONNECT)
    report = await portal.dispatcher.dispatch_once()
    assert len(report.delivered) == 6
    assert portal.receiver.order["AG001"] == [0, 1, 2, 3, 4, 5]
    jtis = [i.jti for i in portal.outbox.items(to="AG001")]
    assert all(portal.receiver.invocations[jti] == 1 for jti in jtis)
    assert set(portal.states().values()) == {ItemState.DELIVERED}


async def test_a_refusal_as_disconnected_holds_the_request_and_those_behind_it(
    portal: Portal,
) -> None:
    """The document said connected, the gateway says ``403 agency-disconnected`` (the
    operator acted in between): held, not failed; sent again with its jti when back."""
    stale = {"PORTAL": "connected", "AG001": "connected", "AG002": "connected"}

    async def states() -> dict[str, str]:
        return stale

    portal.dispatcher = Dispatcher(portal.outbox, portal.connector, states=states)
    await portal.operator("AG001", StateEvent.DISCONNECT)
    first, second = portal.enqueue("AG001", 1), portal.enqueue("AG001", 2)
    report = await portal.dispatcher.dispatch_once()
    assert report.held == [first, second]
    item = portal.outbox.require(first)
    assert item.state is ItemState.HELD
    assert item.problem is not None
    assert item.problem.startswith("403 agency-disconnected")
    assert item.attempts == 1
    assert portal.outbox.require(second).attempts == 0  # not sent past the first
    await portal.operator("AG001", StateEvent.CONNECT)
    assert (await portal.dispatcher.dispatch_once()).delivered == [first, second]
    assert portal.receiver.invocations[item.jti] == 1
    assert await portal.log_kinds(item.jti) == ["rejection", "request", "response"]


async def test_the_direct_fallback_holds_until_the_agency_is_back_on_the_gateway(
    portal: Portal,
) -> None:
    await portal.operator("AG001", StateEvent.DISCONNECT, StateEvent.FALLBACK)
    ids = [portal.enqueue("AG001", n) for n in range(2)]
    await portal.dispatcher.dispatch_once()
    assert portal.outbox.require(ids[0]).problem == "AG001 is direct in the configuration document"
    await portal.operator("AG001", StateEvent.ENROL, StateEvent.APPROVE, StateEvent.VERIFY)
    await portal.dispatcher.dispatch_once()  # verified is not connected yet
    assert set(portal.states().values()) == {ItemState.HELD}
    await portal.operator("AG001", StateEvent.CONNECT)
    assert (await portal.dispatcher.dispatch_once()).delivered == ids
    assert portal.receiver.order["AG001"] == [0, 1]


async def test_a_portal_off_the_gateway_holds_everything(portal: Portal) -> None:
    await portal.operator("PORTAL", StateEvent.DISCONNECT)
    ids = [portal.enqueue("AG001", 1), portal.enqueue("AG002", 2)]
    report = await portal.dispatcher.dispatch_once()
    assert report.held == ids
    assert portal.outbox.require(ids[1]).problem == (
        "PORTAL is disconnected in the configuration document"
    )
    await portal.operator("PORTAL", StateEvent.CONNECT)
    assert sorted((await portal.dispatcher.dispatch_once()).delivered) == ids


async def test_other_refusals_fail_with_their_problem_and_block_nothing(portal: Portal) -> None:
    unknown = portal.enqueue("AG999", 1)
    forbidden = portal.enqueue("AG001", 2, service="ati.other")
    after = portal.enqueue("AG001", 3)
    report = await portal.dispatcher.dispatch_once()
    assert sorted(report.failed) == [unknown, forbidden]
    assert report.delivered == [after]
    problem = portal.outbox.require(unknown).problem
    assert problem is not None
    assert problem.startswith("404 unknown-receiver")
    problem = portal.outbox.require(forbidden).problem
    assert problem is not None
    assert problem.startswith("403 not-authorized")
    assert portal.outbox.totals() == {"pending": 0, "held": 0, "delivered": 1, "failed": 2}


async def test_a_receiver_that_does_not_answer_keeps_its_queue_pending(portal: Portal) -> None:
    """503 receiver-unavailable (after the connector's own retry): pending, problem noted,
    the agency's later requests wait; next pass, each is delivered once."""
    portal.world.transport.set_down(RECEIVER_URL)
    ids = [portal.enqueue("AG001", n) for n in range(2)]
    report = await portal.dispatcher.dispatch_once()
    assert report.retry == [ids[0]]
    first = portal.outbox.require(ids[0])
    assert (first.state, first.attempts) == (ItemState.PENDING, 1)
    assert first.problem is not None
    assert first.problem.startswith("503 receiver-unavailable")
    assert portal.outbox.require(ids[1]).attempts == 0
    portal.world.transport.set_down(RECEIVER_URL, down=False)
    assert (await portal.dispatcher.dispatch_once()).delivered == ids
    assert portal.receiver.invocations == Counter(
        {first.jti: 1, portal.outbox.require(ids[1]).jti: 1}
    )


async def test_a_gateway_out_of_reach_changes_nothing(portal: Portal) -> None:
    ident = portal.enqueue("AG001", 1)
    portal.world.transport.set_down(GATEWAY_URL)
    report = await portal.dispatcher.dispatch_once()
    assert report.stopped is not None
    assert "agency states unavailable" in report.stopped
    item = portal.outbox.require(ident)
    assert (item.state, item.attempts) == (ItemState.PENDING, 0)
    portal.world.transport.set_down(GATEWAY_URL, down=False)
    assert (await portal.dispatcher.dispatch_once()).delivered == [ident]


async def test_a_portal_with_a_distrusted_key_keeps_its_requests_until_re_enrolled(
    portal: Portal,
) -> None:
    """A new key generation (the incident): the gateway refuses the portal's own key.
    That is no fault of the requests: they stay pending, the pass stops. Re-enrolled
    (and AG001 too), the portal sends them with a new connector, each once."""
    await portal.admin.open_generation(actor="ops", reason="keys distrusted")
    ids = [portal.enqueue("AG001", n) for n in range(2)]
    report = await portal.dispatcher.dispatch_once()
    assert report.stopped is not None
    assert report.stopped.startswith("401 superseded-key")
    first = portal.outbox.require(ids[0])
    assert (first.state, first.attempts) == (ItemState.PENDING, 1)
    assert portal.outbox.require(ids[1]).attempts == 0
    portal.host.set_identity(re_enrolled(portal.world, "AG001"))
    connector = portal_connector(portal.world, re_enrolled(portal.world, "PORTAL"))
    dispatcher = Dispatcher(portal.outbox, connector, states=states_of(portal.world))
    assert (await dispatcher.dispatch_once()).delivered == ids
    assert portal.receiver.order["AG001"] == [0, 1]
    assert set(portal.receiver.invocations.values()) == {1}


async def test_a_configuration_document_that_does_not_verify_sends_nothing(
    portal: Portal,
) -> None:
    """Signed by a gateway another CA certified: the states are not believed."""
    other = CertificateAuthority.create(SeededRandomness(99), now=portal.world.clock.now())
    dispatcher = Dispatcher(
        portal.outbox, portal.connector, states=states_of(portal.world, other.certificate)
    )
    ident = portal.enqueue("AG001", 1)
    report = await dispatcher.dispatch_once()
    assert report.stopped is not None
    assert "not issued by the CA" in report.stopped
    assert portal.outbox.require(ident).attempts == 0


async def test_the_outbox_outlives_the_portal_process(portal: Portal) -> None:
    await portal.operator("AG001", StateEvent.DISCONNECT)
    ids = [portal.enqueue("AG001", n) for n in range(3)]
    await portal.dispatcher.dispatch_once()
    before = portal.outbox.items()
    portal.outbox.close()
    portal.restart()
    assert portal.outbox.items() == before  # states, jtis and body bytes as they were
    await portal.operator("AG001", StateEvent.CONNECT)
    assert (await portal.dispatcher.dispatch_once()).delivered == ids
    assert [i.jti for i in portal.outbox.items()] == [i.jti for i in before]


class _Crash(BaseException):
    """The portal process dies (nothing after it runs)."""


class CrashingOutbox(Outbox):
    """An outbox whose process dies just before it records a delivery, once armed."""

    armed = False

    def deliver(self, item_id: int, *, status: int, body: bytes) -> bool:
        if self.armed:
            self.armed = False
            raise _Crash
        return super().deliver(item_id, status=status, body=body)


async def _crash_after_sending(portal: Portal) -> str:
    """Send one held request after its agency comes back; die before recording it."""
    await portal.operator("AG001", StateEvent.DISCONNECT)
    portal.outbox.close()
    clock, new_jti = portal.world.clock, portal.connector.new_jti
    crashing = CrashingOutbox(portal.path, clock=clock, new_jti=new_jti)
    portal.restart(crashing)
    item = crashing.enqueue(to="AG001", service="ati.request", body={"n": 7}, jti="PORTAL-7")
    await portal.dispatcher.dispatch_once()
    assert crashing.require(item.id).state is ItemState.HELD
    await portal.operator("AG001", StateEvent.CONNECT)
    crashing.armed = True
    with pytest.raises(_Crash):
        await portal.dispatcher.dispatch_once()
    assert portal.receiver.processed["PORTAL-7"] == 1  # it did arrive
    portal.outbox.close()
    portal.restart()
    item = portal.outbox.require(item.id)
    assert (item.state, item.attempts) == (ItemState.HELD, 1)  # what the file says
    return item.jti


async def test_a_crash_between_sending_and_recording_is_still_exactly_once(
    portal: Portal,
) -> None:
    """Restarted at once, the portal sends the request again with the same jti and body:
    the gateway answers the retry with the original outcome, the service does not run."""
    jti = await _crash_after_sending(portal)
    assert (await portal.dispatcher.dispatch_once()).delivered == [1]
    item = portal.outbox.require(1)
    assert (item.state, item.attempts) == (ItemState.DELIVERED, 2)
    assert portal.receiver.invocations[jti] == 1
    assert await portal.log_kinds(jti) == ["request", "response", "retry"]


async def test_a_late_restart_is_exactly_once_by_the_receivers_memory(portal: Portal) -> None:
    """Restarted after the gateway forgot the message (exp + 30 s), the re-send is
    delivered again; the receiver knows its (iss, jti) and does not take it twice."""
    jti = await _crash_after_sending(portal)
    portal.world.clock.advance(600)
    assert (await portal.dispatcher.dispatch_once()).delivered == [1]
    assert portal.receiver.invocations[jti] == 2  # delivered twice by the gateway ...
    assert portal.receiver.processed[jti] == 1  # ... taken in once
    item = portal.outbox.require(1)
    assert json.loads(item.reply_body or b"") == {"estado": "00", "recibido": jti}


def test_enqueue_with_a_known_jti_is_idempotent(portal: Portal) -> None:
    one = portal.outbox.enqueue(to="AG001", service="ati.request", body={"n": 1}, jti="P-1")
    again = portal.outbox.enqueue(to="AG001", service="ati.request", body={"n": 1}, jti="P-1")
    assert again == one
    with pytest.raises(ValueError, match="already used"):
        portal.outbox.enqueue(to="AG001", service="ati.request", body={"n": 2}, jti="P-1")
    with pytest.raises(ValueError, match="agency code"):
        portal.outbox.enqueue(to="ag 1", service="ati.request", body={})
    assert len(portal.outbox.items()) == 1


async def test_run_passes_after_a_wake_and_stops(portal: Portal) -> None:
    passes: list[dict[str, Any]] = []
    delivered = asyncio.Event()

    def log(event: str, /, **fields: Any) -> None:
        passes.append({"event": event, **fields})
        if fields["delivered"]:
            delivered.set()

    dispatcher = Dispatcher(
        portal.outbox, portal.connector, states=states_of(portal.world), interval=3600, log=log
    )
    task = dispatcher.start()
    await asyncio.sleep(0.05)  # its first pass found nothing; it waits for an hour
    ident = portal.enqueue("AG001", 1)
    dispatcher.wake()
    async with asyncio.timeout(5):
        await delivered.wait()
    await dispatcher.stop()
    assert task.cancelled()
    assert portal.outbox.require(ident).state is ItemState.DELIVERED
    assert passes == [
        {"event": "outbox-pass", "delivered": 1, "held": 0, "failed": 0, "retry": 0,
         "stopped": None}
    ]  # fmt: skip


# -- over real HTTP, with the pytest plugin's gateway --------------------------------------


async def test_live_backlog_across_a_disconnection_is_delivered_once(
    pasarela_gateway: Any, pasarela_agency: Any, pasarela_portal: Any, tmp_path: Path
) -> None:
    """The operator disconnects AG001 through the admin API; the portal's requests to it
    are held while AG002's go; the portal crashes mid-delivery once AG001 is back; after
    its restart every request has reached its agency exactly once, in order."""
    receiver = Receiver()
    host = AgencyHost(
        identities={},
        directory=pasarela_gateway.directory,
        clock=SystemClock(),
        randomness=SystemRandomness(),
        services={"ati.request": receiver.ati_request},
    )
    runner = web.AppRunner(host.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    transport = HttpTransport()
    try:
        for code in ("AG001", "AG002"):
            agency = pasarela_agency(
                code, endpoint=f"{url}{AgencyHost.endpoint_path(code)}", services={"ati.request"}
            )
            host.set_identity(agency.identity)
        connector = pasarela_portal.connector(transport=transport)
        states = ConfStates(
            gateway_url=pasarela_gateway.url,
            transport=transport,
            clock=SystemClock(),
            ca_certificate=pasarela_gateway.ca,
        )
        path = tmp_path / "outbox.db"
        crashing = CrashingOutbox(path, clock=SystemClock(), new_jti=connector.new_jti)
        dispatcher = Dispatcher(crashing, connector, states=states)

        status, _ = pasarela_gateway.admin("POST", "agencies/AG001/disconnect", {"reason": "t"})
        assert status == 200
        for n in range(5):
            crashing.enqueue(to="AG001", service="ati.request", body={"n": n})
        crashing.enqueue(to="AG002", service="ati.request", body={"n": 100})
        report = await dispatcher.dispatch_once()
        assert len(report.held) == 5
        assert len(report.delivered) == 1
        assert crashing.counts()["AG001"]["held"] == 5
        assert receiver.order["AG001"] == []

        status, _ = pasarela_gateway.admin("POST", "agencies/AG001/connect", {"reason": "t"})
        assert status == 200
        crashing.armed = True
        with pytest.raises(_Crash):
            await dispatcher.dispatch_once()
        crashing.close()

        outbox = Outbox(path, clock=SystemClock(), new_jti=connector.new_jti)  # restarted
        done = asyncio.Event()

        def log(event: str, /, **fields: Any) -> None:
            if outbox.totals()["delivered"] == 6:
                done.set()

        dispatcher = Dispatcher(outbox, connector, states=states, interval=0.05, log=log)
        dispatcher.start()
        try:
            async with asyncio.timeout(20):
                await done.wait()
        finally:
            await dispatcher.stop()
        assert outbox.counts() == {
            "AG001": {"pending": 0, "held": 0, "delivered": 5, "failed": 0},
            "AG002": {"pending": 0, "held": 0, "delivered": 1, "failed": 0},
        }
        assert receiver.order["AG001"] == [0, 1, 2, 3, 4]
        jtis = [item.jti for item in outbox.items()]
        assert all(receiver.processed[jti] == 1 for jti in jtis)
        assert all(receiver.invocations[jti] == 1 for jti in jtis)  # the retry was the gateway's
        assert [i.attempts for i in outbox.items(to="AG001")] == [2, 1, 1, 1, 1]
        outbox.close()
    finally:
        await transport.aclose()
        await runner.cleanup()
