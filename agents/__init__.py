"""Everything that talks to the gateway: the connector library and the agency host."""

from __future__ import annotations

from agents.connector import Connector, Reply, RetryPolicy
from agents.host import AgencyHost, ServiceHandler, load_identities, ping
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
    "load_identities",
    "ping",
    "sign_message",
    "verify_conf",
    "verify_inbound",
]
