"""Run techniques against a gateway, judge them, and write the scorecard.

For each technique: note the last alert id, run the traffic, read the alerts raised since
(and the named agency's state), clean up, and judge: *blocked* when nothing that should
be refused was accepted, every refusal carried an expected problem code, and the
expected alert (and quarantine) happened; a *HOLE* otherwise, with the reasons. Outputs:
a table, ``attack-results.json`` and JUnit XML (one test case per technique).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import aiohttp
from rich.console import Console
from rich.table import Table

from agents.adversaries.lab import Lab
from agents.adversaries.model import Observation, Result, Technique, Verdict

__all__ = [
    "RESULTS_SCHEMA",
    "judge",
    "print_scorecard",
    "run_techniques",
    "write_json",
    "write_junit",
]

RESULTS_SCHEMA = "pasarela.attack/1"


async def run_technique(
    lab: Lab, technique: Technique, params: dict[str, Any] | None = None
) -> Result:
    observation = Observation(started=lab.now(), params={**technique.params, **(params or {})})
    started = lab.now()
    before = await lab.last_alert()
    try:
        await technique.run(lab, observation)
    except (aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
        # The server hung up on us: that is a refusal, not an acceptance.
        observation.closed += 1
        observation.notes.append(f"connection ended: {type(exc).__name__}: {exc}"[:200])
    alerts = await lab.alerts_after(before)
    kinds = technique.expected.alert_kinds
    observation.alerts = [a for a in alerts if not kinds or a["kind"] in kinds]
    if observation.alerts:
        first = min(float(a["at"]) for a in observation.alerts)
        observation.detect_seconds = max(0.0, first - observation.started)
    if observation.agency:
        state = await lab.state(observation.agency)
        observation.quarantined = state == "quarantined"
        observation.connected = state == "connected"
    try:
        await technique.cleanup(lab, observation)
    finally:
        if observation.agency and not technique.destructive:
            await lab.ensure_connected(observation.agency)
    return judge(technique, observation, seconds=lab.now() - started)


def judge(technique: Technique, observation: Observation, *, seconds: float = 0.0) -> Result:
    """The verdict: what the technique expected against what was observed."""
    expected, o = technique.expected, observation
    problems: list[str] = []
    if o.accepted:
        problems.append(f"{o.accepted} request(s) that must be refused were accepted")
    if o.blocked is False:
        problems.append("the defence did not catch it")
    unexpected = sorted({c for c in o.codes if expected.codes and c not in expected.codes})
    if unexpected:
        wanted = "/".join(sorted(expected.codes))
        problems.append(f"refused as {', '.join(unexpected)}, expected {wanted}")
    if expected.codes and not o.codes and o.blocked is None and not o.closed:
        problems.append(f"no {'/'.join(sorted(expected.codes))} answer")
    if not o.statuses and not o.closed and o.blocked is None:
        problems.append("no traffic was answered")
    # A 5xx is a crash unless the protocol says so (502 bad-response-signature).
    if any(status >= 500 and code not in expected.codes for status, code in o.answers):
        problems.append("the gateway answered 5xx")
    if expected.alert and not o.alerts:
        wanted = "/".join(sorted(expected.alert_kinds)) or "any"
        problems.append(f"no security alert ({wanted}) was raised")
    if expected.quarantine and not o.quarantined:
        problems.append(f"{o.agency or 'the agency'} was not quarantined")
    if expected.connected and o.connected is False:
        problems.append(f"{o.agency} was switched off by traffic it did not sign (framed)")
    verdict = Verdict.FAIL if problems else Verdict.PASS
    return Result(
        technique=technique,
        observation=o,
        verdict=verdict,
        problems=tuple(problems),
        seconds=seconds,
    )


async def run_techniques(
    gateway_url: str,
    state_dir: Path,
    steps: Sequence[tuple[Technique, dict[str, Any]]],
    *,
    timeout: float = 30.0,
) -> list[Result]:
    """Run ``steps`` in order against a live gateway (LabError if it cannot be reached)."""
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        lab = Lab(gateway_url, state_dir, session=session)
        await lab.start()
        return [await run_technique(lab, technique, params) for technique, params in steps]


# -- outputs -------------------------------------------------------------------------------


def _detect(result: Result) -> str:
    seconds = result.observation.detect_seconds
    return "-" if seconds is None else f"{seconds:.2f} s"


def print_scorecard(console: Console, results: Sequence[Result], *, profile: str) -> None:
    table = Table(title=f"Attack scorecard: {profile}")
    for column in ("technique", "expected", "observed", "verdict", "time to detect"):
        table.add_column(column, overflow="fold")
    for result in results:
        style = "" if result.passed else "bold red"
        table.add_row(
            result.technique.id,
            result.technique.expected.describe(),
            result.observed(),
            result.verdict,
            _detect(result),
            style=style,
        )
    console.print(table)
    holes = [r for r in results if not r.passed]
    for result in holes:
        for problem in result.problems:
            console.print(f"[bold red]HOLE[/] {result.technique.id}: {problem}")
    console.print(
        f"{len(results) - len(holes)} of {len(results)} techniques blocked"
        + ("" if not holes else f"; {len(holes)} HOLE(S)")
    )


def results_document(
    results: Sequence[Result], *, profile: str, gateway_url: str, started: float
) -> dict[str, Any]:
    return {
        "schema": RESULTS_SCHEMA,
        "profile": profile,
        "gateway": gateway_url,
        "started_at": dt.datetime.fromtimestamp(started, tz=dt.UTC).isoformat(timespec="seconds"),
        "passed": all(r.passed for r in results),
        "counts": {
            "techniques": len(results),
            "blocked": sum(1 for r in results if r.passed),
            "holes": sum(1 for r in results if not r.passed),
        },
        "results": [
            {
                "technique": r.technique.id,
                "title": r.technique.title,
                "references": r.technique.references.as_dict(),
                "expected": {
                    "codes": sorted(r.technique.expected.codes),
                    "alert": r.technique.expected.alert,
                    "alert_kinds": sorted(r.technique.expected.alert_kinds),
                    "quarantine": r.technique.expected.quarantine,
                    "victim_stays_connected": r.technique.expected.connected,
                },
                "observed": {
                    "statuses": sorted(set(r.observation.statuses)),
                    "codes": sorted(set(r.observation.codes)),
                    "accepted": r.observation.accepted,
                    "closed_connections": r.observation.closed,
                    "alerts": len(r.observation.alerts),
                    "alert_kinds": sorted({str(a["kind"]) for a in r.observation.alerts}),
                    "agency": r.observation.agency or None,
                    "quarantined": r.observation.quarantined,
                    "notes": r.observation.notes,
                },
                "verdict": r.verdict,
                "problems": list(r.problems),
                "time_to_detect_seconds": r.observation.detect_seconds,
                "seconds": round(r.seconds, 3),
            }
            for r in results
        ],
    }


def write_json(document: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_junit(
    results: Sequence[Result],
    path: Path,
    *,
    profile: str,
    skipped: Sequence[Technique] = (),
) -> None:
    """JUnit XML: one test case per technique; a HOLE is a failure with its reasons, a
    technique left out (destructive, without --allow-destructive) is skipped."""
    suite = ET.Element(
        "testsuite",
        name=f"pasarela attack: {profile}",
        tests=str(len(results) + len(skipped)),
        failures=str(sum(1 for r in results if not r.passed)),
        errors="0",
        skipped=str(len(skipped)),
        time=f"{sum(r.seconds for r in results):.3f}",
    )
    for result in results:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"pasarela.attack.{profile}",
            name=result.technique.id,
            time=f"{result.seconds:.3f}",
        )
        if not result.passed:
            failure = ET.SubElement(case, "failure", message="; ".join(result.problems))
            lines = [
                f"expected: {result.technique.expected.describe()}",
                f"observed: {result.observed()}",
                *result.problems,
            ]
            failure.text = "\n".join(lines)
        out = ET.SubElement(case, "system-out")
        out.text = result.technique.description
    for technique in skipped:
        case = ET.SubElement(
            suite, "testcase", classname=f"pasarela.attack.{profile}", name=technique.id, time="0"
        )
        ET.SubElement(case, "skipped", message="destructive: run with --allow-destructive")
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
