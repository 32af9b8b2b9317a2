"""Tests for agents.connector: signing, sending, retries, reply and conf verification."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

import agents
from agents.conf import ConfCache, ConfUnavailable
from agents.connector import Connector, RetryPolicy
from agents.host import AgencyHost
from agents.verification import (
    TYP_CONF,
    Directory,
    Identity,
    Refused,
    Unreachable,
    VerificationFailed,
    verify_inbound,
)
from gateway.clock import ManualClock, SeededRandomness
from gateway.protocol import (
    HEADER_RECEIPT,
    HEADER_SIGNATURE,
    MESSAGE_ID,
    PROBLEM_CONTENT_TYPE,
    TYP_MESSAGE,
    TYP_RECEIPT,
    ProblemCode,
    b64url_encode,
    body_digest,
    message_claims,
    parse_compact,
    problem_document,
    sign_token,
)
from gateway.transport import MemoryTransport, WireRequest, WireResponse
from gateway.trust import CertificateAuthority, generate_key, private_key_pem

T0 = 1_420_070_400.0
GATEWAY_URL = "http://gateway.test"
HOST_URL = "http://agencies.test"


def make_identity(ca: CertificateAuthority, code: str, rng: SeededRandomness) -> Identity:
    key = generate_key(rng)
    cert = ca.issue(code, key.public_key(), generation=1, randomness=rng, now=T0)
    return Identity(code=code, key=key, certificate=cert)


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def conf_body(
    gateway: Identity, agencies: Iterable[Identity], *, revoked: Iterable[str] = ()
) -> bytes:
    """A conf document in the gateway's shape; ``revoked`` lists agency codes."""
    raw = gateway.key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw), "kid": gateway.kid}
    document = {
        "version": 1,
        "generation": 1,
        "gateway": {
            "code": gateway.code,
            "kid": gateway.kid,
            "jwk": jwk,
            "certificate": pem(gateway.certificate),
        },
        "agencies": [
            {
                "code": a.code,
                "certificates": [
                    {
                        "kid": a.kid,
                        "pem": pem(a.certificate),
                        "generation": 1,
                        "revoked": a.code in set(revoked),
                    }
                ],
            }
            for a in agencies
        ],
    }
    return json.dumps(document).encode()


def conf_signature(body: bytes, signer: Identity, *, iss: str = "GW") -> str:
    claims = {"iss": iss, "iat": int(T0), "exp": int(T0) + 3600, "bh": body_digest(body)}
    return sign_token(claims, signer.key, kid=signer.kid, typ=TYP_CONF)


@dataclass
class FakeGateway:
    """Does what the gateway does: receipt the request, forward it, receipt the answer."""

    identity: Identity
    transport: MemoryTransport
    clock: ManualClock
    conf: tuple[bytes, str]
    scripted: list[WireResponse] = field(default_factory=list)
    seen: list[WireRequest] = field(default_factory=list)
    tamper_response: bool = False
    receipt_key: Ed25519PrivateKey | None = None
    receipt_jti: str | None = None
    seq: int = 0

    def receipt(self, *, key: Ed25519PrivateKey | None = None, **fields: Any) -> str:
        self.seq += 1
        claims = {"iss": self.identity.code, "seq": self.seq, "lh": body_digest(b"%d" % self.seq)}
        claims |= {"iat": int(self.clock.now()), **fields}
        return sign_token(claims, key or self.identity.key, kid=self.identity.kid, typ=TYP_RECEIPT)

    async def handle(self, request: WireRequest) -> WireResponse:
        self.seen.append(request)
        path = urlsplit(request.url).path
        if path == "/v1/conf":
            body, signature = self.conf
            return WireResponse(status=200, headers={HEADER_SIGNATURE: signature}, body=body)
        if path == "/v1/enrolments":
            csr = x509.load_pem_x509_csr(json.loads(request.body)["csr"].encode())
            cn = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
            assert isinstance(cn, str)
            return WireResponse(status=202, body=json.dumps({"id": f"enr-{cn}"}).encode())
        if self.scripted:
            return self.scripted.pop(0)
        token = request.headers[HEADER_SIGNATURE]
        claims = message_claims(parse_compact(token, typ=TYP_MESSAGE))
        forwarded = WireRequest(
            url=f"{HOST_URL}/agencies/{claims.aud}/messages",
            headers={
                HEADER_SIGNATURE: token,
                HEADER_RECEIPT: self.receipt(jti=claims.jti, bh=claims.bh),
            },
            body=request.body,
        )
        answer = await self.transport.send(forwarded)
        answer_claims = message_claims(
            parse_compact(answer.headers[HEADER_SIGNATURE], typ=TYP_MESSAGE)
        )
        receipt = self.receipt(
            key=self.receipt_key,
            jti=self.receipt_jti or answer_claims.jti,
            bh=answer_claims.bh,
            corr=claims.jti,
        )
        body = answer.body + b" " if self.tamper_response else answer.body
        return WireResponse(
            status=answer.status, headers={**answer.headers, HEADER_RECEIPT: receipt}, body=body
        )


