"""One conformance run: the kit's gateway, its peer agency, and the exchanges with the connector.

The kit plays the gateway the connector is configured with. It builds a real
:class:`gateway.service.Gateway` in memory from the state directory (read only: the state
is never written), so the configuration document, the pipeline that judges the
connector's messages and the receipts are the production ones. Around it, the kit's HTTP
app answers ``POST /v1/messages`` as each check scripts it (a 503 first, a forged
receipt ...), and the kit delivers messages to the connector's endpoint itself, crafted
as each check needs (an expired token, a receipt for another message ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agents.host import AgencyHost
from agents.verification import Directory, encode_json, new_message_id
from gateway.admin import conf_document
from gateway.clock import SeededRandomness, SystemClock
from gateway.detection import DetectionPolicy
from gateway.log import LogEntry, MessageLog
from gateway.pipeline import Decision, decide
from gateway.protocol import (
    HEADER_RECEIPT,
    HEADER_SIGNATURE,
    MAX_BODY_BYTES,
    PROBLEM_CONTENT_TYPE,
    TYP_MESSAGE,
    TYP_RECEIPT,
    MessageClaims,
    ProblemCode,
    ReceiptClaims,
    body_digest,
    problem_document,
    sign_token,
)
from gateway.service import Gateway, GatewayConfig
from gateway.testing import MemoryLogStore
from gateway.transport import MemoryTransport, WireRequest
from gateway.trust import generate_key
from pasarela.conformance.actions import Action, relay, token_claims, token_header
from pasarela.conformance.kitstate import load_state, prepare_registry
from pasarela.conformance.model import (
    MISSING,
    Check,
    Exchange,
    InfrastructureError,
    KitSettings,
)

__all__ = ["HEADER_TEST_CASE", "Arrival", "KitSettings", "Sent", "Session"]

HEADER_TEST_CASE = "Pasarela-Test-Case"
PEER_ORIGIN = "http://peer.conformance.invalid"


@dataclass(frozen=True, slots=True, kw_only=True)
class Sent:
    """A delivery the kit made: what it sent (to send again) and the exchange."""

    exchange: Exchange
    body: bytes
    token: str
    receipt: str
    claims: MessageClaims


@dataclass(slots=True, kw_only=True)
class Arrival:
    """A message the connector sent to the kit's gateway."""

    exchange: Exchange
    at: float  # monotonic
    token: str | None
    header: Any  # the token's JOSE header as sent (MISSING when unreadable)
    claims: Any  # its claims as sent, unverified (MISSING when unreadable)
    body: bytes
    decision: Decision  # what the production pipeline made of it
    answer_jti: str | None = None  # the jti of the answer relayed to it, if any

    @property
    def jti(self) -> Any:
        return self.claims.get("jti", MISSING) if isinstance(self.claims, dict) else MISSING


@dataclass(slots=True)
class _CaseLog:
    arrivals: dict[str, list[Arrival]] = field(default_factory=lambda: defaultdict(list))
    scripts: dict[str, deque[Action]] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


