"""Everything that talks to the gateway: the connector library, the agency host and the
cache of the gateway's configuration document (a connector process's plumbing is in
:mod:`agents.connector_process`)."""

from __future__ import annotations

from agents.conf import ConfCache, ConfUnavailable
from agents.connector import Connector, Reply, RetryPolicy
from agents.host import AgencyHost, ServiceHandler, acknowledge, load_identities, ping
from agents.verification import (
    ConnectorError,
    Directory,
    Identity,
    Refused,
    Unreachable,
    VerificationFailed,
    sign_message,
    verify_conf,
    verify_inbound,
)

__all__ = [
    "AgencyHost",
    "ConfCache",
    "ConfUnavailable",
    "Connector",
    "ConnectorError",
    "Directory",
    "Identity",
    "Refused",
    "Reply",
    "RetryPolicy",
    "ServiceHandler",
    "Unreachable",
    "VerificationFailed",
    "acknowledge",
    "load_identities",
    "ping",
    "sign_message",
    "verify_conf",
    "verify_inbound",
]
