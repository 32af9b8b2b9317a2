"""Test helpers, public on purpose: connector authors use what pasarela's own tests use.

:func:`make_gateway` builds a complete in-memory gateway (CA, agencies with keys, registry,
hash-chained log in memory, manual clock, seeded randomness) behind a
:class:`~gateway.transport.MemoryTransport`; :func:`sign_message` crafts messages, good or
deliberately bad, exactly as a connector would put them on the wire.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.clock import EPOCH_2015, ManualClock, SeededRandomness
from gateway.detection import DetectionPolicy
from gateway.http import create_app
from gateway.log import LogRecord, MessageLog
from gateway.operators import mint_operator_token
from gateway.pipeline import Limits
from gateway.protocol import (
    HEADER_SIGNATURE,
    TYP_MESSAGE,
    MessageClaims,
    b64url_decode,
    body_digest,
    sign_token,
)
from gateway.registry import Agency, AgencyKind, ConnectionState, Grant, Registry
from gateway.service import Gateway, GatewayConfig
from gateway.transport import MemoryTransport, WireRequest, WireResponse, header_value
from gateway.trust import CertificateAuthority, KeyRecord, TrustStore, generate_key

__all__ = [
    "GATEWAY_URL",
    "RECEIVER_URL",
    "GatewayWorld",
    "MemoryLogStore",
    "Party",
    "make_gateway",
    "sign_message",
]

GATEWAY_URL = "http://gateway.test"
RECEIVER_URL = "http://agencies.test"
OPERATOR = "ops"


class MemoryLogStore:
    """A LogStore in a list (tests and virtual time; nothing survives the process)."""

    def __init__(self) -> None:
        self.rows: list[LogRecord] = []
        self.writes = 0

    def head(self) -> tuple[int, str] | None:
        return (self.rows[-1].seq, self.rows[-1].hash) if self.rows else None

    def write(self, records: Sequence[LogRecord]) -> None:
        self.writes += 1
        self.rows.extend(records)

    def records(self, *, after: int = 0) -> Iterator[LogRecord]:
        return iter(self.rows[after:])

    def close(self) -> None:
        """Nothing to release."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Party:
    """An agency's credentials in a test world."""

    code: str
    key: Ed25519PrivateKey
    record: KeyRecord

    @property
    def kid(self) -> str:
        return self.record.kid


def sign_message(
    party: Party,
    *,
    to: str,
    service: str = "ping",
    body: bytes = b"{}",
    jti: str,
    now: float,
    lifetime: int = 60,
    corr: str | None = None,
    claims: Mapping[str, Any] | None = None,
    headers: Mapping[str, Any] | None = None,
    key: Ed25519PrivateKey | None = None,
) -> str:
    """A ``Pasarela-Signature`` value; ``claims``/``headers``/``key`` override parts to forge."""
    base = MessageClaims(
        iss=party.code,
        aud=to,
        svc=service,
        jti=jti,
        iat=int(now),
        exp=int(now) + lifetime,
        bh=body_digest(body),
        corr=corr,
    ).as_dict()
    base.update(claims or {})
    base = {k: v for k, v in base.items() if v is not None}
    extra = dict(headers or {})
    if not extra:
        return sign_token(base, key or party.key, kid=party.kid, typ=TYP_MESSAGE)
    merged = {"kid": party.kid, "typ": TYP_MESSAGE, **extra}
    return jwt.encode(base, key or party.key, algorithm="EdDSA", headers=merged)


