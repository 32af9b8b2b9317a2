"""The client library every agent uses: identity, directory, signing, sending, verifying.

A :class:`Connector` signs a message (``Pasarela-Signature``), posts it to the gateway,
retries what is worth retrying with the same ``jti`` and body bytes, and verifies the
answer: the receiver's signed response and the gateway's receipt. :func:`verify_inbound`
is the receiver's check of a message the gateway forwards; :func:`verify_conf` checks the
gateway's signed configuration document. Time and randomness are always injected.

Errors::

    ConnectorError
     +-- Refused             the gateway answered with problem+json (code, status, detail)
     +-- VerificationFailed  a signature, receipt or conf document did not verify
     +-- Unreachable         the transport failed on every attempt
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from gateway import protocol
from gateway.clock import Clock, Randomness
from gateway.protocol import (
    HEADER_RECEIPT,
    HEADER_SIGNATURE,
    LEEWAY_SECONDS,
    MAX_LIFETIME_SECONDS,
    TYP_MESSAGE,
    TYP_RECEIPT,
    MessageClaims,
    ProblemCode,
    ProtocolError,
    ReceiptClaims,
)
from gateway.transport import HttpTransport, Transport, TransportError, WireRequest, WireResponse
from gateway.trust import build_csr, load_private_key

__all__ = [
    "JSON_CONTENT_TYPE",
    "TYP_CONF",
    "Connector",
    "ConnectorError",
    "Directory",
    "Identity",
    "Refused",
    "Reply",
    "RetryPolicy",
    "Unreachable",
    "VerificationFailed",
    "encode_json",
    "new_message_id",
    "sign_message",
    "verify_conf",
    "verify_inbound",
]

TYP_CONF: Final = "pasarela-conf+jwt"
JSON_CONTENT_TYPE: Final = "application/json"
_PROBLEM_PREFIX: Final = "urn:pasarela:problem:"


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _cert_kid(cert: x509.Certificate) -> str:
    return protocol.kid_for_certificate(cert.public_bytes(serialization.Encoding.DER))


def encode_json(value: Any) -> bytes:
    """Compact UTF-8 JSON: how a non-bytes body goes on the wire."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """An agency's credentials: its code, its private key, the certificate binding them."""

    code: str
    key: Ed25519PrivateKey
    certificate: x509.Certificate

    @property
    def kid(self) -> str:
        return _cert_kid(self.certificate)

    @classmethod
    def from_files(cls, key_pem_path: Path | str, cert_pem_path: Path | str) -> Identity:
        """Load a PEM key and certificate; the code is the certificate's subject CN."""
        key = load_private_key(Path(key_pem_path).read_bytes())
        cert = x509.load_pem_x509_certificate(Path(cert_pem_path).read_bytes())
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        public = cert.public_key()
        if not cn:
            raise ValueError(f"{cert_pem_path}: certificate subject has no CN")
        if not isinstance(public, Ed25519PublicKey) or _raw(public) != _raw(key.public_key()):
            raise ValueError(f"{key_pem_path}: key does not match {cert_pem_path}")
        return cls(code=str(cn[0].value), key=key, certificate=cert)


class ConnectorError(Exception):
    """Base of every error the connector raises."""


