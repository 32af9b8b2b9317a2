"""Prometheus metrics of one gateway (its own registry, so several gateways can share a process)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["GatewayMetrics"]


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.messages = Counter(
            "pasarela_messages",
            "Messages handled, by outcome (accepted, retried, rejected) and problem code.",
            ["outcome", "reason"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "pasarela_relay_seconds",
            "Time from receiving a message to answering its sender.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.admin_actions = Counter(
            "pasarela_admin_actions",
            "Operator actions, by action.",
            ["action"],
            registry=self.registry,
        )
        self.alerts = Counter(
            "pasarela_security_alerts",
            "Security alerts raised, by kind (a problem code, or auto-quarantine).",
            ["kind"],
            registry=self.registry,
        )
        self.agencies = Gauge(
            "pasarela_agencies",
            "Agencies in the registry, by connection state.",
            ["state"],
            registry=self.registry,
        )
        self.log_seq = Gauge(
            "pasarela_log_sequence",
            "Last sequence number of the message log.",
            registry=self.registry,
        )

    def render(self, states: Mapping[str, int] | None = None) -> bytes:
        """The exposition text; ``states`` refreshes the per-state agency gauge first."""
        for state, count in (states or {}).items():
            self.agencies.labels(state).set(count)
        return generate_latest(self.registry)
