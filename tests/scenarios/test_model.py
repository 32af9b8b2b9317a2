"""Scenario format v1: the loader, its errors (file, key path, line) and the line index."""

from __future__ import annotations

import datetime as dt
import difflib
import pickle
import re
from pathlib import Path

import pytest

from scenarios.model import (
    KEYS,
    Point,
    Scenario,
    ScenarioError,
    World,
    load_scenario,
    parse_scenario,
    with_overrides,
)
from scenarios.toml_source import SourceIndex, render_key, split_key

HERE = Path(__file__).resolve().parent
BAD = HERE / "bad"
ROOT = HERE.parent.parent
DEFAULT = ROOT / "scenarios" / "library" / "pisee-2015.toml"
DOCS = ROOT / "docs" / "scenarios.md"

#: The smallest complete scenario; every file in bad/ is a small variation of it.
MINIMAL = """\
schema = 1

[scenario]
name = "minimal"
start = 2015-01-01
end = 2015-12-31
report_dates = [2015-06-30, 2015-12-31]

[world]
central_agencies = 5
central_target = 8
municipalities = 3
autonomous = 2

[growth]
central_linked = [{ date = 2015-01-01, count = 2 }, { date = 2015-02-01, count = 5 }]
municipalities_on_portal = [
    { date = 2015-01-01, count = 1 },
    { date = 2015-12-31, count = 3 },
]

[demand]
municipal = 0.2
central = 0.1
autonomous = 0.1
offline_municipal = 0.1

[behaviour.central]
answer_days_median = 12.0
answer_days_sigma = 0.7
never_answer = 0.2
capacity_per_day = [1, 8]
extension_share = 0.1

[behaviour.municipality]
answer_days_median = 10.0
answer_days_sigma = 0.7
never_answer = 0.1
capacity_per_day = [1, 8]
extension_share = 0.1

[behaviour.autonomous]
answer_days_median = 12.0
answer_days_sigma = 0.7
never_answer = 0.1
capacity_per_day = [1, 8]
extension_share = 0.1

[behaviour.offline_municipality]
answer_days_median = 15.0
answer_days_sigma = 0.7
never_answer = 0.7
capacity_per_day = [1, 8]
extension_share = 0.1

[incident]
detected = 2015-03-02T09:00:00
disconnect = 2015-03-02T11:00:00
new_generation = 2015-03-03T10:00:00

[plan]
name = "minimal plan"
approval_delay_days = [2, 8]
verify_delay_days = [1, 4]
check_failure = 0.1
fallback = 2
fallback_start = 2015-04-01
fallback_capacity = 0.5

[[plan.waves]]
name = "pilot"
start = 2015-05-04
agencies = 2

[[plan.waves]]
name = "second"
start = 2015-06-01
agencies = ["AG005", "AG007"]

[[expect]]
kind = "connected-by"
date = 2015-07-31
at_least = 3
"""


def _parse(text: str = MINIMAL) -> Scenario:
    return parse_scenario(text, path=Path("minimal.toml"))


def _edit(old: str, new: str, text: str = MINIMAL) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def _error(fixture: str) -> ScenarioError:
    path = BAD / fixture
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert caught.value.path == path
    return caught.value


# -- files that load -------------------------------------------------------------------------


def test_default_scenario_loads() -> None:
    """The shipped pisee-2015.toml is valid and carries the report's figures."""
    scenario = load_scenario(DEFAULT)
    assert scenario.world.central_agencies == 145
    assert scenario.world.central_target == 225
    assert scenario.growth.count_at("municipalities_on_portal", dt.date(2015, 7, 31)) == 283
    pilot = scenario.plan.waves[0]
    assert (pilot.name, len(pilot.agencies)) == ("pilot", 17)
    start = scenario.plan.waves[0].start
    assert start is not None
    assert start.month == 5


