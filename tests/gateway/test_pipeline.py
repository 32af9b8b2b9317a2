"""Every problem code of the wire protocol, produced by the message that deserves it."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.pipeline import Bucket, Context, Limits, Verdict, decide, take_token
from gateway.protocol import HEADER_SIGNATURE, ProblemCode, b64url_encode
from gateway.registry import StateEvent
from gateway.testing import GATEWAY_URL, GatewayWorld, make_gateway, sign_message
from gateway.transport import WireRequest, WireResponse


def _problem(response: WireResponse) -> dict[str, object]:
    assert response.header("Content-Type") == "application/problem+json"
    doc = json.loads(response.body)
    assert doc["status"] == response.status
    return doc


def _assert_problem(response: WireResponse, code: ProblemCode) -> dict[str, object]:
    doc = _problem(response)
    assert doc["type"] == f"urn:pasarela:problem:{code.value}", doc
    assert response.status == code.status
    return doc


def _token(header: dict[str, object], claims: dict[str, object], signature: bytes = b"x") -> str:
    def enc(value: dict[str, object]) -> str:
        return b64url_encode(json.dumps(value).encode())

    return f"{enc(header)}.{enc(claims)}.{b64url_encode(signature)}"


def _claims(world: GatewayWorld, **overrides: object) -> dict[str, object]:
    now = int(world.clock.now())
    base: dict[str, object] = {
        "iss": "AG001",
        "aud": "AG002",
        "svc": "ping",
        "jti": "m1",
        "iat": now,
        "exp": now + 60,
        "bh": b64url_encode(b"\0" * 32),
    }
    base.update(overrides)
    return base


async def test_accepted_message_is_answered_with_signature_and_receipt(world: GatewayWorld) -> None:
    """A well-formed message reaches the receiver and comes back with both headers."""
    response = await world.send("AG001", to="AG002", body=b'{"n":1}', jti="ok-1")
    assert response.status == 200
    assert response.body == b'{"n":1}'
    assert response.header("Pasarela-Signature")
    assert response.header("Pasarela-Receipt")
    assert len(world.handled) == 1


async def test_missing_signature_is_malformed(world: GatewayWorld) -> None:
    """No Pasarela-Signature header: malformed."""
    request = WireRequest(url=f"{GATEWAY_URL}/v1/messages", body=b"{}")
    _assert_problem(await world.gateway.relay(request), ProblemCode.MALFORMED)


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b", "a.b.c.d", "!!!.e30.AA", "W10.e30.AA", "e30=.e30.AA"],
)
async def test_garbage_token_is_malformed(world: GatewayWorld, token: str) -> None:
    """A token that is not a compact JWS with a JSON-object header: malformed."""
    response = await world.send("AG001", to="AG002", jti="m", signature=token or "x")
    _assert_problem(response, ProblemCode.MALFORMED)


@pytest.mark.parametrize("alg", ["none", "HS256", "RS256", "ES256", "Ed25519", None])
async def test_other_algorithms_are_refused(world: GatewayWorld, alg: str | None) -> None:
    """Algorithm pinning: anything but EdDSA is algorithm-not-allowed."""
    kid = world.parties["AG001"].kid
    token = _token({"alg": alg, "typ": "pasarela-msg+jwt", "kid": kid}, _claims(world))
    response = await world.send("AG001", to="AG002", jti="m", signature=token)
    _assert_problem(response, ProblemCode.ALGORITHM_NOT_ALLOWED)


@pytest.mark.parametrize("name", ["jku", "x5u", "jwk", "x5c", "crit", "zip"])
async def test_forbidden_headers_are_refused(world: GatewayWorld, name: str) -> None:
    """jku, x5u, jwk, x5c, crit and unknown headers: forbidden-header, even when signed."""
    body = b"{}"
    token = sign_message(
        world.parties["AG001"],
        to="AG002",
        body=body,
        jti="m",
        now=world.clock.now(),
        headers={name: ["exp"] if name == "crit" else "https://attacker.example/key"},
    )
    response = await world.send("AG001", to="AG002", body=body, jti="m", signature=token)
    _assert_problem(response, ProblemCode.FORBIDDEN_HEADER)
    assert world.handled == []


async def test_wrong_typ_is_malformed(world: GatewayWorld) -> None:
    """Explicit typing (RFC 8725 3.11): a receipt presented as a message is refused."""
    token = sign_message(
        world.parties["AG001"],
        to="AG002",
        jti="m",
        now=world.clock.now(),
        headers={"typ": "pasarela-receipt+jwt"},
    )
    response = await world.send("AG001", to="AG002", jti="m", signature=token)
    _assert_problem(response, ProblemCode.MALFORMED)


async def test_unknown_kid_is_unknown_key(world: GatewayWorld) -> None:
    """A kid that names no certificate: unknown-key."""
    token = _token({"alg": "EdDSA", "typ": "pasarela-msg+jwt", "kid": "not-a-kid"}, _claims(world))
    response = await world.send("AG001", to="AG002", jti="m", signature=token)
    _assert_problem(response, ProblemCode.UNKNOWN_KEY)


async def test_signature_by_another_key_is_bad_signature(world: GatewayWorld) -> None:
    """A forger who knows the kid but not the key: bad-signature, never delivered."""
    forged = sign_message(
        world.parties["AG001"],
        to="AG002",
        jti="m",
        now=world.clock.now(),
        key=Ed25519PrivateKey.generate(),
    )
    response = await world.send("AG001", to="AG002", jti="m", signature=forged)
    _assert_problem(response, ProblemCode.BAD_SIGNATURE)
    assert world.handled == []


async def test_tampered_claims_break_the_signature(world: GatewayWorld) -> None:
    """Changing aud after signing: bad-signature."""
    token = sign_message(world.parties["AG001"], to="AG002", jti="m", now=world.clock.now())
    header, _, signature = token.split(".")
    claims = _claims(world, aud="PORTAL")
    tampered = f"{header}.{b64url_encode(json.dumps(claims).encode())}.{signature}"
    response = await world.send("AG001", to="AG002", jti="m", signature=tampered)
    _assert_problem(response, ProblemCode.BAD_SIGNATURE)


async def test_iss_must_own_the_key(world: GatewayWorld) -> None:
    """AG001 signing with its own key but claiming to be AG002: sender-mismatch."""
    token = sign_message(
        world.parties["AG001"],
        to="PORTAL",
        jti="m",
        now=world.clock.now(),
        claims={"iss": "AG002"},
    )
    response = await world.send("AG001", to="PORTAL", jti="m", signature=token)
    _assert_problem(response, ProblemCode.SENDER_MISMATCH)


async def test_revoked_certificate_is_refused(world: GatewayWorld) -> None:
    """A message under a revoked certificate: revoked-key."""
    world.trust.revoke(world.parties["AG001"].kid)
    response = await world.send("AG001", to="AG002", jti="m")
    _assert_problem(response, ProblemCode.REVOKED_KEY)


async def test_key_of_an_earlier_generation_is_superseded(world: GatewayWorld) -> None:
    """After an incident opens generation 2, generation-1 keys: superseded-key."""
    world.trust.open_generation()
    response = await world.send("AG001", to="AG002", jti="m")
    doc = _assert_problem(response, ProblemCode.SUPERSEDED_KEY)
    assert "generation 1" in str(doc["detail"])


async def test_expired_message_is_refused(world: GatewayWorld) -> None:
    """exp older than now minus the 30 s leeway: expired."""
    token = sign_message(world.parties["AG001"], to="AG002", jti="m", now=world.clock.now())
    world.clock.advance(60 + 31)
    response = await world.send("AG001", to="AG002", jti="m", signature=token)
    _assert_problem(response, ProblemCode.EXPIRED)


async def test_expiry_within_leeway_is_accepted(world: GatewayWorld) -> None:
    """A message 20 s past exp is still inside the leeway."""
    token = sign_message(world.parties["AG001"], to="AG002", jti="m", now=world.clock.now())
    world.clock.advance(60 + 20)
    response = await world.send("AG001", to="AG002", jti="m", signature=token)
    assert response.status == 200


async def test_message_from_the_future_is_clock_skew(world: GatewayWorld) -> None:
    """iat more than the leeway ahead of the gateway's clock: clock-skew."""
    token = sign_message(world.parties["AG001"], to="AG002", jti="m", now=world.clock.now() + 120)
    response = await world.send("AG001", to="AG002", jti="m", signature=token)
    _assert_problem(response, ProblemCode.CLOCK_SKEW)


