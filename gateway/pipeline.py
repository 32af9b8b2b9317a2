"""The decision core: is this message accepted, retried, or refused, and why.

:func:`decide` and :func:`decide_response` are pure and synchronous: everything they
need (trust, registry, the replay view, rate-limit buckets, ``now``) is passed in, and
they return a :class:`Decision` value. The shell applies its effects (log, replay cache,
bucket) and does the I/O.

Order of checks for a request (the first failure wins):
size, header presence, JOSE header (alg pinning, forbidden headers, typ), key lookup by
``kid``, signature, key/agency binding, revocation, generation, claims shape, ``exp`` and
``iat`` with leeway, body digest, replay or idempotent retry, receiver known, both
parties connected, access right, rate limit.

A refusal names a ``culprit`` only when the token verifies with its signer's current key
and the fault cannot be someone else's (a replayed, expired or tampered-in-transit
message can be sent by anyone who saw it): detection counts only those against an agency.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from gateway.protocol import (
    LEEWAY_SECONDS,
    MAX_BODY_BYTES,
    TYP_MESSAGE,
    MessageClaims,
    ProblemCode,
    ProtocolError,
    body_digest,
    message_claims,
    parse_compact,
    signature_valid,
)
from gateway.registry import ConnectionState, Registry
from gateway.trust import KeyRecord, TrustStore

__all__ = [
    "Bucket",
    "Context",
    "Decision",
    "Limits",
    "SeenMessage",
    "Verdict",
    "decide",
    "decide_response",
    "take_token",
]


class Verdict(StrEnum):
    ACCEPT = "accept"
    RETRY = "retry"  # same jti, same body: answer with the original outcome
    REJECT = "reject"


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Tunable limits; the defaults are the documented ones."""

    leeway: int = LEEWAY_SECONDS
    max_body: int = MAX_BODY_BYTES
    rate_per_second: float = 100.0
    burst: float = 200.0


@dataclass(frozen=True, slots=True)
class Bucket:
    """Token-bucket state of one agency."""

    tokens: float
    updated: float


def take_token(
    bucket: Bucket | None, *, now: float, rate: float, burst: float
) -> tuple[Bucket, float | None]:
    """Refill then take one token. Returns the new state and, when empty, seconds to wait."""
    if bucket is None:
        tokens = burst
    else:
        tokens = min(burst, bucket.tokens + max(0.0, now - bucket.updated) * rate)
    if tokens >= 1.0:
        return Bucket(tokens - 1.0, now), None
    return Bucket(tokens, now), (1.0 - tokens) / rate


class SeenMessage(Protocol):
    """What the replay view remembers of an accepted message."""

    @property
    def bh(self) -> str: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Context:
    now: float
    trust: TrustStore
    registry: Registry
    seen: Mapping[tuple[str, str], SeenMessage]
    buckets: Mapping[str, Bucket]
    limits: Limits = Limits()


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    verdict: Verdict
    reason: ProblemCode | None = None
    detail: str = ""
    claims: MessageClaims | None = None
    key: KeyRecord | None = None
    bucket: Bucket | None = None
    retry_after: float | None = None
    #: Unverified claims read from a refused token, for the log only (never for routing).
    claimed: Mapping[str, str] | None = None
    #: The agency whose current key signed a refused message when the refusal is its own
    #: doing (only such anomalies may count against an agency: naming it proves nothing).
    culprit: str | None = None

    @property
    def accepted(self) -> bool:
        return self.verdict is Verdict.ACCEPT


def _reject(
    code: ProblemCode,
    detail: str,
    *,
    claims: MessageClaims | None = None,
    claimed: Mapping[str, str] | None = None,
    retry_after: float | None = None,
    bucket: Bucket | None = None,
    culprit: str | None = None,
) -> Decision:
    return Decision(
        verdict=Verdict.REJECT,
        reason=code,
        detail=detail,
        claims=claims,
        claimed=claimed,
        retry_after=retry_after,
        bucket=bucket,
        culprit=culprit,
    )


def _claimed(raw: Mapping[str, object]) -> dict[str, str]:
    return {
        name: value[:128]
        for name in ("iss", "aud", "svc", "jti")
        if isinstance(value := raw.get(name), str)
    }


def _key_problem(key: KeyRecord, trust: TrustStore, now: float) -> tuple[ProblemCode, str] | None:
    if key.revoked:
        return ProblemCode.REVOKED_KEY, f"certificate {key.serial:x} is revoked"
    if key.generation < trust.generation:
        return (
            ProblemCode.SUPERSEDED_KEY,
            f"key of generation {key.generation}; generation {trust.generation} is current",
        )
    if not key.valid_at(now):
        return ProblemCode.KEY_EXPIRED, "certificate outside its validity period"
    return None


def _time_problem(claims: MessageClaims, now: float, leeway: int) -> tuple[ProblemCode, str] | None:
    if claims.exp + leeway < now:
        return ProblemCode.EXPIRED, f"expired at {claims.exp}, now {int(now)}"
    if claims.iat - leeway > now:
        return ProblemCode.CLOCK_SKEW, f"issued at {claims.iat}, now {int(now)}"
    return None


