"""The named checks: what the kit does to the connector and what it expects back.

Provider checks deliver messages to the connector's endpoint as the gateway would, some
valid, some broken in exactly one way. Consumer checks ask the connector to send
(``POST /trigger/send``) and answer it as the gateway, faithfully or not. Each check
raises :class:`Violation` with the differences it found, or returns.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from gateway.protocol import (
    HEADER_SIGNATURE,
    LEEWAY_SECONDS,
    MAX_LIFETIME_SECONDS,
    PROBLEM_CONTENT_TYPE,
    TYP_MESSAGE,
    ProblemCode,
    ProtocolError,
    body_digest,
    parse_compact,
    signature_valid,
)
from pasarela.conformance.model import (
    MISSING,
    Check,
    CheckFunction,
    Difference,
    Exchange,
    Side,
    UsageError,
    Violation,
    differences,
)
from pasarela.conformance.session import (
    Arrival,
    Session,
    accepted,
    forge_answer,
    forge_receipt,
    mismatch_answer,
    refuse,
    relay,
    token_claims,
    token_header,
)

__all__ = ["CHECKS", "PROBLEM_CODES", "select_checks"]

#: The refusals the consumer must survive (429 and 503 have checks of their own).
PROBLEM_CODES: tuple[ProblemCode, ...] = (
    ProblemCode.MALFORMED,
    ProblemCode.BAD_SIGNATURE,
    ProblemCode.ALGORITHM_NOT_ALLOWED,
    ProblemCode.FORBIDDEN_HEADER,
    ProblemCode.UNKNOWN_KEY,
    ProblemCode.REVOKED_KEY,
    ProblemCode.KEY_EXPIRED,
    ProblemCode.SUPERSEDED_KEY,
    ProblemCode.SENDER_MISMATCH,
    ProblemCode.EXPIRED,
    ProblemCode.CLOCK_SKEW,
    ProblemCode.BODY_DIGEST_MISMATCH,
    ProblemCode.REPLAY,
    ProblemCode.NOT_AUTHORIZED,
    ProblemCode.AGENCY_DISCONNECTED,
    ProblemCode.UNKNOWN_RECEIVER,
    ProblemCode.PAYLOAD_TOO_LARGE,
    ProblemCode.BAD_RESPONSE_SIGNATURE,
    ProblemCode.INVALID_REQUEST,
)

JWS = "a compact JWS"


# -- judging ---------------------------------------------------------------------------
def _media_type(exchange: Exchange) -> Any:
    value = exchange.header("Content-Type")
    return MISSING if value is None else value.split(";")[0].strip().lower()


def _answered(exchange: Exchange, what: str) -> None:
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
    _answered(exchange, what)
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


def _expect_accepted(exchange: Exchange, what: str) -> str:
    """The delivery was answered 2xx with a token; return the token."""
    _answered(exchange, what)
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


def _within(low: float, high: float, what: str) -> Callable[[Any], str | None]:
    def judge(value: Any) -> str | None:
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            return None
        return f"{what} (an integer in [{int(low)}, {int(high)}])"

    return judge


def _string_other_than(*others: Any) -> Callable[[Any], str | None]:
    def judge(value: Any) -> str | None:
        if isinstance(value, str) and value and value not in others:
            return None
        return "a new message id (a string not used before)"

    return judge


def _token_shape(token: str, kids: set[str]) -> dict[str, Any]:
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


# -- provider checks -------------------------------------------------------------------
async def accepts_valid(session: Session) -> None:
    case = session.new_case()
    exchange = await session.valid_delivery(case)
    _expect_accepted(exchange, "a valid delivery")


async def answer_signature(session: Session) -> None:
    case = session.new_case()
    exchange = await session.valid_delivery(case)
    token = _expect_accepted(exchange, "a valid delivery")
    agency = session.settings.agency
    kids = {r.kid for r in session.gateway.trust.current_keys(agency)}
    found = differences({"header": _token_shape(token, kids)}, {"header": token_header(token)})
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


async def answer_claims(session: Session) -> None:
    case = session.new_case()
    body = session.message_body(case)
    token, claims = session.sign_request(body)
    exchange = await session.deliver(
        case, body=body, token=token, receipt=session.receipt(claims), valid=True
    )
    answer = _expect_accepted(exchange, "a valid delivery")
    now = int(session.clock.now())
    slack = LEEWAY_SECONDS + int(exchange.elapsed) + 1
    got = token_claims(answer)
    iat = got.get("iat") if isinstance(got, dict) else None
    expected = {
        "iss": session.settings.agency,
        "aud": claims.iss,
        "svc": claims.svc,
        "corr": claims.jti,
        "jti": _string_other_than(claims.jti),
        "bh": body_digest(exchange.response_body),
        "iat": _within(now - slack, now + slack, "the time of the answer"),
        "exp": _within(
            (iat if isinstance(iat, int) else now) + 1,
            (iat if isinstance(iat, int) else now) + MAX_LIFETIME_SECONDS,
            "iat + at most 300 s",
        ),
    }
    found = differences({"claims": expected}, {"claims": got})
    if found:
        raise Violation("the answer's claims do not match the request", found, exchange=exchange)


async def duplicate_delivery(session: Session) -> None:
    case = session.new_case()
    body = session.message_body(case)
    token, claims = session.sign_request(body)
    receipt = session.receipt(claims)
    first = await session.deliver(case, body=body, token=token, receipt=receipt, valid=True)
    _expect_accepted(first, "a valid delivery")
    again = await session.deliver(case, body=body, token=token, receipt=receipt)
    _answered(again, "a duplicate delivery")

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


async def replay(session: Session) -> None:
    case = session.new_case()
    first = await session.valid_delivery(case)
    _expect_accepted(first, "a valid delivery")
    jti = token_claims(first.request_header(HEADER_SIGNATURE))["jti"]
    body = session.message_body(case, changed=True)
    token, claims = session.sign_request(body, jti=jti)
    second = await session.deliver(
        session.new_case(), body=body, token=token, receipt=session.receipt(claims)
    )
    expect_refusal(second, ProblemCode.REPLAY, "a message id already used with another body")


async def receipt_missing(session: Session) -> None:
    case = session.new_case()
    body = session.message_body(case)
    token, _ = session.sign_request(body)
    exchange = await session.deliver(case, body=body, token=token, receipt=None)
    expect_refusal(exchange, ProblemCode.MALFORMED, "a delivery without a gateway receipt")


async def receipt_forged(session: Session) -> None:
    case = session.new_case()
    body = session.message_body(case)
    token, claims = session.sign_request(body)
    forged = session.receipt(claims, key=session.foreign_key)
    exchange = await session.deliver(case, body=body, token=token, receipt=forged)
    expect_refusal(exchange, ProblemCode.BAD_SIGNATURE, "a receipt not signed by the gateway's key")


async def receipt_mismatch(session: Session) -> None:
    case = session.new_case()
    body = session.message_body(case)
    token, claims = session.sign_request(body)
    other = session.receipt(claims, jti=session.new_jti())
    exchange = await session.deliver(case, body=body, token=token, receipt=other)
    expect_refusal(exchange, ProblemCode.BAD_SIGNATURE, "a gateway receipt for another message")


async def bad_signature(session: Session) -> None:
    case = session.new_case()
    body = session.message_body(case)
    token, claims = session.sign_request(body, key=session.foreign_key)
    exchange = await session.deliver(case, body=body, token=token, receipt=session.receipt(claims))
    expect_refusal(
        exchange, ProblemCode.BAD_SIGNATURE, "a token whose signature is not the sender's"
    )


async def unknown_key(session: Session) -> None:
    case = session.new_case()
    body = session.message_body(case)
    kid = "conformance-unknown-" + session.randomness.token_bytes(8).hex()
    token, claims = session.sign_request(body, key=session.foreign_key, kid=kid)
    exchange = await session.deliver(case, body=body, token=token, receipt=session.receipt(claims))
    expect_refusal(exchange, ProblemCode.UNKNOWN_KEY, "a token under a kid nobody holds")


async def wrong_audience(session: Session) -> None:
    case = session.new_case()
    body = session.message_body(case)
    token, claims = session.sign_request(body, aud=session.other_agency)
    exchange = await session.deliver(case, body=body, token=token, receipt=session.receipt(claims))
    expect_refusal(
        exchange,
        ProblemCode.BAD_SIGNATURE,
        f"a message for another agency (aud {session.other_agency})",
    )


async def expired(session: Session) -> None:
    case = session.new_case()
    body = session.message_body(case)
    past = int(session.clock.now()) - 2 * LEEWAY_SECONDS - 120
    token, claims = session.sign_request(body, iat=past, lifetime=60)
    exchange = await session.deliver(case, body=body, token=token, receipt=session.receipt(claims))
    expect_refusal(exchange, ProblemCode.EXPIRED, "a token that expired over 30 s ago")


async def clock_skew(session: Session) -> None:
    case = session.new_case()
    body = session.message_body(case)
    future = int(session.clock.now()) + 2 * LEEWAY_SECONDS + 60
    token, claims = session.sign_request(body, iat=future)
    exchange = await session.deliver(case, body=body, token=token, receipt=session.receipt(claims))
    expect_refusal(exchange, ProblemCode.CLOCK_SKEW, "a token issued over 30 s in the future")


async def body_digest_mismatch(session: Session) -> None:
    case = session.new_case()
    body = session.message_body(case)
    signed = session.message_body(case, tampered=False)
    token, claims = session.sign_request(signed)
    exchange = await session.deliver(case, body=body, token=token, receipt=session.receipt(claims))
    expect_refusal(
        exchange, ProblemCode.BODY_DIGEST_MISMATCH, "a body other than the one signed (bh)"
    )


# -- consumer checks -------------------------------------------------------------------
def _arrived(session: Session, case: str, trigger: Exchange, count: int = 1) -> list[Arrival]:
    arrivals = session.arrivals(case)
    if len(arrivals) >= count:
        return arrivals
    if trigger.error is not None:
        raise Violation(
            f"the connector did not answer POST /trigger/send: {trigger.error}", exchange=trigger
        )
    if not arrivals and trigger.status in (404, 405):
        raise Violation(
            f"the connector has no POST /trigger/send (HTTP {trigger.status}), so it cannot be "
            "checked as a consumer: add the trigger (docs/openapi/connector.yaml) or leave "
            "these checks out with --exclude-checks 'consumer.*'",
            exchange=trigger,
        )
    if not arrivals:
        body = trigger.response_body[:200].decode("utf-8", "replace")
        raise Violation(
            "no message reached the kit's gateway at "
            f"{session.settings.gateway_url}/v1/messages (trigger answered HTTP "
            f"{trigger.status}: {body}); is the connector's gateway URL the kit's (--listen)?",
            exchange=trigger,
        )
    return arrivals


def _trigger_document(trigger: Exchange) -> dict[str, Any]:
    return {"status": trigger.status, "json": trigger.response_json()}


def _sent_document(session: Session, arrival: Arrival) -> dict[str, Any]:
    try:
        body: Any = json.loads(arrival.body)
    except (ValueError, UnicodeDecodeError):
        body = arrival.body.decode("utf-8", "replace")
    decision = arrival.decision
    verdict = (
        "accepted" if accepted(decision) else f"refused as {decision.reason}: {decision.detail}"
    )
    return {"header": arrival.header, "claims": arrival.claims, "body": body, "gateway": verdict}


async def signs(session: Session) -> None:
    case = session.new_case()
    payload = {"case": case, "text": "pasarela conformance"}
    trigger = await session.trigger(case, payload)
    (arrival, *_) = _arrived(session, case, trigger)
    agency = session.settings.agency
    kids = {r.kid for r in session.gateway.trust.current_keys(agency)}
    now = int(arrival.exchange.started)
    got = arrival.claims
    iat = got.get("iat") if isinstance(got, dict) else None
    base = iat if isinstance(iat, int) else now
    expected = {
        "header": _token_shape(arrival.token or "", kids),
        "claims": {
            "iss": agency,
            "aud": session.peer.code,
            "svc": session.settings.service,
            "jti": _string_other_than(),
            "bh": body_digest(arrival.body),
            "iat": _within(now - LEEWAY_SECONDS, now + LEEWAY_SECONDS, "the time of sending"),
            "exp": _within(base + 1, base + MAX_LIFETIME_SECONDS, "iat + at most 300 s"),
        },
        "body": payload,
        "gateway": "accepted",
    }
    found = differences(expected, _sent_document(session, arrival))
    if found:
        raise Violation(
            "the message the connector sent is not signed as protocol.md section 5 says",
            found,
            exchange=arrival.exchange,
        )


async def accepts_valid_answer(session: Session) -> None:
    case = session.new_case()
    trigger = await session.trigger(case, {"case": case, "text": "pasarela conformance"})
    arrivals = _arrived(session, case, trigger)
    last = arrivals[-1]
    if not accepted(last.decision):
        raise Violation(
            f"the kit's gateway refused the connector's message as {last.decision.reason} "
            "(see consumer.signs), so no answer could be relayed",
            exchange=last.exchange,
        )
    expected = {
        "status": 200,
        "json": {
            "status": 200,
            "receipt_verified": True,
            "jti": last.jti,
            "answer_jti": last.answer_jti,
        },
    }
    found = differences(expected, _trigger_document(trigger))
    if found:
        raise Violation(
            "the connector did not accept a genuine, correctly signed answer",
            found,
            exchange=trigger,
        )


async def fresh_jti(session: Session) -> None:
    check = session.check.id if session.check else "consumer.fresh-jti"
    payload = {"case": check, "text": "the same body, sent twice"}
    first_case = session.new_case()
    session.script(check, relay(), relay())
    first = await session.trigger(first_case, payload)
    second = await session.trigger(session.new_case(), payload)
    arrivals = _arrived(session, check, second, count=1)
    if len(arrivals) < 2:
        raise Violation(
            "two triggers with the same body made fewer than two messages reach the gateway",
            exchange=first if len(arrivals) == 0 else second,
        )
    jtis = [arrival.jti for arrival in arrivals]
    expected = {"messages": [{"jti": jtis[0]}, {"jti": _string_other_than(jtis[0])}]}
    actual = {"messages": [{"jti": jti} for jti in jtis[:2]]}
    found = differences(expected, actual)
    if found:
        raise Violation(
            "two messages got the same jti: every message needs a fresh one (section 8)",
            found,
            exchange=arrivals[1].exchange,
        )


async def _retried(session: Session, code: ProblemCode, why: str) -> None:
    case = session.new_case()
    wait = session.settings.retry_after
    session.script(case, refuse(code, retry_after=wait), relay())
    trigger = await session.trigger(case, {"case": case, "text": "pasarela conformance"})
    arrivals = _arrived(session, case, trigger)
    if len(arrivals) < 2:
        raise Violation(
            f"the connector did not retry after `{code}` ({code.status}, Retry-After: {wait})",
            [Difference("$.attempts", "2 (the refused one, then a retry)", len(arrivals))],
            exchange=trigger,
        )
    first, retry = arrivals[0], arrivals[1]
    gap = round(retry.at - first.at, 3)
    expected = {
        "jti": first.jti,
        "body": first.body.decode("utf-8", "replace"),
        "after_seconds": lambda s: (
            None if s >= wait - 0.1 else f"at least {wait} (the Retry-After)"
        ),
    }
    actual = {
        "jti": retry.jti,
        "body": retry.body.decode("utf-8", "replace"),
        "after_seconds": gap,
    }
    found = [
        Difference(f"$.attempts[1]{d.path[1:]}", d.expected, d.actual)
        for d in differences(expected, actual)
    ]
    if found:
        raise Violation(why, found, exchange=retry.exchange)
    found = differences(
        {"status": 200, "json": {"receipt_verified": True}}, _trigger_document(trigger)
    )
    if found:
        raise Violation(
            "after the retry was relayed, the trigger did not report the verified answer",
            found,
            exchange=trigger,
        )


async def retry_503(session: Session) -> None:
    await _retried(
        session,
        ProblemCode.RECEIVER_UNAVAILABLE,
        "after a 503 the same message (same jti, same body) must be sent again, "
        "no sooner than Retry-After",
    )


async def retry_429(session: Session) -> None:
    await _retried(
        session,
        ProblemCode.RATE_LIMITED,
        "after a 429 the connector must wait Retry-After, then send the same message",
    )


def _refuses(transform: Callable[..., Any], what: str) -> CheckFunction:
    async def run(session: Session) -> None:
        case = session.new_case()
        session.script(case, relay(transform))
        trigger = await session.trigger(case, {"case": case, "text": "pasarela conformance"})
        arrivals = _arrived(session, case, trigger)
        if not accepted(arrivals[-1].decision):
            raise Violation(
                f"the kit's gateway refused the connector's message as "
                f"{arrivals[-1].decision.reason} (see consumer.signs): nothing to tamper with",
                exchange=arrivals[-1].exchange,
            )
        if trigger.error is not None:
            raise Violation(
                f"the connector did not answer POST /trigger/send: {trigger.error}",
                exchange=trigger,
            )
        found = differences({"status": 502}, _trigger_document(trigger))
        if found:
            raise Violation(
                f"the connector accepted {what}; POST /trigger/send must answer 502",
                found,
                exchange=trigger,
            )

    return run


async def problem_codes(session: Session) -> None:
    failures: list[Difference] = []
    first_bad: Exchange | None = None
    names: list[str] = []
    for code in PROBLEM_CODES:
        case = session.new_case(str(code))
        session.script(case, refuse(code))
        trigger = await session.trigger(case, {"case": case, "text": "pasarela conformance"})
        expected = {
            "status": 200,
            "json": {
                "status": code.status,
                "receipt_verified": False,
                "from": "gateway",
                "body": {"type": code.type_uri},
            },
        }
        actual = _trigger_document(trigger)
        if trigger.error is not None:
            actual = {"status": f"no answer: {trigger.error}"}
        found = differences(expected, actual)
        if found:
            names.append(f"{code} (HTTP {trigger.status or trigger.error})")
            first_bad = first_bad or trigger
            failures += [Difference(f"[{code}] {d.path}", d.expected, d.actual) for d in found]
    case = session.new_case("afterwards")
    trigger = await session.trigger(case, {"case": case, "text": "pasarela conformance"})
    found = differences(
        {"status": 200, "json": {"receipt_verified": True}}, _trigger_document(trigger)
    )
    if found:
        names.append("a valid message afterwards")
        first_bad = first_bad or trigger
        failures += [Difference(f"[afterwards] {d.path}", d.expected, d.actual) for d in found]
    if failures:
        raise Violation(
            f"the connector mishandled {len(names)} of {len(PROBLEM_CODES) + 1} cases: "
            + ", ".join(names),
            failures,
            exchange=first_bad,
        )


# -- the catalogue ---------------------------------------------------------------------
def _check(  # noqa: PLR0917 - the catalogue below reads as a table
    side: Side, name: str, title: str, description: str, reference: str, run: CheckFunction
) -> Check:
    return Check(
        id=f"{side}.{name}",
        side=side,
        title=title,
        description=description,
        reference=reference,
        run=run,
    )


P, C = Side.PROVIDER, Side.CONSUMER
S5, S6, S8 = "protocol.md §5", "protocol.md §6", "protocol.md §8"

CHECKS: tuple[Check, ...] = (
    _check(
        P,
        "accepts-valid",
        "Accepts a valid delivery",
        "A valid message from the peer, with the gateway's receipt, is answered 2xx with a "
        "Pasarela-Signature.",
        S6,
        accepts_valid,
    ),
    _check(
        P,
        "answer-signature",
        "Signs its answer",
        "The answer's token has exactly alg EdDSA, typ pasarela-msg+jwt and the agency's "
        "current kid, and its Ed25519 signature verifies with the agency's certificate.",
        "protocol.md §5, §6",
        answer_signature,
    ),
    _check(
        P,
        "answer-claims",
        "Answers with the right claims",
        "The answer's claims: iss the agency, aud the sender, the request's svc, corr the "
        "request's jti, a new jti, bh of the answer body, iat now, exp at most 300 s later.",
        S6,
        answer_claims,
    ),
    _check(
        P,
        "duplicate-delivery",
        "Answers a duplicate delivery idempotently",
        "The same delivery twice (same iss, jti, body) gets the first answer again, byte for "
        "byte: status, body and Pasarela-Signature.",
        S8,
        duplicate_delivery,
    ),
    _check(
        P,
        "replay",
        "Refuses a replay",
        "An accepted message id sent again with another body is refused 409 replay.",
        S8,
        replay,
    ),
    _check(
        P,
        "receipt-missing",
        "Refuses a delivery without a receipt",
        "A delivery without Pasarela-Receipt is refused 400 malformed.",
        S6,
        receipt_missing,
    ),
    _check(
        P,
        "receipt-forged",
        "Refuses a forged receipt",
        "A receipt under the gateway's kid but signed by another key is refused 401 bad-signature.",
        "protocol.md §6, §7",
        receipt_forged,
    ),
    _check(
        P,
        "receipt-mismatch",
        "Refuses a receipt for another message",
        "A receipt signed by the gateway whose jti is another message's is refused 401 "
        "bad-signature.",
        "protocol.md §6, §7",
        receipt_mismatch,
    ),
    _check(
        P,
        "bad-signature",
        "Refuses a bad signature",
        "A token under the sender's kid signed by another key is refused 401 bad-signature.",
        S5,
        bad_signature,
    ),
    _check(
        P,
        "unknown-key",
        "Refuses an unknown key",
        "A token under a kid no certificate has is refused 401 unknown-key.",
        S5,
        unknown_key,
    ),
    _check(
        P,
        "wrong-audience",
        "Refuses a message for another agency",
        "A token whose aud is another agency is refused 401 bad-signature.",
        S6,
        wrong_audience,
    ),
    _check(
        P,
        "expired",
        "Refuses an expired message",
        "A token with exp more than 30 s in the past is refused 401 expired.",
        S5,
        expired,
    ),
    _check(
        P,
        "clock-skew",
        "Refuses a message from the future",
        "A token with iat more than 30 s in the future is refused 401 clock-skew.",
        S5,
        clock_skew,
    ),
    _check(
        P,
        "body-digest",
        "Refuses a body other than the one signed",
        "A body whose SHA-256 is not the token's bh is refused 400 body-digest-mismatch.",
        S5,
        body_digest_mismatch,
    ),
    _check(
        C,
        "signs",
        "Signs what it sends",
        "A triggered message reaches the gateway with exactly alg/typ/kid, iss the agency, "
        "aud and svc as asked, bh of the exact body, a lifetime of at most 300 s, and passes "
        "the gateway's whole order of checks.",
        "protocol.md §5, §10",
        signs,
    ),
    _check(
        C,
        "accepts-valid-answer",
        "Accepts a genuine answer",
        "A correctly signed answer with a correct receipt is reported by /trigger/send as "
        "200 with receipt_verified true, the message's jti and the answer's jti.",
        S6,
        accepts_valid_answer,
    ),
    _check(
        C,
        "fresh-jti",
        "Uses a fresh jti per message",
        "Two messages with the same body get two different jti values.",
        S8,
        fresh_jti,
    ),
    _check(
        C,
        "retry-503",
        "Retries a 503 with the same jti",
        "After 503 receiver-unavailable (Retry-After: 1) the same message (same jti and "
        "body) is sent again, no sooner than Retry-After.",
        "protocol.md §8, §9, §16",
        retry_503,
    ),
    _check(
        C,
        "retry-429",
        "Respects 429 Retry-After",
        "After 429 rate-limited (Retry-After: 1) the connector waits that long, then sends "
        "the same message again.",
        "protocol.md §9, §16",
        retry_429,
    ),
    _check(
        C,
        "refuses-forged-receipt",
        "Refuses an answer with a forged receipt",
        "An answer whose Pasarela-Receipt is signed by a key other than the gateway's makes "
        "/trigger/send answer 502.",
        "protocol.md §6, §7",
        _refuses(forge_receipt, "an answer whose receipt is not signed by the gateway"),
    ),
    _check(
        C,
        "refuses-forged-answer",
        "Refuses a forged answer",
        "An answer whose Pasarela-Signature is signed by a key other than the receiver's "
        "makes /trigger/send answer 502.",
        S6,
        _refuses(forge_answer, "an answer not signed by the receiver's key"),
    ),
    _check(
        C,
        "refuses-mismatched-answer",
        "Refuses an answer to another message",
        "An answer signed by the receiver but whose corr is another message's jti makes "
        "/trigger/send answer 502.",
        S6,
        _refuses(mismatch_answer, "an answer whose corr is not its message's jti"),
    ),
    _check(
        C,
        "problem-codes",
        "Survives every refusal",
        "For each problem code of section 10 the gateway may answer a message with, "
        "/trigger/send reports the refusal (200, from gateway, the status and type), and "
        "the connector still sends afterwards.",
        "protocol.md §10",
        problem_codes,
    ),
)

_BY_ID = {check.id: check for check in CHECKS}


def _patterns(values: Iterable[str]) -> list[str]:
    return [p.strip() for value in values for p in value.split(",") if p.strip()]


def select_checks(include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[Check]:
    """The checks named by ``--checks`` minus ``--exclude-checks`` (ids or glob patterns)."""
    chosen: list[Check] = list(CHECKS)
    wanted, unwanted = _patterns(include), _patterns(exclude)
    for pattern in [*wanted, *unwanted]:
        if not any(fnmatch.fnmatchcase(check.id, pattern) for check in CHECKS):
            known = ", ".join(_BY_ID)
            raise UsageError(f"no check matches {pattern!r}; the checks are: {known}")
    if wanted:
        chosen = [c for c in chosen if any(fnmatch.fnmatchcase(c.id, p) for p in wanted)]
    chosen = [c for c in chosen if not any(fnmatch.fnmatchcase(c.id, p) for p in unwanted)]
    if not chosen:
        raise UsageError("--checks and --exclude-checks leave no check to run")
    return chosen
