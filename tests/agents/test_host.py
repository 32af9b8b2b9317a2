"""Tests for agents.host: inbound verification, signed answers, idempotency, the aiohttp app."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization

from agents.host import AgencyHost, acknowledge, load_identities, ping
from agents.verification import Directory, Identity, sign_message
from gateway.clock import ManualClock, SeededRandomness
from gateway.protocol import (
    HEADER_RECEIPT,
    HEADER_SIGNATURE,
    TYP_MESSAGE,
    TYP_RECEIPT,
    MessageClaims,
    body_digest,
    message_claims,
    parse_compact,
    sign_token,
    signature_valid,
)
from gateway.transport import WireRequest, WireResponse
from gateway.trust import CertificateAuthority, generate_key, private_key_pem

T0 = 1_420_070_400.0


def make_identity(ca: CertificateAuthority, code: str, rng: SeededRandomness) -> Identity:
    key = generate_key(rng)
    cert = ca.issue(code, key.public_key(), generation=1, randomness=rng, now=T0)
    return Identity(code=code, key=key, certificate=cert)


@dataclass
class CountingService:
    """A service that records its calls and answers with a fixed body."""

    answer: bytes = b'{"ok":true}'
    calls: list[bytes] = field(default_factory=list)
    gate: asyncio.Event | None = None
    fail: bool = False

    async def __call__(self, claims: MessageClaims, body: bytes) -> tuple[int, bytes]:
        self.calls.append(body)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise RuntimeError("backend down")
        return 200, self.answer


@dataclass
class Setup:
    clock: ManualClock
    gateway: Identity
    agencies: dict[str, Identity]
    directory: Directory
    host: AgencyHost
    service: CountingService

    def request(
        self,
        *,
        sender: str = "A1",
        to: str = "B2",
        path_code: str | None = None,
        service: str = "count",
        body: bytes = b'{"q":1}',
        jti: str = "A1-m1",
        receipt_jti: str | None = None,
        receipt: bool = True,
    ) -> WireRequest:
        """A message as the gateway forwards it: sender's signature plus gateway receipt."""
        now = self.clock.now()
        token = sign_message(
            self.agencies[sender], to=to, service=service, body=body, jti=jti, now=now, lifetime=60
        )
        headers = {HEADER_SIGNATURE: token}
        if receipt:
            claims = {"iss": "GW", "jti": receipt_jti or jti, "seq": 1, "lh": body_digest(b"x")}
            claims |= {"bh": body_digest(body), "iat": int(now)}
            gw = self.gateway
            headers[HEADER_RECEIPT] = sign_token(claims, gw.key, kid=gw.kid, typ=TYP_RECEIPT)
        url = f"http://agencies.test{AgencyHost.endpoint_path(path_code or to)}"
        return WireRequest(url=url, headers=headers, body=body)


def problem_code(response: WireResponse) -> str:
    assert response.header("Content-Type") == "application/problem+json"
    return str(json.loads(response.body)["type"]).removeprefix("urn:pasarela:problem:")


@pytest.fixture
def setup() -> Setup:
    rng, clock = SeededRandomness(11), ManualClock(T0)
    ca = CertificateAuthority.create(rng, now=T0)
    gateway = make_identity(ca, "GW", rng)
    agencies = {code: make_identity(ca, code, rng) for code in ("A1", "B2", "C3", "X9")}
    known = [agencies[c] for c in ("A1", "B2", "C3")]  # X9's key is not in the directory
    directory = Directory(
        gateway_code="GW",
        gateway_key=gateway.key.public_key(),
        gateway_kid=gateway.kid,
        certificates={a.kid: (a.code, a.key.public_key()) for a in known},
    )
    service = CountingService()
    host = AgencyHost(
        identities={c: agencies[c] for c in ("B2", "C3")},
        directory=lambda: directory,
        clock=clock,
        randomness=SeededRandomness(12),
        services={"count": service},
    )
    return Setup(clock, gateway, agencies, directory, host, service)


