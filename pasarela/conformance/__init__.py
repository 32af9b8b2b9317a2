"""The black-box connector conformance kit (``pasarela conformance``).

The kit plays the gateway and a peer agency against an agency connector at a URL, in any
language, and runs named checks of the wire protocol in both directions:
:data:`~pasarela.conformance.checks.CHECKS`. See ``docs/conformance.md``.
"""

from pasarela.conformance.checks import CHECKS, PROBLEM_CODES, select_checks
from pasarela.conformance.model import (
    Check,
    CheckResult,
    Difference,
    Exchange,
    InfrastructureError,
    Outcome,
    Side,
    UsageError,
)
from pasarela.conformance.runner import RunReport, run_conformance
from pasarela.conformance.session import HEADER_TEST_CASE, KitSettings

__all__ = [
    "CHECKS",
    "HEADER_TEST_CASE",
    "PROBLEM_CODES",
    "Check",
    "CheckResult",
    "Difference",
    "Exchange",
    "InfrastructureError",
    "KitSettings",
    "Outcome",
    "RunReport",
    "Side",
    "UsageError",
    "run_conformance",
    "select_checks",
]