async def test_lifetime_over_300_seconds_is_malformed(world: GatewayWorld) -> None:
    """exp - iat above 300 s is refused."""
    token = sign_message(
        world.parties["AG001"], to="AG002", jti="m", now=world.clock.now(), lifetime=301
    )
    response = await world.send("AG001", to="AG002", jti="m", signature=token)
    _assert_problem(response, ProblemCode.MALFORMED)


async def test_body_changed_in_transit_is_digest_mismatch(world: GatewayWorld) -> None:
    """bh covers the exact bytes: one extra space is body-digest-mismatch."""
    token = sign_message(
        world.parties["AG001"], to="AG002", body=b'{"a":1}', jti="m", now=world.clock.now()
    )
    response = await world.send("AG001", to="AG002", body=b'{"a": 1}', jti="m", signature=token)
    _assert_problem(response, ProblemCode.BODY_DIGEST_MISMATCH)


async def test_same_jti_same_body_returns_original_outcome(world: GatewayWorld) -> None:
    """Idempotent retry: the receiver sees the message once, the sender gets the same answer."""
    first = await world.send("AG001", to="AG002", body=b'{"a":1}', jti="m")
    second = await world.send("AG001", to="AG002", body=b'{"a":1}', jti="m")
    assert second == first
    assert len(world.handled) == 1


