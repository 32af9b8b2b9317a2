"""The rehearsal: the portal's world through the incident and the reconnection plan.

A :class:`Simulation` runs inside a virtual-time loop. One process walks the calendar
day by day (institutions join the portal, citizens file requests, the portal routes them,
institutions answer); other processes run the scenario's timeline (the incident, the
fallback, each reconnection wave, each agency's enrolment and checks). Every request to
and answer from a central agency linked through the gateway is a real signed message
relayed by the production gateway code; municipalities and agencies on the direct
fallback work with the portal directly, at human pace.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agents.connector import Connector
from agents.institutions import (
    AtiRequest,
    Group,
    Profile,
    Status,
    Workload,
    draw_profile,
    number_of,
    poisson,
)
from agents.verification import ConnectorError, Identity, Refused, encode_json
from gateway.clock import Clock
from gateway.log import LogStore
from gateway.protocol import MessageClaims
from gateway.registry import ConnectionState, StateEvent
from gateway.trust import generate_key
from scenarios.calendar import BusinessCalendar, ati_deadline
from scenarios.model import CALENDAR_END, Scenario
from scenarios.virtual import LoopClock, sleep_until
from scenarios.world import PORTAL, Plumbing, build_plumbing

__all__ = ["DaySample", "Simulation", "SimulationOutcome", "day_of", "epoch"]

OPERATOR = "operator"


def epoch(when: dt.date | dt.datetime, hour: int = 0, minute: int = 0) -> float:
    """Seconds since the Unix epoch of a naive scenario date or datetime (read as UTC)."""
    if not isinstance(when, dt.datetime):
        when = dt.datetime(when.year, when.month, when.day, hour, minute)
    return when.replace(tzinfo=dt.UTC).timestamp()


def day_of(seconds: float) -> dt.date:
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC).date()


@dataclass(frozen=True, slots=True, kw_only=True)
class DaySample:
    """The state of the world at the end of one day."""

    day: dt.date
    central_connected: int
    central_direct: int
    municipalities_on_portal: int
    autonomous_on_portal: int
    backlog: int
    filed_through_portal: int


@dataclass(slots=True, kw_only=True)
class SimulationOutcome:
    """Everything the results are computed from."""

    requests: list[AtiRequest]
    samples: list[DaySample]
    timeline: list[dict[str, object]]
    waves: dict[str, dict[str, object]]
    linked_at_incident: int
    stale_attempts: Counter[str]
    check_failures: int
    back: dict[str, dt.date]
    fallback_answers: int
    messages_sent: int
    events: int


@dataclass(slots=True)
class _Central:
    """A central agency's side of the world."""

    code: str
    profile: Profile
    rng: random.Random
    listed: bool = False  # citizens can file to it on the portal
    outbox: deque[AtiRequest] = field(default_factory=deque)  # the portal's, for this agency
    work: Workload = field(default_factory=Workload)
    answers: deque[AtiRequest] = field(default_factory=deque)  # ready, not yet delivered
    outage_until: dt.date | None = None


