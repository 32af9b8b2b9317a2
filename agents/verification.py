"""Credentials and checks: who an agency is, what it knows of others, and verification.

:class:`Identity` is an agency's own key and certificate; :class:`Directory` the keys it
knows of the gateway and the other agencies (from the gateway's signed configuration,
checked by :func:`verify_conf`). :func:`sign_message` builds a ``Pasarela-Signature``;
:func:`verify_inbound` is a receiver's check of a forwarded message; :func:`verify_message`
and :func:`verify_receipt` check an answer and its gateway receipt.

Errors::

    ConnectorError
     +-- Refused             the gateway answered with problem+json (code, status, detail)
     +-- VerificationFailed  a signature, receipt or conf document did not verify
     +-- Unreachable         the transport failed on every attempt
"""

from __future__ import annotations

import email.utils
import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from gateway import protocol
from gateway.clock import Randomness
from gateway.protocol import (
    HEADER_RECEIPT,
    HEADER_SIGNATURE,
    LEEWAY_SECONDS,
    TYP_MESSAGE,
    TYP_RECEIPT,
    MessageClaims,
    ProblemCode,
    ProtocolError,
    ReceiptClaims,
)
from gateway.transport import WireResponse
from gateway.trust import load_private_key

__all__ = [
    "JSON_CONTENT_TYPE",
    "TYP_CONF",
    "ConnectorError",
    "Directory",
    "Identity",
    "Refused",
    "Unreachable",
    "VerificationFailed",
    "encode_json",
    "new_message_id",
    "retry_after_seconds",
    "sign_message",
    "verify_conf",
    "verify_inbound",
    "verify_message",
    "verify_receipt",
]

TYP_CONF: Final = protocol.TYP_CONF
JSON_CONTENT_TYPE: Final = "application/json"
_PROBLEM_PREFIX: Final = "urn:pasarela:problem:"


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@functools.lru_cache(maxsize=4096)
def _cert_kid(cert: x509.Certificate) -> str:
    """kid of a certificate, cached: an agency signs every answer with the same one."""
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
        except (ValueError, UnicodeDecodeError, RecursionError):
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
            retry_after=retry_after_seconds(response.header("Retry-After"), now),
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


def retry_after_seconds(value: str | None, now: float) -> float | None:
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
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
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


def verify_message(
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


def verify_receipt(
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
    claims = verify_message(signature, body, directory, part="signature", now=now, leeway=leeway)
    if claims.aud != receiver:
        raise VerificationFailed("signature", f"aud {claims.aud} is not {receiver}")
    return claims, verify_receipt(receipt, directory, jti=claims.jti, bh=claims.bh, corr=None)


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
