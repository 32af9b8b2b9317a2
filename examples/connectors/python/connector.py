"""The reference agency connector in Python, built from pasarela's own library.

One process, one agency, the HTTP API of ``docs/openapi/connector.yaml``:

- ``POST /agencies/{code}/messages``: deliveries from the gateway, handled by
  :class:`agents.host.AgencyHost` (the sender's token and the gateway's receipt verified
  against the gateway's configuration document, ``(iss, jti)`` remembered until
  ``exp`` + 30 s, a duplicate delivery answered with the first answer byte for byte, the
  same ``jti`` with another body refused as ``replay``, answers signed by the agency);
- ``POST /trigger/send`` ``{"to", "service", "body"}``: sends one message through the
  gateway with :class:`agents.connector.Connector` (a fresh ``jti``, the same ``jti`` on
  every retry, ``Retry-After`` honoured on 429 and 503, the answer's signature and the
  gateway's receipt verified);
- ``GET /health``.

The configuration document (``GET {gateway}/v1/conf``) is fetched when first needed (the
gateway may start after the connector), verified against the platform CA, fetched again
before its signature expires and when a ``kid`` is unknown (at most once a second).

Configuration: the environment variables of the JavaScript connector (``PASARELA_GATEWAY_URL``,
``PASARELA_AGENCY``, ``PASARELA_KEY``, ``PASARELA_CERT``, ``PASARELA_CA``, ``PORT``,
``HOST``) or the command-line flags of the same meaning (``--help``).
"""

from __future__ import annotations

import argparse
import asyncio
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

from agents.connector import Connector
from agents.host import AgencyHost, ServiceHandler, ping
from agents.verification import (
    ConnectorError,
    Directory,
    Identity,
    Refused,
    Unreachable,
    VerificationFailed,
    encode_json,
    verify_conf,
)
from gateway import protocol
from gateway.clock import Clock, SystemClock, SystemRandomness
from gateway.protocol import (
    AGENCY_CODE,
    HEADER_RECEIPT,
    HEADER_SIGNATURE,
    LEEWAY_SECONDS,
    MAX_BODY_BYTES,
    SERVICE_CODE,
    TYP_CONF,
    MessageClaims,
    ProblemCode,
    ProtocolError,
)
from gateway.service import problem_response
from gateway.transport import (
    HttpTransport,
    Transport,
    TransportError,
    WireRequest,
    WireResponse,
)
from gateway.trust import TrustError

__all__ = [
    "TEST_CASE_HEADER",
    "ConfUnavailable",
    "GatewayConf",
    "Settings",
    "create_app",
    "main",
    "parse_settings",
]

#: Sent by a conformance kit on every request; logged so logs match its test cases.
TEST_CASE_HEADER: Final = "Pasarela-Test-Case"
DEFAULT_PORT: Final = 8800
#: Triggers may carry bodies over 1 MiB (the gateway then refuses them as too large).
CLIENT_MAX_SIZE: Final = 8 * MAX_BODY_BYTES


# -- configuration ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Where the gateway is, who this agency is, where to listen."""

    gateway_url: str  # PASARELA_GATEWAY_URL
    agency: str  # PASARELA_AGENCY: the CN of the certificate
    key: Path  # PASARELA_KEY: Ed25519 private key, PEM PKCS#8
    cert: Path  # PASARELA_CERT: the agency's certificate, PEM
    ca: Path | None = None  # PASARELA_CA: the platform CA certificate, PEM
    host: str = "127.0.0.1"  # HOST
    port: int = DEFAULT_PORT  # PORT