def test_minimal_file_loads() -> None:
    """The minimal file the bad fixtures derive from is itself valid."""
    assert _parse().name == "minimal"


def test_load_accepts_a_string_path() -> None:
    """load_scenario takes a str as well as a Path, and keeps the path."""
    assert load_scenario(str(DEFAULT)).path == DEFAULT


def test_optional_keys_take_their_defaults() -> None:
    """Absent optional keys get the documented defaults."""
    scenario = _parse()
    central = scenario.behaviour["central"]
    assert (scenario.description, scenario.seed, scenario.world.gateway_code) == ("", 0, "PASARELA")
    assert (central.outage_per_year, central.outage_days) == (0.0, 2.0)
    assert scenario.incident is not None
    assert scenario.incident.stale_senders == 0.0
    assert scenario.growth.autonomous_on_portal == (Point(day=dt.date(2015, 1, 1), count=2),)


def test_an_integer_is_accepted_where_a_float_is_expected() -> None:
    """`municipal = 1` reads as 1.0."""
    assert _parse(_edit("municipal = 0.2\n", "municipal = 1\n")).demand.municipal == 1.0


def test_incident_is_optional() -> None:
    """Without [incident] there is no incident, and waves may start any day of the span."""
    incident = (
        "[incident]\ndetected = 2015-03-02T09:00:00\ndisconnect = 2015-03-02T11:00:00\n"
        "new_generation = 2015-03-03T10:00:00\n"
    )
    text = _edit("start = 2015-05-04\n", "start = 2015-01-02\n", _edit(incident, ""))
    scenario = _parse(text)
    assert scenario.incident is None
    assert scenario.plan.waves[0].start == dt.date(2015, 1, 2)


def test_expectations_keep_their_key_path() -> None:
    """Each expectation keeps its key path, for messages about it."""
    scenario = load_scenario(DEFAULT)
    assert [(e.kind, e.key) for e in scenario.expectations] == [
        ("no-superseded-key-accepted", "expect[0]"),
        ("connected-by", "expect[1]"),
        ("answered-in-time", "expect[2]"),
        ("max-backlog", "expect[3]"),
    ]


def test_answered_in_time_scope_defaults_to_all() -> None:
    """An answered-in-time expectation without scope covers all institutions."""
    text = _edit(
        'kind = "connected-by"\ndate = 2015-07-31\nat_least = 3\n',
        'kind = "answered-in-time"\nat_least = 0.5\n',
    )
    (expectation,) = _parse(text).expectations
    assert (expectation.at_least, expectation.scope) == (0.5, "all")


# -- agencies, waves, growth, overrides ------------------------------------------------------


def test_world_generates_the_agency_codes() -> None:
    """Codes follow the documented patterns; the linked ones are the first central ones."""
    world = World(central_agencies=2, central_target=3, municipalities=2, autonomous=1)
    assert world.central_codes() == ("AG001", "AG002", "AG003")
    assert world.linked_codes() == ("AG001", "AG002")
    assert world.municipality_codes() == ("MUN001", "MUN002")
    assert world.autonomous_codes() == ("AUT01",)


def test_count_wave_takes_the_next_agencies_not_in_an_earlier_wave() -> None:
    """A count after a list skips the codes the list took, in code order."""
    text = _edit("agencies = 2\n", 'agencies = ["AG001", "AG003"]\n')
    text = _edit('agencies = ["AG005", "AG007"]', "agencies = 3", text)
    pilot, second = _parse(text).plan.waves
    assert pilot.agencies == ("AG001", "AG003")
    assert second.agencies == ("AG002", "AG004", "AG005")


def test_count_wave_may_go_beyond_the_linked_agencies() -> None:
    """Waves count over all central agencies up to the target, linked ones first."""
    text = _edit('agencies = ["AG005", "AG007"]', "agencies = 6")
    assert _parse(text).plan.waves[1].agencies == tuple(f"AG{n:03d}" for n in range(3, 9))


