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
import heapq
import json
import math
import random
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agents.adversaries.inprocess import InProcessLab, run_in_process
from agents.adversaries.profiles import resolve_profile
from agents.adversaries.runner import results_document
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
from gateway.protocol import MessageClaims, ProblemCode
from gateway.registry import ConnectionState, StateEvent
from gateway.toxics import Stream, Toxic, ToxicKind
from gateway.trust import KeyRecord, generate_key
from scenarios.calendar import BusinessCalendar, ati_deadline
from scenarios.model import CALENDAR_END, Fault, Gate, Scenario, Selector, Wave
from scenarios.virtual import LoopClock, sleep_until
from scenarios.world import GATEWAY_URL, PORTAL, Plumbing, build_plumbing

__all__ = ["DaySample", "Simulation", "SimulationOutcome", "day_of", "epoch"]

OPERATOR = "operator"
#: Refusals that point at an attack rather than a fault: each is a security alert about
#: the agency named as sender.
SECURITY_CODES = frozenset(
    {
        ProblemCode.BAD_SIGNATURE,
        ProblemCode.UNKNOWN_KEY,
        ProblemCode.REVOKED_KEY,
        ProblemCode.SUPERSEDED_KEY,
        ProblemCode.SENDER_MISMATCH,
        ProblemCode.REPLAY,
        ProblemCode.ALGORITHM_NOT_ALLOWED,
        ProblemCode.FORBIDDEN_HEADER,
    }
)
_DAY = 86_400.0


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
    plan_agencies: dict[str, str | None] = field(default_factory=dict)  # code -> wave
    agency_check_failures: Counter[str] = field(default_factory=Counter)
    final_states: dict[str, str] = field(default_factory=dict)
    gate_failures: int = 0
    exposure_seconds: float = 0.0
    faults: list[dict[str, Any]] = field(default_factory=list)
    attacks: list[dict[str, Any]] = field(default_factory=list)


class _SkewedClock:
    """An agency's clock that is ``skew`` seconds off (the clock-skew fault)."""

    def __init__(self, base: Clock, skew: float) -> None:
        self.base = base
        self.skew = skew

    def now(self) -> float:
        return self.base.now() + self.skew


@dataclass(slots=True)
class _Watch:
    """What a gate judges an agency by: its exchanges and the alerts about it."""

    exchanges: list[tuple[float, bool, float]] = field(default_factory=list)  # t, ok, seconds
    checks: list[tuple[float, bool]] = field(default_factory=list)  # daily health checks
    #: Exchanges (by index) that failed while the gateway was down: not the agency's doing.
    platform: set[int] = field(default_factory=set)

    def own_errors(self, t: float) -> int:
        """Failed exchanges since ``t`` that the agency answers for."""
        return sum(
            1
            for i, (when, ok, _) in enumerate(self.exchanges)
            if when >= t and not ok and i not in self.platform
        )

    def since(self, t: float) -> tuple[list[tuple[float, bool, float]], list[tuple[float, bool]]]:
        return [e for e in self.exchanges if e[0] >= t], [c for c in self.checks if c[0] >= t]