def parse_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ
) -> Settings:
    """Settings from command-line flags, each defaulting to its environment variable."""
    parser = argparse.ArgumentParser(
        prog="connector.py", description="pasarela reference agency connector (Python)"
    )
    options: list[tuple[str, str, str]] = [
        ("--gateway-url", "PASARELA_GATEWAY_URL", "the gateway's base URL"),
        ("--agency", "PASARELA_AGENCY", "this agency's code (the certificate's CN)"),
        ("--key", "PASARELA_KEY", "the agency's Ed25519 private key (PEM PKCS#8)"),
        ("--cert", "PASARELA_CERT", "the agency's certificate (PEM)"),
        ("--ca", "PASARELA_CA", "the platform CA certificate (PEM; optional)"),
        ("--host", "HOST", "the address to listen on (default 127.0.0.1)"),
        ("--port", "PORT", f"the port to listen on (default {DEFAULT_PORT})"),
    ]
    for flag, variable, meaning in options:
        parser.add_argument(
            flag, default=environ.get(variable) or None, help=f"{meaning}; ${variable}"
        )
    args = parser.parse_args(argv)
    missing = [
        f"{flag} (${var})"
        for flag, var, _ in options[:4]
        if not getattr(args, flag[2:].replace("-", "_"))
    ]
    if missing:
        parser.error(f"missing: {', '.join(missing)}")
    try:
        port = int(args.port) if args.port else DEFAULT_PORT
    except ValueError:
        parser.error(f"--port/$PORT: not a number: {args.port!r}")
    return Settings(
        gateway_url=args.gateway_url,
        agency=args.agency,
        key=Path(args.key),
        cert=Path(args.cert),
        ca=Path(args.ca) if args.ca else None,
        host=args.host or "127.0.0.1",
        port=port,
    )


def log(event: str, **fields: Any) -> None:
    """One JSON line on stderr per event (one per exchange)."""
    record = {"at": round(time.time(), 3), "event": event, **fields}
    sys.stderr.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
    sys.stderr.flush()


# -- the gateway's configuration document (protocol.md section 11) -----------------------
class ConfUnavailable(ConnectorError):
    """The configuration document could not be fetched, or did not verify."""


class GatewayConf:
    """The gateway's signed configuration document: fetched lazily, kept current.

    :meth:`directory` fetches it when there is none yet or when it is due (a minute before
    its signature's ``exp``, at least every five minutes); :meth:`refetch_for_unknown_kid`
    fetches it again at most once a second. A fetch that fails keeps the last document
    while its signature is still valid (``exp`` + 30 s).
    """

    def __init__(
        self,
        *,
        gateway_url: str,
        ca: x509.Certificate | None,
        transport: Transport,
        clock: Clock,
        timeout: float = 5.0,
    ) -> None:
        self._url = f"{gateway_url.rstrip('/')}/v1/conf"
        self._ca = ca
        self._transport = transport
        self._clock = clock
        self._timeout = timeout
        self._directory: Directory | None = None
        self._refresh_at = -math.inf
        self._valid_until = -math.inf
        self._forced_at = -math.inf  # time.monotonic() of the last refetch for a kid
        self._lock = asyncio.Lock()

    @property
    def loaded(self) -> bool:
        return self._directory is not None

    def current(self) -> Directory:
        """The last verified directory (for the agency host's synchronous lookups)."""
        if self._directory is None:
            raise ConfUnavailable("the configuration document has not been fetched yet")
        return self._directory

    async def directory(self) -> Directory:
        """A directory fresh enough to use; fetches when there is none or it is due."""
        if self._clock.now() >= self._refresh_at:
            async with self._lock:
                if self._clock.now() >= self._refresh_at:
                    await self._fetch()
        return self.current()

    async def refetch_for_unknown_kid(self) -> Directory:
        """Fetch again because a ``kid`` is unknown, at most once a second (forged kids
        must not make the connector hammer the gateway)."""
        async with self._lock:
            if time.monotonic() - self._forced_at >= 1.0:
                self._forced_at = time.monotonic()
                await self._fetch()
        return self.current()

    async def _fetch(self) -> None:
        now = self._clock.now()
        try:
            response = await self._transport.send(
                WireRequest(method="GET", url=self._url), timeout=self._timeout
            )
            if response.status != 200:
                raise ConfUnavailable(f"GET {self._url} answered HTTP {response.status}")
            signature = response.header(HEADER_SIGNATURE)
            pinned = self._directory.gateway_key if self._directory is not None else None
            directory = verify_conf(
                body=response.body,
                signature=signature,
                now=now,
                ca_certificate=self._ca,
                pinned_key=pinned,  # without a CA: the first gateway key seen (TOFU)
            )
            exp = _conf_exp(signature or "", now)
        except (TransportError, VerificationFailed, ConfUnavailable) as exc:
            if self._directory is not None and now <= self._valid_until:
                self._refresh_at = now + 1.0  # keep the last one for now, try again soon
                log("conf-refresh-failed", reason=str(exc))
                return
            raise ConfUnavailable(f"configuration document unavailable: {exc}") from exc
        self._directory = directory
        self._valid_until = exp + LEEWAY_SECONDS
        self._refresh_at = max(now + 1.0, min(exp - 60.0, now + 300.0))
        log("conf", gateway=directory.gateway_code, certificates=len(directory), exp=exp)


