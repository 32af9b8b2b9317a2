"""The run's reports: terminal, JSON, JUnit XML and the transcript of exchanges."""

from __future__ import annotations

import json
import shlex
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pasarela.conformance.model import CheckResult, Outcome
from pasarela.conformance.runner import RunReport
from pasarela.conformance.session import KitSettings

__all__ = ["print_report", "reproduce", "to_json", "write_junit", "write_transcript"]

_MARK = {
    Outcome.PASSED: "[green]PASS[/]",
    Outcome.FAILED: "[red]FAIL[/]",
    Outcome.ERROR: "[yellow]ERROR[/]",
}


def reproduce(settings: KitSettings, result: CheckResult) -> str:
    """The command that runs this check alone, same seed, and the case to look for."""
    argv = [
        "pasarela", "conformance",
        "--connector", settings.connector,
        "--agency", settings.agency,
        "--state", str(settings.state),
        "--listen", f"{settings.host}:{settings.port}",
        "--checks", result.check.id,
        "--seed", str(settings.seed),
    ]  # fmt: skip
    if settings.peer != "PORTAL":
        argv += ["--peer", settings.peer]
    if settings.service != "ping":
        argv += ["--service", settings.service]
    case = result.exchange.case if result.exchange is not None else ""
    line = shlex.join(argv)
    return f"{line}  # case {case}" if case else line


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 160 else text[:157] + "..."


def _result_json(settings: KitSettings, result: CheckResult) -> dict[str, Any]:
    return {
        "id": result.check.id,
        "side": str(result.check.side),
        "title": result.check.title,
        "description": result.check.description,
        "reference": result.check.reference,
        "outcome": str(result.outcome),
        "message": result.message,
        "differences": [d.as_dict() for d in result.differences],
        "case": result.exchange.case if result.exchange is not None else None,
        "cases": result.cases,
        "reproduce": reproduce(settings, result) if not result.passed else None,
        "request": result.exchange.as_dict()["request"] if result.exchange else None,
        "response": result.exchange.as_dict()["response"] if result.exchange else None,
        "duration": round(result.duration, 4),
    }


def to_json(report: RunReport) -> dict[str, Any]:
    settings = report.settings
    counts = {str(o): sum(r.outcome is o for r in report.results) for o in Outcome}
    return {
        "kit": "pasarela conformance",
        "protocol": 1,
        "connector": settings.connector,
        "agency": settings.agency,
        "peer": settings.peer,
        "service": settings.service,
        "gateway": settings.gateway_url,
        "seed": settings.seed,
        "started": datetime.fromtimestamp(report.started, UTC).isoformat(),
        "duration": round(report.duration, 3),
        "conformant": report.conformant,
        "exit_code": report.exit_code,
        "counts": counts,
        "exchanges": len(report.exchanges),
        "successful_exchanges": report.successes,
        "blocker": report.blocker or None,
        "checks": [_result_json(settings, r) for r in report.results],
    }


def write_transcript(report: RunReport, path: Path) -> None:
    """Every exchange, one JSON object per line, in the order they happened."""
    with path.open("w", encoding="utf-8") as out:
        for exchange in report.exchanges:
            out.write(json.dumps(exchange.as_dict(), ensure_ascii=False) + "\n")


def _details(settings: KitSettings, result: CheckResult) -> str:
    lines = [result.message, "", result.check.description, f"({result.check.reference})"]
    if result.differences:
        lines += ["", "differences (path: expected / actual):"]
        lines += [
            f"  {d.path}: {_shown(d.expected)} / {_shown(d.actual)}" for d in result.differences
        ]
    lines += ["", "reproduce: " + reproduce(settings, result)]
    if result.exchange is not None:
        lines += ["", "request:", result.exchange.raw_request()]
        lines += ["", "response:", result.exchange.raw_response()]
    return "\n".join(lines)


def write_junit(report: RunReport, path: Path) -> None:
    """One ``testcase`` per check (classname ``conformance.<side>``), failures with details."""
    settings = report.settings
    suite = ET.Element(
        "testsuite",
        name="pasarela conformance",
        tests=str(len(report.results) + (1 if report.blocker else 0)),
        failures=str(len(report.failed) + (1 if report.blocker else 0)),
        errors=str(len(report.errors)),
        skipped="0",
        time=f"{report.duration:.3f}",
        timestamp=datetime.fromtimestamp(report.started, UTC).isoformat(timespec="seconds"),
    )
    properties = ET.SubElement(suite, "properties")
    for name, value in (
        ("connector", settings.connector),
        ("agency", settings.agency),
        ("peer", settings.peer),
        ("service", settings.service),
        ("seed", str(settings.seed)),
    ):
        ET.SubElement(properties, "property", name=name, value=value)
    for result in report.results:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"conformance.{result.check.side}",
            name=result.check.id,
            time=f"{result.duration:.3f}",
        )
        if result.outcome is not Outcome.PASSED:
            tag = "failure" if result.outcome is Outcome.FAILED else "error"
            element = ET.SubElement(case, tag, message=result.message, type=str(result.outcome))
            element.text = _details(settings, result)
        out = ET.SubElement(case, "system-out")
        out.text = "\n".join(json.dumps(e.as_dict(), ensure_ascii=False) for e in result.exchanges)
    if report.blocker:
        case = ET.SubElement(suite, "testcase", classname="conformance", name="successful-exchange")
        ET.SubElement(case, "failure", message=report.blocker, type="failed").text = report.blocker
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


def print_result(console: Console, result: CheckResult) -> None:
    """One line as a check ends (progress)."""
    console.print(
        f"{_MARK[result.outcome]} {result.check.id} [dim]{escape(result.check.title)} "
        f"({result.duration:.2f} s)[/]"
    )


def print_report(console: Console, report: RunReport) -> None:
    settings = report.settings
    for result in report.results:
        if result.passed:
            continue
        console.rule(f"{_MARK[result.outcome]} {result.check.id}")
        console.print(escape(result.message))
        console.print(f"[dim]{escape(result.check.description)} ({result.check.reference})[/]")
        if result.differences:
            table = Table("path", "expected", "actual", show_lines=False, box=None)
            for d in result.differences:
                table.add_row(escape(d.path), escape(_shown(d.expected)), escape(_shown(d.actual)))
            console.print(table)
        console.print("[bold]reproduce[/]: " + escape(reproduce(settings, result)))
        if result.exchange is not None:
            console.print("[bold]request[/]:")
            console.print(escape(result.exchange.raw_request()), soft_wrap=True)
            console.print("[bold]response[/]:")
            console.print(escape(result.exchange.raw_response()), soft_wrap=True)
    if report.blocker:
        console.rule("[red]no successful exchange[/]")
        console.print(escape(report.blocker))
    passed = sum(r.passed for r in report.results)
    verdict = "[green]conformant[/]" if report.conformant else "[red]not conformant[/]"
    console.print(
        f"\n{verdict}: {passed} of {len(report.results)} checks passed, "
        f"{len(report.failed)} failed, {len(report.errors)} errors; "
        f"{len(report.exchanges)} exchanges, {report.successes} successful "
        f"({report.duration:.1f} s, seed {settings.seed})"
    )