async def test_same_jti_other_body_is_replay(world: GatewayWorld) -> None:
    """Reusing a jti for a different body: replay."""
    await world.send("AG001", to="AG002", body=b'{"a":1}', jti="m")
    response = await world.send("AG001", to="AG002", body=b'{"a":2}', jti="m")
    _assert_problem(response, ProblemCode.REPLAY)
    assert len(world.handled) == 1


async def test_no_grant_is_not_authorized(world: GatewayWorld) -> None:
    """Deny by default: a service nobody was granted is not-authorized."""
    response = await world.send("AG001", to="AG002", service="tax-records", jti="m")
    _assert_problem(response, ProblemCode.NOT_AUTHORIZED)


async def test_disconnected_sender_is_refused(world: GatewayWorld) -> None:
    """A sender that is not connected: agency-disconnected."""
    world.registry.apply("AG001", StateEvent.DISCONNECT, actor="t", reason="t")
    response = await world.send("AG001", to="AG002", jti="m")
    doc = _assert_problem(response, ProblemCode.AGENCY_DISCONNECTED)
    assert "AG001" in str(doc["detail"])


async def test_disconnected_receiver_is_refused(world: GatewayWorld) -> None:
    """A receiver that is not connected: agency-disconnected, naming the receiver."""
    world.registry.apply("AG002", StateEvent.DISCONNECT, actor="t", reason="t")
    response = await world.send("AG001", to="AG002", jti="m")
    doc = _assert_problem(response, ProblemCode.AGENCY_DISCONNECTED)
    assert "AG002" in str(doc["detail"])


async def test_unknown_receiver(world: GatewayWorld) -> None:
    """aud naming no agency: unknown-receiver."""
    response = await world.send("AG001", to="AG999", jti="m")
    _assert_problem(response, ProblemCode.UNKNOWN_RECEIVER)


async def test_body_over_the_cap_is_payload_too_large() -> None:
    """A body above max_body: payload-too-large (413)."""
    world = make_gateway(limits=Limits(max_body=1024))
    body = b'"' + b"x" * 1100 + b'"'
    response = await world.send("AG001", to="AG002", body=body, jti="m")
    _assert_problem(response, ProblemCode.PAYLOAD_TOO_LARGE)


async def test_rate_limit_answers_429_with_retry_after() -> None:
    """Past the burst, the token bucket refuses with 429 and a Retry-After."""
    world = make_gateway(limits=Limits(rate_per_second=1.0, burst=3.0))
    statuses = [(await world.send("AG001", to="AG002", jti=f"m{i}")).status for i in range(4)]
    assert statuses == [200, 200, 200, 429]
    response = await world.send("AG001", to="AG002", jti="m9")
    _assert_problem(response, ProblemCode.RATE_LIMITED)
    assert response.header("Retry-After") == "1"
    world.clock.advance(1.0)
    assert (await world.send("AG001", to="AG002", jti="m10")).status == 200


async def test_rate_limit_is_per_agency() -> None:
    """One agency's flood does not throttle another."""
    world = make_gateway(limits=Limits(rate_per_second=1.0, burst=1.0))
    assert (await world.send("AG001", to="AG002", jti="a")).status == 200
    assert (await world.send("AG001", to="AG002", jti="b")).status == 429
    assert (await world.send("AG002", to="AG001", jti="a")).status == 200


