"""The provider checks: the kit delivers messages to the connector's endpoint as the
gateway would, valid or broken in exactly one way, and judges the answers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.protocol import (
    HEADER_SIGNATURE,
    LEEWAY_SECONDS,
    TYP_MESSAGE,
    MessageClaims,
    ProblemCode,
    ProtocolError,
    body_digest,
    parse_compact,
    signature_valid,
)
from pasarela.conformance.actions import token_claims, token_header
from pasarela.conformance.judging import (
    answered,
    expect_accepted,
    expect_refusal,
    message_claims,
    token_shape,
)
from pasarela.conformance.model import (
    MISSING,
    Check,
    Difference,
    Exchange,
    Side,
    Violation,
    catalogue,
    differences,
)
from pasarela.conformance.session import Session

__all__ = ["CHECKS"]

#: The provider checks, in the order they run.
CHECKS: list[Check] = []
check = catalogue(Side.PROVIDER, CHECKS)


@check(
    "accepts-valid",
    "Accepts a valid delivery",
    "protocol.md §6",
    "A valid message from the peer, with the gateway's receipt, is answered 2xx with a "
    "Pasarela-Signature.",
)
async def accepts_valid(session: Session) -> None:
    case = session.new_case()
    exchange = (await session.valid_delivery(case)).exchange
    expect_accepted(exchange, "a valid delivery")


@check(
    "answer-signature",
    "Signs its answer",
    "protocol.md §5, §6",
    "The answer's token has exactly alg EdDSA, typ pasarela-msg+jwt and the agency's "
    "current kid, and its Ed25519 signature verifies with the agency's certificate.",
)
async def answer_signature(session: Session) -> None:
    case = session.new_case()
    exchange = (await session.valid_delivery(case)).exchange
    token = expect_accepted(exchange, "a valid delivery")
    agency = session.settings.agency
    kids = {r.kid for r in session.gateway.trust.current_keys(agency)}
    found = differences({"header": token_shape(token, kids)}, {"header": token_header(token)})
    verdict = "verifies"
    try:
        typ = token_header(token).get("typ") if isinstance(token_header(token), dict) else None
        # The typ is judged above: here only whose key signed it.
        parsed = parse_compact(token, typ=typ if isinstance(typ, str) else TYP_MESSAGE)
        record = session.gateway.trust.lookup(parsed.kid)
        if record is None or record.agency != agency:
            verdict = "unknown kid"
        elif not signature_valid(parsed, record.public_key):
            verdict = "does not verify"
    except ProtocolError as exc:
        verdict = f"unreadable: {exc.detail}"
    if verdict != "verifies":
        found.append(Difference("$.signature", f"Ed25519 by {agency}'s current key", verdict))
    if found:
        raise Violation(
            f"the answer's {HEADER_SIGNATURE} is not signed as protocol.md section 5 says",
            found,
            exchange=exchange,
        )


@check(
    "answer-claims",
    "Answers with the right claims",
    "protocol.md §6",
    "The answer's claims: iss the agency, aud the sender, the request's svc, corr the "
    "request's jti, a new jti, bh of the answer body, iat now, exp at most 300 s later.",
)
async def answer_claims(session: Session) -> None:
    sent = await session.valid_delivery(session.new_case())
    exchange, claims = sent.exchange, sent.claims
    answer = expect_accepted(exchange, "a valid delivery")
    got = token_claims(answer)
    expected = message_claims(
        iss=session.settings.agency,
        aud=claims.iss,
        svc=claims.svc,
        bh=body_digest(exchange.response_body),
        now=int(session.clock.now()),
        slack=LEEWAY_SECONDS + int(exchange.elapsed) + 1,
        iat=got.get("iat") if isinstance(got, dict) else None,
        used=(claims.jti,),
    )
    expected["corr"] = claims.jti
    found = differences({"claims": expected}, {"claims": got})
    if found:
        raise Violation("the answer's claims do not match the request", found, exchange=exchange)


@check(
    "duplicate-delivery",
    "Answers a duplicate delivery idempotently",
    "protocol.md §8",
    "The same delivery twice (same iss, jti, body) gets the first answer again, byte "
    "for byte: status, body and Pasarela-Signature.",
)
async def duplicate_delivery(session: Session) -> None:
    case = session.new_case()
    sent = await session.valid_delivery(case)
    first = sent.exchange
    expect_accepted(first, "a valid delivery")
    again = await session.deliver(case, body=sent.body, token=sent.token, receipt=sent.receipt)
    answered(again, "a duplicate delivery")

    def seen(exchange: Exchange) -> dict[str, Any]:
        return {
            "status": exchange.status,
            "headers": {HEADER_SIGNATURE: exchange.header(HEADER_SIGNATURE) or MISSING},
            "body": exchange.response_body.decode("utf-8", "replace"),
        }

    found = differences(seen(first), seen(again))
    if found:
        raise Violation(
            "a duplicate delivery (same iss, jti and body) must get the first answer again, "
            "byte for byte",
            found,
            exchange=again,
        )


@check(
    "replay",
    "Refuses a replay",
    "protocol.md §8",
    "An accepted message id sent again with another body is refused 409 replay.",
)
async def replay(session: Session) -> None:
    case = session.new_case()
    first = await session.valid_delivery(case)
    expect_accepted(first.exchange, "a valid delivery")
    body = session.message_body(case, changed=True)
    token, claims = session.sign_request(body, jti=first.claims.jti)
    second = await session.deliver(
        session.new_case(), body=body, token=token, receipt=session.receipt(claims)
    )
    expect_refusal(second, ProblemCode.REPLAY, "a message id already used with another body")


async def _broken_delivery(
    session: Session,
    code: ProblemCode,
    what: str,
    *,
    receipt: Callable[[MessageClaims], str | None] | None = None,
    signed_body: bytes | None = None,
    **signing: Any,
) -> None:
    """Deliver a message broken in one way (how it is signed, its receipt, its body) and
    expect the refusal ``code``."""
    case = session.new_case()
    body = session.message_body(case)
    token, claims = session.sign_request(signed_body or body, **signing)
    stamp = receipt(claims) if receipt is not None else session.receipt(claims)
    exchange = await session.deliver(case, body=body, token=token, receipt=stamp)
    expect_refusal(exchange, code, what)


@check(
    "receipt-missing",
    "Refuses a delivery without a receipt",
    "protocol.md §6",
    "A delivery without Pasarela-Receipt is refused 400 malformed.",
)
async def receipt_missing(session: Session) -> None:
    await _broken_delivery(
        session, ProblemCode.MALFORMED, "a delivery without a gateway receipt",
        receipt=lambda _: None,
    )  # fmt: skip


@check(
    "receipt-forged",
    "Refuses a forged receipt",
    "protocol.md §6, §7",
    "A receipt under the gateway's kid but signed by another key is refused 401 bad- signature.",
)
async def receipt_forged(session: Session) -> None:
    await _broken_delivery(
        session, ProblemCode.BAD_SIGNATURE, "a receipt not signed by the gateway's key",
        receipt=lambda claims: session.receipt(claims, key=session.foreign_key),
    )  # fmt: skip


@check(
    "receipt-mismatch",
    "Refuses a receipt for another message",
    "protocol.md §6, §7",
    "A receipt signed by the gateway whose jti is another message's is refused 401 bad- signature.",
)
async def receipt_mismatch(session: Session) -> None:
    await _broken_delivery(
        session, ProblemCode.BAD_SIGNATURE, "a gateway receipt for another message",
        receipt=lambda claims: session.receipt(claims, jti=session.new_jti()),
    )  # fmt: skip


@check(
    "bad-signature",
    "Refuses a bad signature",
    "protocol.md §5",
    "A token under the sender's kid signed by another key is refused 401 bad-signature.",
)
async def bad_signature(session: Session) -> None:
    await _broken_delivery(
        session, ProblemCode.BAD_SIGNATURE, "a token whose signature is not the sender's",
        key=session.foreign_key,
    )  # fmt: skip


@check(
    "unknown-key",
    "Refuses an unknown key",
    "protocol.md §5",
    "A token under a kid no certificate has is refused 401 unknown-key.",
)
async def unknown_key(session: Session) -> None:
    kid = "conformance-unknown-" + session.randomness.token_bytes(8).hex()
    await _broken_delivery(
        session, ProblemCode.UNKNOWN_KEY, "a token under a kid nobody holds",
        key=session.foreign_key, kid=kid,
    )  # fmt: skip


@check(
    "wrong-audience",
    "Refuses a message for another agency",
    "protocol.md §6",
    "A token whose aud is another agency is refused 401 bad-signature.",
)
async def wrong_audience(session: Session) -> None:
    await _broken_delivery(
        session, ProblemCode.BAD_SIGNATURE,
        f"a message for another agency (aud {session.other_agency})",
        aud=session.other_agency,
    )  # fmt: skip


@check(
    "expired",
    "Refuses an expired message",
    "protocol.md §5",
    "A token with exp more than 30 s in the past is refused 401 expired.",
)
async def expired(session: Session) -> None:
    past = int(session.clock.now()) - 2 * LEEWAY_SECONDS - 120
    await _broken_delivery(
        session, ProblemCode.EXPIRED, "a token that expired over 30 s ago", iat=past, lifetime=60
    )


@check(
    "clock-skew",
    "Refuses a message from the future",
    "protocol.md §5",
    "A token with iat more than 30 s in the future is refused 401 clock-skew.",
)
async def clock_skew(session: Session) -> None:
    future = int(session.clock.now()) + 2 * LEEWAY_SECONDS + 60
    await _broken_delivery(
        session, ProblemCode.CLOCK_SKEW, "a token issued over 30 s in the future", iat=future
    )


@check(
    "body-digest",
    "Refuses a body other than the one signed",
    "protocol.md §5",
    "A body whose SHA-256 is not the token's bh is refused 400 body-digest-mismatch.",
)
async def body_digest_mismatch(session: Session) -> None:
    await _broken_delivery(
        session, ProblemCode.BODY_DIGEST_MISMATCH, "a body other than the one signed (bh)",
        signed_body=b'{"text": "the body that was signed"}',
    )  # fmt: skip