@dataclass(slots=True)
class _Central:
    """A central agency's side of the world."""

    code: str
    profile: Profile
    rng: random.Random
    listed: bool = False  # citizens can file to it on the portal
    outbox: deque[AtiRequest] = field(default_factory=deque)  # the portal's, for this agency
    #: The (iss, jti) of every request it took in: a re-sent one is acknowledged again, not
    #: taken twice (its answer to the portal may have been lost on the way).
    taken: set[tuple[str, str]] = field(default_factory=set)
    work: Workload = field(default_factory=Workload)
    answers: deque[AtiRequest] = field(default_factory=deque)  # ready, not yet delivered
    outage_until: dt.date | None = None
    weight: float = 1.0  # its share of the central demand (1: the mean agency)
    readiness: float = 0.5  # 0..1: how prepared it is to pass its reconnection checks
    filed: int = 0  # requests filed to it so far (what an ATI-volume selector sorts by)


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
        spread = scenario.demand.central_spread
        self.centrals = {
            code: _Central(
                code=code,
                profile=self._profile("central", code),
                rng=random.Random(f"{seed}:central:{code}"),
                weight=_weight(random.Random(f"{seed}:volume:{code}"), spread),
                readiness=random.Random(f"{seed}:readiness:{code}").random(),
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
        #: The jti each request in the portal's outbox was first sent under, by number:
        #: every re-send carries it, so the agency can tell a re-send from a new request.
        self._jtis: dict[int, str] = {}
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
        self._plan_machinery()

    def _plan_machinery(self) -> None:
        """The state of the plan's processes: waves, gates, faults, attacks."""
        scenario = self.scenario
        plan = scenario.plan
        #: Every agency the plan named or chose, with its wave (None: the direct fallback).
        self.plan_agencies: dict[str, str | None] = {}
        self.agency_check_failures: Counter[str] = Counter()
        self.gate_failures = 0
        self._generation = 1  # bumped by each incident: enrolments from before are void
        self._listed = plan.listed()
        self._chosen: set[str] = set()  # picked by a selector
        self._wave_events = {
            wave.name: {name: asyncio.Event() for name in ("wave-start", "wave-connected",
                                                            "gate-passed")}
            for wave in plan.waves
        }  # fmt: skip
        self._connected: dict[str, asyncio.Event] = {}
        self._reconnecting: dict[str, asyncio.Task[dt.date | None]] = {}
        self._watched: dict[str, _Watch] = {}
        #: Security alerts about each agency: (when, authenticated by its current key).
        self._alerts: dict[str, list[tuple[float, bool]]] = {}
        self._pre_incident_keys: dict[str, Ed25519PrivateKey] = {}
        self._keys: dict[str, Ed25519PrivateKey] = {}  # each agency's current key
        self._exposed: dict[str, list[float]] = {}  # kid -> [opened, closed or -1]
        self._tasks: list[asyncio.Task[Any]] = []
        self.attacks: list[dict[str, Any]] = []  # one scorecard per attack fault
        self._gateway_down = False  # a crash: failures then are the platform's, nobody else's
        self.faults: list[dict[str, Any]] = [
            {"key": f.key, "kind": f.kind, "target": f.target, "start": None, "end": None,
             "affected": 0}
            for f in scenario.faults
        ]  # fmt: skip

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

    def _connector_for(self, identity: Identity) -> Connector:
        """A fresh connector for ``identity`` (after enrolment or a change of its clock)."""
        self._keys[identity.code] = identity.key
        return self.plumbing.connect_party(identity)

    async def _approve(
        self, code: str, enrolment_id: str, key: Ed25519PrivateKey, reason: str
    ) -> Connector:
        """The operator approves; the agency gets its certificate and a fresh connector."""
        _, record = await self.plumbing.admin.approve_enrolment(
            enrolment_id, actor=OPERATOR, reason=reason
        )
        self._track_exposure(record)
        identity = Identity(code=code, key=key, certificate=record.certificate)
        self.events += 1
        return self._connector_for(identity)

    def _checks_pass(self, connector: Connector, central: _Central) -> bool:
        """The agency's checks: the platform's directory lists its new key under its code,
        and it is not misconfigured. ``plan.check_failure`` is the mean chance that it is;
        an agency's readiness moves its own chance around that mean (by as much as the
        mean's distance to 0 or 1, so 0 and 1 stay exact)."""
        listed = self.plumbing.directory().agency_key(connector.identity.kid)
        self.events += 1
        owned = listed is not None and listed[0] == connector.identity.code
        mean = self.scenario.plan.check_failure
        chance = mean + (1 - 2 * central.readiness) * min(mean, 1 - mean)
        return owned and central.rng.random() >= chance

    async def _connect(self, code: str, reason: str) -> None:
        admin = self.plumbing.admin
        await admin.transition(code, StateEvent.VERIFY, actor=OPERATOR, reason=reason)
        await admin.transition(code, StateEvent.CONNECT, actor=OPERATOR, reason=reason)
        self._connected_event(code).set()
        self.events += 2

    def _connected_event(self, code: str) -> asyncio.Event:
        event = self._connected.get(code)
        if event is None:
            event = self._connected[code] = asyncio.Event()
        return event

    async def _move(self, code: str, *events: StateEvent, reason: str) -> None:
        """Registry transitions by the operator; the agency is no longer connected."""
        for event in events:
            await self.plumbing.admin.transition(code, event, actor=OPERATOR, reason=reason)
        self._connected_event(code).clear()
        self.events += len(events)

    def _track_exposure(self, record: KeyRecord) -> None:
        """A certificate for a distrusted key opens an exposure window until it is closed."""
        if self.plumbing.trust.distrusted(record.public_key) is not None:
            self._exposed[record.kid] = [self.clock.now(), -1.0]

    def _close_exposure(self) -> None:
        now = self.clock.now()
        for window in self._exposed.values():
            if window[1] < 0:
                window[1] = now

    def _alert(self, code: str, *, authenticated: bool = True) -> None:
        """An alert about ``code``. Only what its own current key signed can count against
        it when a gate picks agencies to roll back: naming it is not enough (framing)."""
        self._alerts.setdefault(code, []).append((self.clock.now(), authenticated))

    def _observe(self, code: str, started: float, error: ConnectorError | None) -> None:
        """One exchange of ``code``'s: kept while a gate watches it; refusals that look like
        an attack are alerts."""
        if isinstance(error, Refused) and error.code in SECURITY_CODES:
            self._alert(code)
        watch = self._watched.get(code)
        if watch is not None:
            now = self.clock.now()
            watch.exchanges.append((now, error is None, now - started))
            if error is not None and self._gateway_down:
                watch.platform.add(len(watch.exchanges) - 1)

    async def _onboard(self, code: str, reason: str) -> Connector:
        """Immediate enrolment, approval, checks and connection (no human delays)."""
        enrolment_id, key = await self._enrol(code)
        connector = await self._approve(code, enrolment_id, key, reason)
        await self._connect(code, reason)
        return connector

    # -- services: what the portal and agencies do with messages they receive ---------------
    async def _on_request(self, claims: MessageClaims, body: bytes) -> tuple[int, bytes]:
        """AltaSaiPortal at the agency: take the request into its workload, once."""
        central = self.centrals[claims.aud]
        today = day_of(self.clock.now())
        if central.outage_until is not None and today <= central.outage_until:
            return 503, encode_json({"estado": "06", "detalle": "agency system down"})
        label = json.loads(body)["NumSolicitud"]
        if (claims.iss, claims.jti) not in central.taken:
            central.taken.add((claims.iss, claims.jti))
            self._take(central, self._in_flight[number_of(label)], today)
        return 200, encode_json({"estado": "00", "NumSolicitud": label})

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
        scenario, plan = self.scenario, self.scenario.plan
        self._spawn(self._portal_start())
        if scenario.incident is not None:
            self._spawn(self._incident())
        if (plan.fallback or plan.fallback_selector) and plan.fallback_start is not None:
            self._spawn(self._fallback())
        for index, wave in enumerate(plan.waves):
            self._spawn(self._wave(index, wave))
        for index, fault in enumerate(scenario.faults):
            self._spawn(self._fault(fault, self.faults[index]))
        try:
            await self._days()
        finally:
            failures = [t.exception() for t in self._tasks if t.done() and not t.cancelled()]
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for failure in failures:
            if failure is not None:
                raise failure  # a bug in a timeline process must not pass unnoticed
        self._close_exposure()
        for fault, out in zip(self.scenario.faults, self.faults, strict=True):
            if fault.link and out["start"] is not None:
                out["affected"] = self.plumbing.network.affected[fault.key]
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
            plan_agencies=self.plan_agencies,
            agency_check_failures=self.agency_check_failures,
            final_states={code: self._state(code).value for code in self.centrals},
            gate_failures=self.gate_failures,
            exposure_seconds=sum(end - start for start, end in self._exposed.values()),
            faults=self.faults,
            attacks=self.attacks,
        )

    def _spawn(self, process: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(process)
        self._tasks.append(task)
        return task

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
                central.filed += (n := poisson(rng, demand.central * central.weight))
                for _ in range(n):
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
                    request = central.outbox.popleft()
                    jti = self._jtis.pop(request.number, None)
                    if jti is None or (PORTAL, jti) not in central.taken:
                        self._take(central, request, day)  # unless it came before its ack
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
            jti = self._jtis.get(request.number)
            if jti is None:  # drawn as connector.send would: the same draws when all goes well
                jti = self._jtis[request.number] = connector.new_jti()
            started = self.clock.now()
            try:
                await connector.send(to=central.code, service="ati.request", body=body, jti=jti)
            except ConnectorError as exc:
                self.messages_sent += 1
                self._observe(central.code, started, exc)
                return  # try again, with the same jti, on the next business day
            self.messages_sent += 1
            self._observe(central.code, started, None)
            central.outbox.popleft()
            del self._jtis[request.number]

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
            started = self.clock.now()
            try:
                await connector.send(to=PORTAL, service="ati.answer", body=body)
            except ConnectorError as exc:
                self.messages_sent += 1
                self._observe(central.code, started, exc)
                return
            self.messages_sent += 1
            self._observe(central.code, started, None)
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
        await sleep_until(self.clock, epoch(incident.detected))
        self._record(incident.detected.date(), "attack-detected")
        await sleep_until(self.clock, epoch(incident.disconnect))
        self.linked_at_incident = sum(
            1 for c in self.centrals.values() if self._state(c.code) is ConnectionState.CONNECTED
        )
        self.disconnected = True
        count = await self._disconnect_all("attack on the platform")
        self._record(incident.disconnect.date(), "disconnect-all", agencies=count)
        await sleep_until(self.clock, epoch(incident.new_generation))
        self._pre_incident_keys = {c: k for c, k in self._keys.items() if c != PORTAL}
        stale = {
            code: connector
            for code, connector in sorted(self.plumbing.connectors.items())
            if code != PORTAL
        }
        generation = await self._new_generation("keys distrusted after the attack")
        self._record(incident.new_generation.date(), "new-key-generation", generation=generation)
        await self._stale_senders(stale, incident.stale_senders)
        self._record(incident.new_generation.date(), "portal-reconnected")

    async def _disconnect_all(self, reason: str) -> int:
        self._generation += 1  # enrolments under way are void from now
        result = await self.plumbing.admin.disconnect_all(actor=OPERATOR, reason=reason)
        for event in self._connected.values():
            event.clear()
        for code in [c for c in self.back if self._state(c) is not ConnectionState.DIRECT]:
            del self.back[code]
        self.events += 1
        return int(str(result.detail["count"]))

    async def _new_generation(self, reason: str) -> int:
        """Distrust every key; the portal, the platform's own party, re-enrols at once."""
        result, _ = await self.plumbing.admin.open_generation(actor=OPERATOR, reason=reason)
        self._close_exposure()  # a key certified again is distrusted once more
        self._portal_connector = await self._onboard(PORTAL, f"portal re-enrolled: {reason}")
        return int(str(result.detail["generation"]))

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
        codes = list(plan.fallback)
        if plan.fallback_selector is not None:
            codes, _ = self._choose(plan.fallback_selector, self._pool())
        moved = 0
        for code in codes:
            self.plan_agencies.setdefault(code, None)
            if self._state(code) is ConnectionState.DISCONNECTED:
                await self._to_direct(code, "direct access to the portal")
                moved += 1
        self._record(plan.fallback_start, "fallback", agencies=moved)

    async def _to_direct(self, code: str, reason: str) -> None:
        await self._move(code, StateEvent.FALLBACK, reason=reason)
        self.centrals[code].listed = True
        self.back[code] = day_of(self.clock.now())

    # -- waves ------------------------------------------------------------------------------
    def _pool(self) -> list[str]:
        """Who a selector may choose: agencies linked before the incident that the plan
        neither lists nor has chosen yet, and that are not back on the gateway."""
        linked = self._link_order[: max(self._linked, self.linked_at_incident)]
        return [
            code
            for code in linked
            if code not in self._listed
            and code not in self._chosen
            and self._state(code) in (ConnectionState.DISCONNECTED, ConnectionState.DIRECT)
        ]

    def _choose(self, selector: Selector, pool: list[str]) -> tuple[list[str], dict[str, Any]]:
        """The selector's pick from ``pool``, and why: each chosen agency's score and the
        best score left out (ATI requests filed so far, or readiness)."""
        centrals, world = self.centrals, self.scenario.world
        score: Callable[[str], float] = lambda code: 0.0  # noqa: E731
        if selector.by == "kind":
            ordered = [code for code in pool if world.kind_of(code) == selector.kind]
        elif selector.by == "ati-volume":
            score = lambda code: float(centrals[code].filed)  # noqa: E731
            ordered = sorted(pool, key=lambda code: (-score(code), code))
        elif selector.by == "readiness":
            score = lambda code: round(centrals[code].readiness, 4)  # noqa: E731
            ordered = sorted(pool, key=lambda code: (-score(code), code))
        else:
            ordered = _dependency_order(pool, self.scenario.plan.dependencies)
        count = len(ordered) if selector.count is None else selector.count
        chosen, left = ordered[:count], ordered[count:]
        self._chosen.update(chosen)
        why: dict[str, Any] = {"by": selector.by, "kind": selector.kind, "pool": len(pool)}
        if selector.by in ("ati-volume", "readiness"):
            why["scores"] = {code: score(code) for code in chosen}
            why["best_left_out"] = score(left[0]) if left else None
        return chosen, why

    async def _wave_start(self, index: int, wave: Wave) -> dt.date:
        """Wait for the wave's turn: its date, and the gate (or the end) of the wave before."""
        start = wave.start
        if index:
            before = self.scenario.plan.waves[index - 1]
            events = self._wave_events[before.name]
            if before.gate is not None or start is None:
                await events["gate-passed" if before.gate is not None else "wave-connected"].wait()
                after = self.calendar.next_business_day(day_of(self.clock.now()))
                start = after if start is None else max(start, after)
        assert start is not None  # the model requires a start for the first wave
        await sleep_until(self.clock, max(self.clock.now(), epoch(start, 9)))
        return day_of(self.clock.now())

    async def _wave(self, index: int, wave: Wave) -> None:
        events = self._wave_events[wave.name]
        start = await self._wave_start(index, wave)
        codes = list(wave.agencies)
        chosen: dict[str, Any] | None = None
        if wave.selector is not None:
            codes, chosen = self._choose(wave.selector, self._pool())
        for code in codes:
            self.plan_agencies[code] = wave.name
        self._record(start, "wave-start", wave=wave.name, agencies=len(codes))
        summary: dict[str, Any] = {
            "start": start.isoformat(),
            "planned_start": wave.start.isoformat() if wave.start else None,
            "agencies": len(codes),
            "codes": codes,
            "connected": 0,
            "last_connected": None,
            "gate": None,
            "quarantined": [],
            "fell_back": [],
            "selector": chosen,
        }
        self.waves[wave.name] = summary
        events["wave-start"].set()
        if wave.gate is not None:
            for code in codes:
                self._watched[code] = _Watch()
        tasks = [self._reconnect_task(code, wave.name) for code in codes]
        waiting = [t for t in tasks if t is not None]
        if waiting:
            timeout = None
            if wave.deadline is not None:
                timeout = max(0.0, epoch(wave.deadline, 23, 59) - self.clock.now())
            await asyncio.wait(waiting, timeout=timeout)
        self._wave_connected(summary, codes)
        events["wave-connected"].set()
        if wave.gate is not None:
            await self._gate(wave, wave.gate, codes, summary, start)
            for code in codes:
                self._watched.pop(code, None)
        events["gate-passed"].set()

    def _wave_connected(self, summary: dict[str, Any], codes: list[str]) -> None:
        days = sorted(
            self.back[c]
            for c in codes
            if c in self.back and self._state(c) is ConnectionState.CONNECTED
        )
        summary["connected"] = len(days)
        summary["last_connected"] = days[-1].isoformat() if days else None

    def _reconnect_task(self, code: str, wave: str) -> asyncio.Task[dt.date | None] | None:
        """One reconnection process per agency (a second one would race the first)."""
        running = self._reconnecting.get(code)
        if running is not None and not running.done():
            return running
        if self._state(code) not in (ConnectionState.DISCONNECTED, ConnectionState.DIRECT):
            return None
        task = self._spawn(self._reconnect(code, wave))
        self._reconnecting[code] = task
        return task

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
        """One agency through enrolment, approval, checks (retried on failure), connection.

        It waits for the agencies it depends on; an incident on the way voids what was
        done and it starts again; a gateway it cannot reach is tried again the next day.
        """
        plan = self.scenario.plan
        central = self.centrals[code]
        rng = central.rng
        while True:
            for other in plan.dependencies.get(code, ()):
                await self._connected_event(other).wait()
            generation = self._generation
            today = day_of(self.clock.now())
            try:
                enrolment_id, key = await self._enrol(code)
            except ConnectorError as exc:
                if isinstance(exc, Refused) and exc.code in SECURITY_CODES:
                    self._alert(code, authenticated=False)
                await self._business_day_at(today, 1, 9)
                continue
            day = self._onboarding_slot(
                self.calendar.add_business_days(today, rng.randint(*plan.approval_delay_days))
            )
            await sleep_until(self.clock, epoch(day, 10))
            if self._generation != generation:
                continue
            connector = await self._approve(code, enrolment_id, key, f"wave {wave}")
            while self._generation == generation:
                day = await self._business_day_at(day, rng.randint(*plan.verify_delay_days), 11)
                if self._checks_pass(connector, central):
                    break
                self.check_failures += 1
                self.agency_check_failures[code] += 1
            if self._generation != generation:
                continue
            await self._connect(code, f"wave {wave}: checks passed")
            central.listed = True
            self.back[code] = day
            return day

    # -- gates -------------------------------------------------------------------------------
    async def _gate(
        self, wave: Wave, gate: Gate, codes: list[str], summary: dict[str, Any], start: dt.date
    ) -> None:
        """Soak, then judge the wave's agencies until the gate holds or its rule sends the
        failing ones away (a pause re-judges every business day over the same window)."""
        record: dict[str, Any] = {
            "soak_days": gate.soak_days,
            "on_failure": gate.on_failure,
            "criteria": gate.criteria(),
            "passed": None,
            "evaluations": [],
        }
        summary["gate"] = record
        judged = list(codes)
        checks = self._spawn(self._health_checks(judged))
        settled = self.clock.now()
        day = await self._business_day_at(day_of(settled), gate.soak_days, 17)
        window = max(self.clock.now() - settled, _DAY)
        since = epoch(start)  # the first judgement covers the whole wave
        try:
            while True:
                metrics, failed, offenders = self._evaluate(gate, judged, since)
                record["evaluations"].append(
                    {"date": day.isoformat(), "passed": not failed, "failed": failed,
                     "metrics": metrics}
                )  # fmt: skip
                if not failed:
                    break
                self.gate_failures += 1
                self._record(day, "gate-failed", wave=wave.name, failed=failed)
                if gate.on_failure != "pause" and offenders:
                    await self._roll_back(wave, gate.on_failure, offenders, summary)
                    judged[:] = [code for code in judged if code not in offenders]
                    continue  # judge the rest at once: what nobody answers for still holds
                day = await self._business_day_at(day, 1, 17)
                since = self.clock.now() - window
        finally:
            checks.cancel()
        record["passed"] = day.isoformat()
        self._wave_connected(summary, judged)
        self._record(day, "gate-passed", wave=wave.name)

    def _evaluate(
        self, gate: Gate, codes: list[str], since: float
    ) -> tuple[dict[str, Any], list[str], list[str]]:
        """The gate's metrics over the window, the criteria that failed, and the agencies
        that failed them on their own (what quarantine or fallback acts on)."""
        total = errors = alerts = checks_failed = 0
        latencies: list[float] = []
        offenders: list[str] = []
        for code in codes:
            watch = self._watched.setdefault(code, _Watch())
            exchanges, checks = watch.since(since)
            all_errors = sum(1 for _, ok, _ in exchanges if not ok)
            own_errors = watch.own_errors(since)
            own = sorted(seconds for _, ok, seconds in exchanges if ok)
            raised = [own for t, own in self._alerts.get(code, ()) if t >= since]
            own_alerts = sum(raised)
            failed_check = self._state(code) is not ConnectionState.CONNECTED or any(
                not ok for _, ok in checks
            )
            total, errors, alerts = (
                total + len(exchanges),
                errors + all_errors,
                alerts + len(raised),
            )
            checks_failed += failed_check
            latencies.extend(own)
            bad = (
                (gate.max_error_rate is not None and exchanges
                 and own_errors / len(exchanges) > gate.max_error_rate)
                or (gate.max_p99_ms is not None and own
                    and _p99(own) * 1000 > gate.max_p99_ms)
                or (gate.max_alerts is not None and own_alerts > gate.max_alerts)
                or (gate.checks_passed and failed_check)
            )  # fmt: skip
            if bad:
                offenders.append(code)
        latencies.sort()
        error_rate = errors / total if total else None
        p99_ms = round(_p99(latencies) * 1000, 3) if latencies else None
        metrics = {
            "error_rate": None if error_rate is None else round(error_rate, 6),
            "p99_ms": p99_ms,
            "alerts": alerts,
            "checks_failed": checks_failed,
            "exchanges": total,
        }
        failed = []
        limit = gate.max_error_rate
        if limit is not None and error_rate is not None and error_rate > limit:
            failed.append("error_rate")
        if gate.max_p99_ms is not None and p99_ms is not None and p99_ms > gate.max_p99_ms:
            failed.append("p99_ms")
        if gate.max_alerts is not None and alerts > gate.max_alerts:
            failed.append("alerts")
        if gate.checks_passed and checks_failed:
            failed.append("checks")
        return metrics, failed, offenders

    async def _health_checks(self, codes: list[str]) -> None:
        """Each business day at noon every watched agency pings the portal: the checks a
        gate's ``checks_passed`` and latency criteria see even when ATI traffic is thin."""
        day = day_of(self.clock.now())
        while True:
            day = await self._business_day_at(day, 1, 12)
            for code in list(codes):
                connector = self.plumbing.connectors.get(code)
                if connector is None or self._state(code) is not ConnectionState.CONNECTED:
                    continue
                started = self.clock.now()
                error: ConnectorError | None = None
                try:
                    await connector.send(to=PORTAL, service="ping", body={"check": code})
                except ConnectorError as exc:
                    error = exc
                self.messages_sent += 1
                self._observe(code, started, error)
                watch = self._watched.get(code)
                if watch is not None:  # a check the gateway's crash failed is nobody's
                    watch.checks.append((self.clock.now(), error is None or self._gateway_down))

    async def _roll_back(
        self, wave: Wave, action: str, codes: list[str], summary: dict[str, Any]
    ) -> None:
        """Send the agencies that failed the gate to quarantine or to the direct fallback."""
        reason = f"gate after wave {wave.name} failed"
        today = day_of(self.clock.now())
        for code in codes:
            task = self._reconnecting.get(code)
            if task is not None and not task.done():
                task.cancel()  # a straggler: stop its reconnection
            self.back.pop(code, None)
            state = self._state(code)
            if action == "quarantine":
                if state in (ConnectionState.CONNECTED, ConnectionState.VERIFIED):
                    await self._move(code, StateEvent.QUARANTINE, reason=reason)
                elif state is not ConnectionState.DISCONNECTED:
                    await self._move(code, StateEvent.DISCONNECT, reason=reason)
                self._spawn(self._after_quarantine(code, wave.name))
            else:
                if state is not ConnectionState.DISCONNECTED:
                    await self._move(code, StateEvent.DISCONNECT, reason=reason)
                await self._to_direct(code, reason)
        key = "quarantined" if action == "quarantine" else "fell_back"
        summary[key].extend(codes)
        event = "quarantine" if action == "quarantine" else "rollback-fallback"
        self._record(today, event, wave=wave.name, agencies=len(codes))

    async def _after_quarantine(self, code: str, wave: str) -> None:
        """After ``plan.quarantine_days`` the agency starts over with a fresh key."""
        today = day_of(self.clock.now())
        await self._business_day_at(today, max(1, self.scenario.plan.quarantine_days), 9)
        if self._state(code) is ConnectionState.QUARANTINED:
            await self._move(code, StateEvent.DISCONNECT, reason="quarantine over: re-enrol")
        self._reconnect_task(code, f"{wave} (after quarantine)")

    # -- faults ------------------------------------------------------------------------------
    async def _fault(self, fault: Fault, out: dict[str, Any]) -> None:
        if fault.at is not None:
            await sleep_until(self.clock, epoch(fault.at))
        else:
            assert fault.when is not None
            event, wave = fault.when
            await self._wave_events[wave][event].wait()
        if fault.after_hours:
            await asyncio.sleep(fault.after_hours * 3600)
        out["start"] = _moment(self.clock.now())
        self._record(day_of(self.clock.now()), "fault-start", fault=fault.key, kind=fault.kind,
                     target=fault.target)  # fmt: skip
        undo = await self._inject(fault, out)
        if fault.duration_hours is None or undo is None:
            return
        await asyncio.sleep(fault.duration_hours * 3600)
        await undo()
        out["end"] = _moment(self.clock.now())
        if fault.link:
            out["affected"] = self.plumbing.network.affected[fault.key]
        self._record(day_of(self.clock.now()), "fault-end", fault=fault.key, kind=fault.kind,
                     target=fault.target)  # fmt: skip

    async def _inject(self, fault: Fault, out: dict[str, Any]) -> Callable[[], Any] | None:
        """Start ``fault``; return what ends it (None: it cannot be undone)."""
        network = self.plumbing.network
        if fault.link:
            network.add(fault.target, fault.key, _toxic(fault))

            async def heal() -> None:
                network.remove(fault.target, fault.key)

            return heal
        if fault.kind == "gateway-crash":
            self.plumbing.transport.set_down(GATEWAY_URL, True)
            self._gateway_down = True

            async def restart() -> None:
                self.plumbing.transport.set_down(GATEWAY_URL, False)
                self._gateway_down = False
                await self.plumbing.gateway.log.sync()

            return restart
        if fault.kind == "clock-skew":
            self._set_clock(fault.target, fault.params["skew_seconds"])

            async def correct() -> None:
                self._set_clock(fault.target, 0.0)

            return correct
        if fault.kind == "stolen-key":
            out["affected"] = await self._stolen_key(fault.target)
            return None
        if fault.kind == "attack":
            out["affected"] = await self._attack(fault)
            return None
        await self._second_incident(fault)
        return None

    def _set_clock(self, code: str, skew: float) -> None:
        clocks = self.plumbing.clocks
        if skew:
            clocks[code] = _SkewedClock(self.clock, skew)
        else:
            clocks.pop(code, None)
        connector = self.plumbing.connectors.get(code)
        if connector is not None:
            self._connector_for(connector.identity)
            if code == PORTAL:
                self._portal_connector = self.plumbing.connectors[code]

    async def _stolen_key(self, code: str) -> int:
        """Someone holding ``code``'s pre-incident key asks for a certificate for it."""
        key = self._pre_incident_keys.get(code)
        today = day_of(self.clock.now())
        if key is None:
            self._record(today, "stolen-key-unused", target=code)
            return 0
        before = self._state(code)
        try:
            enrolment_id = await self.plumbing.enrol(code, key)
        except Refused as exc:
            self._alert(code, authenticated=False)
            self._record(today, "stolen-key-refused", target=code, reason=exc.code)
            return 1
        except ConnectorError:
            return 1
        # Accepted: an operator cannot tell it from the agency's own enrolment and signs it.
        self._record(today, "stolen-key-enrolled", target=code)
        record = self.plumbing.trust.approve(
            enrolment_id, randomness=self.plumbing.randomness, now=self.clock.now()
        )
        self._track_exposure(record)
        if self._state(code) is not before and before is ConnectionState.DISCONNECTED:
            await self._move(code, StateEvent.DISCONNECT, reason="enrolment withdrawn")
        return 1

    async def _attack(self, fault: Fault) -> int:
        """An adversary profile against the gateway, from inside the world: the techniques
        that run in process, with three connected agencies as sender, bystander and third
        party. The gateway's alerts about agencies are what the gates see."""
        today = day_of(self.clock.now())
        profile = resolve_profile(fault.profile)
        connected = [
            c for c in sorted(self.centrals) if self._state(c) is ConnectionState.CONNECTED
        ]
        if len(connected) < 3 or not self._portal_ready():
            self._record(today, "attack-skipped", profile=profile.name,
                         reason="fewer than three agencies connected")  # fmt: skip
            return 0
        gateway = self.plumbing.gateway
        lab = InProcessLab(
            gateway=gateway,
            transport=self.plumbing.network,
            gateway_url=GATEWAY_URL,
            identities={code: c.identity for code, c in self.plumbing.connectors.items()},
            clock=self.clock,
            randomness=self.plumbing.randomness,
            sender=connected[0],
            other=connected[1],
            third=connected[2],
            receiver=PORTAL,
        )
        before = gateway.detector.last_id
        started = self.clock.now()
        steps = [(step.technique, step.params) for step in profile.steps]
        results, skipped = await run_in_process(lab, steps)
        for alert in gateway.detector.recent(after=before, limit=1_000_000):
            if alert.agency in self.centrals:
                self._alerts.setdefault(alert.agency, []).append((alert.at, alert.attributed))
        document = results_document(
            results, profile=profile.name, gateway_url="in-process", started=started
        )
        document.update({"fault": fault.key, "skipped": skipped, "sender": connected[0]})
        self.attacks.append(document)
        holes = document["counts"]["holes"]
        self._record(today, "attack", profile=profile.name, techniques=len(results), holes=holes)
        self.events += len(results)
        return len(results)

    async def _second_incident(self, fault: Fault) -> None:
        """Everyone off the gateway again, a new key generation, and the agencies that were
        connected go back through enrolment (the plan's own waves carry on)."""
        today = day_of(self.clock.now())
        was_connected = [
            code for code in self.centrals if self._state(code) is ConnectionState.CONNECTED
        ]
        count = await self._disconnect_all("second incident")
        self._record(today, "second-incident", agencies=count)
        await asyncio.sleep(fault.params.get("new_generation_hours", 24.0) * 3600)
        generation = await self._new_generation("keys distrusted after the second incident")
        self._record(day_of(self.clock.now()), "new-key-generation", generation=generation)
        for code in was_connected:
            self._reconnect_task(code, "after the second incident")


def _toxic(fault: Fault) -> Toxic:
    params = fault.params
    return Toxic(
        kind=ToxicKind(fault.kind),
        stream=Stream(fault.stream),
        toxicity=fault.toxicity,
        latency_ms=params.get("latency_ms", 0.0),
        jitter_ms=params.get("jitter_ms", 0.0),
        rate_kbps=params.get("rate_kbps", 0.0),
        timeout_ms=params.get("timeout_ms", 0.0),
        average_size=int(params.get("average_size", 0)),
        size_variation=int(params.get("size_variation", 0)),
        delay_us=params.get("delay_us", 0.0),
    )


def _moment(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC).replace(tzinfo=None).isoformat()


def _p99(ordered: list[float]) -> float:
    """The 99th percentile of sorted values (nearest rank)."""
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def _weight(rng: random.Random, spread: float) -> float:
    """A lognormal weight with mean 1 (exactly 1, drawing nothing, when there is no spread)."""
    if spread <= 0:
        return 1.0
    return rng.lognormvariate(-spread * spread / 2, spread)


def _dependency_order(
    pool: Iterable[str], dependencies: Mapping[str, tuple[str, ...]]
) -> list[str]:
    """``pool`` with every agency after the ones it depends on (ties in code order)."""
    members = sorted(pool)
    inside = set(members)
    waiting = {code: {d for d in dependencies.get(code, ()) if d in inside} for code in members}
    ready = [code for code in members if not waiting[code]]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        code = heapq.heappop(ready)
        order.append(code)
        for other in members:
            if code in waiting[other]:
                waiting[other].discard(code)
                if not waiting[other]:
                    heapq.heappush(ready, other)
    return order
