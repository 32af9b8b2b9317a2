"""Agencies and the portal of the pytest plugin.

The grants ``pasarela init`` sets up, :class:`PasarelaAgency` (an agency registered at the
gateway, with its credentials on disk), :class:`AgencyFactory` (the type of the
``pasarela_agency`` fixture), and the Transparency Portal: :class:`PasarelaPortal`, the
inbox its endpoint records into, and the :class:`Received` messages.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agents.connector import Connector, Reply
from agents.host import AgencyHost
from agents.verification import Identity, encode_json
from gateway.clock import SystemClock, SystemRandomness
from gateway.protocol import MessageClaims
from gateway.registry import Grant
from gateway.state import PORTAL_CODE
from pasarela._plugin.loop import _SessionPerRequest

#: What every agency may call on every other, as ``pasarela init`` sets it up.
BASELINE_GRANTS: Final = (Grant(client="*", provider="*", service="ping"),)
#: The portal's registration, as ``pasarela init`` grants it (gateway/state.py).
PORTAL_SERVICES: Final = frozenset({"ati.answer", "ping"})
PORTAL_GRANTS: Final = (
    Grant(client="*", provider=PORTAL_CODE, service="*"),
    Grant(client=PORTAL_CODE, provider="*", service="*"),
)

GrantLike = Grant | tuple[str, str, str]


def _grant(value: GrantLike) -> Grant:
    if isinstance(value, Grant):
        return value
    client, provider, service = value
    return Grant(client=client, provider=provider, service=service)


@dataclass(frozen=True, slots=True, kw_only=True)
class PasarelaAgency:
    """An agency registered at the gateway, with its credentials on disk."""

    identity: Identity
    endpoint: str | None
    services: frozenset[str]
    key_path: Path
    certificate_path: Path
    gateway_url: str
    ca: x509.Certificate

    @property
    def code(self) -> str:
        return self.identity.code

    @property
    def key(self) -> Ed25519PrivateKey:
        return self.identity.key

    @property
    def certificate(self) -> x509.Certificate:
        return self.identity.certificate

    @property
    def kid(self) -> str:
        return self.identity.kid

    def connector(self, **overrides: Any) -> Connector:
        """A :class:`Connector` for this agency; keyword arguments override its defaults.

        Its default transport opens an HTTP session per request: the connector works from
        any event loop and needs no closing.
        """
        options: dict[str, Any] = {
            "identity": self.identity,
            "gateway_url": self.gateway_url,
            "clock": SystemClock(),
            "randomness": SystemRandomness(),
            "transport": _SessionPerRequest(),
            "ca_certificate": self.ca,
        }
        options.update(overrides)
        return Connector(**options)


class AgencyFactory(Protocol):
    """The type of the ``pasarela_agency`` fixture."""

    def __call__(
        self,
        code: str,
        *,
        endpoint: str | None = None,
        services: Collection[str] = ("ping",),
        grants: Iterable[GrantLike] = (),
    ) -> PasarelaAgency: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Received:
    """A message the portal received and answered: its verified claims and its body."""

    claims: MessageClaims
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class _Inbox:
    """What the portal's endpoint received, with a condition to wait on from any thread."""

    def __init__(self) -> None:
        self.messages: list[Received] = []
        self._changed = threading.Condition()

    async def record(self, claims: MessageClaims, body: bytes) -> tuple[int, bytes]:
        """The portal's ``ati.answer`` service: keep the message, acknowledge it."""
        with self._changed:
            self.messages.append(Received(claims=claims, body=body))
            self._changed.notify_all()
        return 200, encode_json({"status": "received", "jti": claims.jti})

    def wait(self, count: int, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self.messages) >= count, timeout)


class PasarelaPortal:
    """The Transparency Portal: an agency whose endpoint records the answers it receives."""

    code: Final = PORTAL_CODE

    def __init__(self, *, agency: PasarelaAgency, host: AgencyHost, inbox: _Inbox) -> None:
        self.agency = agency
        self.host = host
        self._inbox = inbox
        self._connector: Connector | None = None

    @property
    def url(self) -> str:
        """The portal's endpoint, where the gateway delivers to it."""
        assert self.agency.endpoint is not None
        return self.agency.endpoint

    @property
    def received(self) -> list[Received]:
        """The ``ati.answer`` messages received (verified and acknowledged), oldest first."""
        return self._inbox.messages

    def connector(self, **overrides: Any) -> Connector:
        return self.agency.connector(**overrides)

    async def send(
        self,
        *,
        to: str,
        body: bytes | Any,
        service: str = "ati.request",
        jti: str | None = None,
    ) -> Reply:
        """Send as the portal (an ``ati.request`` by default); return the verified reply."""
        if self._connector is None:
            self._connector = self.agency.connector()
        return await self._connector.send(to=to, service=service, body=body, jti=jti)

    async def wait_received(self, count: int = 1, *, timeout: float = 10.0) -> list[Received]:
        """Wait until ``count`` answers have arrived; raise TimeoutError after ``timeout``."""
        if not await asyncio.to_thread(self._inbox.wait, count, timeout):
            raise TimeoutError(
                f"the portal received {len(self.received)} answer(s) in {timeout:g} s, "
                f"expected {count}"
            )
        return list(self.received)
