"""Tests for scenarios.calendar: Chilean holidays, business-day arithmetic, ATI deadlines."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scenarios.calendar import (
    BusinessCalendar,
    Holiday,
    ati_deadline,
    easter_sunday,
    holidays,
)

D = datetime.date
CALENDAR = BusinessCalendar()


@pytest.mark.parametrize(
    ("year", "good_friday"),
    [(2013, D(2013, 3, 29)), (2014, D(2014, 4, 18)), (2015, D(2015, 4, 3)), (2016, D(2016, 3, 25))],
)
def test_easter_based_holidays(year: int, good_friday: D) -> None:
    """Viernes Santo and Sábado Santo are the Friday and Saturday before Easter Sunday."""
    assert easter_sunday(year) == good_friday + datetime.timedelta(days=2)
    days = {h.day: h.name for h in holidays(year)}
    assert days[good_friday] == "Viernes Santo"
    assert days[good_friday + datetime.timedelta(days=1)] == "Sábado Santo"


def test_holidays_are_sorted_and_within_their_year() -> None:
    """Each year's holidays come in date order and all fall in that year."""
    for year in range(2013, 2017):
        days = [h.day for h in holidays(year)]
        assert days == sorted(days)
        assert {d.year for d in days} == {year}


@pytest.mark.parametrize(
    "day",
    [
        D(2015, 5, 21),  # Glorias Navales, a Thursday
        D(2015, 9, 18),  # Independencia Nacional, a Friday
        D(2015, 4, 3),  # Viernes Santo
        D(2013, 9, 20),  # extra Fiestas Patrias Friday (Law 20.215)
        D(2016, 6, 27),  # San Pedro y San Pablo moved from Wednesday 29 June (Law 19.668)
        D(2016, 10, 10),  # Encuentro de Dos Mundos moved from Wednesday 12 October
    ],
)
def test_weekday_holiday_is_not_a_business_day(day: D) -> None:
    """A holiday falling Monday to Friday closes public bodies."""
    assert day.weekday() < 5
    assert not CALENDAR.is_business_day(day)


def test_moved_holiday_original_date_is_a_business_day() -> None:
    """Wednesday 29 June 2016 is a working day once the holiday moves to Monday 27."""
    assert CALENDAR.is_business_day(D(2016, 6, 29))


def test_weekends_are_not_business_days() -> None:
    """Saturdays and Sundays are never business days."""
    assert not CALENDAR.is_business_day(D(2015, 6, 27))
    assert not CALENDAR.is_business_day(D(2015, 6, 28))
    assert CALENDAR.is_business_day(D(2015, 6, 26))


def test_ati_deadline_skips_holidays() -> None:
    """A request filed Wednesday 2015-06-24 is due Friday 2015-07-24."""
    # Counting from Thu 25 June: 25, 26 (2), Mon 29 is San Pedro y San Pablo, 30 (3),
    # 1-3 July (6), 6-10 (11), 13-15 (14), Thu 16 is Virgen del Carmen, Fri 17 (15),
    # 20-24 (20).
    assert ati_deadline(CALENDAR, D(2015, 6, 24)) == D(2015, 7, 24)


def test_extended_ati_deadline_adds_ten_business_days() -> None:
    """The extended deadline for a request filed 2015-06-24 is Friday 2015-08-07."""
    # From the 20th business day, Fri 24 July: 27-31 July (25), 3-7 August (30).
    assert ati_deadline(CALENDAR, D(2015, 6, 24), extended=True) == D(2015, 8, 7)


def test_filing_on_a_weekend_counts_from_monday() -> None:
    """The first business day after a Saturday filing is the following Monday."""
    assert CALENDAR.add_business_days(D(2015, 6, 6), 1) == D(2015, 6, 8)


