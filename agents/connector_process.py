"""The plumbing of a connector process: one agency's connector run as a service of its own.

Such a process offers the HTTP API of ``docs/openapi/connector.yaml``: deliveries from
the gateway at ``POST /agencies/{code}/messages``, ``POST /trigger/send`` (a test asks it
to send a message as its agency) and ``GET /health``. The protocol work is done elsewhere
(:class:`agents.host.AgencyHost` receives, :class:`agents.connector.Connector` sends,
:class:`agents.conf.ConfCache` keeps the keys); this module has what is left, the same for
every such process:

- :class:`Settings` and :func:`parse_settings`: the environment variables
  (``PASARELA_GATEWAY_URL``, ``PASARELA_AGENCY``, ``PASARELA_KEY``, ``PASARELA_CERT``,
  ``PASARELA_CA``, ``HOST``, ``PORT``) and the command-line flags of the same meaning;
- :func:`parse_trigger` (a :class:`SendRequest`, or :class:`BadTrigger`) and
  :class:`TriggerResult`, the answers of ``POST /trigger/send`` as the OpenAPI document
  describes them (200 verified, 200 from the gateway, 502, 503, 400), with
  :func:`send_for_trigger` mapping a :class:`~agents.connector.Connector` send onto them;
- :class:`ExchangeLog`: one JSON line on stderr per exchange (``delivery``, ``send``),
  with the ``Pasarela-Test-Case`` request header as ``case``;
- :func:`handle_delivery`, :func:`handle_trigger`, :func:`health_response`,
  :func:`connector_app` (over a :class:`ConnectorHandlers`) and :func:`run_connector`: the
  aiohttp side.

The example connectors (``examples/connectors/python`` and ``examples/connectors/broken``)
are built from these pieces.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, TextIO

from aiohttp import web
from cryptography import x509

from agents.conf import ConfCache, ConfUnavailable
from agents.connector import Connector
from agents.verification import (
    Directory,
    Identity,
    Refused,
    Unreachable,
    VerificationFailed,
    encode_json,
)
from gateway import protocol
from gateway.clock import Clock, SystemClock
from gateway.protocol import (
    AGENCY_CODE,
    HEADER_RECEIPT,
    HEADER_SIGNATURE,
    MAX_BODY_BYTES,
    SERVICE_CODE,
    ProblemCode,
)
from gateway.service import problem_response
from gateway.transport import WireRequest, WireResponse
from gateway.trust import TrustError

__all__ = [
    "CLIENT_MAX_SIZE",
    "DEFAULT_PORT",
    "TEST_CASE_HEADER",
    "BadTrigger",
    "ConnectorHandlers",
    "ExchangeLog",
    "SendRequest",
    "Settings",
    "TriggerResult",
    "add_env_option",
    "connector_app",
    "handle_delivery",
    "handle_trigger",
    "health_response",
    "parse_settings",
    "parse_trigger",
    "run_connector",
    "send_for_trigger",
    "settings_from_arguments",
    "settings_parser",
]

#: Sent by a conformance kit on every request; logged so logs match its test cases.
TEST_CASE_HEADER: Final = "Pasarela-Test-Case"
DEFAULT_PORT: Final = 8800
#: Triggers may carry bodies over 1 MiB (the gateway then refuses them as too large).
CLIENT_MAX_SIZE: Final = 8 * MAX_BODY_BYTES
_PROBLEM_PREFIX: Final = "urn:pasarela:problem:"


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

    @property
    def endpoint(self) -> str:
        """The URL the gateway delivers this agency's messages to."""
        return f"http://{self.host}:{self.port}/agencies/{self.agency}/messages"

    def load_identity(self) -> Identity:
        """The agency's key and certificate; :class:`ValueError` when the certificate is
        another agency's (or the key is not the certificate's), :class:`OSError` when a
        file cannot be read."""
        identity = Identity.from_files(self.key, self.cert)
        if identity.code != self.agency:
            raise ValueError(f"{self.cert} certifies {identity.code}, not the agency {self.agency}")
        return identity

    def load_ca(self) -> x509.Certificate | None:
        """The platform CA certificate, when one is configured."""
        return x509.load_pem_x509_certificate(self.ca.read_bytes()) if self.ca else None


