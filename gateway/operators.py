"""Operator authentication for the admin API: short JWTs signed with an operator's Ed25519 key.

Header ``{"alg": "EdDSA", "typ": "pasarela-admin+jwt", "kid": <operator name>}``; claims
``sub`` (operator name, must equal ``kid``), ``aud`` (``<gateway code>/admin``), ``iat``,
``exp``, ``jti``. Verified with PyJWT, algorithm pinned, every claim required.
"""

from __future__ import annotations

from collections.abc import Mapping

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.protocol import ALGORITHM, ALLOWED_HEADERS, FORBIDDEN_HEADERS, b64url_encode

__all__ = ["TYP_ADMIN", "OperatorAuthError", "mint_operator_token", "verify_operator_token"]

TYP_ADMIN = "pasarela-admin+jwt"


class OperatorAuthError(Exception):
    """The admin request's bearer token is missing or does not verify."""


def admin_audience(gateway_code: str) -> str:
    return f"{gateway_code}/admin"


def mint_operator_token(
    key: Ed25519PrivateKey, *, name: str, gateway_code: str, now: float, ttl: int
) -> str:
    claims = {
        "sub": name,
        "aud": admin_audience(gateway_code),
        "iat": int(now),
        "exp": int(now) + ttl,
        "jti": b64url_encode(f"{name}:{int(now)}".encode()),
    }
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": name, "typ": TYP_ADMIN})


def verify_operator_token(
    authorization: str | None,
    *,
    operators: Mapping[str, Ed25519PublicKey],
    gateway_code: str,
    now: float,
    leeway: int = 30,
) -> str:
    """Return the operator's name from an ``Authorization: Bearer`` value, or raise."""
    if not authorization or not authorization.startswith("Bearer "):
        raise OperatorAuthError("Authorization: Bearer <operator token> required")
    token = authorization.removeprefix("Bearer ").strip()
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as exc:
        raise OperatorAuthError(f"operator token malformed: {exc}") from exc
    if header.get("alg") != ALGORITHM or header.get("typ") != TYP_ADMIN:
        raise OperatorAuthError("operator token must be EdDSA with typ pasarela-admin+jwt")
    if FORBIDDEN_HEADERS & set(header) or set(header) - ALLOWED_HEADERS:
        raise OperatorAuthError("operator token carries a forbidden or unknown header")
    name = header.get("kid")
    if not isinstance(name, str):
        raise OperatorAuthError("operator token kid missing")
    key = operators.get(name)
    if key is None:
        raise OperatorAuthError("operator unknown")
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=admin_audience(gateway_code),
            leeway=leeway,
            # Time is checked below against the injected clock, never the wall clock.
            options={
                "require": ["sub", "aud", "iat", "exp", "jti"],
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    except jwt.InvalidTokenError as exc:
        raise OperatorAuthError(f"operator token rejected: {exc}") from exc
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, int) or not isinstance(iat, int):
        raise OperatorAuthError("operator token exp and iat must be integers")
    if exp + leeway < now:
        raise OperatorAuthError("operator token expired")
    if iat - leeway > now:
        raise OperatorAuthError("operator token issued in the future")
    if claims.get("sub") != name:
        raise OperatorAuthError("operator token sub does not match kid")
    return name
