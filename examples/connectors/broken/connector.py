"""A deliberately broken agency connector: a target for the conformance kit's own tests.

It offers the API and takes the configuration of the reference connector
(``examples/connectors/python``), and breaks the protocol in the ways ``PASARELA_DEFECTS``
names (comma-separated; unset or ``all``: every defect; ``none``: none, and then it
behaves as a correct connector). Each defect is narrow: it makes exactly one check of
``pasarela conformance`` fail, named in :data:`DEFECTS`, and leaves the others passing.

Its protocol steps are written out here from :mod:`agents.verification`'s pieces
(``parse_compact``, ``verify_receipt``, ``sign_message`` ...) rather than taken from
``AgencyHost`` and ``Connector``, so that every step a defect changes is visible here. The
rest is the library's, as in the reference connector: the configuration document
(:class:`agents.conf.ConfCache`), and the settings, the trigger's answers, the log and the
aiohttp plumbing (:mod:`agents.connector_process`). Do not use it for anything else.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from agents.conf import ConfCache, ConfUnavailable
from agents.connector_process import (
    ExchangeLog,
    SendRequest,
    Settings,
    TriggerResult,
    add_env_option,
    connector_app,
    handle_delivery,
    handle_trigger,
    health_response,
    run_connector,
    settings_from_arguments,
    settings_parser,
)
from agents.host import acknowledge, ping
from agents.verification import (
    JSON_CONTENT_TYPE,
    Directory,
    Refused,
    Unreachable,
    VerificationFailed,
    new_message_id,
    retry_after_seconds,
    sign_message,
    verify_receipt,
)
from gateway import protocol
from gateway.clock import Clock, Randomness, SystemClock, SystemRandomness
from gateway.protocol import (
    HEADER_RECEIPT,
    HEADER_SIGNATURE,
    LEEWAY_SECONDS,
    TYP_MESSAGE,
    TYP_RECEIPT,
    MessageClaims,
    ProblemCode,
    ProtocolError,
    ReceiptClaims,
)
from gateway.service import problem_response
from gateway.transport import (
    HttpTransport,
    TransportError,
    WireRequest,
    WireResponse,
    header_value,
)

__all__ = ["DEFECTS", "Settings", "create_app", "main", "parse_defects", "parse_settings"]

#: Each defect, and the conformance check it makes fail (and no other).
DEFECTS: Final[dict[str, str]] = {
    "answer-typ-jwt": "provider.answer-signature",
    "wrong-corr": "provider.answer-claims",
    "fresh-answer-to-duplicate": "provider.duplicate-delivery",
    "accepts-replay": "provider.replay",
    "missing-receipt-accepted": "provider.receipt-missing",
    "receipt-signature-unchecked": "provider.receipt-forged",
    "ignores-audience": "provider.wrong-audience",
    "no-expiry-check": "provider.expired",
    "jti-from-body": "consumer.fresh-jti",
    "new-jti-on-503-retry": "consumer.retry-503",
    "ignores-429-retry-after": "consumer.retry-429",
    "receipt-unverified-on-answers": "consumer.refuses-forged-receipt",
    "answer-signature-unverified": "consumer.refuses-forged-answer",
    "crashes-on-payload-too-large": "consumer.problem-codes",
}

LIFETIME: Final = 60  # seconds, of every token it signs
ATTEMPTS: Final = 4  # sends of one message at most (as agents.connector.RetryPolicy)
MAX_RETRY_AFTER: Final = 60.0
TIMEOUT: Final = 30.0


def parse_defects(value: str | None) -> frozenset[str]:
    """``PASARELA_DEFECTS``: unset, empty or ``all`` is every defect, ``none`` none."""
    text = (value or "all").strip()
    if text == "all":
        return frozenset(DEFECTS)
    if text == "none":
        return frozenset()
    names = frozenset(name.strip() for name in text.split(",") if name.strip())
    unknown = sorted(names - DEFECTS.keys())
    if unknown:
        raise ValueError(f"unknown defect(s) {', '.join(unknown)}; known: {', '.join(DEFECTS)}")
    return names


def parse_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ
) -> tuple[Settings, frozenset[str]]:
    """Settings (as the reference connector's) and defects from flags, each defaulting to
    its environment variable."""
    parser = settings_parser(
        description="pasarela connector with deliberate defects", environ=environ
    )
    add_env_option(
        parser, "--defects", "PASARELA_DEFECTS", "comma-separated defects, all or none", environ
    )
    args = parser.parse_args(argv)
    settings = settings_from_arguments(parser, args)
    try:
        defects = parse_defects(args.defects)
    except ValueError as exc:
        parser.error(str(exc))
    return settings, defects


# -- checks, with the switches the defects turn off ----------------------------------------
def check_message(
    token: str | None,
    body: bytes,
    directory: Directory,
    *,
    part: str,
    now: float,
    signature: bool = True,
    expiry: bool = True,
) -> MessageClaims:
    """``agents.verification.verify_message``; ``signature=False`` reads the claims without
    looking up the key or checking the Ed25519 signature, ``expiry=False`` skips ``exp``."""
    if not token:
        raise VerificationFailed(part, f"no {HEADER_SIGNATURE} header", code=ProblemCode.MALFORMED)
    owner = None
    try:
        parsed = protocol.parse_compact(token, typ=TYP_MESSAGE)
        if signature:
            found = directory.agency_key(parsed.kid)
            if found is None:
                raise VerificationFailed(
                    part, f"unknown kid {parsed.kid}", code=ProblemCode.UNKNOWN_KEY
                )
            owner, key = found
            if not protocol.signature_valid(parsed, key):
                raise VerificationFailed(part, "signature does not verify")
        claims = protocol.message_claims(parsed)
    except ProtocolError as exc:
        raise VerificationFailed(part, exc.detail, code=exc.code) from exc
    if owner is not None and claims.iss != owner:
        raise VerificationFailed(
            part, f"iss {claims.iss} does not own {owner}'s key", code=ProblemCode.SENDER_MISMATCH
        )
    if claims.bh != protocol.body_digest(body):
        raise VerificationFailed(
            part, "bh does not match the body", code=ProblemCode.BODY_DIGEST_MISMATCH
        )
    if claims.iat > now + LEEWAY_SECONDS:
        raise VerificationFailed(part, "issued in the future", code=ProblemCode.CLOCK_SKEW)
    if expiry and claims.exp < now - LEEWAY_SECONDS:
        raise VerificationFailed(part, "expired", code=ProblemCode.EXPIRED)
    return claims


def check_receipt_unsigned(
    token: str | None, directory: Directory, *, jti: str, bh: str
) -> ReceiptClaims:
    """``verify_receipt`` without the Ed25519 signature: typ, kid, iss, jti, bh only."""
    part = "receipt"
    if not token:
        raise VerificationFailed(part, f"no {HEADER_RECEIPT} header", code=ProblemCode.MALFORMED)
    try:
        parsed = protocol.parse_compact(token, typ=TYP_RECEIPT)
        if parsed.kid != directory.gateway_kid:
            raise VerificationFailed(
                part, "not under the gateway's kid", code=ProblemCode.UNKNOWN_KEY
            )
        receipt = protocol.receipt_claims(parsed)
    except ProtocolError as exc:
        raise VerificationFailed(part, exc.detail, code=exc.code) from exc
    if receipt.iss != directory.gateway_code:
        raise VerificationFailed(part, f"iss {receipt.iss} is not the gateway")
    if receipt.jti != jti or receipt.bh != bh:
        raise VerificationFailed(part, f"receipts {receipt.jti}, not {jti}")
    return receipt


@dataclass(frozen=True, slots=True)
class _Sent:
    """How a send ended: the jti it used last and the gateway's final response."""

    jti: str
    response: WireResponse


# -- the connector ----------------------------------------------------------------------
class BrokenConnector:
    """One agency's connector, with ``defects`` switched on."""

    def __init__(self, settings: Settings, defects: frozenset[str]) -> None:
        unknown = sorted(defects - DEFECTS.keys())
        if unknown:
            raise ValueError(f"unknown defect(s) {', '.join(unknown)}")
        self.defects = defects
        self.identity = settings.load_identity()
        self.clock: Clock = SystemClock()
        self.randomness: Randomness = SystemRandomness()
        self.gateway_url = settings.gateway_url.rstrip("/")
        self.log = ExchangeLog(defects=sorted(defects))
        self.transport = HttpTransport()
        self.conf = ConfCache(
            gateway_url=self.gateway_url,
            ca_certificate=settings.load_ca(),
            transport=self.transport,
            clock=self.clock,
            log=self.log.event,
        )
        #: First answers by (iss, jti), or (iss, jti, bh) with accepts-replay.
        self._answers: dict[tuple[str, ...], tuple[str, float, WireResponse]] = {}

    def broken(self, defect: str) -> bool:
        return defect in self.defects

    # provider: deliveries ---------------------------------------------------------------
    async def deliver(self, request: web.Request) -> web.Response:
        code = request.match_info["code"]

        async def receive(delivery: WireRequest, directory: Directory) -> WireResponse:
            return await self._receive(code, delivery, directory)

        return await handle_delivery(request, conf=self.conf, receive=receive, log=self.log)

    async def _receive(
        self, code: str, delivery: WireRequest, directory: Directory
    ) -> WireResponse:
        """The checks of ``agents.verification.verify_inbound`` and the memory of
        ``AgencyHost``, step by step, each with its defect's switch."""
        if code != self.identity.code:
            return problem_response(ProblemCode.UNKNOWN_RECEIVER, f"no agency {code} here")
        token = header_value(delivery.headers, HEADER_SIGNATURE)
        receipt = header_value(delivery.headers, HEADER_RECEIPT)
        body = delivery.body
        now = self.clock.now()
        self._forget_before(now)
        try:
            claims = check_message(
                token,
                body,
                directory,
                part="signature",
                now=now,
                expiry=not self.broken("no-expiry-check"),
            )
            if claims.aud != self.identity.code and not self.broken("ignores-audience"):
                raise VerificationFailed("signature", f"aud {claims.aud} is not {code}")
            if receipt is None and self.broken("missing-receipt-accepted"):
                pass
            elif self.broken("receipt-signature-unchecked"):
                check_receipt_unsigned(receipt, directory, jti=claims.jti, bh=claims.bh)
            else:
                verify_receipt(receipt, directory, jti=claims.jti, bh=claims.bh, corr=None)
        except VerificationFailed as exc:
            return problem_response(exc.code, str(exc))
        key: tuple[str, ...] = (claims.iss, claims.jti)
        if self.broken("accepts-replay"):
            key = (*key, claims.bh)  # another body is another message
        known = self._answers.get(key)
        if known is not None:
            bh, _, first = known
            if bh != claims.bh:
                detail = f"{claims.iss} already used {claims.jti} with another body"
                return problem_response(ProblemCode.REPLAY, detail, jti=claims.jti)
            if not self.broken("fresh-answer-to-duplicate"):
                return first
            return await self._answer(claims, body)  # processed again, signed anew
        answer = await self._answer(claims, body)
        self._answers[key] = (claims.bh, claims.exp + LEEWAY_SECONDS, answer)
        return answer

    async def _answer(self, claims: MessageClaims, body: bytes) -> WireResponse:
        """Run the service (``ping`` echoes, any other acknowledges) and sign the answer."""
        service = ping if claims.svc == "ping" else acknowledge
        status, payload = await service(claims, body)
        jti = new_message_id(self.identity.code, self.randomness)
        corr = jti if self.broken("wrong-corr") else claims.jti
        if self.broken("answer-typ-jwt"):
            iat = int(self.clock.now())
            answer = MessageClaims(
                iss=self.identity.code,
                aud=claims.iss,
                svc=claims.svc,
                jti=jti,
                iat=iat,
                exp=iat + LIFETIME,
                bh=protocol.body_digest(payload),
                corr=corr,
            )
            token = protocol.sign_token(
                answer.as_dict(), self.identity.key, kid=self.identity.kid, typ="JWT"
            )
        else:
            token = sign_message(
                self.identity,
                to=claims.iss,
                service=claims.svc,
                body=payload,
                jti=jti,
                corr=corr,
                now=self.clock.now(),
                lifetime=LIFETIME,
            )
        headers = {HEADER_SIGNATURE: token, "Content-Type": JSON_CONTENT_TYPE}
        return WireResponse(status=status, headers=headers, body=payload)

    def _forget_before(self, now: float) -> None:
        for key in [k for k, (_, until, _) in self._answers.items() if until < now]:
            del self._answers[key]

    # consumer: /trigger/send ------------------------------------------------------------
    async def trigger(self, request: web.Request) -> web.Response:
        return await handle_trigger(request, send=self._exchange, log=self.log)

    async def _exchange(self, asked: SendRequest) -> TriggerResult:
        """``agents.connector.Connector.send``, step by step, with the defects' switches."""
        to, service, payload = asked.to, asked.service, asked.body
        jti = self._first_jti(payload)
        try:
            directory = await self.conf.directory()
            sent = await self._send(to, service, payload, jti)
        except (ConfUnavailable, Unreachable) as exc:
            return TriggerResult.unreachable(exc, jti=jti)
        jti, response = sent.jti, sent.response
        receipt = response.header(HEADER_RECEIPT)
        from_receiver = receipt is not None or (
            self.broken("receipt-unverified-on-answers")
            and response.header(HEADER_SIGNATURE) is not None
        )
        if not from_receiver:
            if response.status < 400:
                reason = f"receipt: HTTP {response.status} without a receipt"
                return TriggerResult.verification_failed(reason, jti=jti)
            refused = Refused.from_response(response, now=self.clock.now())
            if refused.code == ProblemCode.PAYLOAD_TOO_LARGE and self.broken(
                "crashes-on-payload-too-large"
            ):
                raise RuntimeError("the gateway refused the message as too large")
            return TriggerResult.refused(refused, jti=jti)
        try:
            try:
                claims = self._verify_reply(response, directory, to, service, jti)
            except VerificationFailed as exc:
                if exc.code is not ProblemCode.UNKNOWN_KEY:
                    raise
                directory = await self.conf.refetch_for_unknown_kid()
                claims = self._verify_reply(response, directory, to, service, jti)
        except VerificationFailed as exc:
            return TriggerResult.verification_failed(exc, jti=jti)
        except ConfUnavailable as exc:
            return TriggerResult.unreachable(exc, jti=jti)
        return TriggerResult.verified(
            status=response.status, body=response.body, jti=jti, answer_jti=claims.jti
        )

    def _first_jti(self, payload: bytes) -> str:
        if self.broken("jti-from-body"):
            return f"{self.identity.code}-{hashlib.sha256(payload).hexdigest()[:32]}"
        return new_message_id(self.identity.code, self.randomness)

    async def _send(self, to: str, service: str, payload: bytes, jti: str) -> _Sent:
        """Send with retries (as ``Connector``): transport errors, 503 and 429 retried with
        the same jti and body after Retry-After; the last response is returned."""
        token, expires, attempt = "", -math.inf, 0
        while True:
            attempt += 1
            last = attempt >= ATTEMPTS
            now = self.clock.now()
            if now + LIFETIME / 2 >= expires:
                token = sign_message(
                    self.identity,
                    to=to,
                    service=service,
                    body=payload,
                    jti=jti,
                    now=now,
                    lifetime=LIFETIME,
                )
                expires = int(now) + LIFETIME
            headers = {HEADER_SIGNATURE: token, "Content-Type": JSON_CONTENT_TYPE}
            request = WireRequest(
                url=f"{self.gateway_url}/v1/messages", headers=headers, body=payload
            )
            try:
                response = await self.transport.send(request, timeout=TIMEOUT)
            except TransportError as exc:
                if last:
                    raise Unreachable(f"{exc} (attempt {attempt})") from exc
                await asyncio.sleep(self._backoff(attempt))
                continue
            if last or response.status not in (429, 503) or response.header(HEADER_RECEIPT):
                return _Sent(jti, response)
            wait = retry_after_seconds(response.header("Retry-After"), self.clock.now())
            if wait is not None and wait > MAX_RETRY_AFTER:
                return _Sent(jti, response)
            if response.status == 503 and self.broken("new-jti-on-503-retry"):
                jti, expires = new_message_id(self.identity.code, self.randomness), -math.inf
            if response.status == 429 and self.broken("ignores-429-retry-after"):
                wait = 0.0
            await asyncio.sleep(wait if wait is not None else self._backoff(attempt))

    def _backoff(self, attempt: int) -> float:
        ceiling = min(5.0, 0.2 * 2.0 ** (attempt - 1))
        return ceiling * int.from_bytes(self.randomness.token_bytes(7), "big") / 2**56

    def _verify_reply(
        self, response: WireResponse, directory: Directory, to: str, service: str, jti: str
    ) -> MessageClaims:
        part = "response signature"
        claims = check_message(
            response.header(HEADER_SIGNATURE),
            response.body,
            directory,
            part=part,
            now=self.clock.now(),
            signature=not self.broken("answer-signature-unverified"),
        )
        expected = {"iss": to, "aud": self.identity.code, "svc": service, "corr": jti}
        for name, want in expected.items():
            got = getattr(claims, name)
            if got != want:
                raise VerificationFailed(part, f"{name} {got!r}, expected {want!r}")
        if not self.broken("receipt-unverified-on-answers"):
            verify_receipt(
                response.header(HEADER_RECEIPT), directory, jti=claims.jti, bh=claims.bh, corr=jti
            )
        return claims

    async def health(self, request: web.Request) -> web.Response:
        return health_response(self.identity, self.conf, defects=sorted(self.defects))

    async def aclose(self) -> None:
        await self.transport.aclose()


def create_app(settings: Settings, defects: frozenset[str] = frozenset(DEFECTS)) -> web.Application:
    """The broken connector's aiohttp application, with ``defects`` (default: all)."""
    return connector_app(BrokenConnector(settings, defects))


def main(argv: Sequence[str] | None = None) -> int:
    settings, defects = parse_settings(argv)
    log = ExchangeLog(defects=sorted(defects))
    return run_connector(settings, lambda: create_app(settings, defects), log=log)


if __name__ == "__main__":
    sys.exit(main())
