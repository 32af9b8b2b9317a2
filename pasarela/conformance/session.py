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
import dataclasses
import json
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agents.host import AgencyHost
from agents.verification import Directory, Identity, encode_json, new_message_id
from gateway.admin import conf_document
from gateway.clock import SeededRandomness, SystemClock
from gateway.detection import DetectionPolicy
from gateway.log import LogEntry, MessageLog
from gateway.pipeline import Decision, Verdict, decide
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
    b64url_decode,
    body_digest,
    problem_document,
    sign_token,
)
from gateway.registry import ConnectionState, Grant, Registry, RegistryError
from gateway.service import Gateway, GatewayConfig
from gateway.state import DEFAULT_GATEWAY_CODE
from gateway.store import read_documents
from gateway.testing import MemoryLogStore
from gateway.transport import MemoryTransport, WireRequest, WireResponse
from gateway.trust import CertificateAuthority, TrustStore, generate_key, load_private_key
from pasarela.conformance.model import (
    MISSING,
    Check,
    Exchange,
    InfrastructureError,
    UsageError,
)

__all__ = ["HEADER_TEST_CASE", "Arrival", "KitSettings", "Session"]

HEADER_TEST_CASE = "Pasarela-Test-Case"
PEER_ORIGIN = "http://peer.conformance.invalid"


@dataclass(frozen=True, slots=True, kw_only=True)
class KitSettings:
    """What ``pasarela conformance`` was asked to do."""

    connector: str  # the connector's base URL
    agency: str
    state: Path
    host: str = "127.0.0.1"  # where the kit's gateway listens
    port: int = 8700
    peer: str = "PORTAL"
    service: str = "ping"
    seed: int = 0
    timeout: float = 15.0  # per exchange with the connector
    wait: float = 0.0  # how long to wait for the connector to come up
    retry_after: int = 1  # the Retry-After the kit's 429 and 503 carry

    @property
    def gateway_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"{self.connector.rstrip('/')}/agencies/{self.agency}/messages"

    @property
    def trigger_url(self) -> str:
        return f"{self.connector.rstrip('/')}/trigger/send"


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


Action = Callable[["Session", WireRequest, Arrival], Awaitable[WireResponse]]


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


@dataclass(slots=True)
class _Loaded:
    gateway_code: str
    gateway_key: Ed25519PrivateKey
    trust: TrustStore
    registry: Registry
    peer: Identity


def _load_state(settings: KitSettings) -> _Loaded:
    """Read what the kit needs from the state directory, without writing anything."""
    root = settings.state
    database = root / "state.db"
    if not database.is_file():
        raise UsageError(f"--state {root}: not a pasarela state (no state.db; run `pasarela init`)")
    try:
        docs = read_documents(database, "config", "trust", "registry")
        config = json.loads(docs["config"])
        ca = CertificateAuthority(
            load_private_key((root / "ca" / "key.pem").read_bytes()),
            x509.load_pem_x509_certificate((root / "ca" / "cert.pem").read_bytes()),
        )
        trust = TrustStore.restore(ca, json.loads(docs["trust"]))
        registry = Registry.restore(json.loads(docs["registry"]))
        gateway_key = load_private_key((root / "gateway" / "key.pem").read_bytes())
    except KeyError as exc:
        raise UsageError(f"--state {root}: state.db has no {exc.args[0]!r} document") from exc
    except (OSError, ValueError) as exc:
        raise UsageError(f"--state {root}: cannot read the state: {exc}") from exc
    code = str(config.get("gateway_code", DEFAULT_GATEWAY_CODE))
    for who in (settings.agency, settings.peer):
        if registry.get(who) is None:
            raise UsageError(f"--state {root}: no agency {who} in its registry")
    if settings.agency == settings.peer:
        raise UsageError(f"--peer must be another agency than --agency ({settings.agency})")
    if not trust.current_keys(settings.agency):
        raise UsageError(f"--state {root}: agency {settings.agency} holds no current certificate")
    folder = root / "agencies" / settings.peer
    try:
        peer = Identity.from_files(folder / "key.pem", folder / "cert.pem")
    except (OSError, ValueError) as exc:
        detail = f"cannot read the key of the peer {settings.peer}: {exc}"
        raise UsageError(f"--state {root}: {detail}") from exc
    if peer.kid not in {record.kid for record in trust.current_keys(settings.peer)}:
        raise UsageError(
            f"--state {root}: the key in agencies/{settings.peer} is not {settings.peer}'s "
            "current certificate (pick another --peer)"
        )
    return _Loaded(code, gateway_key, trust, registry, peer)


def _prepare_registry(registry: Registry, settings: KitSettings) -> None:
    """Both parties connected, the service offered, calls allowed both ways."""
    for code, endpoint in (
        (settings.agency, settings.endpoint),
        (settings.peer, f"{PEER_ORIGIN}/agencies/{settings.peer}/messages"),
    ):
        agency = registry.require(code)
        try:
            registry.add(
                dataclasses.replace(
                    agency,
                    endpoint=endpoint,
                    services=agency.services | {settings.service},
                    state=ConnectionState.CONNECTED,
                )
            )
        except RegistryError as exc:
            raise UsageError(f"--service {settings.service}: {exc}") from exc
    registry.grant(Grant(client=settings.peer, provider=settings.agency, service=settings.service))
    registry.grant(Grant(client=settings.agency, provider=settings.peer, service=settings.service))


@dataclass(slots=True)
class _CaseLog:
    arrivals: dict[str, list[Arrival]] = field(default_factory=lambda: defaultdict(list))
    scripts: dict[str, deque[Action]] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


class Session:
    """The kit's side of one run; checks use its methods."""

    def __init__(self, settings: KitSettings) -> None:
        self.settings = settings
        loaded = _load_state(settings)
        _prepare_registry(loaded.registry, settings)
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

    async def valid_delivery(self, case: str, body: bytes | None = None) -> Exchange:
        payload = body if body is not None else self.message_body(case)
        token, claims = self.sign_request(payload)
        receipt = self.receipt(claims)
        return await self.deliver(case, body=payload, token=token, receipt=receipt, valid=True)

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
        action = script.popleft() if script else relay()
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


# -- actions of the kit's gateway -------------------------------------------------------
def relay(transform: Callable[[Session, WireResponse], WireResponse] | None = None) -> Action:
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


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
