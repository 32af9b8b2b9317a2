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

The pieces live in the private package :mod:`agents._process` (``settings``, ``trigger``,
``log``, ``app``), whose public names this module exports.
"""

from __future__ import annotations

from agents._process.app import (
    CLIENT_MAX_SIZE,
    ConnectorHandlers,
    connector_app,
    handle_delivery,
    handle_trigger,
    health_response,
    run_connector,
)
from agents._process.log import TEST_CASE_HEADER, ExchangeLog
from agents._process.settings import (
    DEFAULT_PORT,
    Settings,
    add_env_option,
    parse_settings,
    settings_from_arguments,
    settings_parser,
)
from agents._process.trigger import (
    BadTrigger,
    SendRequest,
    TriggerResult,
    parse_trigger,
    send_for_trigger,
)

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