def test_fallback_count_takes_the_first_linked_agencies() -> None:
    """`fallback = 2` is the first two linked agencies in code order."""
    assert _parse().plan.fallback == ("AG001", "AG002")


def test_empty_fallback_needs_neither_start_nor_capacity() -> None:
    """`fallback = []` needs neither fallback_start nor fallback_capacity."""
    text = _edit(
        "fallback = 2\nfallback_start = 2015-04-01\nfallback_capacity = 0.5\n", "fallback = []\n"
    )
    plan = _parse(text).plan
    assert (plan.fallback, plan.fallback_start, plan.fallback_capacity) == ((), None, 1.0)


def test_growth_is_piecewise_linear_and_floored() -> None:
    """Between two points the count is interpolated by day and rounded down."""
    growth = load_scenario(DEFAULT).growth
    # 5 on 2013-04-01, 71 on 2014-06-30 (455 days later): 5 + 66 * 100 // 455 = 19
    assert growth.count_at("municipalities_on_portal", dt.date(2013, 7, 10)) == 19
    assert growth.count_at("municipalities_on_portal", dt.date(2014, 6, 30)) == 71


def test_growth_is_flat_before_the_first_and_after_the_last_point() -> None:
    """Outside its points a series keeps the nearest point's count."""
    growth = load_scenario(DEFAULT).growth
    assert growth.count_at("central_linked", dt.date(2013, 1, 2)) == 20
    assert growth.count_at("central_linked", dt.date(2015, 9, 30)) == 145


def test_growth_refuses_an_unknown_series() -> None:
    """count_at knows only the three series."""
    with pytest.raises(KeyError):
        load_scenario(DEFAULT).growth.count_at("linked", dt.date(2015, 1, 1))


def test_seed_override_replaces_the_file_seed() -> None:
    """with_overrides(seed=7) changes the seed and nothing else."""
    scenario = load_scenario(DEFAULT)
    overridden = with_overrides(scenario, seed=7)
    assert (scenario.seed, overridden.seed) == (2015, 7)
    assert overridden.plan == scenario.plan


def test_no_override_keeps_the_scenario() -> None:
    """with_overrides() without values returns the same scenario."""
    scenario = load_scenario(DEFAULT)
    assert with_overrides(scenario) is scenario


# -- the error value -------------------------------------------------------------------------


def test_error_prints_file_line_key_and_message() -> None:
    """str(error) is `{path}:{line}: {key}: {message}`."""
    error = ScenarioError(Path("a.toml"), "plan.waves[1].agencies", 41, "too many")
    assert str(error) == "a.toml:41: plan.waves[1].agencies: too many"


def test_error_omits_a_missing_line_and_an_empty_key() -> None:
    """Without a line, or without a key, those parts are left out."""
    assert str(ScenarioError(Path("a.toml"), "", None, "gone")) == "a.toml: gone"
    assert str(ScenarioError(Path("a.toml"), "schema", None, "bad")) == "a.toml: schema: bad"


def test_error_is_a_value_error_that_survives_pickling() -> None:
    """ScenarioError is a ValueError and round-trips through pickle (process pools)."""
    assert issubclass(ScenarioError, ValueError)
    copy = pickle.loads(pickle.dumps(ScenarioError(Path("a.toml"), "schema", 1, "bad")))
    assert isinstance(copy, ScenarioError)
    assert (copy.path, copy.key, copy.line, copy.message) == (Path("a.toml"), "schema", 1, "bad")


def test_missing_file_names_the_file_only() -> None:
    """An unreadable file is an error with an empty key and no line."""
    path = BAD / "no-such-file.toml"
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert (caught.value.path, caught.value.key, caught.value.line) == (path, "", None)
    assert "cannot read the file" in caught.value.message


