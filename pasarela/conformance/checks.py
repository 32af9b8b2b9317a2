"""The catalogue of checks and their selection by ``--checks`` / ``--exclude-checks``.

Provider checks (:mod:`~pasarela.conformance.provider`) deliver messages to the
connector's endpoint as the gateway would; consumer checks
(:mod:`~pasarela.conformance.consumer`) ask it to send and answer as the gateway. Each
check raises :class:`~pasarela.conformance.model.Violation` with the differences it found,
or returns.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

from pasarela.conformance import consumer, provider
from pasarela.conformance.consumer import PROBLEM_CODES
from pasarela.conformance.model import Check, UsageError

__all__ = ["CHECKS", "PROBLEM_CODES", "select_checks"]

#: Every check, provider ones first, in the order a run takes them.
CHECKS: tuple[Check, ...] = (*provider.CHECKS, *consumer.CHECKS)

_BY_ID = {check.id: check for check in CHECKS}


def _patterns(values: Iterable[str]) -> list[str]:
    return [p.strip() for value in values for p in value.split(",") if p.strip()]


def select_checks(include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[Check]:
    """The checks named by ``--checks`` minus ``--exclude-checks`` (ids or glob patterns)."""
    chosen: list[Check] = list(CHECKS)
    wanted, unwanted = _patterns(include), _patterns(exclude)
    for pattern in [*wanted, *unwanted]:
        if not any(fnmatch.fnmatchcase(check.id, pattern) for check in CHECKS):
            known = ", ".join(_BY_ID)
            raise UsageError(f"no check matches {pattern!r}; the checks are: {known}")
    if wanted:
        chosen = [c for c in chosen if any(fnmatch.fnmatchcase(c.id, p) for p in wanted)]
    chosen = [c for c in chosen if not any(fnmatch.fnmatchcase(c.id, p) for p in unwanted)]
    if not chosen:
        raise UsageError("--checks and --exclude-checks leave no check to run")
    return chosen
