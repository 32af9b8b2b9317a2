"""Interoperability: a connector built with jwcrypto from docs/protocol.md alone works.

Nothing here signs or verifies with the project's own JOSE code: tokens are built and
checked with jwcrypto, ``kid`` and ``bh`` are computed with hashlib, certificates are read
as PEM. The gateway runs over real HTTP on loopback (aiohttp's test server) in front of
the in-memory echo agency of ``gateway.testing``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from jwcrypto import jwk, jws

from gateway.testing import GatewayWorld

Client = TestClient[Any, Any]

SENDER = "AG001"
RECEIVER = "AG002"
SERVICE = "ping"
BODY = b'{"NumSolicitud":"AS001T0000001","TextoSolicitud":"Copia del acta 12"}'


def b64url(data: bytes) -> str:
    """base64url without padding, as docs/protocol.md defines it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_json(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def sha256_b64url(data: bytes) -> str:
    return b64url(hashlib.sha256(data).digest())


def kid_of(certificate_pem: str) -> str:
    """kid = base64url(SHA-256(certificate DER)), DER read with the standard library."""
    return sha256_b64url(ssl.PEM_cert_to_DER_cert(certificate_pem))


def agency_jwk(world: GatewayWorld, code: str) -> jwk.JWK:
    """The agency's private key, exported to PKCS#8 PEM and imported by jwcrypto."""
    pem = world.parties[code].key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return jwk.JWK.from_pem(pem)


def agency_certificate(conf: Mapping[str, Any], code: str) -> str:
    """The PEM of the (single) certificate the conf document lists for ``code``."""
    (agency,) = (a for a in conf["agencies"] if a["code"] == code)
    (certificate,) = agency["certificates"]
    return str(certificate["pem"])


def compact(key: jwk.JWK, header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
    token = jws.JWS(json.dumps(claims).encode())
    token.add_signature(key, alg=header["alg"], protected=json.dumps(header))
    return str(token.serialize(compact=True))


def message_claims(world: GatewayWorld, jti: str, body: bytes = BODY) -> dict[str, Any]:
    now = int(world.clock.now())
    return {
        "iss": SENDER,
        "aud": RECEIVER,
        "svc": SERVICE,
        "jti": jti,
        "iat": now,
        "exp": now + 60,
        "bh": sha256_b64url(body),
    }


def message_header(kid: str, alg: str = "EdDSA") -> dict[str, str]:
    return {"alg": alg, "typ": "pasarela-msg+jwt", "kid": kid}


def verified(token: str, key: jwk.JWK) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify a compact JWS with jwcrypto (EdDSA only); return its header and claims."""
    parsed = jws.JWS()
    parsed.deserialize(token)
    parsed.allowed_algs = ["EdDSA"]
    parsed.verify(key, alg="EdDSA")
    return dict(parsed.jose_header), json.loads(parsed.payload)


@pytest.fixture
async def client(world: GatewayWorld) -> AsyncIterator[Client]:
    async with TestClient(TestServer(world.app())) as test_client:
        yield test_client


async def fetch_conf(client: Client) -> tuple[bytes, str, dict[str, Any]]:
    """GET /v1/conf: the exact body, its Pasarela-Signature, the parsed document."""
    resp = await client.get("/v1/conf")
    assert resp.status == 200
    body = await resp.read()
    return body, resp.headers["Pasarela-Signature"], json.loads(body)


async def gateway_jwk(client: Client) -> tuple[jwk.JWK, dict[str, Any]]:
    """The gateway's public JWK from the conf document, after checking the conf signature."""
    body, signature, conf = await fetch_conf(client)
    key = jwk.JWK(**conf["gateway"]["jwk"])
    _, claims = verified(signature, key)
    assert claims["bh"] == sha256_b64url(body)
    return key, conf


async def send_one(world: GatewayWorld, client: Client, jti: str) -> tuple[int, bytes, Any]:
    """POST a jwcrypto-signed message; return status, body and headers of the answer."""
    sender_kid = kid_of(world.parties[SENDER].record.certificate_pem)
    token = compact(
        agency_jwk(world, SENDER), message_header(sender_kid), message_claims(world, jti)
    )
    resp = await client.post(
        "/v1/messages",
        data=BODY,
        headers={"Pasarela-Signature": token, "Content-Type": "application/json"},
    )
    return resp.status, await resp.read(), resp.headers


async def test_jwcrypto_message_is_relayed(world: GatewayWorld, client: Client) -> None:
    """A message signed by jwcrypto per the doc is accepted and the echo answer relayed."""
    status, body, _ = await send_one(world, client, "interop-1")
    assert status == 200
    assert body == BODY


async def test_conf_signature_verifies_with_jwcrypto(client: Client) -> None:
    """GET /v1/conf is signed (typ pasarela-conf+jwt) by the JWK the document publishes."""
    body, signature, conf = await fetch_conf(client)
    key = jwk.JWK(**conf["gateway"]["jwk"])
    header, claims = verified(signature, key)
    assert header == {"alg": "EdDSA", "typ": "pasarela-conf+jwt", "kid": conf["gateway"]["kid"]}
    assert kid_of(conf["gateway"]["certificate"]) == conf["gateway"]["kid"]
    assert claims["iss"] == conf["gateway"]["code"]
    assert claims["bh"] == sha256_b64url(body)
    assert claims["iat"] < claims["exp"]


async def test_receipt_on_the_answer_verifies_with_jwcrypto(
    world: GatewayWorld, client: Client
) -> None:
    """The answer's Pasarela-Receipt verifies with the conf JWK and names seq, lh, bh, corr."""
    key, conf = await gateway_jwk(client)
    status, body, headers = await send_one(world, client, "interop-2")
    assert status == 200
    header, receipt = verified(headers["Pasarela-Receipt"], key)
    assert header == {"alg": "EdDSA", "typ": "pasarela-receipt+jwt", "kid": conf["gateway"]["kid"]}
    answer = b64url_json(headers["Pasarela-Signature"].split(".")[1])
    assert receipt["iss"] == conf["gateway"]["code"]
    assert receipt["jti"] == answer["jti"]
    assert receipt["corr"] == "interop-2"
    assert receipt["bh"] == sha256_b64url(body)
    assert receipt["seq"] == 2  # record 1 is the request, record 2 the response
    assert len(receipt["lh"]) == 43


async def test_receiver_signature_verifies_with_its_certificate_from_conf(
    world: GatewayWorld, client: Client
) -> None:
    """The receiver's Pasarela-Signature verifies with the certificate the conf lists for it."""
    _, conf = await gateway_jwk(client)
    certificate = agency_certificate(conf, RECEIVER)
    status, body, headers = await send_one(world, client, "interop-3")
    assert status == 200
    header, claims = verified(headers["Pasarela-Signature"], jwk.JWK.from_pem(certificate.encode()))
    assert header == {"alg": "EdDSA", "typ": "pasarela-msg+jwt", "kid": kid_of(certificate)}
    assert (claims["iss"], claims["aud"], claims["svc"]) == (RECEIVER, SENDER, SERVICE)
    assert claims["corr"] == "interop-3"
    assert claims["bh"] == sha256_b64url(body)


async def test_receiver_gets_the_senders_token_and_a_receipt(
    world: GatewayWorld, client: Client
) -> None:
    """The forwarded request carries the sender's token unchanged and a verifiable receipt."""
    key, _ = await gateway_jwk(client)
    sender_kid = kid_of(world.parties[SENDER].record.certificate_pem)
    token = compact(
        agency_jwk(world, SENDER), message_header(sender_kid), message_claims(world, "interop-4")
    )
    resp = await client.post("/v1/messages", data=BODY, headers={"Pasarela-Signature": token})
    assert resp.status == 200
    (forwarded,) = world.handled
    assert forwarded.body == BODY
    assert forwarded.headers["Pasarela-Signature"] == token
    _, receipt = verified(forwarded.headers["Pasarela-Receipt"], key)
    assert (receipt["jti"], receipt["seq"], receipt["bh"]) == ("interop-4", 1, sha256_b64url(BODY))
    assert "corr" not in receipt


async def test_receipt_lh_is_the_hash_of_the_log_record(
    world: GatewayWorld, client: Client
) -> None:
    """lh is base64url SHA-256 of the record's canonical JSON, as the doc describes it."""
    key, _ = await gateway_jwk(client)
    _, _, headers = await send_one(world, client, "interop-5")
    _, receipt = verified(headers["Pasarela-Receipt"], key)
    await world.gateway.log.sync()
    record = world.store.rows[receipt["seq"] - 1]
    document = {
        "seq": record.seq,
        "at_ms": round(record.at * 1000),
        "kind": record.kind,
        "fields": dict(record.fields),
        "prev": record.prev,
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert receipt["lh"] == sha256_b64url(canonical.encode("utf-8"))


async def test_forged_key_with_the_same_kid_is_bad_signature(
    world: GatewayWorld, client: Client
) -> None:
    """A token signed by another Ed25519 key under the sender's kid is 401 bad-signature."""
    forged_key = jwk.JWK.generate(kty="OKP", crv="Ed25519")
    sender_kid = kid_of(world.parties[SENDER].record.certificate_pem)
    token = compact(forged_key, message_header(sender_kid), message_claims(world, "forged-1"))
    resp = await client.post("/v1/messages", data=BODY, headers={"Pasarela-Signature": token})
    assert resp.status == 401
    assert resp.content_type == "application/problem+json"
    problem = await resp.json(content_type=None)
    assert problem["type"] == "urn:pasarela:problem:bad-signature"


async def test_hs256_token_is_algorithm_not_allowed(world: GatewayWorld, client: Client) -> None:
    """An HS256 token (jwcrypto, symmetric key) is 400 algorithm-not-allowed."""
    secret = jwk.JWK.generate(kty="oct", size=256)
    sender_kid = kid_of(world.parties[SENDER].record.certificate_pem)
    token = compact(secret, message_header(sender_kid, "HS256"), message_claims(world, "hs-1"))
    resp = await client.post("/v1/messages", data=BODY, headers={"Pasarela-Signature": token})
    assert resp.status == 400
    problem = await resp.json(content_type=None)
    assert problem["type"] == "urn:pasarela:problem:algorithm-not-allowed"
