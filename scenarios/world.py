"""The simulated world's plumbing: one gateway, the portal, central agencies, in memory.

Every party uses the production code: the gateway's :class:`~gateway.service.Gateway`
(pipeline, trust, registry, hash-chained log), the connector library to sign, send and
verify, and :class:`~agents.host.AgencyHost` to receive. Only the transport is in memory
and the clock virtual. Keys, serial numbers and message ids derive from the seed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agents.connector import Connector, RetryPolicy, enrol
from agents.host import AgencyHost, ServiceHandler, ping
from agents.verification import Directory, Identity
from gateway.admin import Admin
from gateway.clock import Clock, SeededRandomness
from gateway.detection import DetectionPolicy
from gateway.log import LogStore, MessageLog
from gateway.memory import gateway_handler
from gateway.pipeline import Limits
from gateway.protocol import HEADER_SIGNATURE, b64url_decode
from gateway.registry import Agency, AgencyKind, ConnectionState, Grant, Registry
from gateway.service import Gateway, GatewayConfig
from gateway.toxics import ToxicTransport
from gateway.transport import MemoryTransport, WireRequest, header_value
from gateway.trust import CertificateAuthority, TrustStore, generate_key
from pasarela.runtime import directory_from_trust

__all__ = ["AGENCIES_URL", "GATEWAY_URL", "PORTAL", "PORTAL_URL", "Plumbing", "build_plumbing"]

GATEWAY_URL = "http://gateway.sim"
AGENCIES_URL = "http://agencies.sim"
PORTAL_URL = "http://portal.sim"
PORTAL = "PORTAL"
#: Virtual-time runs are not throttled: the rate limit is a live-traffic defence.
UNTHROTTLED = Limits(rate_per_second=1e9, burst=1e9)


@dataclass(slots=True, kw_only=True)
class Plumbing:
    """The parties of a simulated world and the wiring between them."""

    clock: Clock
    randomness: SeededRandomness
    trust: TrustStore
    registry: Registry
    gateway: Gateway
    admin: Admin
    transport: MemoryTransport
    #: What every party sends through: the in-memory routes behind the link faults.
    network: ToxicTransport
    agencies_host: AgencyHost
    portal_host: AgencyHost
    ca_certificate: x509.Certificate
    connectors: dict[str, Connector]
    #: Parties whose clocks are off (the clock-skew fault): code -> their clock.
    clocks: dict[str, Clock] = field(default_factory=dict)
    _directory: Directory | None = None
    _directory_revision: int = -1

    def directory(self) -> Directory:
        """Keys as the trust store has them now (rebuilt only when trust changed)."""
        if self._directory is None or self.trust.revision != self._directory_revision:
            code = self.gateway.config.code
            self._directory = directory_from_trust(self.trust, gateway_code=code)
            self._directory_revision = self.trust.revision
        return self._directory

    def connect_party(self, identity: Identity) -> Connector:
        """A fresh connector for ``identity`` (after (re-)enrolment), served by its host."""
        host = self.portal_host if identity.code == PORTAL else self.agencies_host
        host.set_identity(identity)
        connector = Connector(
            identity=identity,
            gateway_url=GATEWAY_URL,
            transport=self.network,
            clock=self.clocks.get(identity.code, self.clock),
            randomness=self.randomness,
            retry=RetryPolicy(attempts=2, base_delay=1.0, max_delay=5.0),
            ca_certificate=self.ca_certificate,
            directory_source=self.directory,
        )
        self.connectors[identity.code] = connector
        return connector

    async def enrol(self, code: str, key: Ed25519PrivateKey) -> str:
        """Submit a CSR for ``key`` through the gateway; return the enrolment id."""
        return await enrol(
            code=code,
            new_key=key,
            gateway_url=GATEWAY_URL,
            transport=self.network,
            clock=self.clocks.get(code, self.clock),
        )


def build_plumbing(
    *,
    clock: Clock,
    seed: int,
    gateway_code: str,
    central_codes: tuple[str, ...],
    log_store: LogStore,
    agency_services: Mapping[str, ServiceHandler],
    portal_services: Mapping[str, ServiceHandler],
) -> Plumbing:
    """A gateway with the portal and every central agency registered, none yet certified."""
    randomness = SeededRandomness(f"{seed}:keys")
    now = clock.now()
    ca = CertificateAuthority.create(randomness, now=now)
    trust = TrustStore(ca)
    gateway_key = generate_key(randomness)
    trust.issue(gateway_code, gateway_key.public_key(), randomness=randomness, now=now)
    registry = Registry()
    registry.add(
        Agency(
            code=PORTAL,
            name="Transparency Portal (CPLT)",
            kind=AgencyKind.AUTONOMOUS,
            endpoint=f"{PORTAL_URL}/agencies/{PORTAL}/messages",
            services=frozenset({"ati.answer", "ping"}),
        )
    )
    for code in central_codes:
        registry.add(
            Agency(
                code=code,
                name=f"Central agency {code}",
                kind=AgencyKind.CENTRAL,
                endpoint=f"{AGENCIES_URL}/agencies/{code}/messages",
                services=frozenset({"ati.request", "ping"}),
                state=ConnectionState.DISCONNECTED,
            )
        )
    # AltaSaiPortal: the portal routes requests to agencies; AltaSaiOrganismo: answers back.
    registry.grant(Grant(client=PORTAL, provider="*", service="ati.request"))
    registry.grant(Grant(client="*", provider=PORTAL, service="ati.answer"))
    registry.grant(Grant(client="*", provider="*", service="ping"))
    transport = MemoryTransport()
    network = ToxicTransport(transport, link_of=link_of, rng=random.Random(f"{seed}:toxics"))
    gateway = Gateway(
        # The rehearsal drives every state change itself: alerts yes, automatic quarantine no.
        config=GatewayConfig(
            code=gateway_code, limits=UNTHROTTLED, detection=DetectionPolicy.off()
        ),
        key=gateway_key,
        trust=trust,
        registry=registry,
        log=MessageLog(log_store),
        transport=network,
        clock=clock,
        randomness=randomness,
    )
    admin = Admin(gateway)
    plumbing = Plumbing(
        clock=clock,
        randomness=randomness,
        trust=trust,
        registry=registry,
        gateway=gateway,
        admin=admin,
        transport=transport,
        network=network,
        agencies_host=None,  # type: ignore[arg-type]  # set just below: the hosts need plumbing
        portal_host=None,  # type: ignore[arg-type]
        ca_certificate=ca.certificate,
        connectors={},
    )
    plumbing.agencies_host = AgencyHost(
        identities={},
        directory=plumbing.directory,
        clock=clock,
        randomness=randomness,
        services={"ping": ping, **agency_services},
    )
    plumbing.portal_host = AgencyHost(
        identities={},
        directory=plumbing.directory,
        clock=clock,
        randomness=randomness,
        services={"ping": ping, **portal_services},
    )
    transport.mount(GATEWAY_URL, gateway_handler(admin))
    transport.mount(AGENCIES_URL, plumbing.agencies_host.handle)
    transport.mount(PORTAL_URL, plumbing.portal_host.handle)
    return plumbing


def link_of(request: WireRequest) -> str | None:
    """The party whose link with the gateway ``request`` travels on.

    Deliveries name the receiver in their URL; messages to the gateway name their sender
    in the signed token's ``iss`` (read, not verified: the gateway verifies it).
    """
    url = request.url
    if url.startswith(PORTAL_URL):
        return PORTAL
    if url.startswith(AGENCIES_URL):
        return url.removeprefix(f"{AGENCIES_URL}/agencies/").split("/", 1)[0]
    token = header_value(request.headers, HEADER_SIGNATURE)
    if token is None:
        return None
    try:
        claims = json.loads(b64url_decode(token.split(".")[1]))
    except (ValueError, IndexError):
        return None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    return issuer if isinstance(issuer, str) else None
