"""What the pytest plugin's two kinds of gateway share: :class:`PasarelaGateway`.

The abstract gateway under test: its URL, CA and credentials directory, the admin API
called as the operator, security alerts, agencies, and the portal served on its thread.
The kinds are in :mod:`pasarela._plugin.in_process` and :mod:`pasarela._plugin.external`.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509

from agents.host import AgencyHost, ping
from agents.verification import Directory, Identity, encode_json
from gateway.clock import SystemClock, SystemRandomness
from gateway.guard import GuardPolicy
from gateway.registry import AgencyKind, Grant
from gateway.service import Gateway
from gateway.state import PORTAL_CODE
from gateway.transport import WireRequest
from pasarela._plugin.agencies import (
    PORTAL_GRANTS,
    PORTAL_SERVICES,
    GrantLike,
    PasarelaAgency,
    PasarelaPortal,
    _grant,
    _Inbox,
)
from pasarela._plugin.loop import _LoopThread, _serve, _SessionPerRequest
from pasarela._plugin.pki import _pem


class PasarelaGateway(abc.ABC):
    """A gateway under test, in process (``gateway`` is the :class:`Gateway`) or external.

    Its servers and its own HTTP calls run on a thread of their own; the methods here
    block the caller briefly and may be called from sync and async tests alike.
    """

    def __init__(
        self,
        *,
        url: str,
        code: str,
        ca: x509.Certificate,
        ca_certificate_path: Path,
        credentials_dir: Path,
        thread: _LoopThread,
        gateway: Gateway | None,
    ) -> None:
        self.url = url
        self.code = code
        self.ca = ca
        self.ca_certificate_path = ca_certificate_path
        #: Keys laid out like a state directory: ``ca/cert.pem``,
        #: ``agencies/<CODE>/{key,cert}.pem``, ``operator/key.pem``.
        self.credentials_dir = credentials_dir
        self.gateway = gateway
        self._thread = thread
        self._http = _SessionPerRequest()
        self._runners: list[web.AppRunner] = []
        self._portal: PasarelaPortal | None = None

    @property
    def conf_url(self) -> str:
        return f"{self.url}/v1/conf"

    @property
    def ca_certificate(self) -> str:
        """The platform CA certificate, PEM."""
        return _pem(self.ca).decode("ascii")

    @property
    def external(self) -> bool:
        return self.gateway is None

    # -- what the two kinds do differently ----------------------------------------------
    @abc.abstractmethod
    def operator_token(self, *, ttl: int = 600) -> str:
        """A bearer token for the admin API (``Authorization: Bearer <token>``)."""

    @abc.abstractmethod
    def directory(self) -> Directory:
        """The keys the gateway trusts now (what a receiving connector verifies with)."""

    def agency(
        self,
        code: str,
        *,
        endpoint: str | None = None,
        services: Collection[str] = ("ping",),
        grants: Iterable[GrantLike] = (),
    ) -> PasarelaAgency:
        """An agency registered and connected, offering ``services``, with ``grants`` added."""
        return self._agency(
            code, endpoint=endpoint, services=frozenset(services), grants=map(_grant, grants)
        )

    @abc.abstractmethod
    def _agency(
        self,
        code: str,
        *,
        endpoint: str | None,
        services: frozenset[str],
        grants: Iterable[Grant],
        kind: AgencyKind = AgencyKind.CENTRAL,
        name: str = "",
    ) -> PasarelaAgency:
        """Register ``code`` (in process) or take it from the state (external)."""

    # -- the same for both ----------------------------------------------------------------
    def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Call ``/v1/admin/<path>`` as the operator; return the status and the JSON answer."""
        headers = {"Authorization": f"Bearer {self.operator_token()}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = WireRequest(
            method=method,
            url=f"{self.url}/v1/admin/{path.lstrip('/')}",
            headers=headers,
            body=b"" if body is None else encode_json(body),
        )
        response = self._thread.run(self._http.send(request))
        try:
            return response.status, json.loads(response.body) if response.body else None
        except ValueError:  # not JSON: a defect or a proxy's page, shown as text
            return response.status, response.body.decode(errors="replace")

    def alerts(self, *, after: int = 0) -> list[dict[str, Any]]:
        """The gateway's security alerts with an id above ``after``, oldest first."""
        status, document = self.admin("GET", f"alerts?after={after}&limit=1000")
        if status != 200:
            raise RuntimeError(f"GET /v1/admin/alerts answered {status}: {document}")
        return list(document["alerts"])

    def portal(self) -> PasarelaPortal:
        """The Transparency Portal, registered and served (created on first use)."""
        if self._portal is not None:
            return self._portal
        inbox = _Inbox()
        host = AgencyHost(
            identities={},
            directory=self.directory,
            clock=SystemClock(),
            randomness=SystemRandomness(),
            services={"ati.answer": inbox.record, "ping": ping},
        )
        url = self._serve(host.app(), policy=GuardPolicy(max_connections_per_ip=512))
        agency = self._agency(
            PORTAL_CODE,
            endpoint=f"{url}{AgencyHost.endpoint_path(PORTAL_CODE)}",
            services=PORTAL_SERVICES,
            grants=PORTAL_GRANTS,
            kind=AgencyKind.AUTONOMOUS,
            name="Transparency Portal (CPLT)",
        )
        self._thread.call(lambda: host.set_identity(agency.identity))
        portal = PasarelaPortal(agency=agency, host=host, inbox=inbox)
        self._portal = portal
        return portal

    def _serve(self, app: web.Application, *, policy: GuardPolicy) -> str:
        runner, url = self._thread.run(_serve(app, policy=policy))
        self._runners.append(runner)
        return url

    def _agency_record(
        self, identity: Identity, *, endpoint: str | None, services: frozenset[str]
    ) -> PasarelaAgency:
        folder = self.credentials_dir / "agencies" / identity.code
        return PasarelaAgency(
            identity=identity,
            endpoint=endpoint,
            services=services,
            key_path=folder / "key.pem",
            certificate_path=folder / "cert.pem",
            gateway_url=self.url,
            ca=self.ca,
        )

    def close(self) -> None:
        """Stop every server this object started and release its thread."""
        try:
            for runner in reversed(self._runners):
                self._thread.run(runner.cleanup())
        finally:
            self._thread.close()
