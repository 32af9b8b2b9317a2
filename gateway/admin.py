"""Operator actions and the signed configuration document.

Every action changes the trust store or the registry, goes into the message log with the
operator's identity, and is persisted. The HTTP admin API and the scenario runner both
call these functions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

import structlog
from cryptography.hazmat.primitives import serialization

from gateway.log import JSONValue, LogEntry
from gateway.protocol import (
    MAX_LIFETIME_SECONDS,
    MAX_TOKEN_BYTES,
    TYP_CONF,
    b64url_encode,
    body_digest,
)
from gateway.registry import ConnectionState, StateChange, StateEvent
from gateway.service import Gateway
from gateway.trust import Enrolment, KeyRecord, csr_agency

__all__ = ["TYP_CONF", "Admin", "conf_document"]

CONF_LIFETIME_SECONDS = 3600

_log = structlog.get_logger("pasarela.admin")


@dataclass(frozen=True, slots=True, kw_only=True)
class ActionResult:
    action: str
    seq: int
    detail: dict[str, JSONValue]


class Admin:
    """The operator's levers on one gateway."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def _record(
        self, *, actor: str, action: str, reason: str, **detail: JSONValue
    ) -> ActionResult:
        gw = self.gateway
        fields: dict[str, JSONValue] = {
            "actor": actor,
            "action": action,
            "reason": reason,
            **detail,
        }
        record = gw.log.append(LogEntry(kind="admin", at=gw.clock.now(), fields=fields))
        persisted = gw.persist()
        if persisted is not None:
            await persisted
        gw.metrics.admin_actions.labels(action).inc()
        _log.info("admin_action", seq=record.seq, **fields)
        await gw.log.sync(record.seq)
        return ActionResult(action=action, seq=record.seq, detail=dict(detail))

    @staticmethod
    def _change(change: StateChange) -> dict[str, JSONValue]:
        return {"agency": change.agency, "from": change.before.value, "to": change.after.value}

    async def transition(
        self, code: str, event: StateEvent, *, actor: str, reason: str
    ) -> ActionResult:
        """Move one agency through the transition table (raises IllegalTransition)."""
        change = self.gateway.registry.apply(code, event, actor=actor, reason=reason)
        if event in (StateEvent.RELEASE, StateEvent.QUARANTINE):
            self.gateway.detector.forget(code)  # counted afresh from here
        return await self._record(
            actor=actor, action=event.value, reason=reason, **self._change(change)
        )

    async def move_endpoint(
        self, code: str, endpoint: str, *, actor: str, reason: str
    ) -> ActionResult:
        """Point the gateway at another URL for ``code`` (an agency moved its system)."""
        registry = self.gateway.registry
        agency = registry.require(code)
        if not endpoint.startswith(("http://", "https://")) or len(endpoint) > 500:
            raise ValueError("endpoint must be an http(s) URL of at most 500 characters")
        registry.add(replace(agency, endpoint=endpoint))
        return await self._record(
            actor=actor,
            action="move-endpoint",
            reason=reason,
            agency=code,
            before=agency.endpoint,
            endpoint=endpoint,
        )

    async def disconnect_all(self, *, actor: str, reason: str) -> ActionResult:
        """Disconnect every agency that is connected or on its way (the incident lever).

        Agencies on the direct fallback stay there: direct access does not use the gateway.
        """
        registry = self.gateway.registry
        moved: list[JSONValue] = []
        for agency in registry.agencies():
            if (
                agency.state is ConnectionState.DISCONNECTED
                or agency.state is ConnectionState.DIRECT  # direct access needs no gateway
                or agency.code == self.gateway.config.code
            ):
                continue
            registry.apply(agency.code, StateEvent.DISCONNECT, actor=actor, reason=reason)
            moved.append(agency.code)
        return await self._record(
            actor=actor, action="disconnect-all", reason=reason, agencies=moved, count=len(moved)
        )

    async def revoke(self, kid: str, *, actor: str, reason: str) -> ActionResult:
        record = self.gateway.trust.revoke(kid)
        return await self._record(
            actor=actor, action="revoke", reason=reason, kid=kid, agency=record.agency
        )

    async def open_generation(self, *, actor: str, reason: str) -> tuple[ActionResult, KeyRecord]:
        """Open a new key generation; the gateway's own key is re-certified into it."""
        gw = self.gateway
        generation = gw.trust.open_generation()
        gateway_key = gw.trust.issue(
            gw.config.code, gw.key_record.public_key, randomness=gw.randomness, now=gw.clock.now()
        )
        gw.key_record = gateway_key
        result = await self._record(
            actor=actor,
            action="open-generation",
            reason=reason,
            generation=generation,
            gateway_kid=gateway_key.kid,
        )
        return result, gateway_key

    async def submit_enrolment(self, csr_pem: str) -> Enrolment:
        """An agency asks for a certificate; moves it to ``enrolling`` when it may."""
        gw = self.gateway
        agency = gw.registry.require(csr_agency(csr_pem))  # before anything is stored
        enrolment_id = b64url_encode(gw.randomness.token_bytes(12))
        enrolment = gw.trust.submit(csr_pem, enrolment_id=enrolment_id, now=gw.clock.now())
        if agency.state in (ConnectionState.DISCONNECTED, ConnectionState.DIRECT):
            gw.registry.apply(
                agency.code, StateEvent.ENROL, actor=agency.code, reason="CSR submitted"
            )
        await self._record(
            actor=agency.code,
            action="enrolment-submitted",
            reason="CSR submitted",
            enrolment=enrolment.id,
            agency=agency.code,
        )
        return enrolment

    async def approve_enrolment(
        self, enrolment_id: str, *, actor: str, reason: str
    ) -> tuple[ActionResult, KeyRecord]:
        gw = self.gateway
        record = gw.trust.approve(enrolment_id, randomness=gw.randomness, now=gw.clock.now())
        agency = gw.registry.require(record.agency)
        if agency.state is ConnectionState.ENROLLING:
            gw.registry.apply(agency.code, StateEvent.APPROVE, actor=actor, reason=reason)
        result = await self._record(
            actor=actor,
            action="approve-enrolment",
            reason=reason,
            enrolment=enrolment_id,
            agency=record.agency,
            kid=record.kid,
        )
        return result, record


