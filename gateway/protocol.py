"""Wire protocol v1: envelope values, compact JWS signing and parsing, problem types.

No I/O here. Everything the HTTP shell and the in-memory transport exchange is built and
parsed by this module, so both carry byte-identical messages. ``docs/protocol.md`` is the
normative description; the constants below are the numbers it quotes.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey

__all__ = [
    "ALGORITHM",
    "FORBIDDEN_HEADERS",
    "HEADER_RECEIPT",
    "HEADER_SIGNATURE",
    "LEEWAY_SECONDS",
    "MAX_BODY_BYTES",
    "MAX_LIFETIME_SECONDS",
    "MAX_TOKEN_BYTES",
    "PROBLEM_CONTENT_TYPE",
    "TYP_CONF",
    "TYP_MESSAGE",
    "TYP_RECEIPT",
    "MessageClaims",
    "ParsedToken",
    "ProblemCode",
    "ProtocolError",
    "ReceiptClaims",
    "b64url_decode",
    "b64url_encode",
    "body_digest",
    "kid_for_certificate",
    "message_claims",
    "parse_compact",
    "problem_document",
    "receipt_claims",
    "sign_token",
    "signature_valid",
]

HEADER_SIGNATURE: Final = "Pasarela-Signature"
HEADER_RECEIPT: Final = "Pasarela-Receipt"
TYP_MESSAGE: Final = "pasarela-msg+jwt"
TYP_RECEIPT: Final = "pasarela-receipt+jwt"
TYP_CONF: Final = "pasarela-conf+jwt"
ALGORITHM: Final = "EdDSA"
PROBLEM_CONTENT_TYPE: Final = "application/problem+json"
FORBIDDEN_HEADERS: Final = frozenset({"jku", "x5u", "jwk", "x5c"})
#: Headers a v1 token may carry. ``crit`` is refused whatever it lists: v1 defines no extension.
ALLOWED_HEADERS: Final = frozenset({"alg", "typ", "kid"})
LEEWAY_SECONDS: Final = 30
MAX_LIFETIME_SECONDS: Final = 300
MAX_BODY_BYTES: Final = 1_048_576
MAX_TOKEN_BYTES: Final = 8_192

AGENCY_CODE = re.compile(r"[A-Z0-9][A-Z0-9-]{1,31}")
SERVICE_CODE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
MESSAGE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class ProblemCode(StrEnum):
    """Every way a message can be refused, with its HTTP status and title."""

    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad-signature"
    ALGORITHM_NOT_ALLOWED = "algorithm-not-allowed"
    FORBIDDEN_HEADER = "forbidden-header"
    UNKNOWN_KEY = "unknown-key"
    REVOKED_KEY = "revoked-key"
    KEY_EXPIRED = "key-expired"
    SUPERSEDED_KEY = "superseded-key"
    SENDER_MISMATCH = "sender-mismatch"
    EXPIRED = "expired"
    CLOCK_SKEW = "clock-skew"
    BODY_DIGEST_MISMATCH = "body-digest-mismatch"
    REPLAY = "replay"
    NOT_AUTHORIZED = "not-authorized"
    AGENCY_DISCONNECTED = "agency-disconnected"
    UNKNOWN_RECEIVER = "unknown-receiver"
    PAYLOAD_TOO_LARGE = "payload-too-large"
    RATE_LIMITED = "rate-limited"
    RECEIVER_UNAVAILABLE = "receiver-unavailable"
    BAD_RESPONSE_SIGNATURE = "bad-response-signature"
    STORE_UNAVAILABLE = "store-unavailable"
    UNAUTHENTICATED = "unauthenticated"
    NOT_FOUND = "not-found"
    METHOD_NOT_ALLOWED = "method-not-allowed"
    INVALID_REQUEST = "invalid-request"

    @property
    def status(self) -> int:
        return _PROBLEMS[self][0]

    @property
    def caption(self) -> str:
        return _PROBLEMS[self][1]

    @property
    def type_uri(self) -> str:
        return f"urn:pasarela:problem:{self.value}"


_PROBLEMS: Final[Mapping[ProblemCode, tuple[int, str]]] = {
    ProblemCode.MALFORMED: (400, "Malformed message"),
    ProblemCode.BAD_SIGNATURE: (401, "Signature does not verify"),
    ProblemCode.ALGORITHM_NOT_ALLOWED: (400, "Algorithm not allowed"),
    ProblemCode.FORBIDDEN_HEADER: (400, "Forbidden JOSE header"),
    ProblemCode.UNKNOWN_KEY: (401, "Unknown key"),
    ProblemCode.REVOKED_KEY: (401, "Key revoked"),
    ProblemCode.KEY_EXPIRED: (401, "Certificate outside its validity period"),
    ProblemCode.SUPERSEDED_KEY: (401, "Key from a distrusted generation"),
    ProblemCode.SENDER_MISMATCH: (403, "Sender does not own the key"),
    ProblemCode.EXPIRED: (401, "Message expired"),
    ProblemCode.CLOCK_SKEW: (401, "Message issued in the future"),
    ProblemCode.BODY_DIGEST_MISMATCH: (400, "Body digest mismatch"),
    ProblemCode.REPLAY: (409, "Message id reused"),
    ProblemCode.NOT_AUTHORIZED: (403, "No access right"),
    ProblemCode.AGENCY_DISCONNECTED: (403, "Agency not connected"),
    ProblemCode.UNKNOWN_RECEIVER: (404, "Unknown receiver"),
    ProblemCode.PAYLOAD_TOO_LARGE: (413, "Payload too large"),
    ProblemCode.RATE_LIMITED: (429, "Rate limit exceeded"),
    ProblemCode.RECEIVER_UNAVAILABLE: (503, "Receiver unavailable"),
    ProblemCode.BAD_RESPONSE_SIGNATURE: (502, "Receiver's response failed verification"),
    ProblemCode.STORE_UNAVAILABLE: (503, "Message log unavailable"),
    ProblemCode.UNAUTHENTICATED: (401, "Operator authentication required"),
    ProblemCode.NOT_FOUND: (404, "Not found"),
    ProblemCode.METHOD_NOT_ALLOWED: (405, "Method not allowed"),
    ProblemCode.INVALID_REQUEST: (400, "Invalid request"),
}


class ProtocolError(Exception):
    """A message that breaks the wire protocol; carries the problem code to report."""

    def __init__(self, code: ProblemCode, detail: str) -> None:
        super().__init__(f"{code.value}: {detail}")
        self.code = code
        self.detail = detail


def b64url_encode(data: bytes) -> str:
    """Base64url without padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
