"""What the kit's gateway answers a connector's message with, and JWS reading helpers.

An :data:`Action` answers one message that arrived at the kit's gateway: :func:`relay`
lets the production gateway relay it to the peer (optionally tampering with the answer:
:func:`forge_receipt`, :func:`forge_answer`, :func:`mismatch_answer`), :func:`refuse`
answers a problem document as the gateway does when it refuses.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from agents.verification import encode_json, new_message_id
from gateway.pipeline import Decision, Verdict
from gateway.protocol import (
    HEADER_RECEIPT,
    HEADER_SIGNATURE,
    PROBLEM_CONTENT_TYPE,
    TYP_MESSAGE,
    TYP_RECEIPT,
    ProblemCode,
    b64url_decode,
    problem_document,
    sign_token,
)
from gateway.transport import WireRequest, WireResponse
from pasarela.conformance.model import MISSING

if TYPE_CHECKING:
    from pasarela.conformance.session import Arrival, Session

__all__ = [
    "Action",
    "Transform",
    "accepted",
    "forge_answer",
    "forge_receipt",
    "mismatch_answer",
    "refuse",
    "relay",
    "token_claims",
    "token_header",
]

Action = Callable[["Session", WireRequest, "Arrival"], Awaitable[WireResponse]]
Transform = Callable[["Session", WireResponse], WireResponse]


def _segment(token: str | None, index: int) -> Any:
    if not token:
        return MISSING
    try:
        value = json.loads(b64url_decode(token.split(".")[index]))
    except (ValueError, IndexError, UnicodeDecodeError):
        return MISSING
    return value if isinstance(value, dict) else MISSING


def token_header(token: str | None) -> Any:
    """The JOSE header of a compact JWS, unverified (MISSING when unreadable)."""
    return _segment(token, 0)


def token_claims(token: str | None) -> Any:
    """The claims of a compact JWS, unverified (MISSING when unreadable)."""
    return _segment(token, 1)


def relay(transform: Transform | None = None) -> Action:
    """Let the real gateway relay the message to the peer (and tamper with the answer)."""

    async def act(session: Session, wire: WireRequest, arrival: Arrival) -> WireResponse:
        answer = await session.gateway.relay(wire)
        if transform is not None:
            answer = transform(session, answer)
        jti = token_claims(answer.header(HEADER_SIGNATURE))
        if isinstance(jti, dict) and isinstance(jti.get("jti"), str):
            arrival.answer_jti = jti["jti"]
        arrival.exchange.note = "relayed" if transform is None else f"relayed, {transform.__doc__}"
        return answer

    return act


def refuse(code: ProblemCode, *, retry_after: int | None = None) -> Action:
    """Answer as the gateway does when it refuses: an unsigned problem document."""

    async def act(session: Session, wire: WireRequest, arrival: Arrival) -> WireResponse:
        jti = arrival.jti if isinstance(arrival.jti, str) else None
        document = problem_document(code, "conformance kit: refused on purpose", jti=jti)
        headers = {"Content-Type": PROBLEM_CONTENT_TYPE}
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        arrival.exchange.note = f"refused as {code} on purpose"
        return WireResponse(status=code.status, headers=headers, body=encode_json(document))

    return act


def _replace(answer: WireResponse, name: str, value: str) -> WireResponse:
    headers = {k: v for k, v in answer.headers.items() if k.lower() != name.lower()}
    headers[name] = value
    return WireResponse(status=answer.status, headers=headers, body=answer.body)


def forge_receipt(session: Session, answer: WireResponse) -> WireResponse:
    """its receipt re-signed by a key that is not the gateway's"""
    claims = token_claims(answer.header(HEADER_RECEIPT))
    if not isinstance(claims, dict):
        return answer
    forged = sign_token(
        claims, session.foreign_key, kid=session.gateway.key_record.kid, typ=TYP_RECEIPT
    )
    return _replace(answer, HEADER_RECEIPT, forged)


def forge_answer(session: Session, answer: WireResponse) -> WireResponse:
    """the answer's token re-signed by a key that is not the peer's"""
    claims = token_claims(answer.header(HEADER_SIGNATURE))
    if not isinstance(claims, dict):
        return answer
    forged = sign_token(claims, session.foreign_key, kid=session.peer.kid, typ=TYP_MESSAGE)
    return _replace(answer, HEADER_SIGNATURE, forged)


def mismatch_answer(session: Session, answer: WireResponse) -> WireResponse:
    """the answer re-signed by the peer with the corr of another message"""
    claims = token_claims(answer.header(HEADER_SIGNATURE))
    if not isinstance(claims, dict):
        return answer
    claims = {**claims, "corr": new_message_id(session.settings.agency, session.randomness)}
    token = sign_token(claims, session.peer.key, kid=session.peer.kid, typ=TYP_MESSAGE)
    return _replace(answer, HEADER_SIGNATURE, token)


def accepted(decision: Decision) -> bool:
    return decision.verdict in (Verdict.ACCEPT, Verdict.RETRY)