def conf_document(gateway: Gateway) -> tuple[bytes, str]:
    """The configuration document (JSON bytes) and its gateway signature."""
    now = int(gateway.clock.now())
    record = gateway.key_record
    raw = record.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    by_agency: dict[str, list[dict[str, Any]]] = {}
    for key in gateway.trust.records():
        by_agency.setdefault(key.agency, []).append(
            {
                "kid": key.kid,
                "generation": key.generation,
                "revoked": key.revoked,
                "serial": f"{key.serial:x}",
                "pem": key.certificate_pem,
            }
        )
    limits = gateway.config.limits
    document = {
        "version": 1,
        "issued_at": now,
        "gateway": {
            "code": gateway.config.code,
            "kid": record.kid,
            "jwk": {
                "kty": "OKP",
                "crv": "Ed25519",
                "x": b64url_encode(raw),
                "kid": record.kid,
                "alg": "EdDSA",
                "use": "sig",
            },
            "certificate": record.certificate_pem,
        },
        "ca": gateway.trust.ca.certificate.public_bytes(serialization.Encoding.PEM).decode(),
        "generation": gateway.trust.generation,
        "limits": {
            "leeway_seconds": limits.leeway,
            "max_lifetime_seconds": MAX_LIFETIME_SECONDS,
            "max_token_bytes": MAX_TOKEN_BYTES,
            "max_body_bytes": limits.max_body,
            "rate_per_second": limits.rate_per_second,
            "burst": limits.burst,
        },
        "agencies": [
            {
                "code": agency.code,
                "name": agency.name,
                "kind": agency.kind.value,
                "state": agency.state.value,
                "services": sorted(agency.services),
                "certificates": by_agency.get(agency.code, []),
            }
            for agency in gateway.registry.agencies()
        ],
        "grants": [
            {"client": g.client, "provider": g.provider, "service": g.service}
            for g in gateway.registry.grants()
        ],
    }
    body = json.dumps(document, separators=(",", ":")).encode()
    claims = {
        "iss": gateway.config.code,
        "iat": now,
        "exp": now + CONF_LIFETIME_SECONDS,
        "bh": body_digest(body),
    }
    return body, gateway.sign(claims, typ=TYP_CONF)