class Refused(ConnectorError):
    """The gateway refused the exchange with a problem document."""

    def __init__(
        self,
        *,
        code: str,
        status: int,
        detail: str,
        problem: Mapping[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.code = code
        self.status = status
        self.detail = detail
        self.problem: Mapping[str, Any] = problem or {}
        self.retry_after = retry_after

    @classmethod
    def from_response(cls, response: WireResponse, *, now: float) -> Refused:
        """Read a problem+json answer; a non-problem error gets code ``http-<status>``."""
        try:
            parsed = json.loads(response.body)
        except (ValueError, UnicodeDecodeError):
            parsed = None
        problem: Mapping[str, Any] = parsed if isinstance(parsed, dict) else {}
        kind, detail = problem.get("type"), problem.get("detail")
        code = f"http-{response.status}"
        if isinstance(kind, str) and kind.startswith(_PROBLEM_PREFIX):
            code = kind.removeprefix(_PROBLEM_PREFIX)
        if not isinstance(detail, str):
            detail = response.body[:200].decode(errors="replace")
        return cls(
            code=code,
            status=response.status,
            detail=detail,
            problem=problem,
            retry_after=_retry_after(response.header("Retry-After"), now),
        )


class VerificationFailed(ConnectorError):
    """A signature, receipt or configuration document did not verify.

    ``part`` names what failed ("response signature", "receipt", "conf", ...), ``reason``
    why, and ``code`` the problem code a receiver reports for it.
    """

    def __init__(
        self, part: str, reason: str, *, code: ProblemCode = ProblemCode.BAD_SIGNATURE
    ) -> None:
        super().__init__(f"{part}: {reason}")
        self.part = part
        self.reason = reason
        self.code = code


class Unreachable(ConnectorError):
    """The gateway could not be reached on any attempt."""


def _retry_after(value: str | None, now: float) -> float | None:
    """Retry-After as seconds from ``now``: delta-seconds or an HTTP-date."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


class Directory:
    """What a party knows of the others' keys: the gateway's key, agency keys by ``kid``."""

    def __init__(
        self,
        *,
        gateway_code: str,
        gateway_key: Ed25519PublicKey,
        gateway_kid: str,
        certificates: Mapping[str, tuple[str, Ed25519PublicKey]],
    ) -> None:
        self.gateway_code = gateway_code
        self.gateway_key = gateway_key
        self.gateway_kid = gateway_kid
        self._certificates = dict(certificates)

    def agency_key(self, kid: str) -> tuple[str, Ed25519PublicKey] | None:
        """The (agency code, public key) certified under ``kid``, if trusted."""
        return self._certificates.get(kid)

    def __len__(self) -> int:
        return len(self._certificates)

    @classmethod
    def from_conf(cls, document: Mapping[str, Any]) -> Directory:
        """Read a conf document (not its signature: see :func:`verify_conf`).

        Keeps certificates that are neither revoked nor from a superseded generation;
        ``kid`` is recomputed from each PEM, and its subject CN must be the agency code.
        """
        try:
            if document.get("version") != 1:
                raise ValueError(f"version {document.get('version')!r}, expected 1")
            gateway = document["gateway"]
            jwk = gateway["jwk"]
            if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
                raise ValueError("gateway jwk is not an Ed25519 OKP key")
            gateway_key = Ed25519PublicKey.from_public_bytes(protocol.b64url_decode(jwk["x"]))
            current = document.get("generation")
            certificates: dict[str, tuple[str, Ed25519PublicKey]] = {}
            for agency in document.get("agencies", []):
                code = str(agency["code"])
                for item in agency.get("certificates", []):
                    superseded = isinstance(current, int) and item.get("generation", 0) < current
                    if item.get("revoked") or superseded:
                        continue
                    cert = x509.load_pem_x509_certificate(str(item["pem"]).encode("ascii"))
                    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
                    public = cert.public_key()
                    if not cn or str(cn[0].value) != code:
                        raise ValueError(f"a certificate listed for {code} names another agency")
                    if not isinstance(public, Ed25519PublicKey):
                        raise TypeError(f"a certificate of {code} is not Ed25519")
                    certificates[_cert_kid(cert)] = (code, public)
            return cls(
                gateway_code=str(gateway["code"]),
                gateway_key=gateway_key,
                gateway_kid=str(gateway["kid"]),
                certificates=certificates,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise VerificationFailed("conf", f"document malformed: {exc}") from exc


def verify_conf(
    *,
    body: bytes,
    signature: str | None,
    now: float,
    ca_certificate: x509.Certificate | None = None,
    pinned_key: Ed25519PublicKey | None = None,
    leeway: int = LEEWAY_SECONDS,
) -> Directory:
    """Check a conf document's gateway signature and return its :class:`Directory`.

    The token (typ ``pasarela-conf+jwt``) must be signed by the gateway key the document
    carries, under the gateway's kid, with ``iss`` the gateway code, ``bh`` the body
    digest and, when present, an ``exp`` not past. The gateway certificate must hold that
    key under that kid. Trust anchor: ``ca_certificate`` (the certificate must be issued
    by it) or else ``pinned_key`` (the gateway key must not have changed).
    """
    if not signature:
        raise VerificationFailed("conf", f"no {HEADER_SIGNATURE} header")
    try:
        parsed = protocol.parse_compact(signature, typ=TYP_CONF)
        document = json.loads(body)
    except ProtocolError as exc:
        raise VerificationFailed("conf", exc.detail, code=exc.code) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise VerificationFailed("conf", f"body is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise VerificationFailed("conf", "body is not a JSON object")
    directory = Directory.from_conf(document)
    if parsed.kid != directory.gateway_kid:
        raise VerificationFailed("conf", f"signed under kid {parsed.kid!r}, not the gateway's")
    if not protocol.signature_valid(parsed, directory.gateway_key):
        raise VerificationFailed("conf", "signature does not verify with the gateway key")
    claims = parsed.claims
    if claims.get("iss") != directory.gateway_code:
        raise VerificationFailed("conf", f"iss {claims.get('iss')!r} is not the gateway")
    if claims.get("bh") != protocol.body_digest(body):
        raise VerificationFailed("conf", "bh does not match the body")
    exp = claims.get("exp")
    if isinstance(exp, int) and exp < now - leeway:
        raise VerificationFailed("conf", "document expired", code=ProblemCode.EXPIRED)
    try:
        cert = x509.load_pem_x509_certificate(str(document["gateway"]["certificate"]).encode())
    except (KeyError, TypeError, ValueError) as exc:
        raise VerificationFailed("conf", f"gateway certificate unreadable: {exc}") from exc
    public = cert.public_key()
    if not isinstance(public, Ed25519PublicKey) or _raw(public) != _raw(directory.gateway_key):
        raise VerificationFailed("conf", "gateway certificate does not hold the signing key")
    if _cert_kid(cert) != directory.gateway_kid:
        raise VerificationFailed("conf", "gateway kid is not its certificate's")
    if ca_certificate is not None:
        try:
            cert.verify_directly_issued_by(ca_certificate)
        except (InvalidSignature, ValueError, TypeError) as exc:
            raise VerificationFailed("conf", "gateway certificate not issued by the CA") from exc
    elif pinned_key is not None and _raw(pinned_key) != _raw(directory.gateway_key):
        raise VerificationFailed("conf", "gateway key differs from the pinned key")
    return directory


def _verify_message(
    token: str | None, body: bytes, directory: Directory, *, part: str, now: float, leeway: int
) -> MessageClaims:
    """Signature by a known agency key, iss owns it, bh matches, time window holds."""
    if not token:
        raise VerificationFailed(part, f"no {HEADER_SIGNATURE} header", code=ProblemCode.MALFORMED)
    try:
        parsed = protocol.parse_compact(token, typ=TYP_MESSAGE)
        found = directory.agency_key(parsed.kid)
        if found is None:
            raise VerificationFailed(
                part, f"unknown kid {parsed.kid}", code=ProblemCode.UNKNOWN_KEY
            )
        owner, key = found
        if not protocol.signature_valid(parsed, key):
            raise VerificationFailed(part, "signature does not verify")
        claims = protocol.message_claims(parsed)
    except ProtocolError as exc:
        raise VerificationFailed(part, exc.detail, code=exc.code) from exc
    if claims.iss != owner:
        raise VerificationFailed(
            part, f"iss {claims.iss} does not own {owner}'s key", code=ProblemCode.SENDER_MISMATCH
        )
    if claims.bh != protocol.body_digest(body):
        raise VerificationFailed(
            part, "bh does not match the body", code=ProblemCode.BODY_DIGEST_MISMATCH
        )
    if claims.iat > now + leeway:
        raise VerificationFailed(part, "issued in the future", code=ProblemCode.CLOCK_SKEW)
    if claims.exp < now - leeway:
        raise VerificationFailed(part, "expired", code=ProblemCode.EXPIRED)
    return claims


def _verify_receipt(
    token: str | None, directory: Directory, *, jti: str, bh: str, corr: str | None
) -> ReceiptClaims:
    """A receipt by the gateway key for message ``jti`` with body digest ``bh``."""
    part = "receipt"
    if not token:
        raise VerificationFailed(part, f"no {HEADER_RECEIPT} header", code=ProblemCode.MALFORMED)
    try:
        parsed = protocol.parse_compact(token, typ=TYP_RECEIPT)
        if parsed.kid != directory.gateway_kid:
            raise VerificationFailed(
                part, "not under the gateway's kid", code=ProblemCode.UNKNOWN_KEY
            )
        if not protocol.signature_valid(parsed, directory.gateway_key):
            raise VerificationFailed(part, "signature does not verify with the gateway key")
        receipt = protocol.receipt_claims(parsed)
    except ProtocolError as exc:
        raise VerificationFailed(part, exc.detail, code=exc.code) from exc
    if receipt.iss != directory.gateway_code:
        raise VerificationFailed(part, f"iss {receipt.iss} is not the gateway")
    if receipt.jti != jti:
        raise VerificationFailed(part, f"receipts {receipt.jti}, not {jti}")
    if receipt.bh != bh:
        raise VerificationFailed(part, "bh does not match the body")
    if corr is not None and receipt.corr != corr:
        raise VerificationFailed(part, f"corr {receipt.corr!r} is not {corr}")
    return receipt


def verify_inbound(
    *,
    signature: str | None,
    receipt: str | None,
    body: bytes,
    receiver: str,
    directory: Directory,
    now: float,
    leeway: int = LEEWAY_SECONDS,
) -> tuple[MessageClaims, ReceiptClaims]:
    """The receiver's check of a forwarded message: sender's signature and gateway receipt."""
    claims = _verify_message(signature, body, directory, part="signature", now=now, leeway=leeway)
    if claims.aud != receiver:
        raise VerificationFailed("signature", f"aud {claims.aud} is not {receiver}")
    return claims, _verify_receipt(receipt, directory, jti=claims.jti, bh=claims.bh, corr=None)


def new_message_id(code: str, randomness: Randomness) -> str:
    """A fresh ``jti``: the agency code and 16 random bytes in hex."""
    return f"{code}-{randomness.token_bytes(16).hex()}"


def sign_message(
    identity: Identity,
    *,
    to: str,
    service: str,
    body: bytes,
    jti: str,
    now: float,
    lifetime: int,
    corr: str | None = None,
) -> str:
    """The ``Pasarela-Signature`` of a message or response from ``identity``."""
    iat = int(now)
    claims = MessageClaims(
        iss=identity.code,
        aud=to,
        svc=service,
        jti=jti,
        iat=iat,
        exp=iat + lifetime,
        bh=protocol.body_digest(body),
        corr=corr,
    )
    return protocol.sign_token(claims.as_dict(), identity.key, kid=identity.kid, typ=TYP_MESSAGE)


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
    """One agency's client of the gateway: sign, send, retry, verify."""

    def __init__(
        self,
        *,
        identity: Identity,
        gateway_url: str,
        clock: Clock,
        randomness: Randomness,
        transport: Transport | None = None,
        directory: Directory | None = None,
        retry: RetryPolicy | None = None,
        lifetime: int = 60,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        ca_certificate: x509.Certificate | None = None,
        timeout: float = 30.0,
    ) -> None:
        if not 1 <= lifetime <= MAX_LIFETIME_SECONDS:
            raise ValueError(f"lifetime must be 1..{MAX_LIFETIME_SECONDS} seconds")
        self.identity = identity
        self._base = gateway_url.rstrip("/")
        self._owns_transport = transport is None
        self._transport = transport if transport is not None else HttpTransport()
        self._clock = clock
        self._randomness = randomness
        self._directory = directory
        self._refreshable = directory is None  # a given directory is never replaced
        self._retry = retry or RetryPolicy()
        self._lifetime = lifetime
        self._sleep = sleep
        self._ca = ca_certificate
        self._timeout = timeout
        self._conf_lock = asyncio.Lock()

    @property
    def directory(self) -> Directory | None:
        return self._directory

    async def fetch_conf(self) -> Directory:
        """GET the gateway's conf document, verify it, keep and return its directory."""
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
        when less than half its lifetime is left.
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
            directory = await self.fetch_conf()  # the receiver may have re-enrolled
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
        claims = _verify_message(
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
        receipt = _verify_receipt(
            response.header(HEADER_RECEIPT), directory, jti=claims.jti, bh=claims.bh, corr=jti
        )
        return claims, receipt

    async def enrol(self, *, new_key: Ed25519PrivateKey) -> str:
        """Submit a CSR for ``new_key`` under this agency's code; return the enrolment id."""
        csr = build_csr(self.identity.code, new_key).decode("ascii")
        request = WireRequest(
            url=f"{self._base}/v1/enrolments",
            headers={"Content-Type": JSON_CONTENT_TYPE},
            body=encode_json({"csr": csr}),
        )
        response, _ = await self._exchange(lambda: request, idempotent=False)
        if response.status >= 400:
            raise Refused.from_response(response, now=self._clock.now())
        try:
            enrolment_id = json.loads(response.body)["id"]
        except (ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise ConnectorError(f"enrolment answer has no id: {exc}") from exc
        if not isinstance(enrolment_id, str):
            raise ConnectorError("enrolment id is not a string")
        return enrolment_id

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
            wait = _retry_after(response.header("Retry-After"), self._clock.now())
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
