"""The gateway's configuration document, kept current for a long-running connector.

A connector verifies every token with keys from the gateway's signed configuration
document (``GET /v1/conf``, protocol.md section 11). :class:`ConfCache` holds the last
verified one and decides when to fetch it again:

- when it is first needed (the gateway may start after the connector);
- before its signature's ``exp``: a minute before it, and at least every five minutes;
- when a token names a ``kid`` it does not know, at most once a second (forged ``kid``\\s
  must not make the connector hammer the gateway).

A refresh that fails (no answer, an error status, a document that does not verify) keeps
the last document while its signature is still valid (``exp`` + 30 s of leeway) and is
tried again a second later; with no valid document left, :class:`ConfUnavailable` is
raised. One cache can serve both sides of a connector: :class:`agents.host.AgencyHost`
(``directory=cache.current``) and :class:`agents.connector.Connector` (``conf=cache``).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agents.verification import ConnectorError, Directory, VerificationFailed, verify_conf
from gateway import protocol
from gateway.clock import Clock
from gateway.protocol import HEADER_SIGNATURE, LEEWAY_SECONDS, TYP_CONF, ProtocolError
from gateway.transport import Transport, TransportError, WireRequest, WireResponse

__all__ = ["ConfCache", "ConfUnavailable", "EventSink", "fetch_conf"]

#: How long before the signature's ``exp`` a document is fetched again (seconds).
REFRESH_BEFORE_EXP: Final = 60.0
#: The longest a document is used without fetching it again (seconds).
MAX_AGE: Final = 300.0
#: The shortest time between two fetches for unknown kids, and after a failed refresh.
MIN_INTERVAL: Final = 1.0


class ConfUnavailable(ConnectorError):
    """The configuration document could not be fetched, or did not verify."""


class EventSink(Protocol):
    """Where a :class:`ConfCache` reports what it did: ``log(event, **fields)``."""

    def __call__(self, event: str, /, **fields: Any) -> None: ...


class ConfCache:
    """The gateway's signed configuration document: fetched lazily, kept current.

    :meth:`directory` fetches it when there is none yet or when it is due (a minute before
    its signature's ``exp``, at least every five minutes); :meth:`refetch_for_unknown_kid`
    fetches it again at most once a second. A fetch that fails keeps the last document
    while its signature is still valid (``exp`` + 30 s).

    ``ca_certificate`` is the platform CA the gateway's certificate must chain to; without
    it, the first gateway key seen is pinned (trust on first use). ``monotonic`` is the
    clock of the once-a-second limit (a test or a simulation passes its own); ``log``, when
    given, is told of each verified document (``conf``: ``gateway``, ``certificates``,
    ``exp``) and of each failed refresh that kept the last one (``conf-refresh-failed``:
    ``reason``).
    """

    def __init__(
        self,
        *,
        gateway_url: str,
        transport: Transport,
        clock: Clock,
        ca_certificate: x509.Certificate | None = None,
        timeout: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
        log: EventSink | None = None,
    ) -> None:
        self._url = f"{gateway_url.rstrip('/')}/v1/conf"
        self._ca = ca_certificate
        self._transport = transport
        self._clock = clock
        self._timeout = timeout
        self._monotonic = monotonic
        self._log = log
        self._directory: Directory | None = None
        self._refresh_at = -math.inf
        self._valid_until = -math.inf
        self._forced_at = -math.inf  # self._monotonic() of the last refetch for a kid
        self._lock = asyncio.Lock()

    @property
    def loaded(self) -> bool:
        """Whether a document has been fetched and verified."""
        return self._directory is not None

    def current(self) -> Directory:
        """The last verified directory, without fetching (for synchronous lookups, such as
        :class:`agents.host.AgencyHost`'s ``directory``).

        :raises ConfUnavailable: no document has been fetched yet.
        """
        if self._directory is None:
            raise ConfUnavailable("the configuration document has not been fetched yet")
        return self._directory

    async def directory(self) -> Directory:
        """A directory fresh enough to use; fetches when there is none or it is due.

        :raises ConfUnavailable: there is no document and it cannot be fetched, or the
            last one has expired and cannot be fetched again.
        """
        if self._clock.now() >= self._refresh_at:
            async with self._lock:
                if self._clock.now() >= self._refresh_at:
                    await self._fetch()
        return self.current()

    async def refetch_for_unknown_kid(self) -> Directory:
        """Fetch again because a ``kid`` is unknown, at most once a second; within that
        second, the directory at hand is returned as it is.

        :raises ConfUnavailable: as :meth:`directory`.
        """
        async with self._lock:
            if self._monotonic() - self._forced_at >= MIN_INTERVAL:
                self._forced_at = self._monotonic()
                await self._fetch()
        return self.current()

    async def directory_for_delivery(
        self, *, signature: str | None, receipt: str | None
    ) -> Directory:
        """The directory to verify a delivery with: :meth:`directory`, fetched again
        (:meth:`refetch_for_unknown_kid`) when the sender's ``Pasarela-Signature`` names an
        agency ``kid`` it lacks or the ``Pasarela-Receipt`` another ``kid`` than the
        gateway's. The ``kid``\\s are read without any check: verification comes after.

        :raises ConfUnavailable: as :meth:`directory`.
        """
        directory = await self.directory()
        sender, gateway = _unverified_kid(signature), _unverified_kid(receipt)
        if (sender is not None and directory.agency_key(sender) is None) or (
            gateway is not None and gateway != directory.gateway_kid
        ):
            directory = await self.refetch_for_unknown_kid()
        return directory

    async def _fetch(self) -> None:
        now = self._clock.now()
        try:
            directory, response = await fetch_conf(
                self._url,
                transport=self._transport,
                now=now,
                ca_certificate=self._ca,
                # without a CA: the first gateway key seen (TOFU)
                pinned_key=self._directory.gateway_key if self._directory is not None else None,
                timeout=self._timeout,
            )
            exp = _conf_exp(response.header(HEADER_SIGNATURE) or "", now)
        except (TransportError, VerificationFailed, ConfUnavailable) as exc:
            if self._directory is not None and now <= self._valid_until:
                self._refresh_at = now + MIN_INTERVAL  # keep the last one, try again soon
                self._event("conf-refresh-failed", reason=str(exc))
                return
            raise ConfUnavailable(f"configuration document unavailable: {exc}") from exc
        self._directory = directory
        self._valid_until = exp + LEEWAY_SECONDS
        self._refresh_at = max(now + MIN_INTERVAL, min(exp - REFRESH_BEFORE_EXP, now + MAX_AGE))
        self._event("conf", gateway=directory.gateway_code, certificates=len(directory), exp=exp)

    def _event(self, event: str, **fields: Any) -> None:
        if self._log is not None:
            self._log(event, **fields)


async def fetch_conf(
    url: str,
    *,
    transport: Transport,
    now: float,
    ca_certificate: x509.Certificate | None,
    pinned_key: Ed25519PublicKey | None,
    timeout: float,
) -> tuple[Directory, WireResponse]:
    """``GET url`` (a gateway's ``/v1/conf``) once and verify the document
    (:func:`~agents.verification.verify_conf`); the directory and the response.

    :raises TransportError: no answer. :raises ConfUnavailable: an error status.
    :raises VerificationFailed: a document that does not verify.
    """
    response = await transport.send(WireRequest(method="GET", url=url), timeout=timeout)
    if response.status != 200:
        raise ConfUnavailable(f"GET {url} answered HTTP {response.status}")
    directory = verify_conf(
        body=response.body,
        signature=response.header(HEADER_SIGNATURE),
        now=now,
        ca_certificate=ca_certificate,
        pinned_key=pinned_key,
    )
    return directory, response


def _conf_exp(signature: str, now: float) -> int:
    """The ``exp`` of the document's signature (verified by now); five minutes if absent."""
    try:
        exp = protocol.parse_compact(signature, typ=TYP_CONF).claims.get("exp")
    except ProtocolError:
        exp = None
    return exp if isinstance(exp, int) and not isinstance(exp, bool) else int(now) + 300


def _unverified_kid(token: str | None) -> str | None:
    """The ``kid`` a compact JWS claims, read without any check (None when unreadable)."""
    if not token:
        return None
    try:
        header = json.loads(protocol.b64url_decode(token.split(".", 1)[0]))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    kid = header.get("kid") if isinstance(header, dict) else None
    return kid if isinstance(kid, str) and kid else None