class Simulation:
    """One run of a scenario (build it inside the virtual loop, then ``await run()``)."""

    def __init__(
        self,
        scenario: Scenario,
        clock: LoopClock,
        *,
        log_store: LogStore,
        progress: Callable[[dt.date], None] | None = None,
    ) -> None:
        self.scenario = scenario
        self.clock: Clock = clock
        self.calendar = BusinessCalendar()
        self.progress = progress or (lambda day: None)
        seed = scenario.seed
        self.rng = random.Random(f"{seed}:world")
        world = scenario.world
        self.plumbing: Plumbing = build_plumbing(
            clock=clock,
            seed=seed,
            gateway_code=world.gateway_code,
            central_codes=world.central_codes(),
            log_store=log_store,
            agency_services={"ati.request": self._on_request},
            portal_services={"ati.answer": self._on_answer},
        )
        self.centrals = {
            code: _Central(
                code=code,
                profile=self._profile("central", code),
                rng=random.Random(f"{seed}:central:{code}"),
            )
            for code in world.central_codes()
        }
        self.local: dict[str, tuple[Group, Profile, Workload]] = {}
        for group, codes in (
            (Group.MUNICIPALITY, world.municipality_codes()),
            (Group.AUTONOMOUS, world.autonomous_codes()),
        ):
            for code in codes:
                self.local[code] = (group, self._profile(group.value, code), Workload())
        self.offline = {
            code: (self._profile("offline_municipality", code), Workload())
            for code in world.municipality_codes()
        }
        self.requests: list[AtiRequest] = []
        #: Requests routed over the gateway, by number, until answered (message lookups).
        self._in_flight: dict[int, AtiRequest] = {}
        self.samples: list[DaySample] = []
        self.timeline: list[dict[str, object]] = []
        self.waves: dict[str, dict[str, object]] = {}
        self.stale_attempts: Counter[str] = Counter()
        self.check_failures = 0
        #: When each agency named by the plan was back (connected, or on direct fallback).
        self.back: dict[str, dt.date] = {}
        self.fallback_answers = 0
        self.messages_sent = 0
        self.events = 0
        self.linked_at_incident = 0
        self.disconnected = False  # after the incident's mass disconnection
        self._numbers = 0
        self._filed_portal = 0
        self._portal_connector: Connector | None = None
        self._link_order = world.linked_codes()
        self._approvals: Counter[tuple[int, int]] = Counter()  # (ISO year, week) -> used
        self._linked = 0

    # -- set-up ---------------------------------------------------------------------------
    def _profile(self, group: str, code: str) -> Profile:
        b = self.scenario.behaviour[group]
        return draw_profile(
            random.Random(f"{self.scenario.seed}:profile:{code}"),
            capacity=b.capacity_per_day,
            answer_days_median=b.answer_days_median,
            answer_days_sigma=b.answer_days_sigma,
            never_answer=b.never_answer,
            extension_share=b.extension_share,
            outage_per_year=b.outage_per_year,
            outage_days=b.outage_days,
        )

    def _record(self, day: dt.date, event: str, **detail: object) -> None:
        self.timeline.append({"date": day.isoformat(), "event": event, **detail})

    def _state(self, code: str) -> ConnectionState:
        return self.plumbing.registry.require(code).state

    # -- enrolment (used for onboarding, the portal after the incident, and waves) ---------
    async def _enrol(self, code: str) -> tuple[str, Ed25519PrivateKey]:
        """Generate a key and submit its CSR through the gateway."""
        key = generate_key(self.plumbing.randomness)
        enrolment_id = await self.plumbing.enrol(code, key)
        self.events += 1
        return enrolment_id, key

    async def _approve(
        self, code: str, enrolment_id: str, key: Ed25519PrivateKey, reason: str
    ) -> Connector:
        """The operator approves; the agency gets its certificate and a fresh connector."""
        _, record = await self.plumbing.admin.approve_enrolment(
            enrolment_id, actor=OPERATOR, reason=reason
        )
        identity = Identity(code=code, key=key, certificate=record.certificate)
        self.events += 1
        return self.plumbing.connect_party(identity)

    def _checks_pass(self, connector: Connector, rng: random.Random) -> bool:
        """The agency's checks: the platform's directory lists its new key under its code,
        and it is not misconfigured (``plan.check_failure`` is the chance that it is)."""
        listed = self.plumbing.directory().agency_key(connector.identity.kid)
        self.events += 1
        owned = listed is not None and listed[0] == connector.identity.code
        return owned and rng.random() >= self.scenario.plan.check_failure

    async def _connect(self, code: str, reason: str) -> None:
        admin = self.plumbing.admin
        await admin.transition(code, StateEvent.VERIFY, actor=OPERATOR, reason=reason)
        await admin.transition(code, StateEvent.CONNECT, actor=OPERATOR, reason=reason)
        self.events += 2

    async def _onboard(self, code: str, reason: str) -> Connector:
        """Immediate enrolment, approval, checks and connection (no human delays)."""
        enrolment_id, key = await self._enrol(code)
        connector = await self._approve(code, enrolment_id, key, reason)
        await self._connect(code, reason)
        return connector

    # -- services: what the portal and agencies do with messages they receive ---------------
    async def _on_request(self, claims: MessageClaims, body: bytes) -> tuple[int, bytes]:
        """AltaSaiPortal at the agency: take the request into its workload."""
        central = self.centrals[claims.aud]
        today = day_of(self.clock.now())
        if central.outage_until is not None and today <= central.outage_until:
            return 503, encode_json({"estado": "06", "detalle": "agency system down"})
        request = self._in_flight[number_of(json.loads(body)["NumSolicitud"])]
        self._take(central, request, today)
        return 200, encode_json({"estado": "00", "NumSolicitud": request.label})

    async def _on_answer(self, claims: MessageClaims, body: bytes) -> tuple[int, bytes]:
        """AltaSaiOrganismo at the portal: the agency's answer arrives."""
        number = number_of(json.loads(body)["NumSolicitud"])
        request = self._in_flight.pop(number, None)
        if request is not None and request.status is Status.PENDING:
            request.status = Status.ANSWERED
            request.answered = day_of(self.clock.now())
        label = request.label if request is not None else str(number)
        return 200, encode_json({"estado": "00", "NumSolicitud": label})

    def _take(self, central: _Central, request: AtiRequest, today: dt.date) -> None:
        request.delivered = today
        if request.will_answer:
            self._schedule(central.work, request, today)

    # -- the day loop -------------------------------------------------------------------------
    async def run(self) -> SimulationOutcome:
        scenario = self.scenario
        processes = [asyncio.create_task(self._portal_start())]
        if scenario.incident is not None:
            processes.append(asyncio.create_task(self._incident()))
        if scenario.plan.fallback and scenario.plan.fallback_start is not None:
            processes.append(asyncio.create_task(self._fallback()))
        for wave in scenario.plan.waves:
            processes.append(asyncio.create_task(self._wave(wave.name, wave.start, wave.agencies)))
        try:
            await self._days()
        finally:
            for task in processes:
                task.cancel()
            await asyncio.gather(*processes, return_exceptions=True)
        await self.plumbing.gateway.log.sync()
        return SimulationOutcome(
            requests=self.requests,
            samples=self.samples,
            timeline=self.timeline,
            waves=self.waves,
            linked_at_incident=self.linked_at_incident,
            stale_attempts=self.stale_attempts,
            check_failures=self.check_failures,
            back=self.back,
            fallback_answers=self.fallback_answers,
            messages_sent=self.messages_sent,
            events=self.events,
        )

    async def _portal_start(self) -> None:
        await sleep_until(self.clock, epoch(self.scenario.start, 7))
        self._portal_connector = await self._onboard(PORTAL, "portal launch")

    async def _days(self) -> None:
        scenario = self.scenario
        day = scenario.start
        while day <= scenario.end:
            if self.calendar.is_business_day(day):
                await sleep_until(self.clock, epoch(day, 8))
                await self._grow(day)
                self._outages(day)
                self._file(day)
                await sleep_until(self.clock, epoch(day, 9, 30))
                await self._deliver(day)
                await sleep_until(self.clock, epoch(day, 16))
                await self._answer(day)
            await sleep_until(self.clock, epoch(day, 23, 59))
            self.samples.append(self._sample(day))
            self.progress(day)
            day += dt.timedelta(days=1)

    async def _grow(self, day: dt.date) -> None:
        """Before the incident, link agencies in code order as the growth curve says."""
        if self.disconnected:
            return
        target = self.scenario.growth.count_at("central_linked", day)
        while self._linked < min(target, len(self._link_order)):
            code = self._link_order[self._linked]
            await self._onboard(code, "linked to the portal through the gateway")
            self.centrals[code].listed = True
            self._linked += 1

    def _on_portal(self, group: Group, day: dt.date) -> int:
        name = "municipalities_on_portal" if group is Group.MUNICIPALITY else "autonomous_on_portal"
        return self.scenario.growth.count_at(name, day)

    def _outages(self, day: dt.date) -> None:
        for central in self.centrals.values():
            profile = central.profile
            if profile.outage_per_year <= 0 or (
                central.outage_until is not None and day <= central.outage_until
            ):
                continue
            if central.rng.random() < profile.outage_per_year / 250:
                length = max(1, round(central.rng.expovariate(1 / profile.outage_days)))
                central.outage_until = day + dt.timedelta(days=length - 1)
                self.events += 1

    def _new_request(
        self,
        code: str,
        group: Group,
        profile: Profile,
        day: dt.date,
        rng: random.Random,
        *,
        portal: bool,
    ) -> AtiRequest:
        self._numbers += 1
        extended = rng.random() < profile.extension_share
        request = AtiRequest(
            number=self._numbers,
            institution=code,
            group=group,
            filed=day,
            deadline=self._deadline(day, extended=extended),
            work_days=profile.work_days(rng),
            will_answer=rng.random() >= profile.never_answer,
            extended=extended,
            through_portal=portal,
        )
        self.requests.append(request)
        if group is Group.CENTRAL:
            self._in_flight[request.number] = request
        self.events += 1
        if portal:
            self._filed_portal += 1
        return request

    def _deadline(self, day: dt.date, *, extended: bool) -> dt.date:
        """The legal deadline; past the calendar's last year, its last day stands in."""
        try:
            return ati_deadline(self.calendar, day, extended=extended)
        except ValueError:
            return CALENDAR_END

    def _schedule(self, work: Workload, request: AtiRequest, day: dt.date) -> None:
        """Queue ``request`` to be ready after its work days (a draw in the lognormal's far
        tail that lands past the calendar is simply never ready within the run)."""
        try:
            ready = self.calendar.add_business_days(day, request.work_days)
        except ValueError:
            return
        work.add(request, ready)

    def _file(self, day: dt.date) -> None:
        demand = self.scenario.demand
        rng = self.rng
        for central in self.centrals.values():
            if central.listed:
                for _ in range(poisson(rng, demand.central)):
                    req = self._new_request(
                        central.code, Group.CENTRAL, central.profile, day, rng, portal=True
                    )
                    central.outbox.append(req)
        on_portal = {
            Group.MUNICIPALITY: self._on_portal(Group.MUNICIPALITY, day),
            Group.AUTONOMOUS: self._on_portal(Group.AUTONOMOUS, day),
        }
        seen = Counter[Group]()
        for code, (group, profile, work) in self.local.items():
            seen[group] += 1
            if seen[group] > on_portal[group]:
                if group is Group.MUNICIPALITY:
                    self._file_offline(code, day)
                continue
            rate = demand.municipal if group is Group.MUNICIPALITY else demand.autonomous
            for _ in range(poisson(rng, rate)):
                req = self._new_request(code, group, profile, day, rng, portal=True)
                req.delivered = day
                if req.will_answer:
                    self._schedule(work, req, day)

    def _file_offline(self, code: str, day: dt.date) -> None:
        profile, work = self.offline[code]
        for _ in range(poisson(self.rng, self.scenario.demand.offline_municipal)):
            req = self._new_request(
                code, Group.OFFLINE_MUNICIPALITY, profile, day, self.rng, portal=False
            )
            req.delivered = day
            if req.will_answer:
                self._schedule(work, req, day)

    async def _deliver(self, day: dt.date) -> None:
        """The portal routes waiting requests: over the gateway, or directly on fallback."""
        sends = []
        for central in self.centrals.values():
            if not central.outbox:
                continue
            state = self._state(central.code)
            if state is ConnectionState.DIRECT:
                while central.outbox:
                    self._take(central, central.outbox.popleft(), day)
            elif state is ConnectionState.CONNECTED and self._portal_ready():
                sends.append(self._send_requests(central))
        await asyncio.gather(*sends)

    def _portal_ready(self) -> bool:
        return (
            self._portal_connector is not None and self._state(PORTAL) is ConnectionState.CONNECTED
        )

    async def _send_requests(self, central: _Central) -> None:
        connector = self._portal_connector
        assert connector is not None
        while central.outbox:
            request = central.outbox[0]
            body = {
                "CodOrganismo": central.code,
                "NumSolicitud": request.label,
                "FechaSolicitud": request.filed.isoformat(),
                "Solicitante": f"citizen-{request.number}",
                "TextoSolicitud": "Solicito información sobre ...",
            }
            try:
                await connector.send(to=central.code, service="ati.request", body=body)
            except ConnectorError:
                self.messages_sent += 1
                return  # try again on the next business day
            self.messages_sent += 1
            central.outbox.popleft()

    async def _answer(self, day: dt.date) -> None:
        sends = []
        for central in self.centrals.values():
            state = self._state(central.code)
            down = central.outage_until is not None and day <= central.outage_until
            capacity = central.profile.capacity
            if state is ConnectionState.DIRECT:
                capacity = max(1, int(capacity * self.scenario.plan.fallback_capacity))
            if not down and state in (ConnectionState.CONNECTED, ConnectionState.DIRECT):
                central.answers.extend(central.work.take_ready(day, capacity))
            if not central.answers:
                continue
            if state is ConnectionState.DIRECT:
                while central.answers:
                    self._answered(central.answers.popleft(), day)
                    self.fallback_answers += 1
            elif state is ConnectionState.CONNECTED and not down:
                sends.append(self._send_answers(central))
        for _, profile, work in self.local.values():
            for request in work.take_ready(day, profile.capacity):
                self._answered(request, day)
        for profile, work in self.offline.values():
            for request in work.take_ready(day, profile.capacity):
                self._answered(request, day)
        await asyncio.gather(*sends)

    def _answered(self, request: AtiRequest, day: dt.date) -> None:
        self._in_flight.pop(request.number, None)
        request.status = Status.ANSWERED
        request.answered = day
        self.events += 1

    async def _send_answers(self, central: _Central) -> None:
        connector = self.plumbing.connectors.get(central.code)
        if connector is None:
            return
        while central.answers:
            request = central.answers[0]
            body = {
                "CodOrganismo": central.code,
                "NumSolicitud": request.label,
                "FechaRespuesta": day_of(self.clock.now()).isoformat(),
                "Respuesta": "Se entrega la información solicitada.",
            }
            try:
                await connector.send(to=PORTAL, service="ati.answer", body=body)
            except ConnectorError:
                self.messages_sent += 1
                return
            self.messages_sent += 1
            central.answers.popleft()

    def _sample(self, day: dt.date) -> DaySample:
        connected = direct = backlog = 0
        for central in self.centrals.values():
            state = self._state(central.code)
            if state is ConnectionState.CONNECTED:
                connected += 1
            elif state is ConnectionState.DIRECT:
                direct += 1
            if state not in (ConnectionState.CONNECTED, ConnectionState.DIRECT):
                backlog += len(central.outbox) + len(central.answers)
        return DaySample(
            day=day,
            central_connected=connected,
            central_direct=direct,
            municipalities_on_portal=self._on_portal(Group.MUNICIPALITY, day),
            autonomous_on_portal=self._on_portal(Group.AUTONOMOUS, day),
            backlog=backlog,
            filed_through_portal=self._filed_portal,
        )

    # -- the timeline ---------------------------------------------------------------------------
    async def _incident(self) -> None:
        incident = self.scenario.incident
        assert incident is not None
        admin = self.plumbing.admin
        await sleep_until(self.clock, epoch(incident.detected))
        self._record(incident.detected.date(), "attack-detected")
        await sleep_until(self.clock, epoch(incident.disconnect))
        self.linked_at_incident = sum(
            1 for c in self.centrals.values() if self._state(c.code) is ConnectionState.CONNECTED
        )
        self.disconnected = True
        result = await admin.disconnect_all(actor=OPERATOR, reason="attack on the platform")
        self.events += 1
        self._record(incident.disconnect.date(), "disconnect-all", agencies=result.detail["count"])
        await sleep_until(self.clock, epoch(incident.new_generation))
        stale = {
            code: connector
            for code, connector in sorted(self.plumbing.connectors.items())
            if code != PORTAL
        }
        result, _ = await admin.open_generation(
            actor=OPERATOR, reason="keys distrusted after the attack"
        )
        self._record(
            incident.new_generation.date(),
            "new-key-generation",
            generation=result.detail["generation"],
        )
        await self._stale_senders(stale, incident.stale_senders)
        # The portal is the platform's own party: it re-enrols at once.
        self._portal_connector = await self._onboard(
            PORTAL, "portal re-enrolled after the incident"
        )
        self._record(incident.new_generation.date(), "portal-reconnected")

    async def _stale_senders(self, stale: dict[str, Connector], share: float) -> None:
        """Agencies that try their old key once: the gateway must refuse every attempt."""
        for code, connector in stale.items():
            if self.centrals[code].rng.random() >= share:
                continue
            try:
                await connector.send(to=PORTAL, service="ping", body={"probe": code})
                self.stale_attempts["accepted"] += 1
            except Refused as exc:
                self.stale_attempts[exc.code] += 1
            except ConnectorError:
                self.stale_attempts["error"] += 1
            self.messages_sent += 1

    async def _fallback(self) -> None:
        plan = self.scenario.plan
        assert plan.fallback_start is not None
        await sleep_until(self.clock, epoch(plan.fallback_start, 9))
        moved = 0
        for code in plan.fallback:
            if self._state(code) is ConnectionState.DISCONNECTED:
                await self.plumbing.admin.transition(
                    code, StateEvent.FALLBACK, actor=OPERATOR, reason="direct access to the portal"
                )
                self.centrals[code].listed = True
                self.back.setdefault(code, plan.fallback_start)
                moved += 1
        self.events += moved
        self._record(plan.fallback_start, "fallback", agencies=moved)

    async def _wave(self, name: str, start: dt.date, codes: tuple[str, ...]) -> None:
        await sleep_until(self.clock, epoch(start, 9))
        self._record(start, "wave-start", wave=name, agencies=len(codes))
        summary: dict[str, object] = {"start": start.isoformat(), "agencies": len(codes)}
        self.waves[name] = summary
        results = await asyncio.gather(*(self._reconnect(code, name) for code in codes))
        days = sorted(d for d in results if d is not None)
        summary["connected"] = len(days)
        summary["last_connected"] = days[-1].isoformat() if days else None

    async def _business_day_at(self, after: dt.date, days: int, hour: int) -> dt.date:
        day = self.calendar.add_business_days(after, days)
        await sleep_until(self.clock, epoch(day, hour))
        return day

    def _onboarding_slot(self, earliest: dt.date) -> dt.date:
        """The first business day from ``earliest`` in a week with onboarding capacity left."""
        capacity = self.scenario.plan.onboarding_capacity
        day = earliest
        if capacity:
            while self._approvals[day.isocalendar()[:2]] >= capacity:
                day = self.calendar.next_business_day(day)
            self._approvals[day.isocalendar()[:2]] += 1
        return day

    async def _reconnect(self, code: str, wave: str) -> dt.date | None:
        """One agency through enrolment, approval, checks (retried on failure), connection."""
        plan = self.scenario.plan
        central = self.centrals[code]
        rng = central.rng
        if self._state(code) not in (ConnectionState.DISCONNECTED, ConnectionState.DIRECT):
            return None
        today = day_of(self.clock.now())
        enrolment_id, key = await self._enrol(code)
        day = self._onboarding_slot(
            self.calendar.add_business_days(today, rng.randint(*plan.approval_delay_days))
        )
        await sleep_until(self.clock, epoch(day, 10))
        connector = await self._approve(code, enrolment_id, key, f"wave {wave}")
        while True:
            day = await self._business_day_at(day, rng.randint(*plan.verify_delay_days), 11)
            if self._checks_pass(connector, rng):
                break
            self.check_failures += 1
        await self._connect(code, f"wave {wave}: checks passed")
        central.listed = True
        self.back[code] = day
        return day