def problem(code: ProblemCode, *, retry_after: str | None = None) -> WireResponse:
    headers = {"Content-Type": PROBLEM_CONTENT_TYPE}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    body = json.dumps(problem_document(code, f"test {code.value}")).encode()
    return WireResponse(status=code.status, headers=headers, body=body)


@dataclass
class World:
    clock: ManualClock
    ca: CertificateAuthority
    gateway: Identity
    agencies: dict[str, Identity]
    directory: Directory
    transport: MemoryTransport
    fake: FakeGateway
    sleeps: list[float]

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.clock.advance(seconds)

    def connector(self, code: str = "A1", **kwargs: Any) -> Connector:
        options: dict[str, Any] = {"directory": self.directory, "sleep": self.sleep} | kwargs
        return Connector(
            identity=self.agencies[code],
            gateway_url=GATEWAY_URL,
            transport=self.transport,
            clock=self.clock,
            randomness=SeededRandomness(f"connector-{code}"),
            **options,
        )


@pytest.fixture
def net() -> World:
    rng, clock = SeededRandomness(7), ManualClock(T0)
    ca = CertificateAuthority.create(rng, now=T0)
    gateway = make_identity(ca, "GW", rng)
    agencies = {code: make_identity(ca, code, rng) for code in ("A1", "B2")}
    directory = Directory(
        gateway_code="GW",
        gateway_key=gateway.key.public_key(),
        gateway_kid=gateway.kid,
        certificates={a.kid: (a.code, a.key.public_key()) for a in agencies.values()},
    )
    host = AgencyHost(
        identities=agencies, directory=directory, clock=clock, randomness=SeededRandomness(9)
    )
    transport = MemoryTransport({HOST_URL: host.handle})
    body = conf_body(gateway, agencies.values())
    fake = FakeGateway(
        identity=gateway,
        transport=transport,
        clock=clock,
        conf=(body, conf_signature(body, gateway)),
    )
    transport.mount(GATEWAY_URL, fake.handle)
    return World(clock, ca, gateway, agencies, directory, transport, fake, [])


def message_requests(net: World) -> list[WireRequest]:
    return [r for r in net.fake.seen if urlsplit(r.url).path == "/v1/messages"]


def test_exported_names_are_pinned() -> None:
    """The package exports exactly the curated public names."""
    assert sorted(agents.__all__) == sorted(
        ["AgencyHost", "ConfCache", "ConfUnavailable", "Connector", "ConnectorError", "Directory",
         "Identity", "Refused", "Reply", "RetryPolicy", "ServiceHandler", "Unreachable",
         "VerificationFailed", "acknowledge", "load_identities", "ping", "sign_message",
         "verify_conf", "verify_inbound"]
    )  # fmt: skip


def test_new_jti_is_a_valid_deterministic_message_id(net: World) -> None:
    """Message ids come from the injected randomness and match the protocol's pattern."""
    first, second = net.connector().new_jti(), net.connector().new_jti()
    assert first == second
    assert MESSAGE_ID.fullmatch(first)
    assert first.startswith("A1-")


def test_sign_produces_the_protocol_header_and_claims(net: World) -> None:
    """The signature header is exactly alg/typ/kid and the claims carry bh and lifetime."""
    token = net.connector(lifetime=90).sign(
        to="B2", service="ping", body=b"{}", jti="m-1", corr="x"
    )
    parsed = parse_compact(token, typ=TYP_MESSAGE)
    claims = message_claims(parsed)
    assert dict(parsed.header) == {
        "alg": "EdDSA",
        "typ": TYP_MESSAGE,
        "kid": net.agencies["A1"].kid,
    }
    assert (claims.iss, claims.aud, claims.svc, claims.jti, claims.corr) == (
        "A1",
        "B2",
        "ping",
        "m-1",
        "x",
    )
    assert (claims.iat, claims.exp, claims.bh) == (int(T0), int(T0) + 90, body_digest(b"{}"))