def _conf_exp(signature: str, now: float) -> int:
    """The ``exp`` of the document's signature (verified by now); five minutes if absent."""
    try:
        exp = protocol.parse_compact(signature, typ=TYP_CONF).claims.get("exp")
    except ProtocolError:
        exp = None
    return exp if isinstance(exp, int) and not isinstance(exp, bool) else int(now) + 300


def unverified_kid(token: str | None) -> str | None:
    """The ``kid`` a compact JWS claims, read without any check (None when unreadable)."""
    if not token:
        return None
    try:
        header = json.loads(protocol.b64url_decode(token.split(".", 1)[0]))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    kid = header.get("kid") if isinstance(header, dict) else None
    return kid if isinstance(kid, str) and kid else None


# -- services ---------------------------------------------------------------------------
async def acknowledge(claims: MessageClaims, body: bytes) -> tuple[int, bytes]:
    """Every service but ``ping``: acknowledge receipt of the message."""
    return 200, encode_json({"estado": "00", "recibido": claims.jti})


class _Services(dict[str, ServiceHandler]):
    """``ping`` (an echo), and :func:`acknowledge` under any other service name."""

    def get(self, key: str, default: object = None) -> ServiceHandler:
        return super().get(key) or acknowledge


class _Host(AgencyHost):
    """The library's agency host, offering every service the gateway delivers."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        # AgencyHost copies the services it is given into a plain dict; this one answers
        # any service name (the gateway only delivers services the agency offers).
        self._services = _Services(ping=ping)


class _Client(Connector):
    """The library's connector, taking its keys from the shared :class:`GatewayConf`."""

    def __init__(self, *, conf: GatewayConf, **options: Any) -> None:
        super().__init__(**options)
        self._conf = conf

    async def _ensure_directory(self) -> Directory:
        # Where Connector.send takes its keys before each message: kept current here.
        return await self._conf.directory()

    async def fetch_conf(self) -> Directory:
        # Where Connector.send goes when the answer's kid is unknown: refetch, rate-limited.
        return await self._conf.refetch_for_unknown_kid()


# -- the application --------------------------------------------------------------------
class ReferenceConnector:
    """The HTTP handlers of one agency's connector."""

    def __init__(self, settings: Settings) -> None:
        identity = Identity.from_files(settings.key, settings.cert)
        if identity.code != settings.agency:
            raise ValueError(
                f"{settings.cert} certifies {identity.code}, not the agency {settings.agency}"
            )
        ca = x509.load_pem_x509_certificate(settings.ca.read_bytes()) if settings.ca else None
        clock, randomness = SystemClock(), SystemRandomness()
        self.identity = identity
        self.transport = HttpTransport()
        self.conf = GatewayConf(
            gateway_url=settings.gateway_url, ca=ca, transport=self.transport, clock=clock
        )
        self.host = _Host(
            identities={identity.code: identity},
            directory=self.conf.current,
            clock=clock,
            randomness=randomness,
        )
        self.client = _Client(
            conf=self.conf,
            identity=identity,
            gateway_url=settings.gateway_url,
            clock=clock,
            randomness=randomness,
            transport=self.transport,
        )

    # provider ---------------------------------------------------------------------------
    async def deliver(self, request: web.Request) -> web.Response:
        body = await request.read()
        if len(body) > MAX_BODY_BYTES:
            answer = problem_response(ProblemCode.PAYLOAD_TOO_LARGE, "body over 1 MiB")
        else:
            try:
                await self._keys_for(request.headers)
            except ConfUnavailable as exc:
                answer = problem_response(ProblemCode.RECEIVER_UNAVAILABLE, str(exc), retry_after=1)
            else:
                answer = await self.host.handle(
                    WireRequest(
                        method=request.method,
                        url=str(request.url),
                        headers=dict(request.headers),
                        body=body,
                    )
                )
        _log_delivery(request, body, answer)
        return web.Response(status=answer.status, headers=dict(answer.headers), body=answer.body)

    async def _keys_for(self, headers: Mapping[str, str]) -> None:
        """Make sure the directory is current and knows the kids the delivery names."""
        directory = await self.conf.directory()
        sender, receipt = (
            unverified_kid(headers.get(h)) for h in (HEADER_SIGNATURE, HEADER_RECEIPT)
        )
        if (sender is not None and directory.agency_key(sender) is None) or (
            receipt is not None and receipt != directory.gateway_kid
        ):
            await self.conf.refetch_for_unknown_kid()

    # consumer ---------------------------------------------------------------------------
    async def trigger(self, request: web.Request) -> web.Response:
        case = request.headers.get(TEST_CASE_HEADER)
        asked = _trigger_request(await request.read())
        if isinstance(asked, str):
            log("send", case=case, outcome="bad-trigger", error=asked)
            return web.json_response({"error": asked}, status=400)
        to, service, payload = asked
        jti = self.client.new_jti()
        status, result = await self._send(to, service, payload, jti)
        log(
            "send",
            case=case,
            to=to,
            service=service,
            jti=jti,
            status=status,
            outcome=result.get("from", "receiver") if status == 200 else result.get("error"),
            answer_status=result.get("status"),
            reason=result.get("reason"),
        )
        return web.json_response(result, status=status)

    async def _send(
        self, to: str, service: str, payload: bytes, jti: str
    ) -> tuple[int, dict[str, Any]]:
        try:
            reply = await self.client.send(to=to, service=service, body=payload, jti=jti)
        except Refused as exc:  # an unsigned problem document: the gateway's refusal
            body: Any = dict(exc.problem) if exc.problem else exc.detail
            return 200, {
                "status": exc.status,
                "body": body,
                "receipt_verified": False,
                "from": "gateway",
                "jti": jti,
            }
        except VerificationFailed as exc:
            return 502, {"error": "verification failed", "reason": str(exc), "jti": jti}
        except (Unreachable, ConfUnavailable) as exc:
            return 503, {"error": "gateway unreachable", "reason": str(exc)}
        return 200, {
            "status": reply.status,
            "body": _decoded(reply.body),
            "receipt_verified": True,
            "jti": reply.jti,
            "answer_jti": reply.claims.jti,
        }

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "status": "ok",
                "agency": self.identity.code,
                "kid": self.identity.kid,
                "conf": "loaded" if self.conf.loaded else "not fetched yet",
            }
        )


