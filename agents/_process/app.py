"""The aiohttp side of a connector process: the handlers (:func:`handle_delivery`,
:func:`handle_trigger`, :func:`health_response`), the application over a
:class:`ConnectorHandlers` (:func:`connector_app`) and serving it (:func:`run_connector`).
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

from aiohttp import web

from agents._process.log import ExchangeLog
from agents._process.settings import Settings
from agents._process.trigger import BadTrigger, SendRequest, TriggerResult, parse_trigger
from agents.conf import ConfCache, ConfUnavailable
from agents.verification import Directory, Identity
from gateway.protocol import HEADER_RECEIPT, HEADER_SIGNATURE, MAX_BODY_BYTES, ProblemCode
from gateway.service import problem_response
from gateway.transport import WireRequest, WireResponse
from gateway.trust import TrustError

#: Triggers may carry bodies over 1 MiB (the gateway then refuses them as too large).
CLIENT_MAX_SIZE: Final = 8 * MAX_BODY_BYTES


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