def test_lifetime_beyond_protocol_maximum_is_rejected(net: World) -> None:
    """A token lifetime over 300 seconds is refused at construction."""
    with pytest.raises(ValueError, match="lifetime"):
        net.connector(lifetime=301)


async def test_send_returns_the_verified_reply(net: World) -> None:
    """A ping goes through the gateway to the host and comes back verified."""
    reply = await net.connector().send(to="B2", service="ping", body=b'{"hello":"net"}')
    assert (reply.status, reply.json(), reply.attempts) == (200, {"hello": "net"}, 1)
    assert (reply.claims.iss, reply.claims.aud, reply.claims.corr) == ("B2", "A1", reply.jti)
    assert (reply.receipt.jti, reply.receipt.corr) == (reply.claims.jti, reply.jti)


async def test_send_encodes_a_non_bytes_body_as_compact_json(net: World) -> None:
    """A Python value is sent as compact UTF-8 JSON."""
    reply = await net.connector().send(to="B2", service="ping", body={"n": 1, "s": "ñ"})
    assert message_requests(net)[0].body == '{"n":1,"s":"ñ"}'.encode()
    assert reply.json() == {"n": 1, "s": "ñ"}


async def test_send_without_a_directory_fetches_the_conf_first(net: World) -> None:
    """A connector with no directory gets and verifies /v1/conf before sending."""
    connector = net.connector(directory=None)
    await connector.send(to="B2", service="ping", body=b"{}")
    assert urlsplit(net.fake.seen[0].url).path == "/v1/conf"
    assert connector.directory is not None


async def test_tampered_response_body_fails_verification(net: World) -> None:
    """A response body that does not match the receiver's bh is refused."""
    net.fake.tamper_response = True
    with pytest.raises(VerificationFailed, match="response signature") as caught:
        await net.connector().send(to="B2", service="ping", body=b"{}")
    assert caught.value.code is ProblemCode.BODY_DIGEST_MISMATCH


async def test_receipt_signed_by_another_key_fails_verification(net: World) -> None:
    """A receipt not signed by the gateway key is refused."""
    net.fake.receipt_key = net.agencies["B2"].key
    with pytest.raises(VerificationFailed, match="receipt: signature"):
        await net.connector().send(to="B2", service="ping", body=b"{}")


async def test_receipt_for_another_message_fails_verification(net: World) -> None:
    """A receipt whose jti is not the response's is refused."""
    net.fake.receipt_jti = "someone-else"
    with pytest.raises(VerificationFailed, match="receipt: receipts someone-else"):
        await net.connector().send(to="B2", service="ping", body=b"{}")


async def test_success_without_a_receipt_fails_verification(net: World) -> None:
    """A 200 answer without a Pasarela-Receipt is not accepted."""
    net.fake.scripted = [WireResponse(status=200, body=b"{}")]
    with pytest.raises(VerificationFailed, match="receipt"):
        await net.connector().send(to="B2", service="ping", body=b"{}")


async def test_rate_limited_then_success_retries_with_the_same_jti(net: World) -> None:
    """A 429 with Retry-After is waited out, then retried with the same jti and body."""
    net.fake.scripted = [problem(ProblemCode.RATE_LIMITED, retry_after="7")]
    reply = await net.connector().send(to="B2", service="ping", body=b"{}")
    first, second = (
        message_claims(parse_compact(r.headers[HEADER_SIGNATURE], typ=TYP_MESSAGE))
        for r in message_requests(net)
    )
    assert net.sleeps == [7.0]
    assert (first.jti, first.bh) == (second.jti, second.bh) == (reply.jti, body_digest(b"{}"))
    assert reply.attempts == 2