def test_add_business_days_across_new_year() -> None:
    """Six business days after Tuesday 2014-12-23 is Friday 2015-01-02."""
    # 24 Dec (1), 25 Navidad, 26 (2), 29 (3), 30 (4), 31 (5), 1 Jan Año Nuevo, 2 Jan (6).
    assert CALENDAR.add_business_days(D(2014, 12, 23), 6) == D(2015, 1, 2)


def test_add_zero_business_days_returns_the_day() -> None:
    """add_business_days(day, 0) is `day` itself, even on a holiday."""
    assert CALENDAR.add_business_days(D(2015, 9, 18), 0) == D(2015, 9, 18)


def test_negative_business_days_rejected() -> None:
    """A negative count raises ValueError."""
    with pytest.raises(ValueError, match="n must be >= 0"):
        CALENDAR.add_business_days(D(2015, 1, 5), -1)


def test_next_business_day_skips_fiestas_patrias() -> None:
    """After Thursday 2015-09-17 the next business day is Monday 2015-09-21."""
    assert CALENDAR.next_business_day(D(2015, 9, 17)) == D(2015, 9, 21)


def test_business_days_lists_the_closed_interval() -> None:
    """business_days includes both ends and skips holidays and weekends."""
    days = list(CALENDAR.business_days(D(2015, 9, 14), D(2015, 9, 21)))
    assert days == [D(2015, 9, 14), D(2015, 9, 15), D(2015, 9, 16), D(2015, 9, 17), D(2015, 9, 21)]


def test_business_days_between_is_zero_for_reversed_interval() -> None:
    """business_days_between returns 0 when end <= start."""
    assert CALENDAR.business_days_between(D(2015, 7, 24), D(2015, 6, 24)) == 0
    assert CALENDAR.business_days_between(D(2015, 7, 24), D(2015, 7, 24)) == 0


@given(
    day=st.dates(min_value=D(2013, 1, 1), max_value=D(2015, 12, 31)),
    n=st.integers(min_value=0, max_value=200),
)
def test_business_days_between_inverts_add_business_days(day: D, n: int) -> None:
    """business_days_between(d, add_business_days(d, n)) == n."""
    assert CALENDAR.business_days_between(day, CALENDAR.add_business_days(day, n)) == n


@given(day=st.dates(min_value=D(2013, 1, 1), max_value=D(2016, 12, 31)))
def test_is_business_day_matches_the_holiday_table(day: D) -> None:
    """A day is a business day exactly when it is a weekday and not a listed holiday."""
    listed = {h.day for h in holidays(day.year)}
    assert CALENDAR.is_business_day(day) == (day.weekday() < 5 and day not in listed)


def test_extra_closures_are_honoured() -> None:
    """A scenario closure day is skipped like a holiday."""
    closed = BusinessCalendar(extra_closures=[D(2015, 7, 1)])
    assert not closed.is_business_day(D(2015, 7, 1))
    assert ati_deadline(closed, D(2015, 6, 24)) == D(2015, 7, 27)


def test_out_of_range_year_raises() -> None:
    """holidays() names the supported range for a year without a table."""
    with pytest.raises(ValueError, match="2013 to 2016"):
        holidays(2017)


def test_out_of_range_date_raises() -> None:
    """Calendar queries outside 2013-2016 raise rather than guess."""
    with pytest.raises(ValueError, match="2013 to 2016"):
        CALENDAR.is_business_day(D(2012, 12, 31))


def test_deadline_past_the_calendar_raises() -> None:
    """A deadline falling after 2016-12-31 raises ValueError."""
    with pytest.raises(ValueError, match="runs past the calendar"):
        ati_deadline(CALENDAR, D(2016, 12, 20))


def test_holiday_is_a_frozen_value() -> None:
    """Holiday compares by value and cannot be mutated."""
    holiday = Holiday(D(2015, 1, 1), "Año Nuevo")
    assert holiday == holidays(2015)[0]
    with pytest.raises(AttributeError):
        holiday.name = "x"  # type: ignore[misc]