#: The flags: (flag, environment variable, meaning); the first four are required.
_OPTIONS: Final = (
    ("--gateway-url", "PASARELA_GATEWAY_URL", "the gateway's base URL"),
    ("--agency", "PASARELA_AGENCY", "this agency's code (the certificate's CN)"),
    ("--key", "PASARELA_KEY", "the agency's Ed25519 private key (PEM PKCS#8)"),
    ("--cert", "PASARELA_CERT", "the agency's certificate (PEM)"),
    ("--ca", "PASARELA_CA", "the platform CA certificate (PEM; optional)"),
    ("--host", "HOST", "the address to listen on (default 127.0.0.1)"),
    ("--port", "PORT", f"the port to listen on (default {DEFAULT_PORT})"),
)
_REQUIRED: Final = 4


def add_env_option(
    parser: argparse.ArgumentParser,
    flag: str,
    variable: str,
    meaning: str,
    environ: Mapping[str, str] = os.environ,
) -> None:
    """Add ``flag``, defaulting to ``$variable`` (an empty variable counts as unset)."""
    parser.add_argument(flag, default=environ.get(variable) or None, help=f"{meaning}; ${variable}")


def settings_parser(
    *,
    prog: str = "connector.py",
    description: str = "a pasarela agency connector",
    environ: Mapping[str, str] = os.environ,
) -> argparse.ArgumentParser:
    """A parser of the connector's flags, each defaulting to its environment variable; a
    connector adds its own with :func:`add_env_option`, then calls
    :func:`settings_from_arguments`."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for flag, variable, meaning in _OPTIONS:
        add_env_option(parser, flag, variable, meaning, environ)
    return parser


def settings_from_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Settings:
    """The :class:`Settings` of parsed arguments; a missing required one or a port that is
    not a number ends the program through ``parser.error`` (exit status 2)."""
    missing = [
        f"{flag} (${variable})"
        for flag, variable, _ in _OPTIONS[:_REQUIRED]
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


def parse_settings(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] = os.environ,
    *,
    prog: str = "connector.py",
    description: str = "a pasarela agency connector",
) -> Settings:
    """Settings from command-line flags (``argv``; None: ``sys.argv``), each defaulting to
    its environment variable."""
    parser = settings_parser(prog=prog, description=description, environ=environ)
    return settings_from_arguments(parser, parser.parse_args(argv))


# -- POST /trigger/send -----------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class SendRequest:
    """What a trigger asks to send: ``body`` is the requested JSON value, serialized
    compactly (the bytes that are signed and sent)."""

    to: str
    service: str
    body: bytes


class BadTrigger(ValueError):
    """The trigger's request was not ``{"to", "service", "body"}`` with an agency code
    and a service code; the message says what is wrong."""


def parse_trigger(raw: bytes) -> SendRequest:
    """The :class:`SendRequest` of a ``POST /trigger/send`` body; :class:`BadTrigger`
    when it is not one."""
    try:
        asked = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        asked = None
    if not isinstance(asked, dict) or not {"to", "service", "body"} <= asked.keys():
        raise BadTrigger('expected a JSON object {"to", "service", "body"}')
    to, service = asked["to"], asked["service"]
    if not isinstance(to, str) or not AGENCY_CODE.fullmatch(to):
        raise BadTrigger('"to" must be an agency code')
    if not isinstance(service, str) or not SERVICE_CODE.fullmatch(service):
        raise BadTrigger('"service" must be a service code')
    return SendRequest(to=to, service=service, body=encode_json(asked["body"]))


@dataclass(frozen=True, slots=True, kw_only=True)
class TriggerResult:
    """The answer to ``POST /trigger/send``: an HTTP status and a JSON document, made by
    one of the constructors below as ``docs/openapi/connector.yaml`` describes them.

    ``jti`` is the ``jti`` of the message sent, for the log (the 503 document has none).
    """

    status: int
    document: Mapping[str, Any]
    jti: str | None = None

    @classmethod
    def verified(cls, *, status: int, body: bytes, jti: str, answer_jti: str) -> TriggerResult:
        """200: the receiver's answer (its ``status`` and ``body``), signature and receipt
        verified; ``answer_jti`` is the answer's own ``jti``."""
        document = {
            "status": status,
            "body": _decoded(body),
            "receipt_verified": True,
            "jti": jti,
            "answer_jti": answer_jti,
        }
        return cls(status=200, document=document, jti=jti)

    @classmethod
    def refused(cls, refusal: Refused, *, jti: str) -> TriggerResult:
        """200 ``"from": "gateway"``: the gateway refused the message (its unsigned problem
        document as ``body``)."""
        document = {
            "status": refusal.status,
            "body": dict(refusal.problem) if refusal.problem else refusal.detail,
            "receipt_verified": False,
            "from": "gateway",
            "jti": jti,
        }
        return cls(status=200, document=document, jti=jti)

    @classmethod
    def verification_failed(cls, reason: object, *, jti: str) -> TriggerResult:
        """502: the answer or its receipt did not verify; the connector refused it."""
        document = {"error": "verification failed", "reason": str(reason), "jti": jti}
        return cls(status=502, document=document, jti=jti)

    @classmethod
    def unreachable(cls, reason: object, *, jti: str | None = None) -> TriggerResult:
        """503: no answer from the gateway after the retries, or its configuration
        document could not be fetched and verified."""
        document = {"error": "gateway unreachable", "reason": str(reason)}
        return cls(status=503, document=document, jti=jti)

    @classmethod
    def bad_request(cls, error: object) -> TriggerResult:
        """400: the trigger's request was not one (see :class:`BadTrigger`)."""
        return cls(status=400, document={"error": str(error)})

    @property
    def outcome(self) -> str:
        """``receiver`` or ``gateway`` (200), ``bad-trigger`` (400), else the error."""
        if self.status == 200:
            return str(self.document.get("from", "receiver"))
        if self.status == 400:
            return "bad-trigger"
        return str(self.document.get("error"))

    def log_fields(self) -> dict[str, Any]:
        """What :meth:`ExchangeLog.send` writes of this result."""
        if self.status == 400:
            return {"status": self.status, "outcome": self.outcome, "error": self.document["error"]}
        return {
            "jti": self.jti,
            "status": self.status,
            "outcome": self.outcome,
            "answer_status": self.document.get("status") if self.status == 200 else None,
            "reason": self.document.get("reason"),
        }

    def response(self) -> web.Response:
        """The answer as aiohttp sends it (``application/json``)."""
        return web.json_response(dict(self.document), status=self.status)


