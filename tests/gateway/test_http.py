"""The aiohttp shell: real HTTP on loopback, problem+json everywhere, admin API, health."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.protocol import (
    HEADER_RECEIPT,
    HEADER_SIGNATURE,
    TYP_RECEIPT,
    parse_compact,
    receipt_claims,
    signature_valid,
)
from gateway.registry import ConnectionState
from gateway.testing import GatewayWorld, make_gateway, sign_message


@pytest.fixture
async def client(world: GatewayWorld) -> AsyncIterator[TestClient[object, object]]:
    async with TestClient(TestServer(world.app())) as test_client:
        yield test_client


def _auth(world: GatewayWorld) -> dict[str, str]:
    return {"Authorization": f"Bearer {world.operator_token()}"}


async def test_message_over_http_gets_a_verifiable_receipt(
    world: GatewayWorld, client: TestClient[object, object]
) -> None:
    """POST /v1/messages relays and returns a receipt signed by the gateway's key."""
    body = b'{"hello":"world"}'
    token = sign_message(
        world.parties["AG001"], to="AG002", body=body, jti="h1", now=world.clock.now()
    )
    resp = await client.post("/v1/messages", data=body, headers={HEADER_SIGNATURE: token})
    assert resp.status == 200
    assert await resp.read() == body
    receipt = parse_compact(resp.headers[HEADER_RECEIPT], typ=TYP_RECEIPT)
    assert signature_valid(receipt, world.gateway.key_record.public_key)
    claims = receipt_claims(receipt)
    assert claims.corr == "h1"
    assert claims.seq == 2


async def test_unknown_path_and_method_are_problem_json(client: TestClient[object, object]) -> None:
    """404 and 405 come back as problem+json, not HTML."""
    resp = await client.get("/nope")
    assert resp.status == 404
    assert resp.content_type == "application/problem+json"
    resp = await client.get("/v1/messages")
    assert resp.status == 405
    assert (await resp.json(content_type=None))["type"] == "urn:pasarela:problem:method-not-allowed"


async def test_oversized_body_is_413_and_logged(
    world: GatewayWorld, client: TestClient[object, object]
) -> None:
    """A body over 1 MiB is refused with 413 payload-too-large and logged."""
    resp = await client.post("/v1/messages", data=io.BytesIO(b"x" * (1_048_576 + 10)))
    assert resp.status == 413
    await world.gateway.log.sync()
    refusal, alert = world.store.rows[-2:]
    assert refusal.fields["reason"] == "payload-too-large"
    assert (alert.kind, alert.fields["alert_kind"]) == ("alert", "payload-too-large")


async def test_duplicated_signature_header_is_malformed(
    world: GatewayWorld, client: TestClient[object, object]
) -> None:
    """Two Pasarela-Signature headers never pass as one."""
    token = sign_message(world.parties["AG001"], to="AG002", jti="d", now=world.clock.now())
    headers = [(HEADER_SIGNATURE, token), (HEADER_SIGNATURE, token)]
    resp = await client.post("/v1/messages", data=b"{}", headers=headers)
    assert resp.status == 400


async def test_conf_is_signed_by_the_gateway(
    world: GatewayWorld, client: TestClient[object, object]
) -> None:
    """GET /v1/conf carries the gateway JWK, every certificate, and a valid signature."""
    from gateway.admin import TYP_CONF
    from gateway.protocol import body_digest

    resp = await client.get("/v1/conf")
    body = await resp.read()
    token = parse_compact(resp.headers[HEADER_SIGNATURE], typ=TYP_CONF)
    assert signature_valid(token, world.gateway.key_record.public_key)
    assert token.claims["bh"] == body_digest(body)
    doc = json.loads(body)
    assert doc["gateway"]["jwk"]["kty"] == "OKP"
    assert doc["gateway"]["jwk"]["kid"] == world.gateway.key_record.kid
    codes = {a["code"] for a in doc["agencies"]}
    assert {"AG001", "AG002", "PORTAL"} <= codes