class Session:
    """The kit's side of one run; checks use its methods."""

    def __init__(self, settings: KitSettings) -> None:
        self.settings = settings
        loaded = load_state(settings)
        prepare_registry(
            loaded.registry,
            settings,
            peer_endpoint=f"{PEER_ORIGIN}/agencies/{settings.peer}/messages",
        )
        self.clock = SystemClock()
        self.randomness = SeededRandomness(settings.seed)
        self.peer = loaded.peer
        transport = MemoryTransport()
        self.gateway = Gateway(
            config=GatewayConfig(code=loaded.gateway_code, detection=DetectionPolicy.off()),
            key=loaded.gateway_key,
            trust=loaded.trust,
            registry=loaded.registry,
            log=MessageLog(MemoryLogStore()),
            transport=transport,
            clock=self.clock,
            randomness=self.randomness,
        )
        body, _ = conf_document(self.gateway)
        self.directory = Directory.from_conf(json.loads(body))
        self.agency_kid = loaded.trust.current_keys(settings.agency)[-1].kid
        self.other_agency = next(
            (
                a.code
                for a in loaded.registry.agencies()
                if a.code not in {settings.agency, settings.peer}
            ),
            "ZZ-OTHER",
        )
        self.peer_host = AgencyHost(
            identities={self.peer.code: self.peer},
            directory=lambda: self.directory,
            clock=self.clock,
            randomness=self.randomness,
            services={settings.service: self._peer_service},
        )
        transport.mount(PEER_ORIGIN, self.peer_host.handle)
        #: A key nobody trusts, for forgeries (same kid as the impersonated party).
        self.foreign_key = generate_key(self.randomness)
        self.exchanges: list[Exchange] = []
        self.successes = 0
        self.check: Check | None = None
        self._cases = _CaseLog()
        self._case_numbers: dict[str, int] = defaultdict(int)
        self._current_case = ""
        #: What the kit's gateway does with a message no script speaks of.
        self.default_action: Action = relay()
        self._client: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    # -- lifecycle ----------------------------------------------------------------------
    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, settings: KitSettings) -> AsyncIterator[Session]:
        session = cls(settings)
        try:
            await session._start()
            yield session
        finally:
            await session._stop()

    async def _start(self) -> None:
        self._client = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
            auto_decompress=True,
        )
        app = web.Application(client_max_size=MAX_BODY_BYTES + 1024)
        app.router.add_get("/v1/conf", self._on_conf)
        app.router.add_get("/v1/health", self._on_health)
        app.router.add_post("/v1/messages", self._on_message)
        app.router.add_route("*", "/{path:.*}", self._on_other)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        try:
            await site.start()
        except OSError as exc:
            raise InfrastructureError(
                f"the kit cannot listen on {self.settings.host}:{self.settings.port} "
                f"({exc.strerror}); is a gateway running there? Choose another with --listen"
            ) from exc
        await self._preflight()

    async def _stop(self) -> None:
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _preflight(self) -> None:
        """Any HTTP answer from the connector counts; no answer at all is infrastructure."""
        assert self._client is not None
        url = self.settings.connector.rstrip("/") + "/health"
        deadline = time.monotonic() + self.settings.wait
        while True:
            try:
                async with self._client.get(
                    url,
                    timeout=aiohttp.ClientTimeout(total=5),
                    headers={HEADER_TEST_CASE: "preflight"},
                ) as response:
                    await response.read()
                    return
            except (aiohttp.ClientError, TimeoutError) as exc:
                if time.monotonic() >= deadline:
                    reason = str(exc) or type(exc).__name__
                    raise InfrastructureError(
                        f"the connector at {self.settings.connector} is unreachable: {reason}"
                    ) from exc
                await asyncio.sleep(0.2)

    # -- cases --------------------------------------------------------------------------
    def new_case(self, label: str = "") -> str:
        """A case id for the next exchange of the running check: ``<check>#<n>``."""
        check = self.check.id if self.check is not None else "baseline"
        self._case_numbers[check] += 1
        case = f"{check}#{self._case_numbers[check]}"
        return f"{case}:{label}" if label else case

    def script(self, case: str, *actions: Action) -> None:
        """How the kit's gateway answers the next messages of ``case`` (then: relay)."""
        self._cases.scripts[case] = deque(actions)

    def arrivals(self, case: str) -> list[Arrival]:
        return self._cases.arrivals.get(case, [])

    # -- the kit as sender: deliveries to the connector --------------------------------
    def new_jti(self) -> str:
        return new_message_id(self.peer.code, self.randomness)

    def sign_request(
        self,
        body: bytes,
        *,
        jti: str | None = None,
        aud: str | None = None,
        iat: int | None = None,
        lifetime: int = 60,
        bh: str | None = None,
        key: Ed25519PrivateKey | None = None,
        kid: str | None = None,
    ) -> tuple[str, MessageClaims]:
        """A message from the peer to the agency, valid unless told otherwise."""
        issued = int(self.clock.now()) if iat is None else iat
        claims = MessageClaims(
            iss=self.peer.code,
            aud=aud or self.settings.agency,
            svc=self.settings.service,
            jti=jti or self.new_jti(),
            iat=issued,
            exp=issued + lifetime,
            bh=bh or body_digest(body),
        )
        token = sign_token(
            claims.as_dict(), key or self.peer.key, kid=kid or self.peer.kid, typ=TYP_MESSAGE
        )
        return token, claims

    def receipt(
        self, claims: MessageClaims, *, jti: str | None = None, key: Ed25519PrivateKey | None = None
    ) -> str:
        """The gateway's receipt for a forwarded request (logged in the kit's log)."""
        fields = {**claims.as_dict(), "kid": self.peer.kid, "outcome": "accepted"}
        fields = {name: value for name, value in fields.items() if value is not None}
        fields.pop("iat", None)
        fields.pop("exp", None)
        record = self.gateway.log.append(
            LogEntry(kind="request", at=self.clock.now(), fields=fields)
        )
        receipt = ReceiptClaims(
            iss=self.gateway.config.code,
            jti=jti or claims.jti,
            seq=record.seq,
            lh=record.hash,
            bh=claims.bh,
            iat=int(self.clock.now()),
        )
        if key is None:
            return self.gateway.sign(receipt.as_dict(), typ=TYP_RECEIPT)
        return sign_token(receipt.as_dict(), key, kid=self.gateway.key_record.kid, typ=TYP_RECEIPT)

    def message_body(self, case: str, **extra: Any) -> bytes:
        return encode_json({"case": case, "text": "pasarela conformance", **extra})

    async def deliver(
        self,
        case: str,
        *,
        body: bytes,
        token: str | None,
        receipt: str | None,
        valid: bool = False,
    ) -> Exchange:
        """POST one delivery to the connector's endpoint, as the gateway would."""
        headers = {"Content-Type": "application/json", HEADER_TEST_CASE: case}
        if token is not None:
            headers[HEADER_SIGNATURE] = token
        if receipt is not None:
            headers[HEADER_RECEIPT] = receipt
        exchange = await self._request(case, "POST", self.settings.endpoint, headers, body)
        if valid and exchange.status is not None and 200 <= exchange.status < 300:
            self.successes += 1
        return exchange

    async def valid_delivery(self, case: str, body: bytes | None = None) -> Sent:
        """A valid message from the peer, with the gateway's receipt, delivered."""
        payload = body if body is not None else self.message_body(case)
        token, claims = self.sign_request(payload)
        receipt = self.receipt(claims)
        exchange = await self.deliver(case, body=payload, token=token, receipt=receipt, valid=True)
        return Sent(exchange=exchange, body=payload, token=token, receipt=receipt, claims=claims)

    # -- the kit as gateway: triggers and what arrives ----------------------------------
    async def trigger(self, case: str, body: Any) -> Exchange:
        """Ask the connector to send ``body`` to the peer; wait for its answer."""
        self._current_case = case
        payload = {"to": self.peer.code, "service": self.settings.service, "body": body}
        headers = {"Content-Type": "application/json", HEADER_TEST_CASE: case}
        exchange = await self._request(
            case, "POST", self.settings.trigger_url, headers, encode_json(payload)
        )
        self._current_case = ""
        answer = exchange.response_json()
        if (
            exchange.status == 200
            and isinstance(answer, dict)
            and answer.get("receipt_verified") is True
        ):
            self.successes += 1
        return exchange

    async def _request(
        self, case: str, method: str, url: str, headers: Mapping[str, str], body: bytes
    ) -> Exchange:
        assert self._client is not None
        exchange = Exchange(
            case=case,
            direction="kit->connector",
            method=method,
            url=url,
            request_headers=dict(headers),
            request_body=body,
            started=time.time(),
        )
        self.exchanges.append(exchange)
        begun = time.monotonic()
        try:
            async with self._client.request(method, url, headers=headers, data=body) as response:
                exchange.response_body = await response.read()
                exchange.status = response.status
                exchange.response_headers = dict(response.headers.items())
        except TimeoutError:
            exchange.error = f"no answer within {self.settings.timeout:g} s"
        except aiohttp.ClientError as exc:
            exchange.error = f"{type(exc).__name__}: {exc}"
        exchange.elapsed = time.monotonic() - begun
        return exchange

    async def _on_conf(self, request: web.Request) -> web.Response:
        body, signature = conf_document(self.gateway)
        return web.Response(
            body=body, content_type="application/json", headers={HEADER_SIGNATURE: signature}
        )

    async def _on_health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "kit": "pasarela conformance"})

    async def _on_other(self, request: web.Request) -> web.Response:
        """What the kit's gateway does not play (enrolment, admin): 404 as problem+json."""
        detail = f"the conformance kit does not serve {request.method} {request.path}"
        document = problem_document(ProblemCode.NOT_FOUND, detail)
        return web.Response(
            status=404, body=encode_json(document), content_type=PROBLEM_CONTENT_TYPE
        )

    async def _on_message(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers.items())
        case = self._case_of(body)
        exchange = Exchange(
            case=case,
            direction="connector->kit",
            method=request.method,
            url=str(request.url),
            request_headers=headers,
            request_body=body,
            started=time.time(),
        )
        self.exchanges.append(exchange)
        begun = time.monotonic()
        token = request.headers.get(HEADER_SIGNATURE)
        arrival = Arrival(
            exchange=exchange,
            at=begun,
            token=token,
            header=token_header(token),
            claims=token_claims(token),
            body=body,
            decision=decide(token, body, self.gateway.context()),
        )
        self._cases.arrivals[case].append(arrival)
        self._cases.arrived.set()
        wire = WireRequest(
            url=str(request.url), headers=headers, body=body, peer=request.remote or ""
        )
        script = self._cases.scripts.get(case)
        action = script.popleft() if script else self.default_action
        answer = await action(self, wire, arrival)
        exchange.status = answer.status
        exchange.response_headers = dict(answer.headers)
        exchange.response_body = answer.body
        exchange.elapsed = time.monotonic() - begun
        return web.Response(status=answer.status, headers=dict(answer.headers), body=answer.body)

    def _case_of(self, body: bytes) -> str:
        """The case a message belongs to: named in its body, else the trigger in flight."""
        try:
            value = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return self._current_case or "unexpected"
        if isinstance(value, dict) and isinstance(value.get("case"), str):
            return str(value["case"])
        return self._current_case or "unexpected"

    async def _peer_service(self, claims: MessageClaims, body: bytes) -> tuple[int, bytes]:
        return 200, encode_json({"estado": "00", "recibido": claims.jti})