def test_non_utf8_file_names_the_line(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are an error on their line."""
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'schema = 1\n[scenario]\nname = "Pe\xf1alol\xe9n"\n')
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert (caught.value.key, caught.value.line) == ("", 3)
    assert "not valid UTF-8" in caught.value.message


# -- every error case: file, key path, line, message -----------------------------------------


def test_unknown_key_suggests_the_closest_valid_key() -> None:
    """A misspelt key is named, on its line, with the key it resembles."""
    error = _error("unknown_key.toml")
    assert (error.key, error.line) == ("scenario.nmae", 4)
    assert "unknown key 'nmae'; did you mean 'name'?" in error.message


def test_unknown_table_suggests_the_closest_section() -> None:
    """A misspelt table header is an unknown top-level key."""
    error = _error("unknown_table.toml")
    assert (error.key, error.line) == ("demnd", 22)
    assert "did you mean 'demand'?" in error.message


def test_unknown_key_with_no_close_match_lists_the_valid_keys() -> None:
    """With nothing close, the message lists what the table accepts."""
    error = _error("unknown_key_far_from_any.toml")
    assert (error.key, error.line) == ("world.colour", 14)
    assert "expected one of: central_agencies" in error.message


def test_unknown_key_inside_an_inline_table() -> None:
    """Keys of inline tables in arrays are checked, with the element's index."""
    error = _error("unknown_key_in_inline_table.toml")
    assert (error.key, error.line) == ("growth.central_linked[1].cuont", 16)
    assert "did you mean 'count'?" in error.message


def test_unknown_key_inside_an_array_of_tables() -> None:
    """Keys of [[plan.waves]] are checked, with the wave's index."""
    error = _error("unknown_key_in_array_of_tables.toml")
    assert (error.key, error.line) == ("plan.waves[1].agencis", 78)
    assert "did you mean 'agencies'?" in error.message


def test_key_of_another_expectation_kind_is_unknown() -> None:
    """An expectation takes only its own kind's keys."""
    error = _error("unknown_key_for_kind.toml")
    assert (error.key, error.line) == ("expect[0].scope", 84)
    assert "unknown key 'scope' for kind 'connected-by'" in error.message


def test_string_where_an_integer_is_expected() -> None:
    """A quoted number is a string, not an int."""
    error = _error("string_for_int.toml")
    assert (error.key, error.line) == ("world.central_agencies", 10)
    assert 'expected an integer, got a string ("5")' in error.message


def test_float_where_an_integer_is_expected() -> None:
    """3.0 is a float, not an int."""
    error = _error("float_for_int.toml")
    assert (error.key, error.line) == ("world.municipalities", 12)
    assert "expected an integer, got a float (3.0)" in error.message


def test_boolean_is_not_an_integer() -> None:
    """true is refused where an int is expected."""
    error = _error("bool_for_int.toml")
    assert (error.key, error.line) == ("world.autonomous", 13)
    assert "expected an integer, got a boolean (true)" in error.message


def test_wrong_type_inside_an_array_names_the_element() -> None:
    """A bad element of a [min, max] pair is named by its index."""
    error = _error("string_in_pair.toml")
    assert (error.key, error.line) == ("behaviour.municipality.capacity_per_day[1]", 39)
    assert "expected an integer" in error.message


def test_datetime_where_a_date_is_expected() -> None:
    """A datetime is not a date."""
    error = _error("datetime_for_date.toml")
    assert (error.key, error.line) == ("scenario.start", 5)
    assert "expected a local date (YYYY-MM-DD), got a datetime" in error.message


def test_missing_key_points_at_its_table() -> None:
    """A missing required key is named, on the line of the table it belongs to."""
    error = _error("missing_key.toml")
    assert (error.key, error.line) == ("plan.name", 61)
    assert "missing required key 'name'" in error.message


def test_missing_behaviour_group() -> None:
    """All four behaviour groups are required."""
    error = _error("missing_table.toml")
    assert (error.key, error.line) == ("behaviour.autonomous", 28)
    assert "missing required key 'autonomous'" in error.message


def test_fallback_needs_a_start() -> None:
    """A non-empty fallback requires fallback_start."""
    error = _error("missing_fallback_start.toml")
    assert (error.key, error.line) == ("plan.fallback_start", 61)
    assert "missing required key 'fallback_start'" in error.message


def test_impossible_date_names_its_key_and_line() -> None:
    """2015-02-30 (a tomllib decode error) gets the key on its line and the reason."""
    error = _error("impossible_date.toml")
    assert (error.key, error.line) == ("scenario.end", 6)
    assert "invalid date 2015-02-30: day is out of range for month" in error.message


def test_impossible_date_inside_a_multiline_array() -> None:
    """An impossible date in an inline table of a multi-line array gets its exact key."""
    error = _error("impossible_date_in_array.toml")
    assert (error.key, error.line) == ("growth.municipalities_on_portal[1].date", 19)
    assert "invalid date 2015-12-32" in error.message


def test_impossible_datetime() -> None:
    """An hour of 25 is named as an invalid datetime."""
    error = _error("impossible_datetime.toml")
    assert (error.key, error.line) == ("incident.disconnect", 58)
    assert "invalid datetime 2015-03-02T25:00:00: hour must be in 0..23" in error.message


def test_toml_syntax_error() -> None:
    """A syntax error keeps tomllib's line and names the key found there."""
    error = _error("syntax_error.toml")
    assert (error.key, error.line) == ("world.municipalities", 12)
    assert "TOML syntax error at column 16: expected '='" in error.message


def test_key_set_twice() -> None:
    """A duplicate key names both lines."""
    error = _error("duplicate_key.toml")
    assert (error.key, error.line) == ("plan.fallback", 69)
    assert "set twice (first on line 66)" in error.message


def test_end_before_start() -> None:
    """scenario.end must come after scenario.start."""
    error = _error("end_before_start.toml")
    assert (error.key, error.line) == ("scenario.end", 6)
    assert "must be after scenario.start" in error.message


def test_date_outside_the_calendar() -> None:
    """The span must lie within the calendar's years."""
    error = _error("start_outside_calendar.toml")
    assert (error.key, error.line) == ("scenario.start", 5)
    assert "outside the calendar 2013-01-01..2016-12-31" in error.message


def test_report_dates_out_of_order() -> None:
    """Report dates are strictly increasing; the offending element is named."""
    error = _error("report_dates_out_of_order.toml")
    assert (error.key, error.line) == ("scenario.report_dates[1]", 7)
    assert "must be after 2015-06-30" in error.message


def test_wave_outside_the_span() -> None:
    """A wave start after scenario.end is refused."""
    error = _error("wave_outside_span.toml")
    assert (error.key, error.line) == ("plan.waves[1].start", 77)
    assert "outside the scenario span 2015-01-01..2015-12-31" in error.message


def test_waves_out_of_order() -> None:
    """Wave starts are strictly increasing."""
    error = _error("waves_out_of_order.toml")
    assert (error.key, error.line) == ("plan.waves[1].start", 77)
    assert "must be after the previous wave's start" in error.message


def test_wave_before_the_new_key_generation() -> None:
    """With an incident, waves start after the day of the new generation."""
    error = _error("wave_before_new_generation.toml")
    assert (error.key, error.line) == ("plan.waves[0].start", 72)
    assert "incident.new_generation (2015-03-03)" in error.message


def test_incident_moments_out_of_order() -> None:
    """new_generation may not precede disconnect."""
    error = _error("incident_out_of_order.toml")
    assert (error.key, error.line) == ("incident.new_generation", 59)
    assert "must be on or after incident.disconnect" in error.message


def test_probability_above_one() -> None:
    """Probabilities lie in 0..1."""
    error = _error("probability_out_of_range.toml")
    assert (error.key, error.line) == ("behaviour.offline_municipality.never_answer", 52)
    assert "between 0 and 1, got 1.7" in error.message


def test_negative_count() -> None:
    """Counts are >= 0."""
    error = _error("negative_count.toml")
    assert (error.key, error.line) == ("expect[0].at_least", 83)
    assert "must be >= 0, got -1" in error.message


def test_min_above_max() -> None:
    """A [min, max] pair needs min <= max."""
    error = _error("min_above_max.toml")
    assert (error.key, error.line) == ("plan.verify_delay_days", 64)
    assert "min (4) must be <= max (1)" in error.message


def test_growth_count_above_the_world_total() -> None:
    """A series may not exceed its group's size."""
    error = _error("count_above_total.toml")
    assert (error.key, error.line) == ("growth.municipalities_on_portal[1].count", 19)
    assert "must be <= 3" in error.message


def test_growth_count_that_decreases() -> None:
    """Series counts are non-decreasing."""
    error = _error("growth_decreasing.toml")
    assert (error.key, error.line) == ("growth.municipalities_on_portal[1].count", 19)
    assert "must not decrease" in error.message


def test_central_linked_must_end_at_the_linked_agencies() -> None:
    """The last central_linked count equals world.central_agencies."""
    error = _error("central_linked_short.toml")
    assert (error.key, error.line) == ("growth.central_linked[1].count", 16)
    assert "must equal world.central_agencies (5), got 4" in error.message


def test_unsupported_schema() -> None:
    """Only schema 1 is read."""
    error = _error("schema_2.toml")
    assert (error.key, error.line) == ("schema", 1)
    assert "unsupported schema 2" in error.message


def test_wave_naming_an_unknown_agency() -> None:
    """A code the world does not generate is named with its index."""
    error = _error("wave_unknown_agency.toml")
    assert (error.key, error.line) == ("plan.waves[1].agencies[1]", 78)
    assert "unknown agency code 'AG099'" in error.message


def test_wave_naming_a_municipality() -> None:
    """Waves name central agencies only."""
    error = _error("wave_names_a_municipality.toml")
    assert (error.key, error.line) == ("plan.waves[1].agencies[0]", 78)
    assert "only central agencies (AG001..AG008)" in error.message


def test_agency_in_two_waves() -> None:
    """An agency already taken by an earlier (count) wave may not be listed again."""
    error = _error("agency_in_two_waves.toml")
    assert (error.key, error.line) == ("plan.waves[1].agencies[0]", 78)
    assert "AG002 is already in wave 'pilot'" in error.message


def test_wave_count_larger_than_the_agencies_left() -> None:
    """A count beyond the central agencies left names the wave's key."""
    error = _error("wave_count_too_large.toml")
    assert (error.key, error.line) == ("plan.waves[0].agencies", 73)
    assert "asks for 9 agencies; only 8 central agencies" in error.message


def test_fallback_count_larger_than_the_linked_agencies() -> None:
    """A fallback count beyond the linked agencies is refused."""
    error = _error("fallback_count_too_large.toml")
    assert (error.key, error.line) == ("plan.fallback", 66)
    assert "only 5 central agencies are linked" in error.message


def test_duplicate_wave_name() -> None:
    """Wave names are unique."""
    error = _error("duplicate_wave_name.toml")
    assert (error.key, error.line) == ("plan.waves[1].name", 76)
    assert "already the name of plan.waves[0]" in error.message


def test_unknown_expectation_kind() -> None:
    """An unknown kind is named with the closest known kind."""
    error = _error("unknown_expectation_kind.toml")
    assert (error.key, error.line) == ("expect[0].kind", 81)
    assert "unknown expectation kind 'conected-by'; did you mean 'connected-by'?" in error.message


def test_agency_counts_keep_codes_fixed_width() -> None:
    """central_target above 999 would break the AG001..AG999 pattern and is refused."""
    with pytest.raises(ScenarioError) as caught:
        _parse(_edit("central_target = 8\n", "central_target = 1000\n"))
    assert (caught.value.key, caught.value.line) == ("world.central_target", 11)
    assert "must be <= 999, got 1000" in caught.value.message


def test_infinite_float_is_refused() -> None:
    """inf and nan are TOML floats but not usable rates."""
    with pytest.raises(ScenarioError) as caught:
        _parse(_edit("municipal = 0.2\n", "municipal = inf\n"))
    assert (caught.value.key, caught.value.line) == ("demand.municipal", 23)
    assert "must be a finite number" in caught.value.message


@pytest.mark.parametrize("fixture", sorted(p.name for p in BAD.glob("*.toml")))
def test_bad_fixture_is_a_small_variation_of_the_minimal_file(fixture: str) -> None:
    """Each fixture changes one or two lines of MINIMAL (or drops one table)."""
    fixture_lines = (BAD / fixture).read_text(encoding="utf-8").splitlines()
    diff = difflib.unified_diff(MINIMAL.splitlines(), fixture_lines, n=0, lineterm="")
    changed = [line for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert 0 < len(changed) <= 7, changed  # dropping a behaviour table removes 7 lines


# -- the line index --------------------------------------------------------------------------

INDEX_CASES = [
    ("bare key", "a = 1\nb = 2\n", "b", 2),
    ("quoted key", 'x = 1\n"odd key" = 2\n', '"odd key"', 2),
    ("literal quoted key", "x = 1\n'lit' = 2\n", "lit", 2),
    ("dotted key", "x = 1\na.b.c = 2\n", "a.b.c", 2),
    ("dotted key with spaces", "x = 1\na . b = 2\n", "a.b", 2),
    ("ancestor of a dotted key", "x = 1\na.b.c = 2\n", "a.b", 2),
    ("table header", "x = 1\n\n[t]\ny = 2\n", "t", 3),
    ("key in a table", "[t]\n# comment\ny = 2\n", "t.y", 3),
    ("nested table", "[a]\n[a.b]\nc = 1\n", "a.b.c", 3),
    ("implicit parent", "x = 1\n[a.b]\nc = 1\n", "a", 2),
    ("explicit parent after its child", "[a.b]\nc = 1\n[a]\nd = 1\n", "a", 3),
    ("array of tables, second", "[[w]]\nn = 1\n[[w]]\nn = 2\n", "w[1].n", 4),
    ("array of tables itself", "x = 1\n[[w]]\n[[w]]\n", "w", 2),
    ("sub-table of the last element", "[[w]]\n[[w]]\n[w.s]\nk = 1\n", "w[1].s.k", 4),
    ("nested arrays of tables", "[[a]]\n[[a.b]]\n[[a]]\n[[a.b]]\nk = 1\n", "a[1].b[0].k", 5),
    ("inline table", "x = 1\nt = { a = 1, b = { c = 2 } }\n", "t.b.c", 2),
    ("multi-line array element", "a = [\n  1,\n  2,\n]\n", "a[1]", 3),
    ("inline table in an array", "a = [\n  { k = 1 },\n  { k = 2 },\n]\n", "a[1].k", 3),
    ("array in an array", "a = [[1, 2],\n     [3, 4]]\n", "a[1][0]", 2),
    ("comment holding brackets", "# [t]\nx = 1 # y = 2\n[u]\n", "u", 3),
    ("string holding syntax", 'x = "a = [1 # ]"\ny = 2\n', "y", 2),
    ("multi-line basic string", 'x = """\nfake = 1\n"""\ny = 2\n', "y", 4),
    ("multi-line literal string", "x = '''\n[fake]\n'''\ny = 2\n", "y", 4),
    ("escaped quote in a string", 'x = "a\\"b = 1"\ny = 2\n', "y", 2),
    ("missing key falls back to its table", "x = 1\n[t]\ny = 2\n", "t.absent", 2),
    ("missing element falls back to its array", "x = 1\na = [1]\n", "a[5]", 2),
]


@pytest.mark.parametrize(
    ("source", "key", "line"), [case[1:] for case in INDEX_CASES], ids=[c[0] for c in INDEX_CASES]
)
def test_index_finds_the_line_of_a_key(source: str, key: str, line: int) -> None:
    """The index maps a key path to the line that defines it (or its nearest ancestor)."""
    assert SourceIndex(source).line_of(key) == line


def test_index_has_no_line_for_an_absent_top_level_key() -> None:
    """A key with no defined ancestor has no line."""
    assert SourceIndex("a = 1\n").line_of("b.c") is None


def test_index_ignores_keys_inside_strings() -> None:
    """Text that looks like keys inside a multi-line string is not indexed."""
    assert SourceIndex('x = """\nfake = 1\n[t]\n"""\n').keys() == ("x",)


def test_index_key_at_uses_the_column() -> None:
    """On a line with several keys, the column picks the last key starting at or before it."""
    index = SourceIndex("p = [{ date = 2015-01-01, count = 2 }]\n")
    assert index.key_at(1, 35) == "p[0].count"
    assert index.key_at(1, 15) == "p[0].date"
    assert index.key_at(1) == "p"


def test_index_survives_invalid_toml() -> None:
    """The scan is lenient: it indexes what it can of text tomllib rejects."""
    index = SourceIndex('a = = 1\n[t\nb = "open\nc = [1,\n')
    assert (index.line_of("t.b"), index.line_of("t.c")) == (3, 4)


def test_syntax_error_at_end_of_file_names_the_last_key() -> None:
    """An error tomllib places at the end of the document points at the last key."""
    with pytest.raises(ScenarioError) as caught:
        _parse('schema = 1\ntext = """\nnever closed\n')
    assert (caught.value.key, caught.value.line) == ("text", 2)
    assert "end of the file" in caught.value.message


@pytest.mark.parametrize("key", ["a", "a.b", "plan.waves[1].agencies[0]", 'a."b.c".d', "a[0][1]"])
def test_key_paths_round_trip(key: str) -> None:
    """split_key and render_key are inverses."""
    assert render_key(split_key(key)) == key


# -- the documentation -----------------------------------------------------------------------


def test_docs_example_is_the_shipped_default() -> None:
    """The complete example in docs/scenarios.md is the shipped pisee-2015.toml, and loads."""
    text = DOCS.read_text(encoding="utf-8")
    example = re.search(r"## Complete example.*?```toml\n(.*?)```", text, re.S)
    assert example is not None
    assert example.group(1) == DEFAULT.read_text(encoding="utf-8")
    assert _parse(example.group(1)).name


DOC_SECTIONS = {
    "": "## Top level",
    "scenario": "## `[scenario]`",
    "world": "## `[world]`",
    "growth": "## `[growth]`",
    "demand": "## `[demand]`",
    "behaviour": "## `[behaviour.<group>]`",
    "behaviour.*": "## `[behaviour.<group>]`",
    "incident": "## `[incident]`",
    "plan": "## `[plan]`",
    "plan.waves": "## `[plan]`",
    "selector": "## Selectors",
    "expect": "## `[[expect]]`",
}


@pytest.mark.parametrize("section", sorted(KEYS))
def test_docs_describe_every_key(section: str) -> None:
    """Every key the loader accepts appears in its section of docs/scenarios.md."""
    text = DOCS.read_text(encoding="utf-8")
    start = text.index(DOC_SECTIONS[section])
    body = text[start : text.find("\n## ", start + 1)]
    assert [key for key in KEYS[section] if f"`{key}`" not in body] == []


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).resolve().parents[2] / "scenarios" / "library").glob("*.toml"))
)
def test_every_library_scenario_loads(path: Path) -> None:
    """Each scenario shipped in scenarios/library/ is valid."""
    assert load_scenario(path).name
