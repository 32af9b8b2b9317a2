"""Run the selected checks against a connector and gather the verdicts."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from pasarela.conformance.model import Check, CheckResult, Exchange, Outcome, Side, Violation
from pasarela.conformance.session import KitSettings, Session

__all__ = ["RunReport", "run_conformance"]

_log = structlog.get_logger("pasarela.conformance")

EXIT_CONFORMANT, EXIT_VIOLATED, EXIT_INFRA = 0, 1, 3


@dataclass(slots=True, kw_only=True)
class RunReport:
    settings: KitSettings
    results: list[CheckResult]
    exchanges: list[Exchange] = field(default_factory=list)
    successes: int = 0
    started: float = 0.0
    duration: float = 0.0
    #: Why the run cannot pass although no check failed (no successful exchange).
    blocker: str = ""

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if r.outcome is Outcome.FAILED]

    @property
    def errors(self) -> list[CheckResult]:
        return [r for r in self.results if r.outcome is Outcome.ERROR]

    @property
    def conformant(self) -> bool:
        return not self.blocker and all(r.passed for r in self.results)

    @property
    def exit_code(self) -> int:
        if self.failed or self.blocker:
            return EXIT_VIOLATED
        if self.errors:
            return EXIT_INFRA
        return EXIT_CONFORMANT


async def _judge(session: Session, check: Check) -> CheckResult:
    session.check = check
    first = len(session.exchanges)
    began = time.monotonic()
    result = CheckResult(check=check, outcome=Outcome.PASSED)
    try:
        await check.run(session)
    except Violation as violation:
        result.outcome = Outcome.FAILED
        result.message = violation.message
        result.differences = violation.differences
        result.exchange = violation.exchange
    except Exception as exc:  # the kit's own failure must not hide the other verdicts
        _log.exception("check_error", check=check.id)
        result.outcome = Outcome.ERROR
        result.message = f"the kit failed on this check: {type(exc).__name__}: {exc}"
    result.duration = time.monotonic() - began
    result.exchanges = session.exchanges[first:]
    result.cases = list(dict.fromkeys(e.case for e in result.exchanges))
    session.check = None
    return result


async def _baseline(session: Session, sides: set[Side]) -> str:
    """One ordinary exchange per side exercised, when the checks made none succeed."""
    if Side.PROVIDER in sides:
        await session.valid_delivery(session.new_case("provider"))
    if session.successes == 0 and Side.CONSUMER in sides:
        case = session.new_case("consumer")
        await session.trigger(case, {"case": case, "text": "pasarela conformance"})
    if session.successes:
        return ""
    return (
        "no message was exchanged successfully (no valid delivery answered 2xx, no triggered "
        "message answered and verified): a connector that refuses everything is not conformant"
    )


async def run_conformance(
    settings: KitSettings,
    checks: Sequence[Check],
    *,
    progress: Callable[[CheckResult], None] | None = None,
) -> RunReport:
    """Start the kit, run ``checks`` in order, stop the kit; raise Usage/InfrastructureError."""
    started, began = time.time(), time.monotonic()
    async with Session.open(settings) as session:
        results: list[CheckResult] = []
        for check in checks:
            result = await _judge(session, check)
            results.append(result)
            if progress is not None:
                progress(result)
        blocker = ""
        if session.successes == 0 and all(r.passed for r in results):
            blocker = await _baseline(session, {check.side for check in checks})
        return RunReport(
            settings=settings,
            results=results,
            exchanges=list(session.exchanges),
            successes=session.successes,
            started=started,
            duration=time.monotonic() - began,
            blocker=blocker,
        )
