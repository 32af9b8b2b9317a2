"""The client library every agent uses: sign, send, retry, verify.

A :class:`Connector` signs a message (``Pasarela-Signature``), posts it to the gateway,
retries what is worth retrying with the same ``jti`` and body bytes, and verifies the
answer: the receiver's signed response and the gateway's receipt. Identities, the
directory of keys and the checks themselves live in :mod:`agents.verification`; a
long-running connector can keep its keys in a shared :class:`agents.conf.ConfCache`. Time
and randomness are always injected.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agents.conf import ConfCache
from agents.verification import (
    JSON_CONTENT_TYPE,
    ConnectorError,
    Directory,
    Identity,
    Refused,
    Unreachable,
    VerificationFailed,
    encode_json,
    new_message_id,
    retry_after_seconds,
    sign_message,
    verify_conf,
    verify_message,
    verify_receipt,
)
from gateway.clock import Clock, Randomness
from gateway.protocol import (
    HEADER_RECEIPT,
    HEADER_SIGNATURE,
    LEEWAY_SECONDS,
    MAX_LIFETIME_SECONDS,
    MessageClaims,
    ProblemCode,
    ReceiptClaims,
)
from gateway.transport import HttpTransport, Transport, TransportError, WireRequest, WireResponse
from gateway.trust import build_csr

__all__ = ["Connector", "Reply", "RetryPolicy", "enrol"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """A verified answer: the receiver's response and the gateway's receipt for it."""

    status: int
    body: bytes
    claims: MessageClaims
    receipt: ReceiptClaims
    jti: str
    attempts: int

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Retries on transport errors, 503 and 429, never on other answers.

    Backoff is exponential with full jitter, capped by ``max_delay``; a 429 or 503 with
    Retry-After waits that long instead, unless it exceeds ``max_retry_after`` (then the
    :class:`Refused` is raised at once, its ``retry_after`` telling the caller).
    """

    attempts: int = 4
    base_delay: float = 0.2
    max_delay: float = 5.0
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")


_RETRYABLE: Final = frozenset({429, 503})