async def test_unreachable_receiver_is_receiver_unavailable(world: GatewayWorld) -> None:
    """The receiver's host refuses connections: 503 receiver-unavailable, retry allowed."""
    world.transport.set_down("http://agencies.test")
    response = await world.send("AG001", to="AG002", jti="m")
    _assert_problem(response, ProblemCode.RECEIVER_UNAVAILABLE)
    assert response.header("Retry-After") is not None
    world.transport.set_down("http://agencies.test", down=False)
    assert (await world.send("AG001", to="AG002", jti="m")).status == 200


async def test_unsigned_answer_is_bad_response_signature(world: GatewayWorld) -> None:
    """A receiver answering without a valid signature: 502 bad-response-signature."""

    async def unsigned(request: WireRequest) -> WireResponse:
        return WireResponse(status=200, headers={}, body=b"{}")

    world.transport.mount("http://agencies.test", unsigned)
    response = await world.send("AG001", to="AG002", jti="m")
    _assert_problem(response, ProblemCode.BAD_RESPONSE_SIGNATURE)


async def test_answer_signed_by_someone_else_is_refused(world: GatewayWorld) -> None:
    """An answer signed by a third agency is not the receiver's: bad-response-signature."""

    async def impostor(request: WireRequest) -> WireResponse:
        token = sign_message(
            world.parties["PORTAL"], to="AG001", jti="r", corr="m", now=world.clock.now()
        )
        return WireResponse(status=200, headers={HEADER_SIGNATURE: token}, body=b"{}")

    world.transport.mount("http://agencies.test", impostor)
    response = await world.send("AG001", to="AG002", jti="m")
    _assert_problem(response, ProblemCode.BAD_RESPONSE_SIGNATURE)


async def test_every_refusal_is_in_the_log(world: GatewayWorld) -> None:
    """Rejections are logged with their reason; the chain still verifies."""
    from gateway.log import verify

    await world.send("AG001", to="AG999", jti="m")
    await world.send("AG001", to="AG002", jti="m2", signature="garbage")
    await world.gateway.log.sync()
    reasons = [r.fields.get("reason") for r in world.store.rows if r.kind == "rejection"]
    assert reasons == ["unknown-receiver", "malformed"]
    alerts = [r.fields["alert_kind"] for r in world.store.rows if r.kind == "alert"]
    assert alerts == ["unknown-receiver", "malformed"]
    assert verify(world.store.records()).ok


def test_decide_is_pure_and_does_not_touch_its_inputs(world: GatewayWorld) -> None:
    """decide() returns a value and leaves the registry, trust and buckets as they were."""
    token = sign_message(world.parties["AG001"], to="AG002", jti="m", now=world.clock.now())
    buckets: dict[str, Bucket] = {}
    ctx = Context(
        now=world.clock.now(),
        trust=world.trust,
        registry=world.registry,
        seen={},
        buckets=buckets,
    )
    first = decide(token, b"{}", ctx)
    second = decide(token, b"{}", ctx)
    assert first == second
    assert first.verdict is Verdict.ACCEPT
    assert buckets == {}


def test_token_bucket_refills_at_the_rate() -> None:
    """take_token refills rate tokens per second up to the burst."""
    bucket, wait = take_token(None, now=0.0, rate=2.0, burst=2.0)
    bucket, wait = take_token(bucket, now=0.0, rate=2.0, burst=2.0)
    assert wait is None
    bucket, wait = take_token(bucket, now=0.0, rate=2.0, burst=2.0)
    assert wait == pytest.approx(0.5)
    bucket, wait = take_token(bucket, now=0.5, rate=2.0, burst=2.0)
    assert wait is None


def test_padding_in_base64_is_refused() -> None:
    """Strict base64url: padded segments are not accepted."""
    from gateway.protocol import b64url_decode

    with pytest.raises(ValueError, match="base64url"):
        b64url_decode(base64.urlsafe_b64encode(b"ab").decode())


async def test_certificate_past_its_validity_is_key_expired(world: GatewayWorld) -> None:
    """A certificate used after its notAfter: key-expired."""
    world.clock.advance(731 * 86400)
    response = await world.send("AG001", to="AG002", jti="late")
    _assert_problem(response, ProblemCode.KEY_EXPIRED)


def test_non_canonical_base64url_is_refused() -> None:
    """Trailing bits must be zero: 'AB' is another spelling of 'AA' and is refused."""
    from gateway.protocol import b64url_decode

    assert b64url_decode("AA") == b"\0"
    with pytest.raises(ValueError, match="canonical"):
        b64url_decode("AB")
