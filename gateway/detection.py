"""Security alerts: what the gateway notices, who it counts against, when it quarantines.

Every refusal that looks like an attack (a forged or tampered token, a distrusted key, a
replay, a probe for agencies or services, a flood, an operator request without a valid
token) becomes an :class:`Alert`: a structured event, a record of kind ``alert`` in the
message log, a count in ``pasarela_security_alerts{kind}`` and an entry of the operators'
feed (``GET /v1/admin/alerts``).

An alert *names* an agency when the traffic claimed to come from it, but it only *counts
against* the agency (``attributed``) when the token verified with that agency's current
key and the fault cannot be someone else's (see ``Decision.culprit``). Garbage that names
agency A as sender can never get A quarantined: that would let anyone switch A off.

:class:`Detector` keeps, per agency, the attributed anomalies of the last
``window_seconds``; when an agency passes ``quarantine_after`` of them (or
``flood_after`` rate-limit refusals) the gateway quarantines it (action
``auto-quarantine`` in the log, actor ``detector``) and raises an ``auto-quarantine``
alert. Either threshold at 0 turns that trigger off.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

from gateway.protocol import ProblemCode

__all__ = [
    "ALERT_CODES",
    "AUTO_QUARANTINE",
    "Alert",
    "DetectionPolicy",
    "Detector",
]

#: Problem codes that are security alerts when the gateway answers them.
ALERT_CODES: Final = frozenset(
    {
        ProblemCode.MALFORMED,
        ProblemCode.BAD_SIGNATURE,
        ProblemCode.ALGORITHM_NOT_ALLOWED,
        ProblemCode.FORBIDDEN_HEADER,
        ProblemCode.UNKNOWN_KEY,
        ProblemCode.REVOKED_KEY,
        ProblemCode.KEY_EXPIRED,
        ProblemCode.SUPERSEDED_KEY,
        ProblemCode.SENDER_MISMATCH,
        ProblemCode.EXPIRED,
        ProblemCode.CLOCK_SKEW,
        ProblemCode.BODY_DIGEST_MISMATCH,
        ProblemCode.REPLAY,
        ProblemCode.NOT_AUTHORIZED,
        ProblemCode.AGENCY_DISCONNECTED,
        ProblemCode.UNKNOWN_RECEIVER,
        ProblemCode.PAYLOAD_TOO_LARGE,
        ProblemCode.RATE_LIMITED,
        ProblemCode.BAD_RESPONSE_SIGNATURE,
        ProblemCode.UNAUTHENTICATED,
    }
)
AUTO_QUARANTINE: Final = "auto-quarantine"


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectionPolicy:
    """Thresholds of the automatic quarantine (the defaults are the documented ones)."""

    window_seconds: float = 60.0
    #: Attributed anomalies (other than rate limiting) in the window that quarantine.
    quarantine_after: int = 20
    #: Rate-limit refusals in the window that quarantine (a flood, not a burst).
    flood_after: int = 200
    #: Alerts the operators' feed keeps (the log keeps them all).
    feed_size: int = 10_000

    def __post_init__(self) -> None:
        if self.window_seconds <= 0:
            raise ValueError(f"window_seconds must be > 0, got {self.window_seconds}")
        if self.quarantine_after < 0 or self.flood_after < 0:
            raise ValueError("quarantine_after and flood_after must be >= 0 (0: off)")
        if self.feed_size < 1:
            raise ValueError(f"feed_size must be >= 1, got {self.feed_size}")

    @classmethod
    def off(cls) -> DetectionPolicy:
        """Alerts without automatic quarantine (the rehearsal drives states itself)."""
        return cls(quarantine_after=0, flood_after=0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    id: int
    at: float
    kind: str  # a problem code, or "auto-quarantine"
    agency: str  # the agency named (claimed sender, key owner, quarantined); "" if none
    attributed: bool  # authenticated by that agency's current key
    detail: str
    source: str = ""  # the peer address, when known
    seq: int | None = None  # the alert's record in the message log

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "kind": self.kind,
            "agency": self.agency,
            "attributed": self.attributed,
            "detail": self.detail,
            "source": self.source,
            "seq": self.seq,
        }


@dataclass(slots=True)
class _Tally:
    anomalies: deque[float] = field(default_factory=deque)
    floods: deque[float] = field(default_factory=deque)


class Detector:
    """Alert bookkeeping of one gateway: the feed, and who crossed a threshold."""

    def __init__(self, policy: DetectionPolicy | None = None) -> None:
        self.policy = policy or DetectionPolicy()
        self._feed: deque[Alert] = deque(maxlen=self.policy.feed_size)
        self._tallies: dict[str, _Tally] = {}
        self._next_id = 1

    def new_alert(
        self,
        *,
        at: float,
        kind: str,
        agency: str,
        attributed: bool,
        detail: str,
        source: str = "",
    ) -> Alert:
        alert = Alert(
            id=self._next_id,
            at=at,
            kind=kind,
            agency=agency,
            attributed=attributed,
            detail=detail[:300],
            source=source,
        )
        self._next_id += 1
        return alert

    def publish(self, alert: Alert) -> None:
        self._feed.append(alert)

    def crossed(self, alert: Alert) -> bool:
        """Count an attributed alert; True when its agency has just crossed a threshold."""
        if not alert.attributed or not alert.agency:
            return False
        policy = self.policy
        tally = self._tallies.setdefault(alert.agency, _Tally())
        flood = alert.kind == ProblemCode.RATE_LIMITED.value
        events, limit = (
            (tally.floods, policy.flood_after)
            if flood
            else (tally.anomalies, policy.quarantine_after)
        )
        if not limit:
            return False
        events.append(alert.at)
        while events and events[0] < alert.at - policy.window_seconds:
            events.popleft()
        if len(events) >= limit:
            events.clear()
            return True
        return False

    def forget(self, agency: str) -> None:
        """Start the agency's count afresh (after it was quarantined or released)."""
        self._tallies.pop(agency, None)

    def recent(self, *, after: int = 0, limit: int = 100) -> list[Alert]:
        """Alerts with an id above ``after``, oldest first, at most ``limit``."""
        return [alert for alert in self._feed if alert.id > after][:limit]

    @property
    def last_id(self) -> int:
        return self._next_id - 1
