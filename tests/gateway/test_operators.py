"""Operator tokens for the admin API: pinned algorithm, audience, expiry on the injected clock."""

from __future__ import annotations

import jwt
import pytest

from gateway.clock import SeededRandomness
from gateway.operators import OperatorAuthError, mint_operator_token, verify_operator_token
from gateway.trust import generate_key

NOW = 1_430_000_000.0
KEY = generate_key(SeededRandomness(11))
OPERATORS = {"ops": KEY.public_key()}


def _check(token: str, *, now: float = NOW, gateway: str = "PASARELA") -> str:
    return verify_operator_token(
        f"Bearer {token}", operators=OPERATORS, gateway_code=gateway, now=now
    )


def test_minted_token_verifies_and_names_the_operator() -> None:
    """A fresh token verifies and yields the operator's name."""
    token = mint_operator_token(KEY, name="ops", gateway_code="PASARELA", now=NOW, ttl=60)
    assert _check(token) == "ops"


def test_token_for_another_gateway_is_refused() -> None:
    """aud binds the token to one gateway."""
    token = mint_operator_token(KEY, name="ops", gateway_code="OTHER", now=NOW, ttl=60)
    with pytest.raises(OperatorAuthError, match="rejected"):
        _check(token)


def test_expiry_is_judged_by_the_injected_clock() -> None:
    """A token minted in 2015 is valid in a 2015 simulation and expired after its ttl."""
    token = mint_operator_token(KEY, name="ops", gateway_code="PASARELA", now=NOW, ttl=60)
    assert _check(token, now=NOW + 60) == "ops"
    with pytest.raises(OperatorAuthError, match="expired"):
        _check(token, now=NOW + 200)


def test_hmac_token_with_the_public_key_as_secret_is_refused() -> None:
    """Algorithm confusion: an HS256 token is refused before any key is used."""
    token = jwt.encode(
        {"sub": "ops", "aud": "PASARELA/admin", "iat": int(NOW), "exp": int(NOW) + 60, "jti": "x"},
        "secret-secret-secret-secret-secret!",
        algorithm="HS256",
        headers={"kid": "ops", "typ": "pasarela-admin+jwt"},
    )
    with pytest.raises(OperatorAuthError, match="EdDSA"):
        _check(token)


def test_unknown_operator_and_missing_bearer_are_refused() -> None:
    """kid must name a registered operator; the header must be a Bearer token."""
    token = mint_operator_token(KEY, name="mallory", gateway_code="PASARELA", now=NOW, ttl=60)
    with pytest.raises(OperatorAuthError, match="unknown"):
        _check(token)
    with pytest.raises(OperatorAuthError, match="Bearer"):
        verify_operator_token(None, operators=OPERATORS, gateway_code="PASARELA", now=NOW)


def test_embedded_jwk_header_is_refused() -> None:
    """A token carrying its own key (jwk header) is refused."""
    claims = {"sub": "ops", "aud": "PASARELA/admin", "iat": int(NOW), "exp": int(NOW) + 60}
    token = jwt.encode(
        {**claims, "jti": "y"}, KEY, algorithm="EdDSA",
        headers={"kid": "ops", "typ": "pasarela-admin+jwt", "jwk": {"kty": "OKP"}},
    )  # fmt: skip
    with pytest.raises(OperatorAuthError, match="forbidden"):
        _check(token)
