"""Registry: deny by default, wildcard grants, the single transition table."""

from __future__ import annotations

import pytest

from gateway.registry import (
    TRANSITIONS,
    Agency,
    AgencyKind,
    ConnectionState,
    Grant,
    IllegalTransition,
    Registry,
    RegistryError,
    StateEvent,
)


def _registry() -> Registry:
    agencies = [
        Agency(code=c, name=c, kind=AgencyKind.CENTRAL, endpoint=f"http://x/{c}",
               services=frozenset({"ping", "records"}), state=ConnectionState.CONNECTED)
        for c in ("AG001", "AG002", "AG003")
    ]  # fmt: skip
    return Registry(agencies)


def test_nothing_is_allowed_without_a_grant() -> None:
    """Deny by default."""
    assert not _registry().may_call("AG001", "AG002", "ping")


def test_exact_and_wildcard_grants() -> None:
    """A grant covers its client, provider and service; '*' covers any."""
    registry = _registry()
    registry.grant(Grant(client="AG001", provider="AG002", service="records"))
    registry.grant(Grant(client="*", provider="*", service="ping"))
    assert registry.may_call("AG001", "AG002", "records")
    assert not registry.may_call("AG003", "AG002", "records")
    assert registry.may_call("AG003", "AG001", "ping")


def test_grant_does_not_create_a_service() -> None:
    """A service the provider does not offer is refused even under a '*' grant."""
    registry = _registry()
    registry.grant(Grant(client="*", provider="*", service="*"))
    assert not registry.may_call("AG001", "AG002", "tax")
    assert not registry.may_call("NOBODY", "AG002", "ping")


def test_connection_path_after_an_incident() -> None:
    """disconnected -> enrolling -> approved -> verified -> connected, each change recorded."""
    registry = _registry()
    registry.apply("AG001", StateEvent.DISCONNECT, actor="ops", reason="attack")
    path = [StateEvent.ENROL, StateEvent.APPROVE, StateEvent.VERIFY, StateEvent.CONNECT]
    changes = [registry.apply("AG001", e, actor="ops", reason="wave 1") for e in path]
    assert [c.after for c in changes] == [
        ConnectionState.ENROLLING,
        ConnectionState.APPROVED,
        ConnectionState.VERIFIED,
        ConnectionState.CONNECTED,
    ]
    assert changes[0].before is ConnectionState.DISCONNECTED
    assert changes[-1].actor == "ops"


def test_illegal_transition_raises_one_typed_error() -> None:
    """Skipping approval is refused with IllegalTransition naming state and event."""
    registry = _registry()
    registry.apply("AG001", StateEvent.DISCONNECT, actor="ops", reason="x")
    with pytest.raises(IllegalTransition, match="cannot verify while disconnected"):
        registry.apply("AG001", StateEvent.VERIFY, actor="ops", reason="x")
    assert registry.require("AG001").state is ConnectionState.DISCONNECTED


@pytest.mark.parametrize("state", list(ConnectionState))
def test_every_state_can_be_disconnected_or_already_is(state: ConnectionState) -> None:
    """The incident lever works from every state."""
    assert state is ConnectionState.DISCONNECTED or (state, StateEvent.DISCONNECT) in TRANSITIONS


def test_fallback_and_quarantine() -> None:
    """direct fallback from disconnected; quarantine released by an operator."""
    registry = _registry()
    registry.apply("AG001", StateEvent.QUARANTINE, actor="auto", reason="anomaly")
    registry.apply("AG001", StateEvent.RELEASE, actor="ops", reason="cleared")
    registry.apply("AG002", StateEvent.DISCONNECT, actor="ops", reason="x")
    registry.apply("AG002", StateEvent.FALLBACK, actor="ops", reason="plan")
    assert registry.require("AG002").state is ConnectionState.DIRECT


def test_snapshot_round_trips() -> None:
    """restore(snapshot()) gives the same agencies and grants."""
    registry = _registry()
    registry.grant(Grant(client="*", provider="AG002", service="ping"))
    registry.apply("AG003", StateEvent.DISCONNECT, actor="ops", reason="x")
    again = Registry.restore(registry.snapshot())
    assert again.agencies() == registry.agencies()
    assert again.grants() == registry.grants()


def test_bad_codes_are_refused() -> None:
    """Agency and service codes follow the protocol's patterns."""
    with pytest.raises(RegistryError):
        Registry([Agency(code="bad code", name="x", kind=AgencyKind.CENTRAL, endpoint="e")])
    with pytest.raises(RegistryError):
        Registry(
            [Agency(code="AG9", name="x", kind=AgencyKind.CENTRAL, endpoint="e",
                    services=frozenset({"Bad Service"}))]
        )  # fmt: skip
