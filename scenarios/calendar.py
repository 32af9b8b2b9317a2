"""Chilean business days ("días hábiles") for 2013 to 2016, and the ATI request deadline.

Legal basis:

* Law 20.285 (Transparency), art. 14: a public body answers an access-to-information
  request within 20 business days of receiving it, extendable once, exceptionally, by
  10 more. Its days are business days, as in Law 19.880, art. 25: Saturdays, Sundays
  and public holidays ("festivos") are not counted, and a period runs from the day
  after the triggering act. So a request filed on day D is due at the end of the 20th
  business day strictly after D.
* Public holidays: the national "feriados legales" of each year. Moved ones follow
  Law 19.668 (29 June and 12 October: a Tuesday, Wednesday or Thursday moves to that
  week's Monday, a Friday to the next Monday), Law 20.299 (31 October: a Tuesday moves
  to the previous Friday, a Wednesday to that week's Friday) and Law 20.215 (17
  September is added when a Monday, 20 September when a Friday). Election days are
  holidays (Law 18.700); all of them fell on Sundays in 2013-2016.

Only national holidays are listed: regional ones (7 June in Arica y Parinacota, Law
20.663; 20 August in Chillán, Law 20.768) and the 31 December bank holiday, which does
not close public bodies, are left out. Everything here is pure: no I/O, no clock.
"""

from __future__ import annotations

import datetime
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

__all__ = [
    "ATI_DEADLINE_DAYS",
    "ATI_EXTENSION_DAYS",
    "FIRST_YEAR",
    "LAST_YEAR",
    "BusinessCalendar",
    "Holiday",
    "ati_deadline",
    "easter_sunday",
    "holidays",
]

FIRST_YEAR = 2013
LAST_YEAR = 2016
ATI_DEADLINE_DAYS = 20  # Law 20.285, art. 14
ATI_EXTENSION_DAYS = 10  # Law 20.285, art. 14, second paragraph

_RANGE = f"{FIRST_YEAR} to {LAST_YEAR}"

# Every holiday except the two Easter-based ones, per year, as (month, day, name).
_DATED_HOLIDAYS: dict[int, tuple[tuple[int, int, str], ...]] = {
    2013: (
        (1, 1, "Año Nuevo"),
        (5, 1, "Día Nacional del Trabajo"),
        (5, 21, "Día de las Glorias Navales"),
        (6, 29, "San Pedro y San Pablo"),  # a Saturday: Law 19.668 leaves it in place
        (6, 30, "Elecciones primarias"),  # a Sunday (Law 20.640); from memory, no effect
        (7, 16, "Virgen del Carmen"),
        (8, 15, "Asunción de la Virgen"),
        (9, 18, "Independencia Nacional"),
        (9, 19, "Día de las Glorias del Ejército"),
        (9, 20, "Fiestas Patrias"),  # a Friday after 18-19 on Wed-Thu: Law 20.215
        (10, 12, "Encuentro de Dos Mundos"),  # a Saturday: Law 19.668 leaves it in place
        (10, 31, "Día de las Iglesias Evangélicas y Protestantes"),  # a Thursday: not moved
        (11, 1, "Día de Todos los Santos"),
        (11, 17, "Elecciones presidencial y parlamentarias"),  # a Sunday
        (12, 8, "Inmaculada Concepción"),
        (12, 15, "Segunda vuelta presidencial"),  # a Sunday
        (12, 25, "Navidad"),
    ),
    2014: (
        (1, 1, "Año Nuevo"),
        (5, 1, "Día Nacional del Trabajo"),
        (5, 21, "Día de las Glorias Navales"),
        (6, 29, "San Pedro y San Pablo"),  # a Sunday: not moved
        (7, 16, "Virgen del Carmen"),
        (8, 15, "Asunción de la Virgen"),
        (9, 18, "Independencia Nacional"),
        (9, 19, "Día de las Glorias del Ejército"),
        (10, 12, "Encuentro de Dos Mundos"),  # a Sunday: not moved
        (10, 31, "Día de las Iglesias Evangélicas y Protestantes"),  # a Friday: not moved
        (11, 1, "Día de Todos los Santos"),
        (12, 8, "Inmaculada Concepción"),
        (12, 25, "Navidad"),
    ),
    2015: (
        (1, 1, "Año Nuevo"),
        (5, 1, "Día Nacional del Trabajo"),
        (5, 21, "Día de las Glorias Navales"),
        (6, 29, "San Pedro y San Pablo"),  # already a Monday
        (7, 16, "Virgen del Carmen"),
        (8, 15, "Asunción de la Virgen"),
        (9, 18, "Independencia Nacional"),
        (9, 19, "Día de las Glorias del Ejército"),
        (10, 12, "Encuentro de Dos Mundos"),  # already a Monday
        (10, 31, "Día de las Iglesias Evangélicas y Protestantes"),  # a Saturday: not moved
        (11, 1, "Día de Todos los Santos"),
        (12, 8, "Inmaculada Concepción"),
        (12, 25, "Navidad"),
    ),
    2016: (
        (1, 1, "Año Nuevo"),
        (5, 1, "Día Nacional del Trabajo"),
        (5, 21, "Día de las Glorias Navales"),
        (6, 27, "San Pedro y San Pablo"),  # 29 June is a Wednesday: moved to Monday 27
        (7, 16, "Virgen del Carmen"),
        (8, 15, "Asunción de la Virgen"),
        (9, 18, "Independencia Nacional"),
        (9, 19, "Día de las Glorias del Ejército"),
        (10, 10, "Encuentro de Dos Mundos"),  # 12 October is a Wednesday: moved to Monday 10
        (10, 23, "Elecciones municipales"),  # a Sunday
        (10, 31, "Día de las Iglesias Evangélicas y Protestantes"),  # a Monday: not moved
        (11, 1, "Día de Todos los Santos"),
        (12, 8, "Inmaculada Concepción"),
        (12, 25, "Navidad"),
    ),
}