async def send_for_trigger(connector: Connector, request: SendRequest) -> TriggerResult:
    """Send ``request`` with ``connector`` (a fresh ``jti``) and say how it ended."""
    jti = connector.new_jti()
    try:
        reply = await connector.send(
            to=request.to, service=request.service, body=request.body, jti=jti
        )
    except Refused as exc:  # an unsigned problem document: the gateway's refusal
        return TriggerResult.refused(exc, jti=jti)
    except VerificationFailed as exc:
        return TriggerResult.verification_failed(exc, jti=jti)
    except (Unreachable, ConfUnavailable) as exc:
        return TriggerResult.unreachable(exc, jti=jti)
    return TriggerResult.verified(
        status=reply.status, body=reply.body, jti=reply.jti, answer_jti=reply.claims.jti
    )


# -- the log ----------------------------------------------------------------------------
class ExchangeLog:
    """One JSON line per event on ``stream`` (default: the current ``sys.stderr``).

    Each line has ``at`` (seconds, from ``clock``), ``event``, the ``common`` fields given
    here, and the event's own. :meth:`delivery` and :meth:`send` write one line per
    exchange, with the ``Pasarela-Test-Case`` request header as ``case``; :meth:`event`
    is also what :class:`~agents.conf.ConfCache` takes as its ``log``.
    """

    def __init__(
        self, *, stream: TextIO | None = None, clock: Clock | None = None, **common: Any
    ) -> None:
        self._stream = stream
        self._clock = clock or SystemClock()
        self._common = common

    def event(self, event: str, /, **fields: Any) -> None:
        """Write one line: ``at``, ``event``, the common fields, then ``fields``."""
        record = {"at": round(self._clock.now(), 3), "event": event, **self._common, **fields}
        stream = self._stream or sys.stderr
        stream.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        stream.flush()

    def delivery(
        self, headers: Mapping[str, str], body: bytes, answer: WireResponse, **fields: Any
    ) -> None:
        """A delivery and its answer: the token's claims as claimed (not verified), the
        body's size, the answer's status and problem code."""
        claims = _unverified_claims(headers.get(HEADER_SIGNATURE))
        problem = None
        if answer.status >= 400:
            document = _decoded(answer.body)
            if isinstance(document, dict):
                problem = str(document.get("type", "")).removeprefix(_PROBLEM_PREFIX)
        self.event(
            "delivery",
            case=headers.get(TEST_CASE_HEADER),
            iss=claims.get("iss"),
            jti=claims.get("jti"),
            svc=claims.get("svc"),
            bytes=len(body),
            status=answer.status,
            problem=problem,
            **fields,
        )

    def send(
        self,
        headers: Mapping[str, str],
        *,
        request: SendRequest | None = None,
        result: TriggerResult | None = None,
        **fields: Any,
    ) -> None:
        """A trigger: what it asked to send and how it ended (``fields`` add or override,
        such as ``outcome="crash"``)."""
        asked = {"to": request.to, "service": request.service} if request else {}
        ended = result.log_fields() if result else {}
        self.event("send", case=headers.get(TEST_CASE_HEADER), **{**asked, **ended, **fields})


