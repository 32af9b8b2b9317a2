"""pasarela's gateway: protocol, trust, registry, pipeline, log, stores, HTTP shell."""

from gateway.clock import (
    Clock,
    ManualClock,
    Randomness,
    SeededRandomness,
    SystemClock,
    SystemRandomness,
)
from gateway.log import LogEntry, LogRecord, MessageLog, Verification, verify
from gateway.pipeline import Context, Decision, Limits, Verdict, decide, decide_response
from gateway.protocol import MessageClaims, ProblemCode, ReceiptClaims
from gateway.registry import Agency, AgencyKind, ConnectionState, Grant, Registry, StateEvent
from gateway.service import Gateway, GatewayConfig
from gateway.transport import HttpTransport, MemoryTransport, Transport, WireRequest, WireResponse
from gateway.trust import CertificateAuthority, KeyRecord, TrustStore

__all__ = [
    "Agency",
    "AgencyKind",
    "CertificateAuthority",
    "Clock",
    "ConnectionState",
    "Context",
    "Decision",
    "Gateway",
    "GatewayConfig",
    "Grant",
    "HttpTransport",
    "KeyRecord",
    "Limits",
    "LogEntry",
    "LogRecord",
    "ManualClock",
    "MemoryTransport",
    "MessageClaims",
    "MessageLog",
    "ProblemCode",
    "Randomness",
    "ReceiptClaims",
    "Registry",
    "SeededRandomness",
    "StateEvent",
    "SystemClock",
    "SystemRandomness",
    "Transport",
    "TrustStore",
    "Verdict",
    "Verification",
    "WireRequest",
    "WireResponse",
    "decide",
    "decide_response",
    "verify",
]