async def test_retry_resigns_with_the_same_jti_when_the_token_nears_expiry(net: World) -> None:
    """After a long wait the token is re-signed: fresh iat, same jti and bh."""
    net.fake.scripted = [problem(ProblemCode.RATE_LIMITED, retry_after="45")]
    await net.connector().send(to="B2", service="ping", body=b"{}")
    first, second = (
        message_claims(parse_compact(r.headers[HEADER_SIGNATURE], typ=TYP_MESSAGE))
        for r in message_requests(net)
    )
    assert (second.iat - first.iat, second.jti, second.bh) == (45, first.jti, first.bh)


async def test_unavailable_on_every_attempt_is_refused_after_all_attempts(net: World) -> None:
    """503 on every attempt ends in Refused after the policy's attempts, with jittered backoff."""
    net.fake.scripted = [problem(ProblemCode.RECEIVER_UNAVAILABLE) for _ in range(3)]
    with pytest.raises(Refused) as caught:
        await net.connector(retry=RetryPolicy(attempts=3, base_delay=1.0)).send(
            to="B2", service="ping", body=b"{}"
        )
    assert (caught.value.code, caught.value.status) == ("receiver-unavailable", 503)
    assert len(message_requests(net)) == 3
    assert len(net.sleeps) == 2
    assert all(0 <= s < cap for s, cap in zip(net.sleeps, (1.0, 2.0), strict=True))


async def test_backoff_is_capped_by_max_delay(net: World) -> None:
    """Backoff never exceeds max_delay however many attempts are made."""
    net.fake.scripted = [problem(ProblemCode.RECEIVER_UNAVAILABLE) for _ in range(8)]
    policy = RetryPolicy(attempts=8, base_delay=1.0, max_delay=1.5)
    with pytest.raises(Refused):
        await net.connector(retry=policy).send(to="B2", service="ping", body=b"{}")
    assert len(net.sleeps) == 7
    assert max(net.sleeps) < 1.5


async def test_gateway_down_raises_unreachable_after_all_attempts(net: World) -> None:
    """Transport errors are retried, then reported as Unreachable."""
    net.transport.set_down(GATEWAY_URL)
    with pytest.raises(Unreachable, match="attempt 4"):
        await net.connector().send(to="B2", service="ping", body=b"{}")
    assert len(net.sleeps) == 3


async def test_bad_request_problem_is_refused_without_retry(net: World) -> None:
    """A 400 problem is raised at once as Refused with its code and detail."""
    net.fake.scripted = [problem(ProblemCode.MALFORMED)]
    with pytest.raises(Refused) as caught:
        await net.connector().send(to="B2", service="ping", body=b"{}")
    assert (caught.value.code, caught.value.status, caught.value.detail) == (
        "malformed",
        400,
        "test malformed",
    )
    assert (len(message_requests(net)), net.sleeps) == (1, [])


async def test_retry_after_beyond_the_limit_is_refused_at_once(net: World) -> None:
    """A Retry-After longer than max_retry_after is handed to the caller, not slept."""
    net.fake.scripted = [problem(ProblemCode.RATE_LIMITED, retry_after="3600")]
    with pytest.raises(Refused) as caught:
        await net.connector().send(to="B2", service="ping", body=b"{}")
    assert (caught.value.code, caught.value.retry_after, net.sleeps) == (
        "rate-limited",
        3600.0,
        [],
    )


async def test_enrol_submits_a_csr_and_returns_the_enrolment_id(net: World) -> None:
    """Enrolment posts a CSR for the agency's code and returns the gateway's id."""
    assert (
        await net.connector().enrol(new_key=generate_key(SeededRandomness("new-key"))) == "enr-A1"
    )


async def test_fetch_conf_keeps_only_non_revoked_certificates(net: World) -> None:
    """The directory from a good conf document knows every key except revoked ones."""
    a1, b2 = net.agencies["A1"], net.agencies["B2"]
    body = conf_body(net.gateway, [a1, b2], revoked=["B2"])
    net.fake.conf = (body, conf_signature(body, net.gateway))
    directory = await net.connector(ca_certificate=net.ca.certificate).fetch_conf()
    assert directory.agency_key(a1.kid) is not None
    assert directory.agency_key(b2.kid) is None
    assert (directory.gateway_code, directory.gateway_kid) == ("GW", net.gateway.kid)