# -- the aiohttp side -------------------------------------------------------------------
async def handle_delivery(
    request: web.Request,
    *,
    conf: ConfCache,
    receive: Callable[[WireRequest, Directory], Awaitable[WireResponse]],
    log: ExchangeLog,
) -> web.Response:
    """``POST /agencies/{code}/messages``: a body over 1 MiB is ``413``; the configuration
    document is made current and to know the ``kid``\\s the delivery names
    (:meth:`~agents.conf.ConfCache.directory_for_delivery`; ``503 receiver-unavailable``
    with ``Retry-After: 1`` while it cannot be fetched, so the gateway's sender retries);
    then ``receive`` verifies and answers. The exchange is logged."""
    body = await request.read()
    if len(body) > MAX_BODY_BYTES:
        answer = problem_response(ProblemCode.PAYLOAD_TOO_LARGE, "body over 1 MiB")
    else:
        try:
            directory = await conf.directory_for_delivery(
                signature=request.headers.get(HEADER_SIGNATURE),
                receipt=request.headers.get(HEADER_RECEIPT),
            )
        except ConfUnavailable as exc:
            answer = problem_response(ProblemCode.RECEIVER_UNAVAILABLE, str(exc), retry_after=1)
        else:
            wire = WireRequest(
                method=request.method,
                url=str(request.url),
                headers=dict(request.headers),
                body=body,
            )
            answer = await receive(wire, directory)
    log.delivery(request.headers, body, answer)
    return web.Response(status=answer.status, headers=dict(answer.headers), body=answer.body)


