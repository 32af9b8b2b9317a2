"""The portal's backlog in the rehearsal: every ATI request filed for a central agency while
it is off the gateway waits in the portal's outbox and reaches the agency exactly once
after it is back, over the gateway when it reconnects or by hand on the direct fallback;
none twice, none lost.

The run is tests/scenarios/data/small.toml (a pilot, a second wave, two agencies on the
fallback) with the portal's link to the gateway losing half of its answers from the pilot
on: a request the agency took in may look failed to the portal, which sends it again the
next business day. The test watches the simulation's own bookkeeping: each request's filing
(with its agency's state then) and each time an agency takes one into its workload.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agents.institutions import AtiRequest, Group
from gateway.registry import ConnectionState
from gateway.store import SqliteLogStore
from scenarios.model import load_scenario
from scenarios.runner import RunOutput, run_scenario
from scenarios.simulation import Simulation

SMALL = Path(__file__).parent / "data" / "small.toml"
#: The portal's link drops the answer (the request was processed) of half its exchanges.
LOSSY_PORTAL_LINK = (
    '[{ kind = "down", target = "PORTAL", at = 2015-05-04T00:00:00, duration_hours = 1000,'
    ' stream = "downstream", toxicity = 0.5 }]'
)
BACK = (ConnectionState.CONNECTED, ConnectionState.DIRECT)


@dataclass
class Ledger:
    """What the test saw happen inside the simulation."""

    simulation: Simulation | None = None
    #: Central requests by number, with their agency's state when they were filed.
    filed: dict[int, tuple[AtiRequest, ConnectionState]] = field(default_factory=dict)
    #: Each time an agency took a request in: the day and the agency's state then.
    takes: dict[int, list[tuple[dt.date, ConnectionState]]] = field(default_factory=dict)

    def watch(self, simulation: Simulation) -> None:
        self.simulation = simulation
        new_request, take = simulation._new_request, simulation._take

        def filing(*args: Any, **kwargs: Any) -> AtiRequest:
            request = new_request(*args, **kwargs)
            if request.group is Group.CENTRAL:
                state = simulation._state(request.institution)
                self.filed[request.number] = (request, state)
            return request

        def taking(central: Any, request: AtiRequest, today: dt.date) -> None:
            state = simulation._state(central.code)
            self.takes.setdefault(request.number, []).append((today, state))
            take(central, request, today)

        simulation._new_request = filing  # type: ignore[method-assign]
        simulation._take = taking  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Ledger, RunOutput]:
    ledger = Ledger()
    scenario = load_scenario(SMALL, overrides={"faults": LOSSY_PORTAL_LINK})
    ticks = iter(range(1_000_000))
    output = run_scenario(
        scenario,
        tmp_path_factory.mktemp("backlog"),
        wall_clock=lambda: float(next(ticks)),
        prepare=ledger.watch,
    )
    return ledger, output


def _away(ledger: Ledger) -> list[AtiRequest]:
    """Requests filed while their agency was neither connected nor on the fallback."""
    return [request for request, state in ledger.filed.values() if state not in BACK]


def test_no_request_is_taken_in_twice(run: tuple[Ledger, RunOutput]) -> None:
    ledger, output = run
    assert len(ledger.takes) > 500
    assert [n for n, takes in ledger.takes.items() if len(takes) > 1] == []
    # ... though the lossy link made the portal send some again after the gateway had
    # forgotten them: delivered twice, taken in once (the agency knew their jti).
    store = SqliteLogStore(output.log_path)
    try:
        delivered = Counter(
            record.fields["jti"]
            for record in store.records()
            if record.kind == "request" and record.fields.get("svc") == "ati.request"
        )
    finally:
        store.close()
    assert max(delivered.values()) > 1
    assert output.results["faults"][0]["affected"] > 0


def test_the_backlog_reaches_each_agency_once_after_it_is_back(
    run: tuple[Ledger, RunOutput],
) -> None:
    """Filed while the agency was away: taken in exactly once, on or after the day it came
    back, while connected (over the gateway) or on the direct fallback (by hand)."""
    ledger, _ = run
    simulation = ledger.simulation
    assert simulation is not None
    away = _away(ledger)
    assert len(away) > 200
    routes: Counter[ConnectionState] = Counter()
    for request in away:
        takes = ledger.takes.get(request.number)
        if takes is None:
            continue
        ((day, state),) = takes
        assert state in BACK, request.label
        assert day >= simulation.back[request.institution], request.label
        routes[state] += 1
    assert routes[ConnectionState.CONNECTED] > 50
    assert routes[ConnectionState.DIRECT] > 10  # the fallback's agencies, AG015 and AG016


def test_none_is_lost(run: tuple[Ledger, RunOutput]) -> None:
    """What was never taken in is still in the portal's outbox, and only for an agency
    that was never back, or came back in the run's last days."""
    ledger, _ = run
    simulation = ledger.simulation
    assert simulation is not None
    waiting = {r.number for central in simulation.centrals.values() for r in central.outbox}
    untaken = [r for r in _away(ledger) if r.number not in ledger.takes]
    assert untaken
    assert {r.number for r in untaken} <= waiting
    last_days = simulation.scenario.end - dt.timedelta(days=14)
    for request in untaken:
        back = simulation.back.get(request.institution)
        assert back is None or back > last_days, request.label