def _trigger_request(raw: bytes) -> tuple[str, str, bytes] | str:
    """``(to, service, body bytes)`` of a trigger, or what is wrong with it."""
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
    """An answer body as JSON when it is JSON, else as text."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return body.decode("utf-8", errors="replace")


def _log_delivery(request: web.Request, body: bytes, answer: WireResponse) -> None:
    claims = _unverified_claims(request.headers.get(HEADER_SIGNATURE))
    problem = None
    if answer.status >= 400:
        document = _decoded(answer.body)
        if isinstance(document, dict):
            problem = str(document.get("type", "")).removeprefix("urn:pasarela:problem:")
    log(
        "delivery",
        case=request.headers.get(TEST_CASE_HEADER),
        iss=claims.get("iss"),
        jti=claims.get("jti"),
        svc=claims.get("svc"),
        bytes=len(body),
        status=answer.status,
        problem=problem,
    )


def _unverified_claims(token: str | None) -> dict[str, Any]:
    try:
        claims = json.loads(protocol.b64url_decode((token or "").split(".")[1]))
    except (ValueError, IndexError, UnicodeDecodeError, RecursionError):
        return {}
    return claims if isinstance(claims, dict) else {}


def create_app(settings: Settings) -> web.Application:
    """The connector's aiohttp application (credentials are read now; the gateway is not
    contacted until a delivery or a trigger needs its configuration document)."""
    connector = ReferenceConnector(settings)
    app = web.Application(client_max_size=CLIENT_MAX_SIZE)
    app.router.add_post("/agencies/{code}/messages", connector.deliver)
    app.router.add_post("/trigger/send", connector.trigger)
    app.router.add_get("/health", connector.health)

    async def close(_: web.Application) -> None:
        await connector.transport.aclose()

    app.on_cleanup.append(close)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_settings(argv)
    try:
        app = create_app(settings)
    except (OSError, ValueError, TrustError) as exc:
        sys.stderr.write(f"connector: {exc}\n")
        return 2
    log(
        "listening",
        agency=settings.agency,
        url=f"http://{settings.host}:{settings.port}/agencies/{settings.agency}/messages",
        gateway=settings.gateway_url,
    )
    web.run_app(app, host=settings.host, port=settings.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
