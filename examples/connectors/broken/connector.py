"""A deliberately broken agency connector: a target for the conformance kit's own tests.

It offers the API and takes the configuration of the reference connector
(``examples/connectors/python``), and breaks the protocol in the ways ``PASARELA_DEFECTS``
names (comma-separated; unset or ``all``: every defect; ``none``: none, and then it
behaves as a correct connector). Each defect is narrow: it makes exactly one check of
``pasarela conformance`` fail, named in :data:`DEFECTS`, and leaves the others passing.

It is written standalone from :mod:`agents.verification`'s pieces (``parse_compact``,
``verify_receipt``, ``sign_message`` ...) rather than on ``AgencyHost`` and ``Connector``,
so that every step a defect changes is visible here. Do not use it for anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from cryptography import x509

from agents.verification import (
    JSON_CONTENT_TYPE,
    ConnectorError,
    Directory,
    Identity,
    Refused,
    Unreachable,
    VerificationFailed,
    encode_json,
    new_message_id,
    retry_after_seconds,
    sign_message,
    verify_conf,
    verify_receipt,
)
from gateway import protocol
from gateway.clock import Clock, Randomness, SystemClock, SystemRandomness
from gateway.protocol import (
    AGENCY_CODE,
    HEADER_RECEIPT,
    HEADER_SIGNATURE,
    LEEWAY_SECONDS,
    MAX_BODY_BYTES,
    SERVICE_CODE,
    TYP_CONF,
    TYP_MESSAGE,
    TYP_RECEIPT,
    MessageClaims,
    ProblemCode,
    ProtocolError,
    ReceiptClaims,
)
from gateway.service import problem_response
from gateway.transport import HttpTransport, Transport, TransportError, WireRequest, WireResponse
from gateway.trust import TrustError

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

TEST_CASE_HEADER: Final = "Pasarela-Test-Case"
DEFAULT_PORT: Final = 8800
CLIENT_MAX_SIZE: Final = 8 * MAX_BODY_BYTES
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


# -- configuration (as the reference connector's) ----------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Where the gateway is, who this agency is, where to listen."""

    gateway_url: str  # PASARELA_GATEWAY_URL
    agency: str  # PASARELA_AGENCY
    key: Path  # PASARELA_KEY
    cert: Path  # PASARELA_CERT
    ca: Path | None = None  # PASARELA_CA
    host: str = "127.0.0.1"  # HOST
    port: int = DEFAULT_PORT  # PORT


def parse_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ
) -> tuple[Settings, frozenset[str]]:
    """Settings and defects from flags, each defaulting to its environment variable."""
    parser = argparse.ArgumentParser(
        prog="connector.py", description="pasarela connector with deliberate defects"
    )
    options = [
        ("--gateway-url", "PASARELA_GATEWAY_URL"),
        ("--agency", "PASARELA_AGENCY"),
        ("--key", "PASARELA_KEY"),
        ("--cert", "PASARELA_CERT"),
        ("--ca", "PASARELA_CA"),
        ("--host", "HOST"),
        ("--port", "PORT"),
        ("--defects", "PASARELA_DEFECTS"),
    ]
    for flag, variable in options:
        parser.add_argument(flag, default=environ.get(variable) or None, help=f"${variable}")
    args = parser.parse_args(argv)
    missing = [flag for flag, _ in options[:4] if not getattr(args, flag[2:].replace("-", "_"))]
    if missing:
        parser.error(f"missing: {', '.join(missing)}")
    try:
        defects = parse_defects(args.defects)
        port = int(args.port) if args.port else DEFAULT_PORT
    except ValueError as exc:
        parser.error(str(exc))
    settings = Settings(
        gateway_url=args.gateway_url,
        agency=args.agency,
        key=Path(args.key),
        cert=Path(args.cert),
        ca=Path(args.ca) if args.ca else None,
        host=args.host or "127.0.0.1",
        port=port,
    )
    return settings, defects


def log(event: str, **fields: Any) -> None:
    record = {"at": round(time.time(), 3), "event": event, **fields}
    sys.stderr.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
    sys.stderr.flush()


# -- the configuration document (as the reference connector's) ----------------------------
class ConfUnavailable(ConnectorError):
    """The configuration document could not be fetched, or did not verify."""


