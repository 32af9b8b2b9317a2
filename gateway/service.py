"""The gateway as a service: the pipeline's effects, forwarding, receipts, operator actions.

:class:`Gateway` is the imperative shell around :func:`gateway.pipeline.decide`. It does
not know HTTP: :meth:`Gateway.relay` takes a :class:`WireRequest` and returns a
:class:`WireResponse`, so the aiohttp adapter and the in-memory transport of virtual time
run exactly the same code.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.cache import ReplayCache
from gateway.clock import Clock, Randomness
from gateway.detection import ALERT_CODES, AUTO_QUARANTINE, Alert, DetectionPolicy, Detector
from gateway.log import JSONValue, LogEntry, LogRecord, MessageLog, StoreUnavailable
from gateway.metrics import GatewayMetrics
from gateway.pipeline import Bucket, Context, Decision, Limits, Verdict, decide, decide_response
from gateway.protocol import (
    HEADER_RECEIPT,
    HEADER_SIGNATURE,
    PROBLEM_CONTENT_TYPE,
    TYP_RECEIPT,
    MessageClaims,
    ProblemCode,
    ReceiptClaims,
    problem_document,
    sign_token,
)
from gateway.registry import ConnectionState, Registry, StateEvent
from gateway.transport import (
    Transport,
    TransportError,
    WireRequest,
    WireResponse,
    header_value,
)
from gateway.trust import KeyRecord, TrustStore

__all__ = ["Gateway", "GatewayConfig", "problem_response"]

_log = structlog.get_logger("pasarela.gateway")


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    code: str = "PASARELA"
    limits: Limits = field(default_factory=Limits)
    forward_timeout: float = 10.0
    detection: DetectionPolicy = field(default_factory=DetectionPolicy)


def problem_response(
    code: ProblemCode, detail: str, *, jti: str | None = None, retry_after: float | None = None
) -> WireResponse:
    """A problem+json response (RFC 9457) for ``code``."""
    headers = {"Content-Type": PROBLEM_CONTENT_TYPE}
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    body = json.dumps(problem_document(code, detail, jti=jti)).encode()
    return WireResponse(status=code.status, headers=headers, body=body)


def _named(decision: Decision, *, response: bool) -> str:
    """The agency an alert names: the culprit, else the claimed sender (the receiver, for a
    bad answer). Naming is not blaming: only ``culprit`` counts against it."""
    if decision.culprit is not None:
        return decision.culprit
    if decision.claims is not None:
        return decision.claims.aud if response else decision.claims.iss
    return (decision.claimed or {}).get("iss", "")


def _claims_fields(claims: MessageClaims) -> dict[str, JSONValue]:
    """The claims a log record keeps: all but the times (the record has its own)."""
    fields: dict[str, JSONValue] = claims.as_dict()
    del fields["iat"], fields["exp"]
    return fields


@dataclass(slots=True)
class _Seen:
    """An accepted message, remembered until it can no longer be replayed."""

    bh: str
    exp: int
    outcome: asyncio.Future[WireResponse]


class Gateway:
    """One gateway: trust, registry, log, replay cache, rate limits, and the relay."""

    def __init__(
        self,
        *,
        config: GatewayConfig,
        key: Ed25519PrivateKey,
        trust: TrustStore,
        registry: Registry,
        log: MessageLog,
        transport: Transport,
        clock: Clock,
        randomness: Randomness,
        persist: Callable[[], Awaitable[None] | None] | None = None,
        metrics: GatewayMetrics | None = None,
        cache: ReplayCache | None = None,
    ) -> None:
        self.config = config
        self.trust = trust
        self.registry = registry
        self.log = log
        self.transport = transport
        self.clock = clock
        self.randomness = randomness
        self.metrics = metrics or GatewayMetrics()
        self.persist = persist or (lambda: None)
        self._key = key
        self._seen: dict[tuple[str, str], _Seen] = {}
        self._expiry: list[tuple[int, str, str]] = []
        self._buckets: dict[str, Bucket] = {}
        self.detector = Detector(config.detection)
        self.key_record = self._own_key()
        #: Replay memory and rate buckets shared with other replicas (None: this process's).
        self.cache = cache

    def _own_key(self) -> KeyRecord:
        public = self._key.public_key()
        for record in self.trust.records():
            if record.agency == self.config.code and record.public_key == public:
                return record
        raise ValueError(f"no certificate for gateway {self.config.code}'s key")

    def context(self) -> Context:
        """What the pure pipeline sees now."""
        return Context(
            now=self.clock.now(),
            trust=self.trust,
            registry=self.registry,
            seen=self._seen,
            # With a shared cache the buckets are global, taken after the local checks.
            buckets=self._buckets if self.cache is None else {},
            limits=self.config.limits,
        )

    # -- the relay ----------------------------------------------------------------------
    async def relay(self, request: WireRequest) -> WireResponse:
        """Handle ``POST /v1/messages``: decide, log, forward, verify the answer, relay it.

        While the log cannot be written nothing is accepted: the sender gets ``503
        store-unavailable`` (transient, not remembered: the same message may be sent again).
        """
        try:
            return await self._relay(request)
        except StoreUnavailable as exc:
            self.metrics.messages.labels("rejected", ProblemCode.STORE_UNAVAILABLE.value).inc()
            _log.warning("store_unavailable", detail=str(exc))
            return problem_response(
                ProblemCode.STORE_UNAVAILABLE,
                "the message log cannot be written now; send the same message again",
                retry_after=1.0,
            )

    async def _relay(self, request: WireRequest) -> WireResponse:
        started = self.clock.now()
        self._prune(started)
        signature = header_value(request.headers, HEADER_SIGNATURE)
        decision = decide(signature, request.body, self.context())
        if decision.bucket is not None and decision.claims is not None:
            self._buckets[decision.claims.iss] = decision.bucket
        if decision.verdict is Verdict.RETRY:
            return await self._retried(decision, request)
        if decision.verdict is Verdict.REJECT:
            response = await self.refuse(decision, kind="rejection", source=request.peer)
        elif self.cache is not None and (shared := await self._shared(decision, request)):
            response = shared
        else:
            content_type = header_value(request.headers, "Content-Type") or "application/json"
            response = await self._deliver(
                decision, signature or "", request.body, content_type=content_type
            )
        self.metrics.latency.observe(max(0.0, self.clock.now() - started))
        return response

    async def _retried(self, decision: Decision, request: WireRequest) -> WireResponse:
        """Same jti, same body: log the retry, answer with the original outcome."""
        claims = decision.claims
        assert claims is not None
        seen = self._seen[(claims.iss, claims.jti)]
        await self._log_retry(claims)
        await asyncio.wait([seen.outcome])
        if seen.outcome.cancelled():
            # The first attempt failed transiently and was forgotten: this one goes through.
            return await self._relay(request)
        return seen.outcome.result()

    async def _log_retry(self, claims: MessageClaims) -> None:
        """A retry answered with the original outcome: one ``retry`` record, durable."""
        fields = {**_claims_fields(claims), "outcome": "retried"}
        record = self.log.append(LogEntry(kind="retry", at=self.clock.now(), fields=fields))
        self.metrics.messages.labels("retried", "").inc()
        await self.log.sync(record.seq)

    async def _shared(self, decision: Decision, request: WireRequest) -> WireResponse | None:
        """Claim the message in the shared cache and take a global rate token.

        None: this replica delivers it. Otherwise the answer: the stored outcome of a retry
        (logged as one), ``409 replay``, ``429 rate-limited``, or a transient ``503`` when
        another replica still delivers it after the forwarding timeout.
        """
        cache, claims, key = self.cache, decision.claims, decision.key
        assert cache is not None
        assert claims is not None
        assert key is not None
        ttl = claims.exp + self.config.limits.leeway - self.clock.now()
        deadline = self.clock.now() + self.config.forward_timeout + 5.0
        while True:
            claim = await cache.claim(claims.iss, claims.jti, claims.bh, ttl=ttl)
            if claim.new:
                break
            if claim.bh != claims.bh:
                detail = f"{claims.iss} already used {claims.jti} with another body"
                replay = Decision(
                    verdict=Verdict.REJECT,
                    reason=ProblemCode.REPLAY,
                    detail=detail,
                    claims=claims,
                    culprit=key.agency,
                )
                return await self.refuse(replay, source=request.peer)
            if claim.outcome is not None:
                await self._log_retry(claims)
                return claim.outcome
            if self.clock.now() >= deadline:
                return problem_response(
                    ProblemCode.RECEIVER_UNAVAILABLE,
                    "another replica is still delivering this message",
                    jti=claims.jti,
                    retry_after=1.0,
                )
            await asyncio.sleep(0.05)
        limits = self.config.limits
        wait = await cache.take(
            claims.iss, rate=limits.rate_per_second, burst=limits.burst, now=self.clock.now()
        )
        if wait is None:
            return None
        await cache.release(claims.iss, claims.jti)
        limited = Decision(
            verdict=Verdict.REJECT,
            reason=ProblemCode.RATE_LIMITED,
            detail=f"{claims.iss} over {limits.rate_per_second:g} messages/s (all replicas)",
            claims=claims,
            retry_after=wait,
            culprit=key.agency,
        )
        return await self.refuse(limited, source=request.peer)

    async def _deliver(
        self, decision: Decision, signature: str, body: bytes, *, content_type: str
    ) -> WireResponse:
        claims = decision.claims
        assert claims is not None
        outcome: asyncio.Future[WireResponse] = asyncio.get_running_loop().create_future()
        self._seen[(claims.iss, claims.jti)] = _Seen(claims.bh, claims.exp, outcome)
        heapq.heappush(self._expiry, (claims.exp, claims.iss, claims.jti))
        final = False
        try:
            response, final = await self._forward(decision, signature, body, content_type)
        except StoreUnavailable:
            # What was appended reaches the store later: say there that it was not relayed.
            fields = {
                **_claims_fields(claims),
                "outcome": "rejected",
                "reason": ProblemCode.STORE_UNAVAILABLE.value,
                "detail": "the log could not be written; the sender was answered 503",
            }
            self.log.append(LogEntry(kind="delivery-failure", at=self.clock.now(), fields=fields))
            raise
        finally:
            if final:
                outcome.set_result(response)
            else:
                # A transient failure is not the message's outcome: a retry may go through.
                del self._seen[(claims.iss, claims.jti)]
                outcome.cancel()
            if self.cache is not None:
                await self._share_outcome(claims, response if final else None)
        return response

    async def _share_outcome(self, claims: MessageClaims, final: WireResponse | None) -> None:
        """Tell the other replicas how the message ended (or that a retry may deliver it).

        A cache lost meanwhile does not undo the answer, which the log holds: the claim then
        expires with the token, and retries at other replicas wait for it, then get a 503.
        """
        cache = self.cache
        assert cache is not None
        try:
            if final is None:
                await cache.release(claims.iss, claims.jti)
            else:
                ttl = claims.exp + self.config.limits.leeway - self.clock.now()
                await cache.finish(claims.iss, claims.jti, final, ttl=ttl)
        except StoreUnavailable as exc:
            _log.warning("cache_unavailable", jti=claims.jti, detail=str(exc))

    async def _forward(
        self, decision: Decision, signature: str, body: bytes, content_type: str
    ) -> tuple[WireResponse, bool]:
        """Log the request, forward it with a receipt, check and relay the answer.

        Returns the response for the sender and whether it is the message's final outcome.
        """
        claims, key = decision.claims, decision.key
        assert claims is not None
        assert key is not None
        fields = {**_claims_fields(claims), "kid": key.kid, "outcome": "accepted"}
        record = self.log.append(LogEntry(kind="request", at=self.clock.now(), fields=fields))
        receipt = self._receipt(jti=claims.jti, record=record, bh=claims.bh)
        await self.log.sync(record.seq)
        forwarded = WireRequest(
            url=self.registry.require(claims.aud).endpoint,
            headers={
                HEADER_SIGNATURE: signature,
                HEADER_RECEIPT: receipt,
                "Content-Type": content_type,
            },
            body=body,
        )
        try:
            answer = await self.transport.send(forwarded, timeout=self.config.forward_timeout)
        except TransportError as exc:
            return await self._unavailable(claims, f"{claims.aud} did not answer: {exc}"), False
        if answer.status >= 500:
            detail = f"{claims.aud} answered HTTP {answer.status}"
            return await self._unavailable(claims, detail), False
        answer_signature = answer.header(HEADER_SIGNATURE)
        checked = decide_response(answer_signature, answer.body, claims, self.context())
        if not checked.accepted:
            return await self.refuse(checked, kind="response-rejection"), True
        assert checked.claims is not None
        fields = {**_claims_fields(checked.claims), "status": answer.status}
        reply = self.log.append(LogEntry(kind="response", at=self.clock.now(), fields=fields))
        reply_receipt = self._receipt(
            jti=checked.claims.jti, record=reply, bh=checked.claims.bh, corr=claims.jti
        )
        await self.log.sync(reply.seq)
        self.metrics.messages.labels("accepted", "").inc()
        self.metrics.log_seq.set(reply.seq)
        headers = {
            HEADER_SIGNATURE: answer_signature or "",
            HEADER_RECEIPT: reply_receipt,
            "Content-Type": answer.header("Content-Type") or "application/json",
        }
        return WireResponse(status=answer.status, headers=headers, body=answer.body), True

    async def _unavailable(self, claims: MessageClaims, detail: str) -> WireResponse:
        decision = Decision(
            verdict=Verdict.REJECT,
            reason=ProblemCode.RECEIVER_UNAVAILABLE,
            detail=detail,
            claims=claims,
            retry_after=1.0,
        )
        return await self.refuse(decision, kind="delivery-failure")

    async def refuse(
        self, decision: Decision, *, kind: str = "rejection", source: str = ""
    ) -> WireResponse:
        """Log a refusal durably (and the alert it raises) and render it as problem+json."""
        assert decision.reason is not None
        fields: dict[str, JSONValue] = {}
        if decision.claims is not None:
            fields.update(_claims_fields(decision.claims))
        elif decision.claimed:
            fields.update({f"claimed_{k}": v for k, v in decision.claimed.items()})
        fields.update(
            {"outcome": "rejected", "reason": decision.reason.value, "detail": decision.detail}
        )
        record = self.log.append(LogEntry(kind=kind, at=self.clock.now(), fields=fields))
        self.metrics.messages.labels("rejected", decision.reason.value).inc()
        self.metrics.log_seq.set(record.seq)
        _log.info("message_refused", seq=record.seq, kind=kind, **fields)
        if decision.reason in ALERT_CODES:
            await self.alert(
                kind=decision.reason.value,
                agency=_named(decision, response=kind == "response-rejection"),
                attributed=decision.culprit is not None,
                detail=decision.detail,
                source=source,
                refusal=record.seq,
            )
        await self.log.sync(record.seq)
        jti = decision.claims.jti if decision.claims else None
        return problem_response(
            decision.reason, decision.detail, jti=jti, retry_after=decision.retry_after
        )

    async def alert(
        self,
        *,
        kind: str,
        agency: str,
        attributed: bool,
        detail: str,
        source: str = "",
        refusal: int | None = None,
    ) -> Alert:
        """Raise a security alert: log record, metric, feed; quarantine past a threshold."""
        detector = self.detector
        alert = detector.new_alert(
            at=self.clock.now(),
            kind=kind,
            agency=agency,
            attributed=attributed,
            detail=detail,
            source=source,
        )
        fields: dict[str, JSONValue] = {
            "alert": alert.id,
            "alert_kind": kind,
            "agency": agency,
            "attributed": attributed,
            "detail": alert.detail,
            "source": source,
        }
        if refusal is not None:
            fields["refusal"] = refusal
        record = self.log.append(LogEntry(kind="alert", at=alert.at, fields=fields))
        alert = replace(alert, seq=record.seq)
        detector.publish(alert)
        self.metrics.alerts.labels(kind).inc()
        _log.warning("security_alert", seq=record.seq, **fields)
        if detector.crossed(alert):
            await self._quarantine(alert)
        return alert

    async def _quarantine(self, cause: Alert) -> None:
        """The automatic quarantine: the agency's own key crossed a threshold."""
        agency = self.registry.get(cause.agency)
        if agency is None or agency.state not in (
            ConnectionState.CONNECTED,
            ConnectionState.VERIFIED,
        ):
            return
        reason = f"{cause.kind} past the detection threshold"
        self.registry.apply(agency.code, StateEvent.QUARANTINE, actor="detector", reason=reason)
        fields: dict[str, JSONValue] = {
            "actor": "detector",
            "action": AUTO_QUARANTINE,
            "reason": reason,
            "agency": agency.code,
            "from": agency.state.value,
            "to": ConnectionState.QUARANTINED.value,
        }
        record = self.log.append(LogEntry(kind="admin", at=self.clock.now(), fields=fields))
        persisted = self.persist()
        if persisted is not None:
            await persisted
        self.metrics.admin_actions.labels(AUTO_QUARANTINE).inc()
        self.detector.forget(agency.code)
        await self.alert(
            kind=AUTO_QUARANTINE,
            agency=agency.code,
            attributed=True,
            detail=f"quarantined (log record {record.seq}): {reason}",
        )

    def sign(self, claims: Mapping[str, object], *, typ: str) -> str:
        """A compact JWS by the gateway's key (receipts, the configuration document)."""
        return sign_token(claims, self._key, kid=self.key_record.kid, typ=typ)

    def _receipt(self, *, jti: str, record: LogRecord, bh: str, corr: str | None = None) -> str:
        claims = ReceiptClaims(
            iss=self.config.code,
            jti=jti,
            seq=record.seq,
            lh=record.hash,
            bh=bh,
            iat=int(self.clock.now()),
            corr=corr,
        )
        return self.sign(claims.as_dict(), typ=TYP_RECEIPT)

    def _prune(self, now: float) -> None:
        """Forget accepted messages whose ``exp`` (plus leeway) has passed."""
        horizon = now - self.config.limits.leeway
        expiry = self._expiry
        while expiry and expiry[0][0] < horizon:
            _, iss, jti = heapq.heappop(expiry)
            seen = self._seen.get((iss, jti))
            if seen is not None and seen.exp < horizon and seen.outcome.done():
                del self._seen[(iss, jti)]