async def test_health_reports_each_check(client: TestClient[object, object]) -> None:
    """GET /v1/health checks store, keys and configuration."""
    resp = await client.get("/v1/health")
    doc = await resp.json()
    assert resp.status == 200
    assert set(doc["checks"]) == {"store", "keys", "configuration"}


async def test_health_fails_when_the_gateway_key_is_superseded(
    world: GatewayWorld, client: TestClient[object, object]
) -> None:
    """A gateway whose own key belongs to a distrusted generation is not healthy."""
    world.trust.open_generation()
    resp = await client.get("/v1/health")
    assert resp.status == 503
    assert (await resp.json())["checks"]["keys"]["ok"] is False


async def test_metrics_count_outcomes_by_reason(
    world: GatewayWorld, client: TestClient[object, object]
) -> None:
    """/metrics exposes messages by outcome and reason, and the latency histogram."""
    await client.post("/v1/messages", data=b"{}")
    text = await (await client.get("/metrics")).text()
    assert 'pasarela_messages_total{outcome="rejected",reason="malformed"} 1.0' in text
    assert "pasarela_relay_seconds_bucket" in text
    assert 'pasarela_agencies{state="connected"} 3.0' in text


async def test_admin_requires_an_operator_token(
    world: GatewayWorld, client: TestClient[object, object]
) -> None:
    """No token, a garbage token, a token for another gateway: 401, logged."""
    assert (await client.post("/v1/admin/disconnect-all")).status == 401
    bad = {"Authorization": "Bearer abc.def.ghi"}
    assert (await client.post("/v1/admin/disconnect-all", headers=bad)).status == 401
    await world.gateway.log.sync()
    kinds = [r.kind for r in world.store.rows]
    assert kinds == ["admin-rejection", "alert", "admin-rejection", "alert"]
    assert world.gateway.detector.recent()[0].kind == "unauthenticated"
    assert all(a.state is ConnectionState.CONNECTED for a in world.registry.agencies())


