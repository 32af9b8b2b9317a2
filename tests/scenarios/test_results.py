"""gateway_figures: one streaming pass that counts everything and still checks the chain."""

from __future__ import annotations

import dataclasses

from gateway.log import GENESIS_HASH, LogEntry, LogRecord, chain
from gateway.testing import make_gateway
from scenarios.results import gateway_figures


def _records(kinds: list[str]) -> list[LogRecord]:
    out: list[LogRecord] = []
    prev = GENESIS_HASH
    for seq, kind in enumerate(kinds, start=1):
        fields = {"reason": "replay"} if kind == "rejection" else {"action": "x"}
        record = chain(LogEntry(kind=kind, at=float(seq), fields=fields), seq=seq, prev=prev)
        out.append(record)
        prev = record.hash
    return out


def test_counts_and_verifies_an_intact_log() -> None:
    """Kinds and reasons are counted, the chain verifies, the head is the last hash."""
    records = _records(["admin", "rejection", "admin"])
    figures = gateway_figures(iter(records), make_gateway().trust)
    assert figures.records == 3
    assert figures.verified
    assert figures.head == records[-1].hash
    assert figures.by_kind == {"admin": 2, "rejection": 1}
    assert figures.rejected == {"replay": 1}


def test_a_tampered_log_is_flagged_and_still_fully_counted() -> None:
    """A modified record fails verification; records after it are still counted."""
    records = _records(["admin", "admin", "rejection", "admin"])
    records[1] = dataclasses.replace(records[1], at=99.0)
    figures = gateway_figures(iter(records), make_gateway().trust)
    assert not figures.verified
    assert figures.records == 4
    assert figures.head == records[-1].hash