async def test_host_answers_with_a_response_signed_by_the_receiver(setup: Setup) -> None:
    """A verified message gets the service's body signed by B2 for A1, correlated."""
    response = await setup.host.handle(setup.request())
    parsed = parse_compact(response.headers[HEADER_SIGNATURE], typ=TYP_MESSAGE)
    claims = message_claims(parsed)
    assert (response.status, response.body) == (200, b'{"ok":true}')
    assert signature_valid(parsed, setup.agencies["B2"].key.public_key())
    assert (claims.iss, claims.aud, claims.svc, claims.corr) == ("B2", "A1", "count", "A1-m1")
    assert claims.bh == body_digest(response.body)
    assert setup.host.handled == {"B2": 1}


def b2_host(setup: Setup, **options: Any) -> AgencyHost:
    """A host of B2 alone, with ``options`` (services, fallback ...)."""
    return AgencyHost(
        identities={"B2": setup.agencies["B2"]},
        directory=setup.directory,
        clock=setup.clock,
        randomness=SeededRandomness(1),
        **options,
    )


async def test_default_services_include_ping_echo(setup: Setup) -> None:
    """Without a services mapping the host offers ping, which echoes the body."""
    host = b2_host(setup)
    response = await host.handle(setup.request(service="ping", body=b'{"echo":1}'))
    assert (response.status, response.body) == (200, b'{"echo":1}')


async def test_host_rejects_a_body_that_does_not_match_bh(setup: Setup) -> None:
    """A body changed after signing is refused and the service does not run."""
    original = setup.request()
    tampered = WireRequest(url=original.url, headers=original.headers, body=b'{"q":2}')
    response = await setup.host.handle(tampered)
    assert (response.status, problem_code(response)) == (400, "body-digest-mismatch")
    assert setup.service.calls == []


async def test_host_rejects_a_message_without_a_receipt(setup: Setup) -> None:
    """A message that did not come through the gateway (no receipt) is refused."""
    response = await setup.host.handle(setup.request(receipt=False))
    assert (response.status, problem_code(response)) == (400, "malformed")
    assert setup.service.calls == []


async def test_host_rejects_a_receipt_for_another_message(setup: Setup) -> None:
    """A gateway receipt for a different jti does not vouch for this message."""
    response = await setup.host.handle(setup.request(receipt_jti="A1-other"))
    assert (response.status, problem_code(response)) == (401, "bad-signature")


async def test_host_rejects_a_sender_key_it_does_not_know(setup: Setup) -> None:
    """A message signed under a kid missing from the directory is refused as unknown-key."""
    response = await setup.host.handle(setup.request(sender="X9"))
    assert (response.status, problem_code(response)) == (401, "unknown-key")


async def test_host_rejects_a_message_addressed_to_another_agency(setup: Setup) -> None:
    """A message for B2 posted to C3's endpoint is refused."""
    response = await setup.host.handle(setup.request(to="B2", path_code="C3"))
    assert (response.status, problem_code(response)) == (401, "bad-signature")
    assert b"aud B2 is not C3" in response.body


async def test_unknown_agency_is_not_found(setup: Setup) -> None:
    """A path naming an agency this host does not serve is a 404 problem."""
    response = await setup.host.handle(setup.request(to="A1"))
    assert (response.status, problem_code(response)) == (404, "unknown-receiver")


async def test_unknown_service_gets_a_signed_not_found_answer(setup: Setup) -> None:
    """An unknown service is answered with a signed 404 problem body."""
    response = await setup.host.handle(setup.request(service="nope"))
    claims = message_claims(parse_compact(response.headers[HEADER_SIGNATURE], typ=TYP_MESSAGE))
    assert (response.status, problem_code(response)) == (404, "not-found")
    assert claims.bh == body_digest(response.body)


async def test_a_fallback_handles_every_service_not_listed(setup: Setup) -> None:
    """With a fallback, services not in ``services`` run it (signed like any answer);
    listed services still run their own handler."""
    fallback = CountingService(answer=b'{"fallback":true}')
    host = b2_host(setup, services={"count": setup.service}, fallback=fallback)
    response = await host.handle(setup.request(service="ati.request", body=b'{"n":1}'))
    claims = message_claims(parse_compact(response.headers[HEADER_SIGNATURE], typ=TYP_MESSAGE))
    assert (response.status, response.body) == (200, b'{"fallback":true}')
    assert response.header("Content-Type") == "application/json"
    assert (claims.svc, claims.corr) == ("ati.request", "A1-m1")
    assert fallback.calls == [b'{"n":1}']
    listed = await host.handle(setup.request(jti="A1-m2"))
    assert listed.body == b'{"ok":true}'
    assert (fallback.calls, setup.service.calls) == ([b'{"n":1}'], [b'{"q":1}'])


