"""Platform techniques against a live gateway: each is blocked, and the lab sees holes.

The non-destructive techniques run one by one against the module's live gateway (real
child processes); the destructive ones get a gateway of their own. The judge is also fed
observations of holes (an accepted admin request, a framed agency, a log edit nobody
noticed, a slow client never cut) to prove a green scorecard means something.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from agents.adversaries import platform
from agents.adversaries.catalogue import CATALOGUE
from agents.adversaries.lab import Lab
from agents.adversaries.model import Observation, Result, Technique, Verdict
from agents.adversaries.platform import PLATFORM_TECHNIQUES
from agents.adversaries.runner import judge, run_techniques
from gateway.clock import SystemClock, SystemRandomness
from gateway.log import GENESIS_HASH, LogEntry, LogRecord, chain
from gateway.state import StateDir, init_state
from gateway.store import SqliteLogStore
from pasarela.processes import free_port, pasarela_argv
from pasarela.runtime import build_gateway_app
from tests.attack.conftest import LiveGateway, live_gateway

DESTRUCTIVE = ("stolen-key-reenrolment", "superseded-key")
#: Slowloris needs a short header deadline to run quickly: it has tests of its own.
ON_THE_SHARED_GATEWAY = tuple(
    t.id for t in PLATFORM_TECHNIQUES if not t.destructive and t.id != "slowloris"
)
QUICK_SLOWLORIS = {"connections": 5, "byte_interval": 0.5, "deadline": 3.0}


def _run(url: str, state: Path, *steps: tuple[str, dict[str, Any]]) -> list[Result]:
    return asyncio.run(run_techniques(url, state, [(CATALOGUE[i], p) for i, p in steps]))


def _explain(result: Result) -> str:
    o = result.observation
    return f"{result.technique.id}: {result.problems} observed {result.observed()}; {o.notes}"


def test_the_catalogue_holds_the_platform_techniques() -> None:
    """The ids the profiles name, every one referenced, destructive ones marked."""
    assert [t.id for t in PLATFORM_TECHNIQUES] == [
        "lateral-movement",
        "header-flood",
        "slowloris",
        "request-flood",
        "framing",
        "quarantined-agency-key",
        "disconnected-agency-key",
        "revoked-certificate",
        "forged-receipt",
        "mitm-forged-response",
        "log-tampering",
        "admin-no-token",
        "admin-expired-token",
        "admin-forged-token",
        "admin-agency-key",
        "superseded-key",
        "stolen-key-reenrolment",
    ]
    assert all(t.references.as_dict() for t in PLATFORM_TECHNIQUES)
    assert tuple(sorted(t.id for t in PLATFORM_TECHNIQUES if t.destructive)) == DESTRUCTIVE


@pytest.mark.parametrize("technique", ON_THE_SHARED_GATEWAY)
def test_platform_technique_is_blocked_by_the_live_gateway(
    technique: str, live: LiveGateway
) -> None:
    """Refused with the expected codes and alerts; the agency it named is back to connected."""
    (result,) = _run(live.url, live.state, (technique, {}))
    assert result.verdict == Verdict.PASS, _explain(result)


def test_slowloris_is_cut_by_the_gateways_header_timeout(tmp_path: Path) -> None:
    """Every slow connection is closed within the deadline (``serve --header-timeout 1``)."""
    usage = subprocess.run(
        pasarela_argv("serve", "--help"), capture_output=True, text=True, check=True
    )
    if "--header-timeout" not in usage.stdout:
        pytest.skip("pasarela serve has no --header-timeout yet")
    with live_gateway(tmp_path, serve_args=("--header-timeout", "1")) as gateway:
        (result,) = _run(gateway.url, gateway.state, ("slowloris", QUICK_SLOWLORIS))
    assert result.verdict == Verdict.PASS, _explain(result)
    assert result.observation.closed == QUICK_SLOWLORIS["connections"]


def test_destructive_platform_techniques_are_blocked(tmp_path: Path) -> None:
    """On a gateway of their own: a stolen key is neither re-certified nor accepted."""
    with live_gateway(tmp_path) as gateway:
        results = _run(gateway.url, gateway.state, *((i, {}) for i in DESTRUCTIVE))
    for result in results:
        assert result.verdict == Verdict.PASS, _explain(result)


# -- the lab sees holes ------------------------------------------------------------------------


def _accepted_admin(o: Observation) -> None:
    o.answer(200, None)  # disconnect-all went through
    o.answer(401, "unauthenticated")
    o.alerts.append({"kind": "unauthenticated", "at": 0.0})


def _framed(o: Observation) -> None:
    o.agency = "AG001"
    o.answer(401, "bad-signature")
    o.alerts.append({"kind": "bad-signature", "at": 0.0})
    o.connected = False  # switched off by traffic its key never signed


def _flood_not_quarantined(o: Observation) -> None:
    o.agency = "AG001"
    o.answer(429, "rate-limited")
    o.alerts.append({"kind": "rate-limited", "at": 0.0})
    o.quarantined = False


def _forged_answer_relayed(o: Observation) -> None:
    o.answer(200, None)


def _unpublished_receiver_revealed(o: Observation) -> None:
    o.answer(403, "not-authorized")
    o.alerts.append({"kind": "not-authorized", "at": 0.0})
    o.blocked = False


HOLES: dict[str, tuple[str, Callable[[Observation], None], str]] = {
    "accepted admin request": ("admin-forged-token", _accepted_admin, "accepted"),
    "framed agency": ("framing", _framed, "framed"),
    "flood without quarantine": ("request-flood", _flood_not_quarantined, "not quarantined"),
    "forged answer relayed": ("mitm-forged-response", _forged_answer_relayed, "accepted"),
    "unpublished receiver": ("lateral-movement", _unpublished_receiver_revealed, "did not"),
}


@pytest.mark.parametrize("hole", sorted(HOLES))
def test_judge_reports_a_hole(hole: str) -> None:
    """An observation of the defence failing is judged a HOLE, with the reason."""
    technique, observe, reason = HOLES[hole]
    observation = Observation()
    observe(observation)
    result = judge(CATALOGUE[technique], observation)
    assert result.verdict == Verdict.FAIL
    assert any(reason in problem for problem in result.problems), result.problems


def test_judge_passes_a_refused_admin_request() -> None:
    """The same admin technique, refused and alerted, is blocked (the judge is not all red)."""
    observation = Observation()
    observation.answer(401, "unauthenticated")
    observation.alerts.append({"kind": "unauthenticated", "at": 0.0})
    assert judge(CATALOGUE["admin-no-token"], observation).verdict == Verdict.PASS


def _state_with_log(root: Path, records: int) -> Path:
    state = root / "state"
    init_state(
        state,
        agencies=3,
        agents_url="http://127.0.0.1:9",
        randomness=SystemRandomness(),
        now=SystemClock().now(),
    )
    written: list[LogRecord] = []
    prev = GENESIS_HASH
    for seq in range(1, records + 1):
        outcome = "rejected" if seq % 2 else "accepted"
        entry = LogEntry(kind="rejection", at=float(seq), fields={"outcome": outcome, "n": seq})
        written.append(chain(entry, seq=seq, prev=prev))
        prev = written[-1].hash
    store = SqliteLogStore(state / "state.db")
    try:
        store.write(written)
    finally:
        store.close()
    return state


async def _log_tampering(state: Path) -> Result:
    technique = CATALOGUE["log-tampering"]
    observation = Observation()
    async with aiohttp.ClientSession() as session:
        await technique.run(Lab("http://127.0.0.1:9", state, session=session), observation)
    return judge(technique, observation)


async def test_log_tampering_is_a_hole_when_the_verifier_misses_the_edit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edit the chain catches is blocked; a copy that still verifies is a HOLE."""
    state = _state_with_log(tmp_path, records=9)
    caught = await _log_tampering(state)
    assert caught.verdict == Verdict.PASS, caught.observation.notes
    assert "first bad seq 9" in caught.observation.notes[0]
    monkeypatch.setattr(platform, "_edit_record", lambda copy: (9, "nothing, in truth"))
    missed = await _log_tampering(state)
    assert missed.verdict == Verdict.FAIL
    assert "verify: ok" in missed.observation.notes[0]


@asynccontextmanager
async def _unguarded_gateway(root: Path) -> AsyncIterator[tuple[str, Path]]:
    """The gateway app in this loop behind a plain AppRunner: no header deadline at all."""
    state = root / "state"
    init_state(
        state,
        agencies=3,
        agents_url="http://127.0.0.1:9",
        randomness=SystemRandomness(),
        now=SystemClock().now(),
    )
    port = free_port()
    runner = web.AppRunner(build_gateway_app(StateDir(state)), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", state
    finally:
        await runner.cleanup()


async def test_slowloris_is_a_hole_without_a_header_deadline(tmp_path: Path) -> None:
    """Served without the connection guard, no slow connection is closed: a HOLE."""
    technique: Technique = CATALOGUE["slowloris"]
    params = {**QUICK_SLOWLORIS, "deadline": 2.0}
    async with _unguarded_gateway(tmp_path) as (url, state):
        (result,) = await run_techniques(url, state, [(technique, params)])
    assert result.verdict == Verdict.FAIL
    assert result.observation.closed == 0
    assert "the defence did not catch it" in result.problems
