"""Registry: agencies, the services they provide, access rights, connection states.

Access is denied by default: a client may call a provider's service only when a grant
covers it. A grant may use ``*`` for the client, the provider or the service (X-Road's
"global group" idea in its simplest form); the service must still be one the provider
offers. Connection states move only through :data:`TRANSITIONS`, the single table of
legal moves; anything else raises :class:`IllegalTransition`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Final

from gateway.protocol import AGENCY_CODE, SERVICE_CODE

__all__ = [
    "TRANSITIONS",
    "Agency",
    "AgencyKind",
    "ConnectionState",
    "Grant",
    "IllegalTransition",
    "Registry",
    "RegistryError",
    "StateChange",
    "StateEvent",
]


class AgencyKind(StrEnum):
    CENTRAL = "central"
    MUNICIPALITY = "municipality"
    AUTONOMOUS = "autonomous"


class ConnectionState(StrEnum):
    DISCONNECTED = "disconnected"
    ENROLLING = "enrolling"
    APPROVED = "approved"
    VERIFIED = "verified"
    CONNECTED = "connected"
    QUARANTINED = "quarantined"
    DIRECT = "direct"


class StateEvent(StrEnum):
    ENROL = "enrol"
    APPROVE = "approve"
    VERIFY = "verify"
    CONNECT = "connect"
    DISCONNECT = "disconnect"
    QUARANTINE = "quarantine"
    RELEASE = "release"
    FALLBACK = "fallback"


_S = ConnectionState
_E = StateEvent

#: The one table of legal state changes: (state, event) -> next state.
TRANSITIONS: Final[Mapping[tuple[ConnectionState, StateEvent], ConnectionState]] = {
    (_S.DISCONNECTED, _E.ENROL): _S.ENROLLING,
    (_S.DIRECT, _E.ENROL): _S.ENROLLING,
    (_S.ENROLLING, _E.APPROVE): _S.APPROVED,
    (_S.APPROVED, _E.VERIFY): _S.VERIFIED,
    (_S.VERIFIED, _E.CONNECT): _S.CONNECTED,
    # An operator may reinstate a disconnected agency whose keys are still trusted.
    (_S.DISCONNECTED, _E.CONNECT): _S.CONNECTED,
    (_S.CONNECTED, _E.QUARANTINE): _S.QUARANTINED,
    (_S.VERIFIED, _E.QUARANTINE): _S.QUARANTINED,
    (_S.QUARANTINED, _E.RELEASE): _S.CONNECTED,
    (_S.DISCONNECTED, _E.FALLBACK): _S.DIRECT,
    **{
        (state, _E.DISCONNECT): _S.DISCONNECTED
        for state in (_S.ENROLLING, _S.APPROVED, _S.VERIFIED, _S.CONNECTED, _S.QUARANTINED)
    },
    (_S.DIRECT, _E.DISCONNECT): _S.DISCONNECTED,
}


class RegistryError(Exception):
    """A registry change that cannot be made (unknown agency, bad code, ...)."""


class IllegalTransition(RegistryError):
    """A state change the transition table does not allow."""

    def __init__(self, agency: str, state: ConnectionState, event: StateEvent) -> None:
        super().__init__(f"agency {agency}: cannot {event.value} while {state.value}")
        self.agency = agency
        self.state = state
        self.event = event


@dataclass(frozen=True, slots=True, kw_only=True)
class Agency:
    code: str
    name: str
    kind: AgencyKind
    endpoint: str
    services: frozenset[str] = frozenset()
    state: ConnectionState = ConnectionState.DISCONNECTED


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """``client`` may call ``service`` of ``provider``; any of them may be ``*``."""

    client: str
    provider: str
    service: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StateChange:
    agency: str
    event: StateEvent
    before: ConnectionState
    after: ConnectionState
    actor: str
    reason: str


class Registry:
    """Agencies by code, grants, and the state machine that moves agencies."""

    def __init__(self, agencies: Iterable[Agency] = (), grants: Iterable[Grant] = ()) -> None:
        self._agencies: dict[str, Agency] = {}
        self._grants: set[tuple[str, str, str]] = set()
        for agency in agencies:
            self.add(agency)
        for grant in grants:
            self.grant(grant)

    def add(self, agency: Agency) -> None:
        if not AGENCY_CODE.fullmatch(agency.code):
            raise RegistryError(f"agency code {agency.code!r} is not valid")
        bad = [s for s in agency.services if not SERVICE_CODE.fullmatch(s)]
        if bad:
            raise RegistryError(f"service code(s) {bad} of {agency.code} are not valid")
        self._agencies[agency.code] = agency

    def get(self, code: str) -> Agency | None:
        return self._agencies.get(code)

    def require(self, code: str) -> Agency:
        agency = self._agencies.get(code)
        if agency is None:
            raise RegistryError(f"unknown agency {code!r}")
        return agency

    def agencies(self) -> list[Agency]:
        return list(self._agencies.values())

    def grant(self, grant: Grant) -> None:
        self._grants.add((grant.client, grant.provider, grant.service))

    def revoke_grant(self, grant: Grant) -> None:
        self._grants.discard((grant.client, grant.provider, grant.service))

    def grants(self) -> list[Grant]:
        return [Grant(client=c, provider=p, service=s) for c, p, s in sorted(self._grants)]

    def may_call(self, client: str, provider: str, service: str) -> bool:
        """Deny by default: True only when the provider offers ``service`` and a grant covers it."""
        target = self._agencies.get(provider)
        if target is None or service not in target.services or client not in self._agencies:
            return False
        grants = self._grants
        return any(
            (c, p, s) in grants
            for c in (client, "*")
            for p in (provider, "*")
            for s in (service, "*")
        )

    def apply(self, code: str, event: StateEvent, *, actor: str, reason: str) -> StateChange:
        """Move ``code`` by ``event`` through the transition table."""
        agency = self.require(code)
        after = TRANSITIONS.get((agency.state, event))
        if after is None:
            raise IllegalTransition(code, agency.state, event)
        self._agencies[code] = replace(agency, state=after)
        return StateChange(
            agency=code, event=event, before=agency.state, after=after, actor=actor, reason=reason
        )

    # -- persistence ------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return {
            "agencies": [
                {
                    "code": a.code,
                    "name": a.name,
                    "kind": a.kind.value,
                    "endpoint": a.endpoint,
                    "services": sorted(a.services),
                    "state": a.state.value,
                }
                for a in self._agencies.values()
            ],
            "grants": [
                {"client": c, "provider": p, "service": s} for c, p, s in sorted(self._grants)
            ],
        }

    @classmethod
    def restore(cls, snapshot: Mapping[str, Any]) -> Registry:
        agencies = [
            Agency(
                code=str(a["code"]),
                name=str(a["name"]),
                kind=AgencyKind(a["kind"]),
                endpoint=str(a["endpoint"]),
                services=frozenset(a["services"]),
                state=ConnectionState(a["state"]),
            )
            for a in snapshot["agencies"]
        ]
        grants = [Grant(**g) for g in snapshot["grants"]]
        return cls(agencies, grants)
