"""The lab inside a rehearsal: the same techniques against the in-process gateway.

:class:`InProcessLab` speaks to the gateway through the rehearsal's own transport (so in
virtual time, over the same links and faults) and reads alerts and agency states from the
gateway itself instead of the admin API. Techniques that need real sockets, a local
server or operator powers beyond quarantine and release run only against a live gateway;
:data:`IN_PROCESS` names the ones that run here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

from agents.adversaries.lab import Lab, LabError, Probe, answer_of
from agents.adversaries.model import Result, Technique
from agents.adversaries.runner import run_technique
from agents.adversaries.tokens import TOKEN_TECHNIQUES
from agents.verification import Identity
from gateway.admin import Admin
from gateway.clock import Clock, Randomness
from gateway.registry import RegistryError, StateEvent
from gateway.service import Gateway
from gateway.transport import MemoryTransport, Transport, TransportError, WireRequest, WireResponse

__all__ = ["IN_PROCESS", "InProcessLab", "run_in_process"]

#: Techniques that need only messages, alerts and quarantine/release.
IN_PROCESS: Final = frozenset(
    {t.id for t in TOKEN_TECHNIQUES}
    | {"framing", "lateral-movement", "quarantined-agency-key", "disconnected-agency-key"}
)
_VERBS: Final = {
    "quarantine": StateEvent.QUARANTINE,
    "release": StateEvent.RELEASE,
    "connect": StateEvent.CONNECT,
    "disconnect": StateEvent.DISCONNECT,
}
PROBE_URL: Final = "http://probe.lab"


class InProcessLab(Lab):
    """A :class:`Lab` over a transport and a :class:`Gateway` object (no state directory)."""

    def __init__(
        self,
        *,
        gateway: Gateway,
        transport: Transport,
        gateway_url: str,
        identities: Mapping[str, Identity],
        clock: Clock,
        randomness: Randomness,
        sender: str,
        other: str,
        third: str,
        receiver: str,
    ) -> None:
        # Not Lab.__init__: nothing is read from disk and no HTTP session is opened.
        self.gateway_url = gateway_url.rstrip("/")
        self.clock = clock
        self.randomness = randomness
        self.identities = dict(identities)
        self.gateway_code = gateway.config.code
        self.sender, self.other, self.third, self.receiver = sender, other, third, receiver
        self.gateway = gateway
        self.transport = transport
        self.operations = Admin(gateway)
        self.conf: dict[str, Any] = {}

    async def start(self) -> None:
        status, _, document = await self.post("/v1/conf", method="GET")
        if status != 200 or not isinstance(document, dict):
            raise LabError(f"{self.gateway_url}/v1/conf: HTTP {status}")
        self.conf = document

    async def post(
        self,
        path: str,
        *,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        method: str = "POST",
    ) -> tuple[int, str | None, Any]:
        url = path if path.startswith("http") else f"{self.gateway_url}{path}"
        request = WireRequest(method=method, url=url, headers=dict(headers or {}), body=body)
        try:
            response = await self.transport.send(request)
        except TransportError as exc:
            raise ConnectionError(str(exc)) from exc
        return response.status, *answer_of(response.body)

    async def admin(
        self, method: str, path: str, payload: Mapping[str, Any] | None = None
    ) -> tuple[int, Any]:
        """The few operator calls the in-process techniques make, on the gateway itself."""
        route, _, query = path.lstrip("/").partition("?")
        parts = route.split("/")
        try:
            if method == "GET" and parts == ["alerts"]:
                params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
                detector = self.gateway.detector
                alerts = detector.recent(
                    after=int(params.get("after", 0)), limit=int(params.get("limit", 100))
                )
                return 200, {"alerts": [a.as_dict() for a in alerts], "last": detector.last_id}
            if method == "GET" and len(parts) == 2 and parts[0] == "agencies":
                agency = self.gateway.registry.require(parts[1])
                return 200, {"code": agency.code, "state": agency.state.value}
            if method == "POST" and len(parts) == 3 and parts[2] in _VERBS:
                reason = str((payload or {}).get("reason", "attack lab"))
                await self.operations.transition(
                    parts[1], _VERBS[parts[2]], actor="attack-lab", reason=reason
                )
                return 200, {}
        except RegistryError as exc:
            return 404, {"detail": str(exc)}
        return 501, {"detail": f"{method} /v1/admin/{path}: not available in process"}

    @asynccontextmanager
    async def probe(self) -> AsyncIterator[Probe]:
        """A route on the in-memory transport that records hits (nobody should fetch it)."""
        probe = Probe(url=PROBE_URL)
        memory = _memory(self.transport)

        async def record(request: WireRequest) -> WireResponse:
            probe.hits.append(f"{request.method} {request.url}")
            return WireResponse(status=200, body=b'{"keys": []}')

        if memory is not None:
            memory.mount(PROBE_URL, record)
        yield probe


def _memory(transport: Transport) -> MemoryTransport | None:
    while not isinstance(transport, MemoryTransport):
        inner = getattr(transport, "inner", None)
        if not isinstance(inner, Transport):
            return None
        transport = inner
    return transport


async def run_in_process(
    lab: InProcessLab, steps: Sequence[tuple[Technique, dict[str, Any]]]
) -> tuple[list[Result], list[str]]:
    """Run the steps this lab can run; returns the results and the ids it skipped."""
    await lab.start()
    results, skipped = [], []
    for technique, params in steps:
        if technique.id not in IN_PROCESS or technique.destructive:
            skipped.append(technique.id)
            continue
        results.append(await run_technique(lab, technique, params))
    return results, skipped