async def test_fetch_conf_rejects_a_signature_by_another_key(net: World) -> None:
    """A conf document not signed by the gateway key it carries is refused."""
    body = net.fake.conf[0]
    forged = sign_token(
        {"iss": "GW", "bh": body_digest(body)},
        net.agencies["A1"].key,
        kid=net.gateway.kid,
        typ=TYP_CONF,
    )
    net.fake.conf = (body, forged)
    with pytest.raises(VerificationFailed, match="conf: signature does not verify"):
        await net.connector(directory=None).fetch_conf()


async def test_fetch_conf_rejects_a_tampered_body(net: World) -> None:
    """A conf body changed after signing is refused."""
    body, signature = net.fake.conf
    net.fake.conf = (body.replace(b'"revoked": false', b'"revoked": true'), signature)
    with pytest.raises(VerificationFailed, match="bh does not match"):
        await net.connector(directory=None).fetch_conf()


async def test_fetch_conf_rejects_a_gateway_certificate_from_another_ca(net: World) -> None:
    """With a CA anchor, a self-consistent conf from an impostor gateway is refused."""
    rng = SeededRandomness("impostor")
    impostor = make_identity(CertificateAuthority.create(rng, now=T0), "GW", rng)
    body = conf_body(impostor, net.agencies.values())
    net.fake.conf = (body, conf_signature(body, impostor))
    connector = net.connector(directory=None, ca_certificate=net.ca.certificate)
    with pytest.raises(VerificationFailed, match="not issued by the CA"):
        await connector.fetch_conf()


async def test_fetch_conf_rejects_a_changed_gateway_key_when_pinned(net: World) -> None:
    """Without a CA, a connector that knows the gateway key refuses a conf under another."""
    rng = SeededRandomness("impostor")
    impostor = make_identity(net.ca, "GW", rng)
    body = conf_body(impostor, net.agencies.values())
    net.fake.conf = (body, conf_signature(body, impostor))
    with pytest.raises(VerificationFailed, match="pinned"):
        await net.connector().fetch_conf()


def test_verify_inbound_rejects_a_message_for_another_agency(net: World) -> None:
    """A message addressed to B2 does not verify at another receiver."""
    body = b"{}"
    token = net.connector().sign(to="B2", service="ping", body=body, jti="m-1")
    receipt = net.fake.receipt(jti="m-1", bh=body_digest(body))
    with pytest.raises(VerificationFailed, match="aud B2 is not A1"):
        verify_inbound(
            signature=token,
            receipt=receipt,
            body=body,
            receiver="A1",
            directory=net.directory,
            now=T0,
        )


def test_verify_inbound_rejects_an_expired_message(net: World) -> None:
    """A message past exp plus leeway is refused as expired."""
    body = b"{}"
    token = net.connector().sign(to="B2", service="ping", body=body, jti="m-1")
    receipt = net.fake.receipt(jti="m-1", bh=body_digest(body))
    with pytest.raises(VerificationFailed) as caught:
        verify_inbound(
            signature=token,
            receipt=receipt,
            body=body,
            receiver="B2",
            directory=net.directory,
            now=T0 + 91,
        )
    assert caught.value.code is ProblemCode.EXPIRED


def test_identity_from_files_reads_code_from_the_certificate(net: World, tmp_path: Path) -> None:
    """Loading PEM files gives the same identity, its code from the subject CN."""
    a1 = net.agencies["A1"]
    (tmp_path / "key.pem").write_bytes(private_key_pem(a1.key))
    (tmp_path / "cert.pem").write_text(pem(a1.certificate))
    loaded = Identity.from_files(tmp_path / "key.pem", tmp_path / "cert.pem")
    assert (loaded.code, loaded.kid) == ("A1", a1.kid)


def test_identity_from_files_rejects_a_key_that_does_not_match(net: World, tmp_path: Path) -> None:
    """A private key that is not the certificate's is refused."""
    (tmp_path / "key.pem").write_bytes(private_key_pem(net.agencies["B2"].key))
    (tmp_path / "cert.pem").write_text(pem(net.agencies["A1"].certificate))
    with pytest.raises(ValueError, match="does not match"):
        Identity.from_files(tmp_path / "key.pem", tmp_path / "cert.pem")


