"""A minimal agency host: the provider endpoints of many simulated agencies in one app.

The gateway forwards an accepted message to ``/agencies/{code}/messages``. The host
checks the sender's signature and the gateway's receipt (:func:`verify_inbound`), runs
the service, and answers with a response signed by the receiving agency. A retry (same
sender, same ``jti``, same body) gets the first answer again without re-running the
service; the same ``jti`` with another body is a ``replay``.
"""

from __future__ import annotations

import asyncio
import heapq
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from aiohttp import web

from agents.verification import (
    JSON_CONTENT_TYPE,
    Directory,
    Identity,
    VerificationFailed,
    encode_json,
    new_message_id,
    sign_message,
    verify_inbound,
)
from gateway.clock import Clock, Randomness
from gateway.protocol import (
    HEADER_RECEIPT,
    HEADER_SIGNATURE,
    LEEWAY_SECONDS,
    MAX_BODY_BYTES,
    PROBLEM_CONTENT_TYPE,
    MessageClaims,
    ProblemCode,
    problem_document,
)
from gateway.service import problem_response
from gateway.transport import WireRequest, WireResponse, header_value

__all__ = ["AgencyHost", "ServiceHandler", "acknowledge", "load_identities", "ping"]

ServiceHandler = Callable[[MessageClaims, bytes], Awaitable[tuple[int, bytes]]]

_ENDPOINT: Final = re.compile(r"/agencies/([^/]+)/messages")


async def ping(claims: MessageClaims, body: bytes) -> tuple[int, bytes]:
    """The ``ping`` service: echo the request body."""
    return 200, body


async def acknowledge(claims: MessageClaims, body: bytes) -> tuple[int, bytes]:
    """A service that acknowledges receipt: ``200 {"estado": "00", "recibido": <jti>}``
    (the example connectors' ``fallback``: any service the gateway delivers)."""
    return 200, encode_json({"estado": "00", "recibido": claims.jti})


@dataclass(slots=True, kw_only=True)
class _Answer:
    """The outcome of one message, shared with its retries while they may arrive."""

    bh: str
    forget_at: float
    response: asyncio.Future[WireResponse]