@dataclass(frozen=True, slots=True)
class Holiday:
    """One public holiday ("feriado") of Chile."""

    day: datetime.date
    name: str


def easter_sunday(year: int) -> datetime.date:
    """Gregorian Easter Sunday, by the Anonymous Gregorian (Meeus/Jones/Butcher) algorithm."""
    a = year % 19
    b, c = divmod(year, 100)
    d, e = divmod(b, 4)
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    l = (32 + 2 * e + 2 * i - h - k) % 7  # noqa: E741 - the algorithm's own letter
    m = (a + 11 * h + 22 * l) // 451
    month, day = divmod(h + l - 7 * m + 114, 31)
    return datetime.date(year, month, day + 1)


def holidays(year: int) -> tuple[Holiday, ...]:
    """The national holidays of `year`, in date order; ValueError outside 2013 to 2016."""
    if year not in _DATED_HOLIDAYS:
        raise ValueError(f"no holiday table for {year}: the calendar covers {_RANGE}")
    easter = easter_sunday(year)
    found = [
        Holiday(datetime.date(year, month, day), name) for month, day, name in _DATED_HOLIDAYS[year]
    ]
    found.append(Holiday(easter - datetime.timedelta(days=2), "Viernes Santo"))
    found.append(Holiday(easter - datetime.timedelta(days=1), "Sábado Santo"))
    return tuple(sorted(found, key=lambda holiday: holiday.day))


_FIRST_DAY = datetime.date(FIRST_YEAR, 1, 1)
_LAST_DAY = datetime.date(LAST_YEAR, 12, 31)
_SATURDAY = 5


class BusinessCalendar:
    """Business days from 2013-01-01 to 2016-12-31, indexed for O(1) and O(log n) queries.

    Dates outside that range raise ValueError rather than guess at unknown holidays.
    """

    __slots__ = ("_base", "_business", "_count_through", "_open")

    def __init__(self, *, extra_closures: Iterable[datetime.date] = ()) -> None:
        closed = {h.day for year in _DATED_HOLIDAYS for h in holidays(year)}
        for day in extra_closures:
            self._check(day)
            closed.add(day)
        self._base = _FIRST_DAY.toordinal()
        business: list[datetime.date] = []
        # _count_through[i]: business days in [_FIRST_DAY, _FIRST_DAY + i days].
        count_through: list[int] = []
        is_open: list[bool] = []
        for ordinal in range(self._base, _LAST_DAY.toordinal() + 1):
            day = datetime.date.fromordinal(ordinal)
            is_open.append(day.weekday() < _SATURDAY and day not in closed)
            if is_open[-1]:
                business.append(day)
            count_through.append(len(business))
        self._business = tuple(business)
        self._count_through = tuple(count_through)
        self._open = tuple(is_open)

    @staticmethod
    def _check(day: datetime.date) -> None:
        if not _FIRST_DAY <= day <= _LAST_DAY:
            raise ValueError(f"{day.isoformat()} is outside the calendar, which covers {_RANGE}")

    def _rank(self, day: datetime.date) -> int:
        """How many business days fall on or before `day` within the range."""
        self._check(day)
        return self._count_through[day.toordinal() - self._base]

    def is_business_day(self, day: datetime.date) -> bool:
        """True for Monday to Friday when neither a holiday nor an extra closure."""
        self._check(day)
        return self._open[day.toordinal() - self._base]

    def next_business_day(self, day: datetime.date) -> datetime.date:
        """The first business day strictly after `day`."""
        return self.add_business_days(day, 1)

    def add_business_days(self, day: datetime.date, n: int) -> datetime.date:
        """The n-th business day strictly after `day`; n == 0 gives `day` itself."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if n == 0:
            self._check(day)
            return day
        position = self._rank(day) + n - 1
        if position >= len(self._business):
            raise ValueError(
                f"{n} business days after {day.isoformat()} runs past the calendar ({_RANGE})"
            )
        return self._business[position]

    def business_days_between(self, start: datetime.date, end: datetime.date) -> int:
        """How many business days lie in (start, end]; 0 when end <= start."""
        if end <= start:
            self._check(start)
            self._check(end)
            return 0
        return self._rank(end) - self._rank(start)

    def business_days(self, start: datetime.date, end: datetime.date) -> Iterator[datetime.date]:
        """The business days in [start, end], in order."""
        self._check(start)
        self._check(end)
        low = bisect_left(self._business, start)
        high = bisect_right(self._business, end)
        return iter(self._business[low:high])


def ati_deadline(
    calendar: BusinessCalendar, filed: datetime.date, *, extended: bool = False
) -> datetime.date:
    """Last day to answer a request filed on `filed`: 20 business days, 30 if extended."""
    days = ATI_DEADLINE_DAYS + (ATI_EXTENSION_DAYS if extended else 0)
    return calendar.add_business_days(filed, days)