async def test_unknown_response_key_refreshes_the_conf_once(net: World) -> None:
    """A reply under a kid the fetched directory lacks triggers one conf refresh."""
    connector = net.connector(directory=None)
    partial = conf_body(net.gateway, [net.agencies["A1"]])
    net.fake.conf = (partial, conf_signature(partial, net.gateway))
    await connector.fetch_conf()
    full = conf_body(net.gateway, net.agencies.values())
    net.fake.conf = (full, conf_signature(full, net.gateway))
    reply = await connector.send(to="B2", service="ping", body=b"{}")
    conf_fetches = [r for r in net.fake.seen if urlsplit(r.url).path == "/v1/conf"]
    assert (reply.status, len(conf_fetches)) == (200, 2)


async def test_enrol_is_not_retried_after_a_transport_error(net: World) -> None:
    """A lost enrolment answer is reported at once: retrying could enrol twice."""
    net.transport.set_down(GATEWAY_URL)
    with pytest.raises(Unreachable, match="connection refused"):
        await net.connector().enrol(new_key=generate_key(SeededRandomness("new-key")))
    assert net.sleeps == []


# -- a shared ConfCache (conf=) --------------------------------------------------------------
def conf_cache(net: World) -> ConfCache:
    return ConfCache(
        gateway_url=GATEWAY_URL, transport=net.transport, clock=net.clock, monotonic=net.clock.now
    )


def conf_fetches(net: World) -> int:
    return sum(urlsplit(r.url).path == "/v1/conf" for r in net.fake.seen)


def serve_conf(net: World, *codes: str) -> None:
    body = conf_body(net.gateway, [net.agencies[code] for code in codes])
    net.fake.conf = (body, conf_signature(body, net.gateway))


async def test_connectors_with_a_conf_cache_take_their_keys_from_it(net: World) -> None:
    """Two connectors share one cache: one fetch, then the cache's own schedule."""
    cache = conf_cache(net)
    a1 = net.connector("A1", directory=None, conf=cache)
    b2 = net.connector("B2", directory=None, conf=cache)
    assert a1.directory is None
    assert (await a1.send(to="B2", service="ping", body={"n": 1})).json() == {"n": 1}
    assert (await b2.send(to="A1", service="ping", body={"n": 2})).json() == {"n": 2}
    assert conf_fetches(net) == 1
    assert a1.directory is cache.current()
    net.clock.advance(300)  # at least every five minutes
    await a1.send(to="B2", service="ping", body={"n": 3})
    assert conf_fetches(net) == 2


async def test_an_unknown_answer_key_refetches_through_the_conf_cache(net: World) -> None:
    """The refetch is the cache's: at most once a second, then unknown-key stands."""
    serve_conf(net, "A1")
    cache = conf_cache(net)
    connector = net.connector(directory=None, conf=cache)
    await cache.directory()
    await cache.refetch_for_unknown_kid()  # this second's refetch is spent
    serve_conf(net, "A1", "B2")
    with pytest.raises(VerificationFailed) as failed:
        await connector.send(to="B2", service="ping", body=b"{}")
    assert failed.value.code is ProblemCode.UNKNOWN_KEY
    assert conf_fetches(net) == 2
    net.clock.advance(1)
    reply = await connector.send(to="B2", service="ping", body=b"{}")
    assert (reply.status, conf_fetches(net)) == (200, 3)
    assert cache.current().agency_key(net.agencies["B2"].kid) is not None


async def test_fetch_conf_with_a_conf_cache_is_its_rate_limited_refetch(net: World) -> None:
    cache = conf_cache(net)
    connector = net.connector(directory=None, conf=cache)
    assert await connector.fetch_conf() is cache.current()
    await connector.fetch_conf()
    assert conf_fetches(net) == 1


async def test_a_conf_cache_that_cannot_fetch_raises_conf_unavailable(net: World) -> None:
    net.fake.conf = (b"{}", "not.a.token")
    connector = net.connector(directory=None, conf=conf_cache(net))
    with pytest.raises(ConfUnavailable):
        await connector.send(to="B2", service="ping", body=b"{}")
    assert message_requests(net) == []


def test_conf_takes_the_place_of_directory_and_directory_source(net: World) -> None:
    with pytest.raises(ValueError, match="conf takes the place"):
        net.connector(conf=conf_cache(net))  # net.connector passes its directory
    with pytest.raises(ValueError, match="conf takes the place"):
        net.connector(directory=None, directory_source=lambda: net.directory, conf=conf_cache(net))
