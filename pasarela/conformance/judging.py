"""How the kit judges what a connector did: refusals, acceptances, token shapes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.protocol import (
    HEADER_SIGNATURE,
    MAX_LIFETIME_SECONDS,
    PROBLEM_CONTENT_TYPE,
    TYP_MESSAGE,
    ProblemCode,
)
from pasarela.conformance.actions import token_header
from pasarela.conformance.model import MISSING, Exchange, Violation, differences

__all__ = [
    "JWS",
    "answered",
    "expect_accepted",
    "expect_refusal",
    "message_claims",
    "string_other_than",
    "token_shape",
    "within",
]

JWS = "a compact JWS"


def _media_type(exchange: Exchange) -> Any:
    value = exchange.header("Content-Type")
    return MISSING if value is None else value.split(";")[0].strip().lower()


def answered(exchange: Exchange, what: str) -> None:
    if exchange.error is not None:
        raise Violation(f"the connector did not answer {what}: {exchange.error}", exchange=exchange)


def _refusal_document(exchange: Exchange) -> dict[str, Any]:
    return {
        "status": exchange.status,
        "content_type": _media_type(exchange),
        "body": exchange.response_json(),
    }


def expect_refusal(exchange: Exchange, code: ProblemCode, what: str) -> None:
    """A problem+json refusal with ``code``'s status and type."""
    answered(exchange, what)
    expected = {
        "status": code.status,
        "content_type": PROBLEM_CONTENT_TYPE,
        "body": {"type": code.type_uri},
    }
    found = differences(expected, _refusal_document(exchange))
    if not found:
        return
    status = exchange.status or 0
    if status < 400:
        message = f"the connector accepted {what} (HTTP {status}); it must refuse it as `{code}`"
    elif status >= 500:
        message = f"the connector failed on {what} (HTTP {status}); it must refuse it as `{code}`"
    else:
        message = f"the connector refused {what}, but not as `{code}` ({code.status})"
    raise Violation(message, found, exchange=exchange)


def expect_accepted(exchange: Exchange, what: str) -> str:
    """The delivery was answered 2xx with a token; return the token."""
    answered(exchange, what)
    document = {
        "status": exchange.status,
        "headers": {HEADER_SIGNATURE: exchange.header(HEADER_SIGNATURE) or MISSING},
    }
    expected = {
        "status": lambda s: None if isinstance(s, int) and 200 <= s < 300 else "2xx",
        "headers": {HEADER_SIGNATURE: lambda t: None if isinstance(t, str) and t else JWS},
    }
    found = differences(expected, document)
    if found:
        body = exchange.response_body[:200].decode("utf-8", "replace")
        raise Violation(
            f"the connector did not accept {what} (HTTP {exchange.status}: {body})",
            found,
            exchange=exchange,
        )
    return exchange.header(HEADER_SIGNATURE) or ""


def within(low: float, high: float, what: str) -> Callable[[Any], str | None]:
    def judge(value: Any) -> str | None:
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            return None
        return f"{what} (an integer in [{int(low)}, {int(high)}])"

    return judge


def string_other_than(*others: Any) -> Callable[[Any], str | None]:
    def judge(value: Any) -> str | None:
        if isinstance(value, str) and value and value not in others:
            return None
        return "a new message id (a string not used before)"

    return judge


def message_claims(
    *, iss: str, aud: str, svc: str, bh: str, now: int, slack: int, iat: Any, used: tuple[str, ...]
) -> dict[str, Any]:
    """What the claims of a message or answer must be (protocol.md section 5): the
    parties, the service and the body digest, a ``jti`` not among ``used``, ``iat`` within
    ``slack`` of ``now`` and ``exp`` at most 300 s after ``iat``."""
    base = iat if isinstance(iat, int) and not isinstance(iat, bool) else now
    return {
        "iss": iss,
        "aud": aud,
        "svc": svc,
        "jti": string_other_than(*used),
        "bh": bh,
        "iat": within(now - slack, now + slack, "the time of sending"),
        "exp": within(base + 1, base + MAX_LIFETIME_SECONDS, "iat + at most 300 s"),
    }


def token_shape(token: str, kids: set[str]) -> dict[str, Any]:
    header = token_header(token)
    expected: dict[str, Any] = {
        "alg": "EdDSA",
        "typ": TYP_MESSAGE,
        "kid": lambda k: None if k in kids else f"a current kid of the sender ({sorted(kids)})",
    }
    if isinstance(header, dict):
        for extra in sorted(set(header) - set(expected)):
            expected[extra] = lambda _v: "<absent> (only alg, typ and kid are allowed)"
    return expected
