"""The reference agency connector in Python, built on pasarela's library (its public API only).

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

Both sides take their keys from one :class:`agents.conf.ConfCache`: the configuration
document (``GET {gateway}/v1/conf``) is fetched when first needed (the gateway may start
after the connector), verified against the platform CA, fetched again before its
signature expires and when a ``kid`` is unknown (at most once a second).

Configuration, the trigger's answers, the log and the aiohttp plumbing come from
:mod:`agents.connector_process`: the environment variables of the JavaScript connector
(``PASARELA_GATEWAY_URL``, ``PASARELA_AGENCY``, ``PASARELA_KEY``, ``PASARELA_CERT``,
``PASARELA_CA``, ``PORT``, ``HOST``) or the command-line flags of the same meaning
(``--help``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

from aiohttp import web

from agents.conf import ConfCache, ConfUnavailable
from agents.connector import Connector
from agents.connector_process import (
    TEST_CASE_HEADER,
    ExchangeLog,
    Settings,
    connector_app,
    handle_delivery,
    handle_trigger,
    health_response,
    run_connector,
    send_for_trigger,
)
from agents.connector_process import parse_settings as parse_connector_settings
from agents.host import AgencyHost, acknowledge, ping
from gateway.clock import SystemClock, SystemRandomness
from gateway.transport import HttpTransport

__all__ = [
    "TEST_CASE_HEADER",
    "ConfUnavailable",
    "ReferenceConnector",
    "Settings",
    "create_app",
    "main",
    "parse_settings",
]


def parse_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ
) -> Settings:
    """Settings from command-line flags, each defaulting to its environment variable."""
    return parse_connector_settings(
        argv, environ, description="pasarela reference agency connector (Python)"
    )


class ReferenceConnector:
    """The HTTP handlers of one agency's connector."""

    def __init__(self, settings: Settings, log: ExchangeLog | None = None) -> None:
        identity = settings.load_identity()
        clock, randomness = SystemClock(), SystemRandomness()
        self.identity = identity
        self.log = log or ExchangeLog()
        self.transport = HttpTransport()
        self.conf = ConfCache(
            gateway_url=settings.gateway_url,
            ca_certificate=settings.load_ca(),
            transport=self.transport,
            clock=clock,
            log=self.log.event,
        )
        self.host = AgencyHost(
            identities={identity.code: identity},
            directory=self.conf.current,
            clock=clock,
            randomness=randomness,
            services={"ping": ping},
            fallback=acknowledge,  # every service the gateway delivers is acknowledged
        )
        self.client = Connector(
            identity=identity,
            gateway_url=settings.gateway_url,
            clock=clock,
            randomness=randomness,
            transport=self.transport,
            conf=self.conf,
        )

    async def deliver(self, request: web.Request) -> web.Response:
        """Provider: the host verifies, runs the service and signs the answer."""
        return await handle_delivery(
            request, conf=self.conf, receive=lambda wire, _: self.host.handle(wire), log=self.log
        )

    async def trigger(self, request: web.Request) -> web.Response:
        """Consumer: the client signs, sends, retries and verifies."""
        return await handle_trigger(
            request, send=lambda asked: send_for_trigger(self.client, asked), log=self.log
        )

    async def health(self, request: web.Request) -> web.Response:
        return health_response(self.identity, self.conf)

    async def aclose(self) -> None:
        await self.transport.aclose()


def create_app(settings: Settings) -> web.Application:
    """The connector's aiohttp application (credentials are read now; the gateway is not
    contacted until a delivery or a trigger needs its configuration document)."""
    return connector_app(ReferenceConnector(settings))


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_settings(argv)
    return run_connector(settings, lambda: create_app(settings))


if __name__ == "__main__":
    sys.exit(main())