def decide(signature: str | None, body: bytes, ctx: Context) -> Decision:
    """Decide on one inbound message (its ``Pasarela-Signature`` and exact body bytes)."""
    if len(body) > ctx.limits.max_body:
        return _reject(
            ProblemCode.PAYLOAD_TOO_LARGE, f"{len(body)} bytes; limit {ctx.limits.max_body}"
        )
    if not signature:
        return _reject(ProblemCode.MALFORMED, "Pasarela-Signature header missing")
    try:
        parsed = parse_compact(signature, typ=TYP_MESSAGE)
    except ProtocolError as exc:
        return _reject(exc.code, exc.detail)
    claimed = _claimed(parsed.claims)
    key = ctx.trust.lookup(parsed.kid)
    if key is None:
        return _reject(ProblemCode.UNKNOWN_KEY, "kid is not a certified key", claimed=claimed)
    if not signature_valid(parsed, key.public_key):
        return _reject(ProblemCode.BAD_SIGNATURE, "signature does not verify", claimed=claimed)
    key_problem = _key_problem(key, ctx.trust, ctx.now)
    # From here on the token is signed by a key its owner still holds as current: what is
    # wrong with it is the owner's doing (a replay, an old or tampered body may not be).
    owner = key.agency if key_problem is None else None
    if claimed.get("iss") != key.agency:
        return _reject(
            ProblemCode.SENDER_MISMATCH,
            f"iss {claimed.get('iss')!r} does not own the key (owner {key.agency})",
            claimed=claimed,
            culprit=owner,
        )
    if key_problem is not None:
        return _reject(*key_problem, claimed=claimed)
    try:
        claims = message_claims(parsed)
    except ProtocolError as exc:
        return _reject(exc.code, exc.detail, claimed=claimed, culprit=owner)
    time_problem = _time_problem(claims, ctx.now, ctx.limits.leeway)
    if time_problem is not None:
        culprit = owner if time_problem[0] is ProblemCode.CLOCK_SKEW else None
        return _reject(*time_problem, claims=claims, culprit=culprit)
    if body_digest(body) != claims.bh:
        return _reject(
            ProblemCode.BODY_DIGEST_MISMATCH, "bh is not the body's SHA-256", claims=claims
        )
    seen = ctx.seen.get((claims.iss, claims.jti))
    if seen is not None:
        if seen.bh == claims.bh:
            return Decision(verdict=Verdict.RETRY, claims=claims, key=key)
        return _reject(ProblemCode.REPLAY, f"jti {claims.jti} already used", claims=claims)
    sender = ctx.registry.get(claims.iss)
    receiver = ctx.registry.get(claims.aud)
    if receiver is None:
        return _reject(
            ProblemCode.UNKNOWN_RECEIVER, f"no agency {claims.aud}", claims=claims, culprit=owner
        )
    for party in (sender, receiver):
        if party is None or party.state is not ConnectionState.CONNECTED:
            state = party.state.value if party else "unknown"
            who = party.code if party else claims.iss
            culprit = owner if party is sender else None
            return _reject(
                ProblemCode.AGENCY_DISCONNECTED,
                f"{who} is {state}",
                claims=claims,
                culprit=culprit,
            )
    if not ctx.registry.may_call(claims.iss, claims.aud, claims.svc):
        return _reject(
            ProblemCode.NOT_AUTHORIZED,
            f"{claims.iss} may not call {claims.aud}/{claims.svc}",
            claims=claims,
            culprit=owner,
        )
    bucket, wait = take_token(
        ctx.buckets.get(claims.iss),
        now=ctx.now,
        rate=ctx.limits.rate_per_second,
        burst=ctx.limits.burst,
    )
    if wait is not None:
        return _reject(
            ProblemCode.RATE_LIMITED,
            f"{claims.iss} over {ctx.limits.rate_per_second:g} messages/s",
            claims=claims,
            retry_after=wait,
            bucket=bucket,
            culprit=owner,
        )
    return Decision(verdict=Verdict.ACCEPT, claims=claims, key=key, bucket=bucket)


def decide_response(
    signature: str | None, body: bytes, request: MessageClaims, ctx: Context
) -> Decision:
    """Check the receiver's signed answer to ``request``: any failure is bad-response-signature."""

    def bad(detail: str) -> Decision:
        return _reject(ProblemCode.BAD_RESPONSE_SIGNATURE, detail, claims=request)

    if len(body) > ctx.limits.max_body:
        return bad(f"response of {len(body)} bytes; limit {ctx.limits.max_body}")
    if not signature:
        return bad("response carries no Pasarela-Signature")
    try:
        parsed = parse_compact(signature, typ=TYP_MESSAGE)
    except ProtocolError as exc:
        return bad(f"{exc.code.value}: {exc.detail}")
    key = ctx.trust.lookup(parsed.kid)
    if key is None:
        return bad("response kid is not a certified key")
    if not signature_valid(parsed, key.public_key):
        return bad("response signature does not verify")
    key_problem = _key_problem(key, ctx.trust, ctx.now)
    if key_problem is not None:
        return bad(f"{key_problem[0].value}: {key_problem[1]}")
    try:
        claims = message_claims(parsed)
    except ProtocolError as exc:
        return bad(exc.detail)
    if key.agency != claims.iss or claims.iss != request.aud:
        return bad(f"response signed by {key.agency} as {claims.iss}; expected {request.aud}")
    if claims.aud != request.iss or claims.corr != request.jti or claims.svc != request.svc:
        return bad("response aud, svc or corr does not match the request")
    time_problem = _time_problem(claims, ctx.now, ctx.limits.leeway)
    if time_problem is not None:
        return bad(f"{time_problem[0].value}: {time_problem[1]}")
    if body_digest(body) != claims.bh:
        return bad("response bh is not the body's SHA-256")
    return Decision(verdict=Verdict.ACCEPT, claims=claims, key=key)
