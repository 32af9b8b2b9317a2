"""The consumer checks: the kit asks the connector to send (``POST /trigger/send``),
answers it as the gateway, faithfully or not, and judges what it sent and reported."""

from __future__ import annotations

import json
from typing import Any

from gateway.protocol import (
    LEEWAY_SECONDS,
    ProblemCode,
    body_digest,
)
from pasarela.conformance.actions import (
    Transform,
    accepted,
    forge_answer,
    forge_receipt,
    mismatch_answer,
    refuse,
    relay,
)
from pasarela.conformance.judging import message_claims, string_other_than, token_shape
from pasarela.conformance.model import (
    Check,
    Difference,
    Exchange,
    Side,
    Violation,
    catalogue,
    differences,
)
from pasarela.conformance.session import Arrival, Session

__all__ = ["CHECKS", "PROBLEM_CODES"]

#: The refusals the consumer must survive: every problem a message may get, but the
#: retried ones (429 and the 503s: checks of their own) and those of the admin API.
PROBLEM_CODES: tuple[ProblemCode, ...] = tuple(
    code
    for code in ProblemCode
    if code
    not in {
        ProblemCode.RATE_LIMITED,
        ProblemCode.RECEIVER_UNAVAILABLE,
        ProblemCode.STORE_UNAVAILABLE,
        ProblemCode.UNAUTHENTICATED,
        ProblemCode.NOT_FOUND,
        ProblemCode.METHOD_NOT_ALLOWED,
    }
)

#: The consumer checks, in the order they run.
CHECKS: list[Check] = []
check = catalogue(Side.CONSUMER, CHECKS)


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


@check(
    "signs",
    "Signs what it sends",
    "protocol.md §5, §10",
    "A triggered message reaches the gateway with exactly alg/typ/kid, iss the agency, "
    "aud and svc as asked, bh of the exact body, a lifetime of at most 300 s, and "
    "passes the gateway's whole order of checks.",
)
async def signs(session: Session) -> None:
    case = session.new_case()
    payload = {"case": case, "text": "pasarela conformance"}
    trigger = await session.trigger(case, payload)
    (arrival, *_) = _arrived(session, case, trigger)
    agency = session.settings.agency
    kids = {r.kid for r in session.gateway.trust.current_keys(agency)}
    got = arrival.claims
    expected = {
        "header": token_shape(arrival.token or "", kids),
        "claims": message_claims(
            iss=agency,
            aud=session.peer.code,
            svc=session.settings.service,
            bh=body_digest(arrival.body),
            now=int(arrival.exchange.started),
            slack=LEEWAY_SECONDS,
            iat=got.get("iat") if isinstance(got, dict) else None,
            used=(),
        ),
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


@check(
    "accepts-valid-answer",
    "Accepts a genuine answer",
    "protocol.md §6",
    "A correctly signed answer with a correct receipt is reported by /trigger/send as "
    "200 with receipt_verified true, the message's jti and the answer's jti.",
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


@check(
    "fresh-jti",
    "Uses a fresh jti per message",
    "protocol.md §8",
    "Two messages with the same body get two different jti values.",
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
    expected = {"messages": [{"jti": jtis[0]}, {"jti": string_other_than(jtis[0])}]}
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


@check(
    "retry-503",
    "Retries a 503 with the same jti",
    "protocol.md §8, §9, §16",
    "After 503 receiver-unavailable (Retry-After: 1) the same message (same jti and "
    "body) is sent again, no sooner than Retry-After.",
)
async def retry_503(session: Session) -> None:
    await _retried(
        session,
        ProblemCode.RECEIVER_UNAVAILABLE,
        "after a 503 the same message (same jti, same body) must be sent again, "
        "no sooner than Retry-After",
    )


@check(
    "retry-429",
    "Respects 429 Retry-After",
    "protocol.md §9, §16",
    "After 429 rate-limited (Retry-After: 1) the connector waits that long, then sends "
    "the same message again.",
)
async def retry_429(session: Session) -> None:
    await _retried(
        session,
        ProblemCode.RATE_LIMITED,
        "after a 429 the connector must wait Retry-After, then send the same message",
    )


async def _refuses(session: Session, transform: Transform, what: str) -> None:
    """Let the real gateway relay, tamper with the answer, expect the trigger to answer 502."""
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


@check(
    "refuses-forged-receipt",
    "Refuses an answer with a forged receipt",
    "protocol.md §6, §7",
    "An answer whose Pasarela-Receipt is signed by a key other than the gateway's makes "
    "/trigger/send answer 502.",
)
async def refuses_forged_receipt(session: Session) -> None:
    await _refuses(session, forge_receipt, "an answer whose receipt is not signed by the gateway")


@check(
    "refuses-forged-answer",
    "Refuses a forged answer",
    "protocol.md §6",
    "An answer whose Pasarela-Signature is signed by a key other than the receiver's "
    "makes /trigger/send answer 502.",
)
async def refuses_forged_answer(session: Session) -> None:
    await _refuses(session, forge_answer, "an answer not signed by the receiver's key")


@check(
    "refuses-mismatched-answer",
    "Refuses an answer to another message",
    "protocol.md §6",
    "An answer signed by the receiver but whose corr is another message's jti makes "
    "/trigger/send answer 502.",
)
async def refuses_mismatched_answer(session: Session) -> None:
    await _refuses(session, mismatch_answer, "an answer whose corr is not its message's jti")


@check(
    "problem-codes",
    "Survives every refusal",
    "protocol.md §10",
    "For each problem code of section 10 the gateway may answer a message with, "
    "/trigger/send reports the refusal (200, from gateway, the status and type), and "
    "the connector still sends afterwards.",
)
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