class GatewayConf:
    """The gateway's configuration document, fetched lazily, refetched before ``exp``
    and (at most once a second) for an unknown ``kid``."""

    def __init__(
        self, *, gateway_url: str, ca: x509.Certificate | None, transport: Transport, clock: Clock
    ) -> None:
        self._url = f"{gateway_url.rstrip('/')}/v1/conf"
        self._ca = ca
        self._transport = transport
        self._clock = clock
        self._directory: Directory | None = None
        self._refresh_at = -math.inf
        self._valid_until = -math.inf
        self._forced_at = -math.inf
        self._lock = asyncio.Lock()

    @property
    def loaded(self) -> bool:
        return self._directory is not None

    async def directory(self) -> Directory:
        if self._clock.now() >= self._refresh_at:
            async with self._lock:
                if self._clock.now() >= self._refresh_at:
                    await self._fetch()
        assert self._directory is not None
        return self._directory

    async def refetch_for_unknown_kid(self) -> Directory:
        async with self._lock:
            if time.monotonic() - self._forced_at >= 1.0:
                self._forced_at = time.monotonic()
                await self._fetch()
        assert self._directory is not None
        return self._directory

    async def _fetch(self) -> None:
        now = self._clock.now()
        try:
            response = await self._transport.send(
                WireRequest(method="GET", url=self._url), timeout=5
            )
            if response.status != 200:
                raise ConfUnavailable(f"GET {self._url} answered HTTP {response.status}")
            signature = response.header(HEADER_SIGNATURE) or ""
            directory = verify_conf(
                body=response.body,
                signature=signature,
                now=now,
                ca_certificate=self._ca,
                pinned_key=self._directory.gateway_key if self._directory else None,
            )
            exp = protocol.parse_compact(signature, typ=TYP_CONF).claims.get("exp")
        except (TransportError, VerificationFailed, ConfUnavailable, ProtocolError) as exc:
            if self._directory is not None and now <= self._valid_until:
                self._refresh_at = now + 1.0
                return
            raise ConfUnavailable(f"configuration document unavailable: {exc}") from exc
        if not isinstance(exp, int) or isinstance(exp, bool):
            exp = int(now) + 300
        self._directory = directory
        self._valid_until = exp + LEEWAY_SECONDS
        self._refresh_at = max(now + 1.0, min(exp - 60.0, now + 300.0))


def _unverified_kid(token: str | None) -> str | None:
    try:
        header = json.loads(protocol.b64url_decode((token or "").split(".", 1)[0]))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    kid = header.get("kid") if isinstance(header, dict) else None
    return kid if isinstance(kid, str) and kid else None


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
        identity = Identity.from_files(settings.key, settings.cert)
        if identity.code != settings.agency:
            raise ValueError(f"{settings.cert} certifies {identity.code}, not {settings.agency}")
        ca = x509.load_pem_x509_certificate(settings.ca.read_bytes()) if settings.ca else None
        self.defects = defects
        self.identity = identity
        self.clock: Clock = SystemClock()
        self.randomness: Randomness = SystemRandomness()
        self.gateway_url = settings.gateway_url.rstrip("/")
        self.transport = HttpTransport()
        self.conf = GatewayConf(
            gateway_url=self.gateway_url, ca=ca, transport=self.transport, clock=self.clock
        )
        #: First answers by (iss, jti), or (iss, jti, bh) with accepts-replay.
        self._answers: dict[tuple[str, ...], tuple[str, float, WireResponse]] = {}

    def broken(self, defect: str) -> bool:
        return defect in self.defects

    # provider: deliveries ---------------------------------------------------------------
    async def deliver(self, request: web.Request) -> web.Response:
        body = await request.read()
        answer = await self._receive(request.match_info["code"], request.headers, body)
        claims = _unverified_claims(request.headers.get(HEADER_SIGNATURE))
        log(
            "delivery",
            case=request.headers.get(TEST_CASE_HEADER),
            iss=claims.get("iss"),
            jti=claims.get("jti"),
            status=answer.status,
            defects=sorted(self.defects),
        )
        return web.Response(status=answer.status, headers=dict(answer.headers), body=answer.body)

    async def _receive(self, code: str, headers: Mapping[str, str], body: bytes) -> WireResponse:
        if code != self.identity.code:
            return problem_response(ProblemCode.UNKNOWN_RECEIVER, f"no agency {code} here")
        if len(body) > MAX_BODY_BYTES:
            return problem_response(ProblemCode.PAYLOAD_TOO_LARGE, "body over 1 MiB")
        token, receipt = headers.get(HEADER_SIGNATURE), headers.get(HEADER_RECEIPT)
        try:
            directory = await self.conf.directory()
            sender, receipt_kid = _unverified_kid(token), _unverified_kid(receipt)
            if (sender is not None and directory.agency_key(sender) is None) or (
                receipt_kid is not None and receipt_kid != directory.gateway_kid
            ):
                directory = await self.conf.refetch_for_unknown_kid()
        except ConfUnavailable as exc:
            return problem_response(ProblemCode.RECEIVER_UNAVAILABLE, str(exc), retry_after=1)
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
            return self._answer(claims, body)  # processed again, signed anew
        answer = self._answer(claims, body)
        self._answers[key] = (claims.bh, claims.exp + LEEWAY_SECONDS, answer)
        return answer

    def _answer(self, claims: MessageClaims, body: bytes) -> WireResponse:
        """Run the service (``ping`` echoes, any other acknowledges) and sign the answer."""
        if claims.svc == "ping":
            payload = body
        else:
            payload = encode_json({"estado": "00", "recibido": claims.jti})
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
        return WireResponse(status=200, headers=headers, body=payload)

    def _forget_before(self, now: float) -> None:
        for key in [k for k, (_, until, _) in self._answers.items() if until < now]:
            del self._answers[key]

    # consumer: /trigger/send ------------------------------------------------------------
    async def trigger(self, request: web.Request) -> web.Response:
        case = request.headers.get(TEST_CASE_HEADER)
        asked = _trigger_request(await request.read())
        if isinstance(asked, str):
            log("send", case=case, outcome="bad-trigger", error=asked)
            return web.json_response({"error": asked}, status=400)
        to, service, payload = asked
        try:
            status, result = await self._exchange(to, service, payload)
        except Exception as exc:
            log("send", case=case, to=to, service=service, outcome="crash", error=repr(exc))
            raise  # aiohttp answers 500
        log(
            "send",
            case=case,
            to=to,
            service=service,
            jti=result.get("jti"),
            status=status,
            outcome=result.get("from", "receiver") if status == 200 else result.get("error"),
            answer_status=result.get("status"),
            reason=result.get("reason"),
            defects=sorted(self.defects),
        )
        return web.json_response(result, status=status)

    async def _exchange(self, to: str, service: str, payload: bytes) -> tuple[int, dict[str, Any]]:
        jti = self._first_jti(payload)
        try:
            directory = await self.conf.directory()
            sent = await self._send(to, service, payload, jti)
        except (ConfUnavailable, Unreachable) as exc:
            return 503, {"error": "gateway unreachable", "reason": str(exc)}
        jti, response = sent.jti, sent.response
        receipt = response.header(HEADER_RECEIPT)
        from_receiver = receipt is not None or (
            self.broken("receipt-unverified-on-answers")
            and response.header(HEADER_SIGNATURE) is not None
        )
        if not from_receiver:
            if response.status < 400:
                reason = f"receipt: HTTP {response.status} without a receipt"
                return 502, {"error": "verification failed", "reason": reason, "jti": jti}
            refused = Refused.from_response(response, now=self.clock.now())
            if refused.code == ProblemCode.PAYLOAD_TOO_LARGE and self.broken(
                "crashes-on-payload-too-large"
            ):
                raise RuntimeError("the gateway refused the message as too large")
            return 200, {
                "status": refused.status,
                "body": dict(refused.problem) if refused.problem else refused.detail,
                "receipt_verified": False,
                "from": "gateway",
                "jti": jti,
            }
        try:
            try:
                claims = self._verify_reply(response, directory, to, service, jti)
            except VerificationFailed as exc:
                if exc.code is not ProblemCode.UNKNOWN_KEY:
                    raise
                directory = await self.conf.refetch_for_unknown_kid()
                claims = self._verify_reply(response, directory, to, service, jti)
        except VerificationFailed as exc:
            return 502, {"error": "verification failed", "reason": str(exc), "jti": jti}
        except ConfUnavailable as exc:
            return 503, {"error": "gateway unreachable", "reason": str(exc)}
        return 200, {
            "status": response.status,
            "body": _decoded(response.body),
            "receipt_verified": True,
            "jti": jti,
            "answer_jti": claims.jti,
        }

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
        return web.json_response(
            {
                "status": "ok",
                "agency": self.identity.code,
                "kid": self.identity.kid,
                "conf": "loaded" if self.conf.loaded else "not fetched yet",
                "defects": sorted(self.defects),
            }
        )


