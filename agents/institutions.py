"""How public bodies handle access-to-information (ATI) requests, as a seeded model.

Each institution (a central agency, a municipality, an autonomous body) has a staff
capacity (answers per business day), an answer-time distribution (lognormal, in business
days), a share of requests it never answers, and occasional outages. Requests wait in its
:class:`Workload` until they are ready and there is capacity to answer them.

Pure bookkeeping: no I/O, no clock. Randomness comes from a ``random.Random`` the caller
seeds, and dates from the caller's business calendar.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum

__all__ = [
    "AtiRequest",
    "Group",
    "Profile",
    "Status",
    "Workload",
    "draw_profile",
    "number_of",
    "poisson",
]


class Group(StrEnum):
    CENTRAL = "central"
    MUNICIPALITY = "municipality"
    AUTONOMOUS = "autonomous"
    OFFLINE_MUNICIPALITY = "offline_municipality"


class Status(StrEnum):
    PENDING = "pending"
    ANSWERED = "answered"


@dataclass(slots=True, kw_only=True)
class AtiRequest:
    """One citizen's request, from filing to answer (mutable: it moves through its life)."""

    number: int
    institution: str
    group: Group
    filed: date
    deadline: date
    #: Drawn at filing: business days the institution needs, whether it ever answers,
    #: whether it takes the one extension.
    work_days: int
    will_answer: bool
    extended: bool
    through_portal: bool
    status: Status = Status.PENDING
    delivered: date | None = None
    answered: date | None = None

    @property
    def label(self) -> str:
        """The portal's request number (``NumSolicitud``), e.g. ``AG017-0001234``."""
        return f"{self.institution}-{self.number:07d}"

    @property
    def in_time(self) -> bool:
        return self.answered is not None and self.answered <= self.deadline


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    """One institution's behaviour, drawn once from its group's parameters."""

    capacity: int
    answer_days_median: float
    answer_days_sigma: float
    never_answer: float
    extension_share: float
    outage_per_year: float
    outage_days: float

    def work_days(self, rng: random.Random) -> int:
        """Business days this institution needs for one request (at least 1)."""
        mu = math.log(self.answer_days_median)
        return max(1, round(rng.lognormvariate(mu, self.answer_days_sigma)))


def draw_profile(
    rng: random.Random,
    *,
    capacity: tuple[int, int],
    answer_days_median: float,
    answer_days_sigma: float,
    never_answer: float,
    extension_share: float,
    outage_per_year: float,
    outage_days: float,
) -> Profile:
    """An institution's profile: capacity uniform in [min, max], the rest as its group's."""
    return Profile(
        capacity=rng.randint(capacity[0], capacity[1]),
        answer_days_median=answer_days_median,
        answer_days_sigma=answer_days_sigma,
        never_answer=never_answer,
        extension_share=extension_share,
        outage_per_year=outage_per_year,
        outage_days=outage_days,
    )


def number_of(label: str) -> int:
    """The sequence number inside a request label (the inverse of ``AtiRequest.label``)."""
    return int(label.rsplit("-", 1)[1])


def poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw (Knuth's method for small means, normal approximation above 30)."""
    if mean <= 0:
        return 0
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


@dataclass(slots=True)
class Workload:
    """Requests an institution has received, ordered by the day each will be ready."""

    _ready: list[tuple[date, int, AtiRequest]] = field(default_factory=list)
    _counter: int = 0

    def __len__(self) -> int:
        return len(self._ready)

    def add(self, request: AtiRequest, ready: date) -> None:
        self._counter += 1
        heapq.heappush(self._ready, (ready, self._counter, request))

    def take_ready(self, day: date, capacity: int) -> list[AtiRequest]:
        """Up to ``capacity`` requests ready on or before ``day``, oldest readiness first."""
        out: list[AtiRequest] = []
        while self._ready and len(out) < capacity and self._ready[0][0] <= day:
            out.append(heapq.heappop(self._ready)[2])
        return out