@dataclass(slots=True, kw_only=True)
class GatewayWorld:
    """A gateway wired to an echoing receiver, all in memory."""

    clock: ManualClock
    randomness: SeededRandomness
    trust: TrustStore
    registry: Registry
    store: MemoryLogStore
    gateway: Gateway
    transport: MemoryTransport
    parties: dict[str, Party]
    operator_key: Ed25519PrivateKey
    handled: list[WireRequest] = field(default_factory=list)

    @property
    def operators(self) -> dict[str, Ed25519PublicKey]:
        return {OPERATOR: self.operator_key.public_key()}

    def operator_token(self, *, ttl: int = 600, name: str = OPERATOR) -> str:
        """A bearer token for the admin API, valid at the world's clock."""
        return mint_operator_token(
            self.operator_key,
            name=name,
            gateway_code=self.gateway.config.code,
            now=self.clock.now(),
            ttl=ttl,
        )

    def app(self) -> web.Application:
        """The gateway's aiohttp application over this world."""
        return create_app(self.gateway, operators=self.operators)

    async def send(
        self,
        sender: str,
        *,
        to: str,
        service: str = "ping",
        body: bytes = b"{}",
        jti: str,
        signature: str | None = None,
    ) -> WireResponse:
        """Sign (unless ``signature`` is given) and relay one message."""
        token = signature
        if token is None:
            token = sign_message(
                self.parties[sender],
                to=to,
                service=service,
                body=body,
                jti=jti,
                now=self.clock.now(),
            )
        request = WireRequest(
            url=f"{GATEWAY_URL}/v1/messages", headers={HEADER_SIGNATURE: token}, body=body
        )
        return await self.gateway.relay(request)


def make_gateway(
    agencies: Sequence[str] = ("AG001", "AG002", "PORTAL"),
    *,
    seed: int = 7,
    start: float = EPOCH_2015,
    limits: Limits | None = None,
    gateway_code: str = "PASARELA",
    detection: DetectionPolicy | None = None,
) -> GatewayWorld:
    """Build a connected in-memory world: every agency offers ``ping`` and may call any ``ping``."""
    clock = ManualClock(start)
    randomness = SeededRandomness(seed)
    ca = CertificateAuthority.create(randomness, now=start)
    trust = TrustStore(ca)
    gateway_key = generate_key(randomness)
    trust.issue(gateway_code, gateway_key.public_key(), randomness=randomness, now=start)
    registry = Registry()
    parties: dict[str, Party] = {}
    for code in agencies:
        key = generate_key(randomness)
        record = trust.issue(code, key.public_key(), randomness=randomness, now=start)
        parties[code] = Party(code=code, key=key, record=record)
        registry.add(
            Agency(
                code=code,
                name=f"Agency {code}",
                kind=AgencyKind.CENTRAL,
                endpoint=f"{RECEIVER_URL}/agencies/{code}/messages",
                services=frozenset({"ping"}),
                state=ConnectionState.CONNECTED,
            )
        )
    registry.grant(Grant(client="*", provider="*", service="ping"))
    store = MemoryLogStore()
    transport = MemoryTransport()
    gateway = Gateway(
        config=GatewayConfig(
            code=gateway_code,
            limits=limits or Limits(),
            detection=detection or DetectionPolicy(),
        ),
        key=gateway_key,
        trust=trust,
        registry=registry,
        log=MessageLog(store),
        transport=transport,
        clock=clock,
        randomness=randomness,
    )
    world = GatewayWorld(
        clock=clock,
        randomness=randomness,
        trust=trust,
        registry=registry,
        store=store,
        gateway=gateway,
        transport=transport,
        parties=parties,
        operator_key=generate_key(randomness),
    )

    async def echo(request: WireRequest) -> WireResponse:
        """Each agency answers with the request body, signed as the protocol requires."""
        world.handled.append(request)
        code = request.url.rsplit("/", 2)[-2]
        token = header_value(request.headers, HEADER_SIGNATURE) or ""
        claims = json.loads(_segment(token))
        answer = sign_message(
            parties[code],
            to=claims["iss"],
            service=claims["svc"],
            body=request.body,
            jti=f"re-{claims['jti']}"[:128],  # a jti is at most 128 characters
            corr=claims["jti"],
            now=clock.now(),
        )
        return WireResponse(
            status=200,
            headers={HEADER_SIGNATURE: answer, "Content-Type": "application/json"},
            body=request.body,
        )

    transport.mount(RECEIVER_URL, echo)
    transport.mount(GATEWAY_URL, gateway.relay)
    return world


def _segment(token: str) -> bytes:
    return b64url_decode(token.split(".")[1])