def _trigger_request(raw: bytes) -> tuple[str, str, bytes] | str:
    try:
        asked = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        asked = None
    if not isinstance(asked, dict) or not {"to", "service", "body"} <= asked.keys():
        return 'expected a JSON object {"to", "service", "body"}'
    to, service = asked["to"], asked["service"]
    if not isinstance(to, str) or not AGENCY_CODE.fullmatch(to):
        return '"to" must be an agency code'
    if not isinstance(service, str) or not SERVICE_CODE.fullmatch(service):
        return '"service" must be a service code'
    return to, service, encode_json(asked["body"])


def _decoded(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return body.decode("utf-8", errors="replace")


def _unverified_claims(token: str | None) -> dict[str, Any]:
    try:
        claims = json.loads(protocol.b64url_decode((token or "").split(".")[1]))
    except (ValueError, IndexError, UnicodeDecodeError, RecursionError):
        return {}
    return claims if isinstance(claims, dict) else {}


def create_app(settings: Settings, defects: frozenset[str] = frozenset(DEFECTS)) -> web.Application:
    """The broken connector's aiohttp application, with ``defects`` (default: all)."""
    connector = BrokenConnector(settings, defects)
    app = web.Application(client_max_size=CLIENT_MAX_SIZE)
    app.router.add_post("/agencies/{code}/messages", connector.deliver)
    app.router.add_post("/trigger/send", connector.trigger)
    app.router.add_get("/health", connector.health)

    async def close(_: web.Application) -> None:
        await connector.transport.aclose()

    app.on_cleanup.append(close)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    settings, defects = parse_settings(argv)
    try:
        app = create_app(settings, defects)
    except (OSError, ValueError, TrustError) as exc:
        sys.stderr.write(f"connector: {exc}\n")
        return 2
    log(
        "listening",
        agency=settings.agency,
        url=f"http://{settings.host}:{settings.port}/agencies/{settings.agency}/messages",
        gateway=settings.gateway_url,
        defects=sorted(defects),
    )
    web.run_app(app, host=settings.host, port=settings.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
