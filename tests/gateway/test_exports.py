"""The gateway package's public surface is curated and pinned."""

from __future__ import annotations

import gateway


def test_exported_names_are_pinned() -> None:
    """gateway exports exactly these names; a change here is an API change."""
    assert sorted(gateway.__all__) == sorted(
        [
            "Agency", "AgencyKind", "CertificateAuthority", "Clock", "ConnectionState",
            "Context", "Decision", "Gateway", "GatewayConfig", "Grant", "HttpTransport",
            "KeyRecord", "Limits", "LogEntry", "LogRecord", "ManualClock", "MemoryTransport",
            "MessageClaims", "MessageLog", "ProblemCode", "Randomness", "ReceiptClaims",
            "Registry", "SeededRandomness", "StateEvent", "SystemClock", "SystemRandomness",
            "Transport", "TrustStore", "Verdict", "Verification", "WireRequest",
            "WireResponse", "decide", "decide_response", "verify",
        ]
    )  # fmt: skip


def test_every_exported_name_exists() -> None:
    """Each name in __all__ resolves."""
    for name in gateway.__all__:
        assert getattr(gateway, name) is not None
