"""Techniques, what they expect, what was observed, and the verdict."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agents.adversaries.lab import Lab

__all__ = ["Expected", "Observation", "Reference", "Result", "Technique", "Verdict"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Reference:
    """Where a technique comes from: RFC 8725 section, OWASP API Top 10 2023, ATT&CK."""

    rfc8725: str = ""  # e.g. "3.1" (perform algorithm verification)
    owasp: str = ""  # e.g. "API2:2023 Broken Authentication"
    attack: str = ""  # e.g. "T1550.001 Use Alternate Authentication Material"

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in (("rfc8725", self.rfc8725), ("owasp", self.owasp),
                                  ("attack", self.attack)) if v}  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class Expected:
    """What the gateway must do.

    ``codes``: the problem codes that count as blocked (any of them; empty: any refusal
    that is not a 2xx, e.g. a connection closed or a plain 4xx from the HTTP layer).
    ``alert``: a security alert of one of ``alert_kinds`` (any kind, when empty) must be
    raised while the technique runs. ``quarantine``: the agency named must end up
    quarantined. ``connected``: the agency named must still be connected afterwards
    (framing must not work).
    """

    codes: frozenset[str] = frozenset()
    alert: bool = True
    alert_kinds: frozenset[str] = frozenset()
    quarantine: bool = False
    connected: bool = False

    def describe(self) -> str:
        parts = ["/".join(sorted(self.codes)) if self.codes else "refused"]
        if self.alert:
            parts.append("alert")
        if self.quarantine:
            parts.append("quarantine")
        if self.connected:
            parts.append("victim stays connected")
        return " + ".join(parts)


@dataclass(slots=True, kw_only=True)
class Observation:
    """What happened: filled in by the technique (traffic) and the runner (alerts, state)."""

    statuses: list[int] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)  # problem codes answered, in order
    answers: list[tuple[int, str | None]] = field(default_factory=list)
    accepted: int = 0  # 2xx answers to traffic that should have been refused
    closed: int = 0  # connections the server closed (slowloris, header floods)
    agency: str = ""  # the agency the technique names (victim, or the one that misbehaves)
    notes: list[str] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    quarantined: bool | None = None
    connected: bool | None = None
    detect_seconds: float | None = None
    started: float = 0.0
    #: Set by techniques that judge themselves (log tampering, slowloris): blocked or not.
    blocked: bool | None = None
    #: The profile step's parameters over the technique's defaults.
    params: dict[str, Any] = field(default_factory=dict)

    def answer(self, status: int, code: str | None) -> None:
        self.statuses.append(status)
        self.answers.append((status, code))
        if code:
            self.codes.append(code)
        if 200 <= status < 300:
            self.accepted += 1


Run = Callable[["Lab", Observation], Awaitable[None]]
Cleanup = Callable[["Lab", Observation], Awaitable[None]]


async def _nothing(lab: Lab, observation: Observation) -> None:
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Technique:
    id: str
    title: str
    description: str
    references: Reference
    expected: Expected
    run: Run
    cleanup: Cleanup = _nothing
    #: Changes the gateway for good (e.g. opens a key generation): run last, on a lab only.
    destructive: bool = False
    #: Parameters a profile may set, with their defaults.
    params: dict[str, Any] = field(default_factory=dict)


class Verdict:
    PASS = "blocked"  # noqa: S105 - a verdict, not a password
    FAIL = "HOLE"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    technique: Technique
    observation: Observation
    verdict: str
    problems: tuple[str, ...]  # why it failed, one line each
    seconds: float

    @property
    def passed(self) -> bool:
        return self.verdict != Verdict.FAIL

    def observed(self) -> str:
        o = self.observation
        if o.blocked is not None and not o.statuses:
            text = "detected" if o.blocked else "NOT detected"
        elif o.accepted:
            text = f"{o.accepted} ACCEPTED"
        elif o.codes:
            distinct = sorted(set(o.codes))
            text = "/".join(distinct[:3]) + ("/..." if len(distinct) > 3 else "")
        elif o.closed:
            text = f"{o.closed} connection(s) closed"
        else:
            text = "/".join(str(s) for s in sorted(set(o.statuses))) or "-"
        if o.alerts:
            text += f" + {len(o.alerts)} alert(s)"
        if o.quarantined:
            text += " + quarantined"
        return text