async def test_expired_operator_token_is_refused(
    world: GatewayWorld, client: TestClient[object, object]
) -> None:
    """Operator tokens expire against the gateway's clock."""
    token = world.operator_token(ttl=60)
    world.clock.advance(120)
    resp = await client.post(
        "/v1/admin/disconnect-all", headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status == 401


async def test_disconnect_all_is_logged_with_the_operator(
    world: GatewayWorld, client: TestClient[object, object]
) -> None:
    """disconnect-all moves every agency and records who did it and why."""
    resp = await client.post(
        "/v1/admin/disconnect-all", json={"reason": "attack detected"}, headers=_auth(world)
    )
    assert resp.status == 200
    assert (await resp.json())["count"] == 3
    assert all(a.state is ConnectionState.DISCONNECTED for a in world.registry.agencies())
    await world.gateway.log.sync()
    record = world.store.rows[-1]
    assert record.kind == "admin"
    assert record.fields["actor"] == "ops"
    assert record.fields["reason"] == "attack detected"


async def test_quarantine_release_and_illegal_transition(
    world: GatewayWorld, client: TestClient[object, object]
) -> None:
    """Quarantine then release an agency; releasing twice is a 400 naming the state."""
    auth = _auth(world)
    assert (await client.post("/v1/admin/agencies/AG001/quarantine", headers=auth)).status == 200
    assert world.registry.require("AG001").state is ConnectionState.QUARANTINED
    assert (await client.post("/v1/admin/agencies/AG001/release", headers=auth)).status == 200
    resp = await client.post("/v1/admin/agencies/AG001/release", headers=auth)
    assert resp.status == 400
    assert "connected" in (await resp.json(content_type=None))["detail"]
    resp = await client.post("/v1/admin/agencies/NOPE/release", headers=auth)
    assert resp.status == 404


async def test_revoke_then_message_is_refused(
    world: GatewayWorld, client: TestClient[object, object]
) -> None:
    """Revoking a certificate over the admin API makes its messages revoked-key."""
    kid = world.parties["AG001"].kid
    resp = await client.post(f"/v1/admin/certificates/{kid}/revoke", headers=_auth(world))
    assert resp.status == 200
    response = await world.send("AG001", to="AG002", jti="after-revoke")
    assert response.status == 401
    assert json.loads(response.body)["type"].endswith("revoked-key")


async def test_new_generation_supersedes_old_keys_and_recertifies_the_gateway(
    world: GatewayWorld, client: TestClient[object, object]
) -> None:
    """Opening a generation refuses old agency keys; the gateway's receipts use a fresh cert."""
    old_gateway_kid = world.gateway.key_record.kid
    resp = await client.post(
        "/v1/admin/generations", json={"reason": "incident"}, headers=_auth(world)
    )
    assert resp.status == 200
    assert (await resp.json())["generation"] == 2
    assert world.gateway.key_record.kid != old_gateway_kid
    health = await client.get("/v1/health")
    assert health.status == 200
    response = await world.send("AG001", to="AG002", jti="old-key")
    assert json.loads(response.body)["type"].endswith("superseded-key")


async def test_enrolment_by_csr_with_approval(
    world: GatewayWorld, client: TestClient[object, object]
) -> None:
    """After an incident an agency re-enrols by CSR; once approved its new key is accepted."""
    from gateway.registry import StateEvent
    from gateway.testing import Party
    from gateway.trust import build_csr, generate_key

    auth = _auth(world)
    await client.post("/v1/admin/disconnect-all", json={"reason": "incident"}, headers=auth)
    await client.post("/v1/admin/generations", json={"reason": "incident"}, headers=auth)
    new_keys = {}
    for code in ("AG001", "AG002"):
        key = generate_key(world.randomness)
        resp = await client.post("/v1/enrolments", json={"csr": build_csr(code, key).decode()})
        assert resp.status == 202
        enrolment = await resp.json()
        assert world.registry.require(code).state is ConnectionState.ENROLLING
        status = await (await client.get(f"/v1/enrolments/{enrolment['id']}")).json()
        assert status["status"] == "pending"
        resp = await client.post(
            f"/v1/admin/enrolments/{enrolment['id']}/approve",
            json={"reason": "checked"},
            headers=auth,
        )
        assert resp.status == 200
        record = world.trust.lookup((await resp.json())["kid"])
        assert record is not None
        new_keys[code] = Party(code=code, key=key, record=record)
        for event in (StateEvent.VERIFY, StateEvent.CONNECT):
            resp = await client.post(
                f"/v1/admin/agencies/{code}/transitions",
                json={"event": event.value},
                headers=auth,
            )
            assert resp.status == 200
    world.parties.update(new_keys)
    response = await world.send("AG001", to="AG002", jti="back")
    assert response.status == 200


async def test_bad_csr_is_400(client: TestClient[object, object]) -> None:
    """A CSR that is not PEM, or not JSON at all, is a 400 problem."""
    resp = await client.post("/v1/enrolments", json={"csr": "nope"})
    assert resp.status == 400
    resp = await client.post("/v1/enrolments", data=b"{{{")
    assert resp.status == 400


def test_world_is_deterministic_for_a_seed() -> None:
    """Two worlds from one seed have the same keys; another seed differs."""
    a, b, c = make_gateway(seed=1), make_gateway(seed=1), make_gateway(seed=2)
    assert a.parties["AG001"].kid == b.parties["AG001"].kid
    assert a.parties["AG001"].kid != c.parties["AG001"].kid


async def test_compressed_body_is_refused_and_logged(
    world: GatewayWorld, client: TestClient[object, object]
) -> None:
    """Content-Encoding other than identity: 400 malformed, logged (bh covers wire bytes)."""
    import gzip

    token = sign_message(world.parties["AG001"], to="AG002", jti="gz", now=world.clock.now())
    headers = {HEADER_SIGNATURE: token, "Content-Encoding": "gzip"}
    resp = await client.post("/v1/messages", data=gzip.compress(b"{}"), headers=headers)
    assert resp.status == 400
    assert "Content-Encoding" in (await resp.json(content_type=None))["detail"]
    await world.gateway.log.sync()
    refusal, alert = world.store.rows[-2:]
    assert refusal.fields["reason"] == "malformed"
    assert (alert.kind, alert.fields["refusal"]) == ("alert", refusal.seq)
    assert world.handled == []


async def test_enrolment_for_an_unknown_agency_stores_nothing(
    world: GatewayWorld, client: TestClient[object, object]
) -> None:
    """A CSR for an agency not in the registry is refused before anything is kept."""
    from gateway.trust import build_csr, generate_key

    csr = build_csr("AG404", generate_key(world.randomness)).decode()
    resp = await client.post("/v1/enrolments", json={"csr": csr})
    assert resp.status == 400
    assert world.trust.enrolments() == []


async def test_receiver_content_type_is_relayed_verbatim(
    world: GatewayWorld, client: TestClient[object, object]
) -> None:
    """The sender's Content-Type reaches the receiver unchanged, parameters included."""
    body = b'{"a":1}'
    token = sign_message(
        world.parties["AG001"], to="AG002", body=body, jti="ct", now=world.clock.now()
    )
    headers = {HEADER_SIGNATURE: token, "Content-Type": "application/json; charset=utf-8"}
    resp = await client.post("/v1/messages", data=body, headers=headers)
    assert resp.status == 200
    assert world.handled[0].headers["Content-Type"] == "application/json; charset=utf-8"


async def test_a_defect_is_a_plain_500_problem_and_leaves_no_state(
    world: GatewayWorld, client: TestClient[object, object]
) -> None:
    """An unexpected exception is rendered as problem+json 500 and the jti can be retried."""
    from gateway.testing import RECEIVER_URL

    async def broken(request: object) -> object:
        raise RuntimeError("defect")

    echo = world.transport.route(RECEIVER_URL)
    assert echo is not None
    world.transport.mount(RECEIVER_URL, broken)  # type: ignore[arg-type]
    body = b"{}"
    token = sign_message(
        world.parties["AG001"], to="AG002", body=body, jti="x1", now=world.clock.now()
    )
    resp = await client.post("/v1/messages", data=body, headers={HEADER_SIGNATURE: token})
    assert resp.status == 500
    assert resp.content_type == "application/problem+json"
    world.transport.mount(RECEIVER_URL, echo)
    resp = await client.post("/v1/messages", data=body, headers={HEADER_SIGNATURE: token})
    assert resp.status == 200


async def test_deeply_nested_json_is_a_4xx_not_a_crash(
    world: GatewayWorld, client: TestClient[object, object]
) -> None:
    """Claims or an admin body nested deeper than the JSON parser goes: 400, never 500."""
    from gateway.protocol import b64url_encode

    head = b64url_encode(b'{"alg":"EdDSA","typ":"pasarela-msg+jwt","kid":"k"}')
    claims = b64url_encode(b'{"iss": ' + b"[" * 2_000 + b"]" * 2_000 + b"}")
    resp = await client.post(
        "/v1/messages", data=b"{}", headers={HEADER_SIGNATURE: f"{head}.{claims}.AA"}
    )
    assert resp.status == 400
    assert (await resp.json())["type"].endswith(":malformed")
    nested = b"[" * 5_000 + b"]" * 5_000
    resp = await client.post("/v1/admin/disconnect-all", data=nested, headers=_auth(world))
    assert resp.status == 400
    assert (await resp.json())["type"].endswith(":invalid-request")