class Connector:
    """One agency's client of the gateway: sign, send, retry, verify.

    Where the keys come from: a fixed ``directory`` (never replaced); a
    ``directory_source`` called before each send (many parties in one process sharing a
    directory their owner keeps current); a ``conf`` cache shared with the agency's
    receiving side (:class:`~agents.conf.ConfCache`: fetched when due, and again, at most
    once a second, when an answer is signed under an unknown ``kid``); or, with none of
    them, the gateway's configuration document fetched once when first needed and again
    for an unknown ``kid`` (verified against ``ca_certificate`` when given).
    """

    def __init__(
        self,
        *,
        identity: Identity,
        gateway_url: str,
        clock: Clock,
        randomness: Randomness,
        transport: Transport | None = None,
        directory: Directory | None = None,
        directory_source: Callable[[], Directory] | None = None,
        retry: RetryPolicy | None = None,
        lifetime: int = 60,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        ca_certificate: x509.Certificate | None = None,
        timeout: float = 30.0,
        conf: ConfCache | None = None,
    ) -> None:
        if not 1 <= lifetime <= MAX_LIFETIME_SECONDS:
            raise ValueError(f"lifetime must be 1..{MAX_LIFETIME_SECONDS} seconds")
        if conf is not None and (directory is not None or directory_source is not None):
            raise ValueError("conf takes the place of directory and directory_source")
        self.identity = identity
        self._base = gateway_url.rstrip("/")
        self._owns_transport = transport is None
        self._transport = transport if transport is not None else HttpTransport()
        self._clock = clock
        self._randomness = randomness
        self._directory = directory
        self._refreshable = directory is None  # a given directory is never replaced
        # Many parties in one process (virtual time) can share one directory kept current
        # by its owner, instead of each fetching and verifying the whole configuration.
        self._source = directory_source
        self._conf = conf
        self._retry = retry or RetryPolicy()
        self._lifetime = lifetime
        self._sleep = sleep
        self._ca = ca_certificate
        self._timeout = timeout
        self._conf_lock = asyncio.Lock()

    @property
    def directory(self) -> Directory | None:
        """The directory at hand (with ``conf``: the cache's, None before its first fetch)."""
        if self._conf is not None:
            return self._conf.current() if self._conf.loaded else None
        return self._directory

    async def fetch_conf(self) -> Directory:
        """GET the gateway's conf document, verify it, keep and return its directory.

        With ``conf``, the shared cache fetches instead, at most once a second
        (:meth:`~agents.conf.ConfCache.refetch_for_unknown_kid`).
        """
        if self._conf is not None:
            return await self._conf.refetch_for_unknown_kid()
        request = WireRequest(method="GET", url=f"{self._base}/v1/conf")
        response, _ = await self._exchange(lambda: request, idempotent=True)
        if response.status != 200:
            raise Refused.from_response(response, now=self._clock.now())
        pinned = self._directory.gateway_key if self._directory is not None else None
        self._directory = verify_conf(
            body=response.body,
            signature=response.header(HEADER_SIGNATURE),
            now=self._clock.now(),
            ca_certificate=self._ca,
            pinned_key=pinned,
        )
        return self._directory

    async def _ensure_directory(self) -> Directory:
        if self._conf is not None:
            return await self._conf.directory()
        if self._source is not None:
            return self._source()
        async with self._conf_lock:
            if self._directory is None:
                return await self.fetch_conf()
            return self._directory

    def new_jti(self) -> str:
        return new_message_id(self.identity.code, self._randomness)

    def sign(self, *, to: str, service: str, body: bytes, jti: str, corr: str | None = None) -> str:
        """The ``Pasarela-Signature`` value for ``body``, issued now."""
        return sign_message(
            self.identity,
            to=to,
            service=service,
            body=body,
            jti=jti,
            corr=corr,
            now=self._clock.now(),
            lifetime=self._lifetime,
        )

    async def send(
        self, *, to: str, service: str, body: bytes | Any, jti: str | None = None
    ) -> Reply:
        """Send one message and return the verified reply.

        ``body`` bytes go as they are, anything else as compact JSON. Every attempt
        carries the same ``jti`` and body; the token is re-signed (fresh ``iat``) only
        when less than half its lifetime is left. With ``conf``, a configuration document
        that cannot be had raises :class:`~agents.conf.ConfUnavailable` before anything
        is sent.
        """
        payload = body if isinstance(body, bytes) else encode_json(body)
        message_id = jti if jti is not None else self.new_jti()
        directory = await self._ensure_directory()
        token, expires = "", -math.inf

        def build() -> WireRequest:
            nonlocal token, expires
            now = self._clock.now()
            if now + self._lifetime / 2 >= expires:
                token = self.sign(to=to, service=service, body=payload, jti=message_id)
                expires = int(now) + self._lifetime
            headers = {HEADER_SIGNATURE: token, "Content-Type": JSON_CONTENT_TYPE}
            return WireRequest(url=f"{self._base}/v1/messages", headers=headers, body=payload)

        response, attempts = await self._exchange(build, idempotent=True)
        if response.header(HEADER_RECEIPT) is None:
            if response.status < 400:
                raise VerificationFailed("receipt", f"HTTP {response.status} without a receipt")
            raise Refused.from_response(response, now=self._clock.now())
        try:
            claims, receipt = self._verify_reply(response, directory, to, service, message_id)
        except VerificationFailed as exc:
            if exc.code is not ProblemCode.UNKNOWN_KEY or not self._refreshable:
                raise
            # The receiver may have re-enrolled since the directory was read (with conf,
            # fetch_conf is the cache's rate-limited refetch).
            directory = self._source() if self._source else await self.fetch_conf()
            claims, receipt = self._verify_reply(response, directory, to, service, message_id)
        return Reply(
            status=response.status,
            body=response.body,
            claims=claims,
            receipt=receipt,
            jti=message_id,
            attempts=attempts,
        )

    def _verify_reply(
        self, response: WireResponse, directory: Directory, to: str, service: str, jti: str
    ) -> tuple[MessageClaims, ReceiptClaims]:
        part = "response signature"
        claims = verify_message(
            response.header(HEADER_SIGNATURE),
            response.body,
            directory,
            part=part,
            now=self._clock.now(),
            leeway=LEEWAY_SECONDS,
        )
        expected = {"iss": to, "aud": self.identity.code, "svc": service, "corr": jti}
        for name, want in expected.items():
            got = getattr(claims, name)
            if got != want:
                raise VerificationFailed(part, f"{name} {got!r}, expected {want!r}")
        receipt = verify_receipt(
            response.header(HEADER_RECEIPT), directory, jti=claims.jti, bh=claims.bh, corr=jti
        )
        return claims, receipt

    async def enrol(self, *, new_key: Ed25519PrivateKey) -> str:
        """Submit a CSR for ``new_key`` under this agency's code; return the enrolment id."""
        return await enrol(
            code=self.identity.code,
            new_key=new_key,
            gateway_url=self._base,
            transport=self._transport,
            clock=self._clock,
        )

    async def _exchange(
        self, build: Callable[[], WireRequest], *, idempotent: bool
    ) -> tuple[WireResponse, int]:
        """Send with retries; return the first final response and the attempt count.

        A transport error is retried only for idempotent requests (a lost answer to an
        enrolment may have been a success). The last 429/503 is returned, not raised.
        """
        policy, attempt = self._retry, 0
        while True:
            attempt += 1
            last = attempt >= policy.attempts
            try:
                response = await self._transport.send(build(), timeout=self._timeout)
            except TransportError as exc:
                if last or not idempotent:
                    raise Unreachable(f"{exc} (attempt {attempt})") from exc
                await self._sleep(self._backoff(attempt))
                continue
            if last or response.status not in _RETRYABLE or response.header(HEADER_RECEIPT):
                return response, attempt
            wait = retry_after_seconds(response.header("Retry-After"), self._clock.now())
            if wait is not None and wait > policy.max_retry_after:
                return response, attempt
            await self._sleep(wait if wait is not None else self._backoff(attempt))

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max_delay, base_delay * 2**(attempt-1)))."""
        policy = self._retry
        ceiling = min(policy.max_delay, policy.base_delay * 2.0 ** (attempt - 1))
        fraction = int.from_bytes(self._randomness.token_bytes(7), "big") / 2**56
        return ceiling * fraction

    async def aclose(self) -> None:
        """Close the transport if this connector created it."""
        if self._owns_transport:
            await self._transport.aclose()


async def enrol(
    *,
    code: str,
    new_key: Ed25519PrivateKey,
    gateway_url: str,
    transport: Transport,
    clock: Clock,
    timeout: float = 30.0,
) -> str:
    """POST a CSR for ``new_key`` under ``code`` to ``/v1/enrolments``; return its id.

    Needs no certificate: this is how an agency without one (new, or after a new key
    generation) asks for one. Sent once: a lost answer may hide a success, so a retry
    could enrol twice.
    """
    csr = build_csr(code, new_key).decode("ascii")
    request = WireRequest(
        url=f"{gateway_url.rstrip('/')}/v1/enrolments",
        headers={"Content-Type": JSON_CONTENT_TYPE},
        body=encode_json({"csr": csr}),
    )
    try:
        response = await transport.send(request, timeout=timeout)
    except TransportError as exc:
        raise Unreachable(f"enrolment at {gateway_url}: {exc}") from exc
    if response.status >= 400:
        raise Refused.from_response(response, now=clock.now())
    try:
        enrolment_id = json.loads(response.body)["id"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ConnectorError(f"enrolment answer has no id: {exc}") from exc
    if not isinstance(enrolment_id, str):
        raise ConnectorError("enrolment id is not a string")
    return enrolment_id