#: The characters that may end a segment of length 4n+2 (4 unused bits) or 4n+3 (2 bits).
_CANONICAL_LAST = {2: frozenset(_ALPHABET[::16]), 3: frozenset(_ALPHABET[::4])}


def b64url_decode(text: str) -> bytes:
    """Strict base64url without padding; raises ValueError on anything else."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not base64url without padding")
    tail = len(text) % 4
    if tail and text[-1] not in _CANONICAL_LAST[tail]:
        # Non-zero trailing bits: another spelling of the same bytes (malleable).
        raise ValueError("not canonical base64url (non-zero trailing bits)")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:
        raise ValueError(str(exc)) from exc


def body_digest(body: bytes) -> str:
    """The ``bh`` claim: base64url SHA-256 of the exact body bytes."""
    return b64url_encode(hashlib.sha256(body).digest())


def kid_for_certificate(der: bytes) -> str:
    """The ``kid`` header: base64url SHA-256 of the certificate in DER."""
    return b64url_encode(hashlib.sha256(der).digest())


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedToken:
    """A compact JWS split and decoded, not yet verified."""

    header: Mapping[str, Any]
    claims: Mapping[str, Any]
    signing_input: bytes
    signature: bytes

    @property
    def kid(self) -> str:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) else ""


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageClaims:
    """The verified claims of a message or response signature."""

    iss: str
    aud: str
    svc: str
    jti: str
    iat: int
    exp: int
    bh: str
    corr: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "iss": self.iss,
            "aud": self.aud,
            "svc": self.svc,
            "jti": self.jti,
            "iat": self.iat,
            "exp": self.exp,
            "bh": self.bh,
        }
        if self.corr is not None:
            out["corr"] = self.corr
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceiptClaims:
    """A gateway receipt: proof that a message was logged at ``seq`` with hash ``lh``."""

    iss: str
    jti: str
    seq: int
    lh: str
    bh: str
    iat: int
    corr: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "iss": self.iss,
            "jti": self.jti,
            "seq": self.seq,
            "lh": self.lh,
            "bh": self.bh,
            "iat": self.iat,
        }
        if self.corr is not None:
            out["corr"] = self.corr
        return out


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate member {key!r}")
        out[key] = value
    return out


_STRICT_JSON = json.JSONDecoder(object_pairs_hook=_reject_duplicate_keys)


def _json_object(segment: str, what: str) -> dict[str, Any]:
    try:
        raw = b64url_decode(segment)
        value = _STRICT_JSON.decode(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(ProblemCode.MALFORMED, f"{what} is not base64url JSON: {exc}") from exc
    except RecursionError as exc:  # nesting deeper than the parser goes: hostile, not a 5xx
        raise ProtocolError(ProblemCode.MALFORMED, f"{what} is nested too deeply") from exc
    if not isinstance(value, dict):
        raise ProtocolError(ProblemCode.MALFORMED, f"{what} is not a JSON object")
    return value


def parse_compact(token: str, *, typ: str) -> ParsedToken:
    """Split a compact JWS and check its protected header; the signature is not checked.

    Refuses: anything but three base64url segments, a header that is not a JSON object,
    ``alg`` other than EdDSA, ``jku``/``x5u``/``jwk``/``x5c``/``crit`` or any header v1
    does not define, a ``typ`` other than the expected one, a missing ``kid``.
    """
    if len(token) > MAX_TOKEN_BYTES:
        raise ProtocolError(ProblemCode.MALFORMED, "token longer than 8192 bytes")
    parts = token.split(".")
    if len(parts) != 3:
        raise ProtocolError(ProblemCode.MALFORMED, "not a compact JWS (three segments)")
    header = _json_object(parts[0], "JOSE header")
    alg = header.get("alg")
    if alg != ALGORITHM:
        raise ProtocolError(ProblemCode.ALGORITHM_NOT_ALLOWED, f"alg {alg!r}; only EdDSA")
    forbidden = sorted((set(header) & FORBIDDEN_HEADERS) | ({"crit"} & set(header)))
    if forbidden:
        raise ProtocolError(ProblemCode.FORBIDDEN_HEADER, f"header(s) {', '.join(forbidden)}")
    unknown = sorted(set(header) - ALLOWED_HEADERS)
    if unknown:
        raise ProtocolError(ProblemCode.FORBIDDEN_HEADER, f"unknown header(s) {', '.join(unknown)}")
    if header.get("typ") != typ:
        raise ProtocolError(ProblemCode.MALFORMED, f"typ {header.get('typ')!r}; expected {typ}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ProtocolError(ProblemCode.MALFORMED, "kid missing")
    claims = _json_object(parts[1], "claims")
    try:
        signature = b64url_decode(parts[2])
    except ValueError as exc:
        raise ProtocolError(ProblemCode.MALFORMED, "signature is not base64url") from exc
    return ParsedToken(
        header=header,
        claims=claims,
        signing_input=f"{parts[0]}.{parts[1]}".encode("ascii"),
        signature=signature,
    )


def signature_valid(parsed: ParsedToken, key: Ed25519PublicKey) -> bool:
    """True when the Ed25519 signature covers the token's signing input.

    Verified with libsodium (PyNaCl): RFC 8032 Ed25519 like OpenSSL, about twice as fast
    here, and strict about non-canonical signatures and small-order keys. This runs twice
    per relayed message in the gateway and twice in each receiver.
    """
    try:
        VerifyKey(key.public_bytes_raw()).verify(parsed.signing_input, parsed.signature)
    except CryptoError:  # BadSignatureError, or a signature that is not 64 bytes
        return False
    return True


def _string(claims: Mapping[str, Any], name: str, pattern: re.Pattern[str]) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ProtocolError(ProblemCode.MALFORMED, f"claim {name!r} missing or not valid")
    return value


def _numeric_date(claims: Mapping[str, Any], name: str) -> int:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**40:
        raise ProtocolError(ProblemCode.MALFORMED, f"claim {name!r} must be an integer NumericDate")
    return value


def message_claims(parsed: ParsedToken) -> MessageClaims:
    """Read the claims of a message signature, checking their shapes (not their values)."""
    claims = parsed.claims
    bh = claims.get("bh")
    if not isinstance(bh, str) or len(bh) != 43 or not _B64URL.fullmatch(bh):
        raise ProtocolError(ProblemCode.MALFORMED, "claim 'bh' must be 43 base64url characters")
    corr = claims.get("corr")
    if corr is not None and (not isinstance(corr, str) or not MESSAGE_ID.fullmatch(corr)):
        raise ProtocolError(ProblemCode.MALFORMED, "claim 'corr' not valid")
    iat = _numeric_date(claims, "iat")
    exp = _numeric_date(claims, "exp")
    if exp <= iat or exp - iat > MAX_LIFETIME_SECONDS:
        raise ProtocolError(
            ProblemCode.MALFORMED,
            f"exp must be after iat and at most {MAX_LIFETIME_SECONDS}s later",
        )
    return MessageClaims(
        iss=_string(claims, "iss", AGENCY_CODE),
        aud=_string(claims, "aud", AGENCY_CODE),
        svc=_string(claims, "svc", SERVICE_CODE),
        jti=_string(claims, "jti", MESSAGE_ID),
        iat=iat,
        exp=exp,
        bh=bh,
        corr=corr,
    )


def receipt_claims(parsed: ParsedToken) -> ReceiptClaims:
    """Read the claims of a gateway receipt, checking their shapes."""
    claims = parsed.claims
    seq = claims.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise ProtocolError(ProblemCode.MALFORMED, "receipt claim 'seq' must be a positive integer")
    for name in ("lh", "bh"):
        value = claims.get(name)
        if not isinstance(value, str) or len(value) != 43 or not _B64URL.fullmatch(value):
            raise ProtocolError(ProblemCode.MALFORMED, f"receipt claim {name!r} not valid")
    corr = claims.get("corr")
    return ReceiptClaims(
        iss=_string(claims, "iss", AGENCY_CODE),
        jti=_string(claims, "jti", MESSAGE_ID),
        seq=seq,
        lh=str(claims["lh"]),
        bh=str(claims["bh"]),
        iat=_numeric_date(claims, "iat"),
        corr=corr if isinstance(corr, str) else None,
    )


@functools.lru_cache(maxsize=4096)
def _header_segment(kid: str, typ: str) -> str:
    header = {"alg": ALGORITHM, "kid": kid, "typ": typ}
    return b64url_encode(json.dumps(header, separators=(",", ":")).encode())


def sign_token(claims: Mapping[str, Any], key: Ed25519PrivateKey, *, kid: str, typ: str) -> str:
    """A compact JWS (RFC 7515) with exactly the headers ``alg``, ``typ`` and ``kid``.

    Built directly (the header segment is cached per ``kid`` and ``typ``): this runs several
    times per relayed message. Tests check that PyJWT and jwcrypto read it.
    """
    payload = b64url_encode(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{_header_segment(kid, typ)}.{payload}"
    return f"{signing_input}.{b64url_encode(key.sign(signing_input.encode('ascii')))}"


def problem_document(code: ProblemCode, detail: str, *, jti: str | None = None) -> dict[str, Any]:
    """An RFC 9457 problem document for ``code``."""
    doc: dict[str, Any] = {
        "type": code.type_uri,
        "title": code.caption,
        "status": code.status,
        "detail": detail,
    }
    if jti is not None:
        doc["jti"] = jti
    return doc
