"""What a conformance run is made of: checks, exchanges, differences, results."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pasarela.conformance.session import Session

__all__ = [
    "Check",
    "CheckResult",
    "Difference",
    "Exchange",
    "InfrastructureError",
    "KitSettings",
    "Outcome",
    "Side",
    "UsageError",
    "Violation",
    "catalogue",
    "differences",
]


class Side(StrEnum):
    """Which role of the connector a check exercises."""

    PROVIDER = "provider"  # the kit delivers messages to the connector
    CONSUMER = "consumer"  # the kit asks the connector to send, and plays the gateway


class Outcome(StrEnum):
    PASSED = "passed"
    FAILED = "failed"  # the connector violated the check
    ERROR = "error"  # the kit could not judge (a bug or trouble of the kit itself)


class UsageError(Exception):
    """Bad arguments or an unusable state directory (exit code 2)."""


class InfrastructureError(Exception):
    """The run could not start: connector unreachable, port taken (exit code 3)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class KitSettings:
    """What ``pasarela conformance`` was asked to do."""

    connector: str  # the connector's base URL
    agency: str
    state: Path
    host: str = "127.0.0.1"  # where the kit's gateway listens
    port: int = 8700
    peer: str = "PORTAL"
    service: str = "ping"
    seed: int = 0
    timeout: float = 15.0  # per exchange with the connector
    wait: float = 0.0  # how long to wait for the connector to come up
    retry_after: int = 1  # the Retry-After the kit's 429 and 503 carry

    @property
    def gateway_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"{self.connector.rstrip('/')}/agencies/{self.agency}/messages"

    @property
    def trigger_url(self) -> str:
        return f"{self.connector.rstrip('/')}/trigger/send"


@dataclass(frozen=True, slots=True)
class Difference:
    """One place where what the connector did differs from what the protocol asks."""

    path: str  # a JSON path into the ``actual`` document, e.g. ``$.claims.corr``
    expected: Any
    actual: Any

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "expected": self.expected, "actual": self.actual}


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()


def differences(expected: Any, actual: Any, path: str = "$") -> list[Difference]:
    """Where ``actual`` departs from ``expected``, as JSON paths.

    ``expected`` is a partial document: members of an object that it does not name are
    not compared. A callable in ``expected`` is a predicate ``(actual) -> str | None``
    returning what was wanted when the value does not do (shown as the expected value).
    """
    if callable(expected) and not isinstance(expected, type):
        wanted = expected(actual)
        return [] if wanted is None else [Difference(path, wanted, _shown(actual))]
    if isinstance(expected, Mapping):
        if not isinstance(actual, Mapping):
            return [Difference(path, "an object", _shown(actual))]
        found: list[Difference] = []
        for name, want in expected.items():
            member = f"{path}.{name}" if _plain_name(name) else f"{path}[{json.dumps(name)}]"
            found += differences(want, actual.get(name, MISSING), member)
        return found
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        pairs = enumerate(zip(expected, actual, strict=True))
        return [d for i, (w, a) in pairs for d in differences(w, a, f"{path}[{i}]")]
    if (
        actual is MISSING
        or expected != actual
        or isinstance(expected, bool) != isinstance(actual, bool)
    ):
        return [Difference(path, expected, _shown(actual))]
    return []


def _plain_name(name: str) -> bool:
    return name.replace("_", "a").replace("-", "a").isalnum()


def _shown(value: Any) -> Any:
    return "<missing>" if value is MISSING else value


class Violation(Exception):
    """Raised by a check: the connector did not do what the protocol asks."""

    def __init__(
        self,
        message: str,
        found: list[Difference] | None = None,
        *,
        exchange: Exchange | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.differences = found or []
        self.exchange = exchange


def _text(data: bytes) -> dict[str, str]:
    try:
        return {"text": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


@dataclass(slots=True, kw_only=True)
class Exchange:
    """One HTTP request and its answer, between the kit and the connector."""

    case: str
    direction: str  # "kit->connector" (deliveries, triggers) or "connector->kit"
    method: str
    url: str
    request_headers: dict[str, str]
    request_body: bytes
    started: float  # wall clock
    status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: bytes = b""
    elapsed: float = 0.0
    error: str | None = None
    note: str = ""  # what the kit did with it ("answered 503 receiver-unavailable", ...)

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.response_headers.items():
            if key.lower() == lowered:
                return value
        return None

    def request_header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.request_headers.items():
            if key.lower() == lowered:
                return value
        return None

    def response_json(self) -> Any:
        try:
            return json.loads(self.response_body)
        except (ValueError, UnicodeDecodeError):
            return MISSING

    def as_dict(self) -> dict[str, Any]:
        return {
            "case": self.case,
            "direction": self.direction,
            "started": round(self.started, 6),
            "elapsed": round(self.elapsed, 6),
            "request": {
                "method": self.method,
                "url": self.url,
                "headers": self.request_headers,
                "body": _text(self.request_body),
            },
            "response": None
            if self.status is None
            else {
                "status": self.status,
                "headers": self.response_headers,
                "body": _text(self.response_body),
            },
            "error": self.error,
            "note": self.note,
        }

    def raw_request(self) -> str:
        """The request as HTTP/1.1 text (what a connector developer would replay)."""
        lines = [f"{self.method} {self.url} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in self.request_headers.items()]
        body = _text(self.request_body)
        text = body.get("text", f"<{len(self.request_body)} bytes, base64 {body.get('base64')}>")
        return "\n".join(lines) + "\n\n" + text

    def raw_response(self, limit: int = 2000) -> str:
        """The answer as HTTP/1.1 text (or what went wrong), the body cut at ``limit``."""
        if self.status is None:
            return f"<no answer: {self.error}>"
        lines = [f"HTTP/1.1 {self.status}"]
        lines += [f"{name}: {value}" for name, value in self.response_headers.items()]
        body = _text(self.response_body)
        text = body.get("text", f"<{len(self.response_body)} bytes, not UTF-8>")
        if len(text) > limit:
            text = text[:limit] + f"... ({len(self.response_body)} bytes)"
        return "\n".join(lines) + "\n\n" + text


CheckFunction = Callable[["Session"], Awaitable[None]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    """A named requirement of the protocol, checked against the connector."""

    id: str
    side: Side
    title: str
    description: str
    reference: str  # where docs/protocol.md says so
    run: CheckFunction


def catalogue(
    side: Side, into: list[Check]
) -> Callable[[str, str, str, str], Callable[[CheckFunction], CheckFunction]]:
    """A decorator that registers a check function of ``side`` in ``into``, in order."""

    def check(
        name: str, title: str, reference: str, description: str
    ) -> Callable[[CheckFunction], CheckFunction]:
        def register(run: CheckFunction) -> CheckFunction:
            into.append(
                Check(
                    id=f"{side}.{name}",
                    side=side,
                    title=title,
                    description=description,
                    reference=reference,
                    run=run,
                )
            )
            return run

        return register

    return check


@dataclass(slots=True, kw_only=True)
class CheckResult:
    check: Check
    outcome: Outcome
    message: str = ""
    differences: list[Difference] = field(default_factory=list)
    exchange: Exchange | None = None  # the exchange the verdict is about
    exchanges: list[Exchange] = field(default_factory=list)
    cases: list[str] = field(default_factory=list)
    duration: float = 0.0

    @property
    def passed(self) -> bool:
        return self.outcome is Outcome.PASSED
