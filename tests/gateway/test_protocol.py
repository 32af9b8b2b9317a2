"""Protocol values: tokens the gateway signs are standard JWS that PyJWT reads."""

from __future__ import annotations

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.clock import SeededRandomness
from gateway.protocol import (
    _ALPHABET,
    TYP_MESSAGE,
    ProblemCode,
    ProtocolError,
    b64url_decode,
    b64url_encode,
    message_claims,
    parse_compact,
    sign_token,
    signature_valid,
)
from gateway.trust import generate_key

KEY = generate_key(SeededRandomness(1))
CLAIMS = {
    "iss": "AG001",
    "aud": "AG002",
    "svc": "ping",
    "jti": "m-1",
    "iat": 1_420_070_400,
    "exp": 1_420_070_460,
    "bh": "aQMcg5jCc56Wy7UeUu40AC6DVeytwphzxG91DS58ECQ",
}


def test_signed_token_is_read_by_pyjwt() -> None:
    """sign_token builds a JWS that an independent library verifies, with exactly 3 headers."""
    token = sign_token(CLAIMS, KEY, kid="k1", typ=TYP_MESSAGE)
    assert jwt.get_unverified_header(token) == {"alg": "EdDSA", "kid": "k1", "typ": TYP_MESSAGE}
    decoded = jwt.decode(
        token, KEY.public_key(), algorithms=["EdDSA"], audience="AG002",
        options={"verify_exp": False, "verify_iat": False},
    )  # fmt: skip
    assert decoded == CLAIMS


def test_parse_then_verify_round_trip() -> None:
    """parse_compact + signature_valid + message_claims accept what sign_token made."""
    parsed = parse_compact(sign_token(CLAIMS, KEY, kid="k1", typ=TYP_MESSAGE), typ=TYP_MESSAGE)
    assert signature_valid(parsed, KEY.public_key())
    assert message_claims(parsed).jti == "m-1"


def test_duplicate_claim_members_are_malformed() -> None:
    """A claims object naming a member twice is refused (no last-one-wins ambiguity)."""
    token = sign_token(CLAIMS, KEY, kid="k1", typ=TYP_MESSAGE)
    header, _, signature = token.split(".")
    from gateway.protocol import b64url_encode

    twice = b64url_encode(b'{"iss":"AG001","iss":"AG009"}')
    with pytest.raises(ProtocolError) as caught:
        parse_compact(f"{header}.{twice}.{signature}", typ=TYP_MESSAGE)
    assert caught.value.code is ProblemCode.MALFORMED


@pytest.mark.parametrize(
    ("claim", "value"),
    [("iat", 1.5), ("iat", True), ("exp", "soon"), ("jti", ""), ("iss", "lower"), ("bh", "short")],
)
def test_claim_shapes_are_checked(claim: str, value: object) -> None:
    """NumericDates are integers; codes, ids and digests follow their patterns."""
    parsed = parse_compact(
        sign_token({**CLAIMS, claim: value}, KEY, kid="k1", typ=TYP_MESSAGE), typ=TYP_MESSAGE
    )
    with pytest.raises(ProtocolError):
        message_claims(parsed)


@given(data=st.binary(max_size=64), last=st.sampled_from(_ALPHABET))
def test_base64url_has_exactly_one_spelling(data: bytes, last: str) -> None:
    """decode(encode(x)) == x, and changing the last character never decodes to x again."""
    text = b64url_encode(data)
    assert b64url_decode(text) == data
    if text and last != text[-1]:
        try:
            other = b64url_decode(text[:-1] + last)
        except ValueError:
            return
        assert other != data