class AgencyHost:
    """Serves ``/agencies/{code}/messages`` for every identity it holds.

    ``services`` maps service names to their handlers (default: :func:`ping` only);
    ``fallback`` handles every service not in ``services``. Without a fallback such a
    service gets a signed ``not-found`` answer. ``directory`` is the keys to verify with,
    or a callable returning them at each delivery (kept current by its owner, such as
    :meth:`agents.conf.ConfCache.current`).
    """

    def __init__(
        self,
        *,
        identities: Mapping[str, Identity],
        directory: Directory | Callable[[], Directory],
        clock: Clock,
        randomness: Randomness,
        services: Mapping[str, ServiceHandler] | None = None,
        leeway: int = LEEWAY_SECONDS,
        lifetime: int = 60,
        fallback: ServiceHandler | None = None,
    ) -> None:
        self._identities = dict(identities)
        self._directory = directory
        self._clock = clock
        self._randomness = randomness
        self._services: dict[str, ServiceHandler] = dict(services or {"ping": ping})
        self._fallback = fallback
        self._leeway = leeway
        self._lifetime = lifetime
        #: Messages answered per agency (retries answered from memory are not counted).
        self.handled: Counter[str] = Counter()
        self._answers: dict[tuple[str, str, str], _Answer] = {}
        self._expiry: list[tuple[float, tuple[str, str, str]]] = []

    def set_identity(self, identity: Identity) -> None:
        """Serve ``identity.code`` with these credentials from now on (after re-enrolment)."""
        self._identities[identity.code] = identity

    @staticmethod
    def endpoint_path(code: str) -> str:
        return f"/agencies/{code}/messages"

    @property
    def remembered(self) -> int:
        """How many answers are kept for retries (bounded by message lifetimes)."""
        return len(self._answers)

    def _current_directory(self) -> Directory:
        return self._directory() if callable(self._directory) else self._directory

    async def handle(self, request: WireRequest) -> WireResponse:
        """Verify a forwarded message, run its service, return the signed response."""
        path = urlsplit(request.url).path
        match = _ENDPOINT.fullmatch(path)
        if match is None:
            return problem_response(ProblemCode.NOT_FOUND, f"no endpoint at {path}")
        if request.method != "POST":
            return problem_response(ProblemCode.METHOD_NOT_ALLOWED, f"{request.method} {path}")
        identity = self._identities.get(match.group(1))
        if identity is None:
            return problem_response(
                ProblemCode.UNKNOWN_RECEIVER, f"no agency {match.group(1)} here"
            )
        now = self._clock.now()
        self._forget_before(now)
        try:
            claims, _ = verify_inbound(
                signature=header_value(request.headers, HEADER_SIGNATURE),
                receipt=header_value(request.headers, HEADER_RECEIPT),
                body=request.body,
                receiver=identity.code,
                directory=self._current_directory(),
                now=now,
                leeway=self._leeway,
            )
        except VerificationFailed as exc:
            return problem_response(exc.code, str(exc))
        key = (identity.code, claims.iss, claims.jti)
        known = self._answers.get(key)
        if known is not None:
            if known.bh != claims.bh:
                detail = f"{claims.iss} already used {claims.jti} with another body"
                return problem_response(ProblemCode.REPLAY, detail, jti=claims.jti)
            return await asyncio.shield(known.response)
        answer = _Answer(
            bh=claims.bh,
            forget_at=claims.exp + self._leeway,
            response=asyncio.get_running_loop().create_future(),
        )
        self._answers[key] = answer
        heapq.heappush(self._expiry, (answer.forget_at, key))
        try:
            response = await self._answer(identity, claims, request.body)
        except Exception as exc:  # a failing service must not break the host
            response = problem_response(
                ProblemCode.RECEIVER_UNAVAILABLE,
                f"service {claims.svc} failed: {type(exc).__name__}",
                jti=claims.jti,
            )
            del self._answers[key]  # not the message's outcome: a retry runs it again
        except BaseException:  # cancelled: retries waiting on this answer are cancelled too
            answer.response.cancel()
            self._answers.pop(key, None)
            raise
        answer.response.set_result(response)
        return response

    async def _answer(self, identity: Identity, claims: MessageClaims, body: bytes) -> WireResponse:
        service = self._services.get(claims.svc, self._fallback)
        if service is None:
            status, content_type = ProblemCode.NOT_FOUND.status, PROBLEM_CONTENT_TYPE
            detail = f"{identity.code} offers no service {claims.svc}"
            payload = encode_json(problem_document(ProblemCode.NOT_FOUND, detail, jti=claims.jti))
        else:
            status, payload = await service(claims, body)
            content_type = JSON_CONTENT_TYPE
        token = sign_message(
            identity,
            to=claims.iss,
            service=claims.svc,
            body=payload,
            jti=new_message_id(identity.code, self._randomness),
            corr=claims.jti,
            now=self._clock.now(),
            lifetime=self._lifetime,
        )
        self.handled[identity.code] += 1
        headers = {HEADER_SIGNATURE: token, "Content-Type": content_type}
        return WireResponse(status=status, headers=headers, body=payload)

    def _forget_before(self, now: float) -> None:
        """Drop remembered answers whose message can no longer verify (exp + leeway)."""
        while self._expiry and self._expiry[0][0] < now:
            forget_at, key = heapq.heappop(self._expiry)
            answer = self._answers.get(key)
            if answer is not None and answer.forget_at == forget_at and answer.response.done():
                del self._answers[key]

    def app(self) -> web.Application:
        """An aiohttp app: the agencies' endpoints and ``GET /v1/health``."""
        application = web.Application(client_max_size=MAX_BODY_BYTES)
        application.router.add_post("/agencies/{code}/messages", self._on_message)
        application.router.add_get("/v1/health", self._on_health)
        return application

    async def _on_message(self, request: web.Request) -> web.Response:
        wire = WireRequest(
            method=request.method,
            url=str(request.url),
            headers=dict(request.headers),
            body=await request.read(),
        )
        answer = await self.handle(wire)
        return web.Response(status=answer.status, headers=dict(answer.headers), body=answer.body)

    async def _on_health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "agencies": len(self._identities)})


def load_identities(state_dir: Path) -> dict[str, Identity]:
    """Every ``STATE_DIR/agencies/<CODE>/{key,cert}.pem`` pair, by certificate CN."""
    root = Path(state_dir) / "agencies"
    identities: dict[str, Identity] = {}
    if not root.is_dir():
        return identities
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        key, cert = folder / "key.pem", folder / "cert.pem"
        if key.is_file() and cert.is_file():
            identity = Identity.from_files(key, cert)
            identities[identity.code] = identity
    return identities