async def test_acknowledge_answers_with_the_message_id(setup: Setup) -> None:
    host = b2_host(setup, services={"ping": ping}, fallback=acknowledge)
    response = await host.handle(setup.request(service="ati.request"))
    assert json.loads(response.body) == {"estado": "00", "recibido": "A1-m1"}
    echo = await host.handle(setup.request(service="ping", jti="A1-m2", body=b'{"e":1}'))
    assert echo.body == b'{"e":1}'


async def test_retry_gets_the_same_answer_without_rerunning_the_service(setup: Setup) -> None:
    """The same (iss, jti, bh) again returns the first response; the service runs once."""
    first = await setup.host.handle(setup.request())
    setup.clock.advance(5)
    second = await setup.host.handle(setup.request())
    assert second == first
    assert (len(setup.service.calls), setup.host.handled["B2"]) == (1, 1)


async def test_concurrent_retry_waits_for_the_first_answer(setup: Setup) -> None:
    """A retry arriving while the first is still running shares its answer."""
    setup.service.gate = asyncio.Event()
    first = asyncio.create_task(setup.host.handle(setup.request()))
    second = asyncio.create_task(setup.host.handle(setup.request()))
    await asyncio.sleep(0)
    setup.service.gate.set()
    assert await first == await second
    assert len(setup.service.calls) == 1


async def test_same_jti_with_another_body_is_a_replay(setup: Setup) -> None:
    """Reusing a jti for a different body is refused with 409 replay."""
    await setup.host.handle(setup.request(body=b'{"q":1}'))
    response = await setup.host.handle(setup.request(body=b'{"q":2}'))
    assert (response.status, problem_code(response)) == (409, "replay")
    assert len(setup.service.calls) == 1


async def test_failing_service_answers_unavailable_and_a_retry_runs_it_again(setup: Setup) -> None:
    """A service exception gives 503 and is not remembered as the message's outcome."""
    setup.service.fail = True
    failed = await setup.host.handle(setup.request())
    setup.service.fail = False
    retried = await setup.host.handle(setup.request())
    assert (failed.status, problem_code(failed), retried.status) == (
        503,
        "receiver-unavailable",
        200,
    )
    assert len(setup.service.calls) == 2


async def test_answers_are_forgotten_after_the_message_expires(setup: Setup) -> None:
    """Remembered answers are pruned once their message is past exp plus leeway."""
    await setup.host.handle(setup.request(jti="A1-old"))
    setup.clock.advance(91)
    await setup.host.handle(setup.request(jti="A1-new"))
    assert setup.host.remembered == 1


async def test_app_routes_messages_and_reports_health(setup: Setup) -> None:
    """The aiohttp app serves POST /agencies/{code}/messages and GET /v1/health."""
    request = setup.request()
    async with TestClient(TestServer(setup.host.app())) as client:
        health = await client.get("/v1/health")
        assert await health.json() == {"status": "ok", "agencies": 2}
        answer = await client.post(
            "/agencies/B2/messages", data=request.body, headers=request.headers
        )
        assert (answer.status, await answer.read()) == (200, b'{"ok":true}')
        assert HEADER_SIGNATURE in answer.headers


def test_load_identities_reads_every_agency_folder(setup: Setup, tmp_path: Path) -> None:
    """STATE_DIR/agencies/<CODE>/{key,cert}.pem become identities keyed by code."""
    for code in ("B2", "C3"):
        folder = tmp_path / "agencies" / code
        folder.mkdir(parents=True)
        identity = setup.agencies[code]
        (folder / "key.pem").write_bytes(private_key_pem(identity.key))
        pem = identity.certificate.public_bytes(serialization.Encoding.PEM)
        (folder / "cert.pem").write_bytes(pem)
    (tmp_path / "agencies" / "PENDING").mkdir()  # no certificate yet: skipped
    loaded = load_identities(tmp_path)
    assert sorted(loaded) == ["B2", "C3"]
    assert loaded["C3"].kid == setup.agencies["C3"].kid