async def handle_trigger(
    request: web.Request,
    *,
    send: Callable[[SendRequest], Awaitable[TriggerResult]],
    log: ExchangeLog,
) -> web.Response:
    """``POST /trigger/send``: parse the request (``400`` when it is not one), ``send``
    it, log the exchange, answer the :class:`TriggerResult`. An exception from ``send``
    is logged (``outcome`` ``crash``) and raised again (aiohttp answers 500)."""
    try:
        asked = parse_trigger(await request.read())
    except BadTrigger as exc:
        refused = TriggerResult.bad_request(exc)
        log.send(request.headers, result=refused)
        return refused.response()
    try:
        result = await send(asked)
    except Exception as exc:
        log.send(request.headers, request=asked, outcome="crash", error=repr(exc))
        raise
    log.send(request.headers, request=asked, result=result)
    return result.response()


def health_response(identity: Identity, conf: ConfCache, **extra: Any) -> web.Response:
    """``GET /health``: up, the agency and its ``kid``, whether the conf is loaded."""
    return web.json_response(
        {
            "status": "ok",
            "agency": identity.code,
            "kid": identity.kid,
            "conf": "loaded" if conf.loaded else "not fetched yet",
            **extra,
        }
    )


class ConnectorHandlers(Protocol):
    """What :func:`connector_app` serves: one agency's connector, as an object."""

    async def deliver(self, request: web.Request) -> web.StreamResponse:
        """``POST /agencies/{code}/messages`` (see :func:`handle_delivery`)."""

    async def trigger(self, request: web.Request) -> web.StreamResponse:
        """``POST /trigger/send`` (see :func:`handle_trigger`)."""

    async def health(self, request: web.Request) -> web.StreamResponse:
        """``GET /health`` (see :func:`health_response`)."""

    async def aclose(self) -> None:
        """Release what the connector holds (its transport), at the app's cleanup."""


def connector_app(connector: ConnectorHandlers) -> web.Application:
    """The aiohttp application of a connector process: the three routes of
    ``docs/openapi/connector.yaml`` on ``connector``'s handlers (triggers may carry bodies
    up to :data:`CLIENT_MAX_SIZE`), and ``connector.aclose()`` awaited at cleanup."""
    app = web.Application(client_max_size=CLIENT_MAX_SIZE)
    app.router.add_post("/agencies/{code}/messages", connector.deliver)
    app.router.add_post("/trigger/send", connector.trigger)
    app.router.add_get("/health", connector.health)

    async def cleanup(_: web.Application) -> None:
        await connector.aclose()

    app.on_cleanup.append(cleanup)
    return app


def run_connector(
    settings: Settings,
    build: Callable[[], web.Application],
    *,
    log: ExchangeLog | None = None,
) -> int:
    """Build the application and serve it on ``settings.host``/``port`` until interrupted;
    the exit status. Credentials that cannot be read (``build`` raising
    :class:`OSError`, :class:`ValueError` or a trust error) are one line on stderr and
    exit status 2; serving is logged as ``listening``."""
    try:
        app = build()
    except (OSError, ValueError, TrustError) as exc:
        sys.stderr.write(f"connector: {exc}\n")
        return 2
    (log or ExchangeLog()).event(
        "listening", agency=settings.agency, url=settings.endpoint, gateway=settings.gateway_url
    )
    web.run_app(app, host=settings.host, port=settings.port, print=None, access_log=None)
    return 0


def _decoded(body: bytes) -> Any:
    """A body as JSON when it is JSON, else as text."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return body.decode("utf-8", errors="replace")


def _unverified_claims(token: str | None) -> dict[str, Any]:
    """A compact JWS's claims as claimed, without any check ({} when unreadable)."""
    try:
        claims = json.loads(protocol.b64url_decode((token or "").split(".")[1]))
    except (ValueError, IndexError, UnicodeDecodeError, RecursionError):
        return {}
    return claims if isinstance(claims, dict) else {}
