"""Reconnection plans in scenario files: dependencies, gates, selectors, kinds and faults.

Every mistake is a ScenarioError naming the file, the key path and the line. Each fixture in
bad/ used here is a small variation of ``MINIMAL`` in test_model.py (at most 7 changed lines,
checked there for every fixture).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from scenarios.model import ScenarioError, load_scenario, parse_scenario
from tests.scenarios.test_model import _error

HERE = Path(__file__).resolve().parent
BAD = HERE / "bad"
PLAN = HERE / "data" / "plan.toml"
SMALL = HERE / "data" / "small.toml"


# -- files that load -------------------------------------------------------------------------


def test_plan_with_gates_selectors_dependencies_and_faults_loads() -> None:
    """data/plan.toml reads into typed gates, selectors, dependencies and faults."""
    scenario = load_scenario(PLAN)
    plan = scenario.plan
    pilot, volume, rest = plan.waves
    assert (plan.onboarding_capacity, plan.rollback, plan.quarantine_days) == (3, "quarantine", 5)
    assert plan.dependencies == {"AG004": ("AG001",)}
    assert pilot.gate is not None
    assert pilot.gate.criteria() == {
        "max_error_rate": 0.05,
        "max_p99_ms": 2000.0,
        "max_alerts": 0,
        "checks_passed": True,
    }
    assert volume.gate is not None
    assert volume.gate.on_failure == "pause"
    assert volume.selector is not None
    assert (volume.start, volume.selector.by, volume.size) == (None, "ati-volume", 4)
    assert rest.selector is not None
    assert (rest.selector.by, rest.selector.count) == ("dependency-order", 6)
    assert [(f.kind, f.key, f.when) for f in scenario.faults] == [
        ("latency", "faults[0]", ("wave-start", "pilot")),
        ("stolen-key", "faults[1]", None),
    ]


def test_gate_on_failure_defaults_to_the_plan_rollback() -> None:
    """A gate without on_failure takes plan.rollback."""
    pilot = load_scenario(PLAN).plan.waves[0]
    assert pilot.gate is not None
    assert pilot.gate.on_failure == "quarantine"


def test_a_wave_after_the_first_may_omit_its_start() -> None:
    """Only the first wave needs a start; a later one starts when the wave before is done."""
    text = SMALL.read_text(encoding="utf-8").replace("start = 2015-06-15\n", "")
    waves = parse_scenario(text, path=SMALL).plan.waves
    assert [wave.start for wave in waves] == [dt.date(2015, 5, 4), None]


# -- waves and dependencies ------------------------------------------------------------------


def test_wave_naming_an_agency_beyond_the_central_target() -> None:
    """A listed code past world.central_target is named with its index in the array."""
    error = _error("plan_wave_unknown_agency.toml")
    assert (error.key, error.line) == ("plan.waves[0].agencies[1]", 73)
    assert "unknown agency code 'AG009': only central agencies (AG001..AG008)" in error.message


def test_first_wave_without_start() -> None:
    """The first wave needs a start; the error points at the wave's header."""
    error = _error("first_wave_without_start.toml")
    assert (error.key, error.line) == ("plan.waves[0].start", 70)
    assert "missing required key 'start' (the first wave needs a date" in error.message


def test_wave_deadline_before_its_start() -> None:
    """A wave's deadline comes after its start."""
    error = _error("wave_deadline_before_start.toml")
    assert (error.key, error.line) == ("plan.waves[0].deadline", 74)
    assert "must be after the wave's start (2015-05-04)" in error.message


def test_dependency_of_an_unknown_agency() -> None:
    """The dependent agency (the key) must be a central agency."""
    error = _error("dependency_unknown_agency_key.toml")
    assert (error.key, error.line) == ("plan.dependencies.AG009", 69)
    assert "unknown agency code 'AG009': only central agencies (AG001..AG008)" in error.message


def test_dependency_on_an_unknown_agency() -> None:
    """Each agency depended on (a value) must be a central agency, named by its index."""
    error = _error("dependency_unknown_agency_value.toml")
    assert (error.key, error.line) == ("plan.dependencies.AG005[1]", 69)
    assert "unknown agency code 'AG010'" in error.message


def test_agency_depending_on_itself() -> None:
    """A self-dependency is refused."""
    error = _error("dependency_on_itself.toml")
    assert (error.key, error.line) == ("plan.dependencies.AG005[0]", 69)
    assert "AG005 cannot depend on itself" in error.message


def test_dependency_cycle_of_two_agencies_shows_the_cycle() -> None:
    """A -> B -> A is named at the dependency that closes the cycle."""
    error = _error("dependency_cycle_of_two.toml")
    assert (error.key, error.line) == ("plan.dependencies.AG007[0]", 69)
    assert "dependency cycle: AG005 -> AG007 -> AG005" in error.message
    assert "could ever be approved" in error.message


def test_dependency_cycle_of_three_agencies_shows_the_cycle() -> None:
    """A cycle through three agencies of a [plan.dependencies] table, on the closing line."""
    error = _error("dependency_cycle_of_three.toml")
    assert (error.key, error.line) == ("plan.dependencies.AG005[0]", 73)
    assert "dependency cycle: AG001 -> AG002 -> AG005 -> AG001" in error.message


def test_dependency_on_an_agency_of_a_later_wave() -> None:
    """An agency cannot wait for one that only a later wave reconnects."""
    error = _error("dependency_on_a_later_wave.toml")
    assert (error.key, error.line) == ("plan.dependencies.AG001[0]", 69)
    assert "AG001 (wave 'pilot') needs AG005, which only the later wave 'second'" in error.message


def test_dependency_on_an_agency_no_wave_reconnects() -> None:
    """An agency cannot wait for one that no wave brings back."""
    error = _error("dependency_on_no_wave.toml")
    assert (error.key, error.line) == ("plan.dependencies.AG005[0]", 69)
    assert "AG005 needs AG003, which is in no wave: AG005 could never be approved" in error.message


def test_dependency_on_an_agency_left_on_the_direct_fallback() -> None:
    """An agency only on the direct fallback never reconnects either; the message says so."""
    error = _error("dependency_on_the_direct_fallback.toml")
    assert (error.key, error.line) == ("plan.dependencies.AG005[0]", 69)
    assert "AG005 needs AG003, which is on the direct fallback" in error.message


# -- plan settings ---------------------------------------------------------------------------


def test_zero_onboarding_capacity() -> None:
    """onboarding_capacity is at least 1 (leave it out for no limit)."""
    error = _error("onboarding_capacity_zero.toml")
    assert (error.key, error.line) == ("plan.onboarding_capacity", 69)
    assert "must be >= 1 agency a week, got 0" in error.message


def test_negative_onboarding_capacity() -> None:
    """A negative onboarding capacity is refused."""
    error = _error("onboarding_capacity_negative.toml")
    assert (error.key, error.line) == ("plan.onboarding_capacity", 69)
    assert "must be >= 1 agency a week, got -3" in error.message


def test_negative_quarantine_days() -> None:
    """quarantine_days is a count of business days, >= 0."""
    error = _error("quarantine_days_negative.toml")
    assert (error.key, error.line) == ("plan.quarantine_days", 69)
    assert "must be >= 0, got -1" in error.message


def test_unknown_rollback_rule() -> None:
    """plan.rollback is one of pause, quarantine, fallback."""
    error = _error("unknown_rollback.toml")
    assert (error.key, error.line) == ("plan.rollback", 69)
    assert "unknown rollback rule 'retry' (expected one of: pause, quarantine, fallback)" in (
        error.message
    )


# -- gates -----------------------------------------------------------------------------------


def test_gate_on_an_unknown_metric_lists_the_criteria() -> None:
    """A criterion the gate does not measure is refused, with the criteria it knows."""
    error = _error("gate_unknown_metric.toml")
    assert (error.key, error.line) == ("plan.waves[0].gate.max_latency", 74)
    assert "unknown key 'max_latency' (not a gate criterion)" in error.message
    assert "max_p99_ms" in error.message


def test_gate_with_a_misspelt_criterion_suggests_the_right_one() -> None:
    """A near miss of a criterion gets a did-you-mean hint."""
    error = _error("gate_misspelt_criterion.toml")
    assert (error.key, error.line) == ("plan.waves[0].gate.max_eror_rate", 74)
    assert "(not a gate criterion); did you mean 'max_error_rate'?" in error.message


def test_gate_with_an_unknown_on_failure() -> None:
    """A gate's on_failure is a rollback rule."""
    error = _error("gate_unknown_on_failure.toml")
    assert (error.key, error.line) == ("plan.waves[0].gate.on_failure", 74)
    assert "unknown rollback rule 'retry'" in error.message


def test_gate_checks_passed_must_be_a_boolean() -> None:
    """checks_passed = 1 is not true."""
    error = _error("gate_checks_passed_not_a_bool.toml")
    assert (error.key, error.line) == ("plan.waves[0].gate.checks_passed", 74)
    assert "expected true or false, got an integer (1)" in error.message


def test_gate_error_rate_above_one() -> None:
    """max_error_rate is a share; a [plan.waves.gate] table gets the line of its key."""
    error = _error("gate_error_rate_above_one.toml")
    assert (error.key, error.line) == ("plan.waves[0].gate.max_error_rate", 76)
    assert "must be a probability between 0 and 1, got 1.5" in error.message


# -- selectors -------------------------------------------------------------------------------


def test_selector_with_an_unknown_by() -> None:
    """`by` is one of the selectors."""
    error = _error("selector_unknown_by.toml")
    assert (error.key, error.line) == ("plan.waves[1].agencies.by", 78)
    assert "unknown selector 'size' (expected one of: ati-volume, kind, readiness" in error.message


def test_volume_selector_without_a_count() -> None:
    """by = "ati-volume" orders every agency, so it needs a count."""
    error = _error("selector_without_count.toml")
    assert (error.key, error.line) == ("plan.waves[1].agencies.count", 78)
    assert "missing required key 'count' (by = 'ati-volume' orders every agency" in error.message


def test_kind_selector_with_an_unknown_kind() -> None:
    """A kind not in world.kinds (nor the default 'service') is refused."""
    error = _error("selector_unknown_kind.toml")
    assert (error.key, error.line) == ("plan.waves[1].agencies.kind", 78)
    assert "unknown agency kind 'ministry' (expected one of: service)" in error.message


def test_selector_count_above_the_agencies_left() -> None:
    """A count beyond the linked agencies the plan does not list is refused at the count."""
    error = _error("selector_count_above_agencies_left.toml")
    assert (error.key, error.line) == ("plan.waves[1].agencies.count", 78)
    assert "asks for 7 agencies; only 3 linked agencies are left for selectors" in error.message


def test_kind_selector_count_above_the_agencies_of_that_kind_left() -> None:
    """The count of a kind selector is checked against the agencies of that kind left."""
    error = _error("selector_kind_count_above_agencies_left.toml")
    assert (error.key, error.line) == ("plan.waves[1].agencies.count", 79)
    assert "asks for 3 agencies; only 0 linked agencies of kind 'ministry' are left" in (
        error.message
    )


def test_fallback_selector_count_above_the_linked_agencies_left() -> None:
    """A fallback selector chooses among linked agencies that no wave lists."""
    error = _error("fallback_selector_count_too_large.toml")
    assert (error.key, error.line) == ("plan.fallback.count", 66)
    assert "asks for 4 agencies; only 2 linked agencies are left for selectors" in error.message


def test_selector_count_is_checked_against_the_pool_the_run_chooses_from() -> None:
    """20 asked of 20 linked agencies, 6 of them listed: the run could only choose 14."""
    text = SMALL.read_text(encoding="utf-8").replace(
        "agencies = 6\n", 'agencies = { by = "ati-volume", count = 20 }\n'
    )
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, path=SMALL)
    assert caught.value.key == "plan.waves[1].agencies.count"
    assert "asks for 20 agencies" in caught.value.message


def test_selector_count_leaves_room_for_agencies_a_later_wave_lists() -> None:
    """A selector before a listed wave cannot take the agencies that wave lists."""
    text = SMALL.read_text(encoding="utf-8").replace(
        "agencies = 4\n", 'agencies = { by = "readiness", count = 14 }\n'
    )
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, path=SMALL)
    assert caught.value.key == "plan.waves[0].agencies.count"


# -- agency kinds ----------------------------------------------------------------------------


def test_kind_counts_above_the_linked_agencies() -> None:
    """world.kinds counts may not add up to more than world.central_agencies."""
    error = _error("kinds_above_linked_agencies.toml")
    assert (error.key, error.line) == ("world.kinds", 14)
    assert "counts add up to 6; only 5 central agencies are linked" in error.message


def test_kind_named_service_is_refused() -> None:
    """'service' is the default kind of every agency not counted; it gets no count."""
    error = _error("kind_named_service.toml")
    assert (error.key, error.line) == ("world.kinds.service", 14)
    assert "'service' is the kind of every agency not counted here" in error.message


# -- faults ----------------------------------------------------------------------------------


def test_fault_of_an_unknown_kind() -> None:
    """The fault kinds are listed when nothing is close."""
    error = _error("fault_unknown_kind.toml")
    assert (error.key, error.line) == ("faults[0].kind", 86)
    assert "unknown fault kind 'earthquake' (expected one of: latency," in error.message


def test_fault_on_an_agency_that_does_not_exist() -> None:
    """A link fault targets PORTAL or a central agency of the world."""
    error = _error("fault_unknown_target.toml")
    assert (error.key, error.line) == ("faults[0].target", 87)
    assert "unknown fault target 'AG099': expected PORTAL or a central agency (AG001..AG008)" in (
        error.message
    )


def test_stolen_key_of_the_portal_is_refused() -> None:
    """Only a central agency linked before the incident has a key to steal."""
    error = _error("fault_stolen_key_on_the_portal.toml")
    assert (error.key, error.line) == ("faults[0].target", 87)
    assert "a stolen-key fault needs an agency that had a key before the incident" in (
        error.message
    )


def test_fault_with_both_at_and_when() -> None:
    """A fault happens at a time or on a plan event, not both."""
    error = _error("fault_at_and_when.toml")
    assert (error.key, error.line) == ("faults[0].at", 88)
    assert "give exactly one of 'at' (a datetime) or 'when'" in error.message


def test_fault_with_neither_at_nor_when() -> None:
    """A fault needs a moment; the error points at the fault's header."""
    error = _error("fault_neither_at_nor_when.toml")
    assert (error.key, error.line) == ("faults[0].at", 85)
    assert "give exactly one of 'at' (a datetime) or 'when'" in error.message


def test_fault_when_naming_an_unknown_wave() -> None:
    """`when` names a wave of the plan; the message lists them."""
    error = _error("fault_when_unknown_wave.toml")
    assert (error.key, error.line) == ("faults[0].when", 88)
    assert "unknown wave 'third' (the plan's waves: pilot, second)" in error.message


def test_fault_when_gate_passed_of_a_wave_without_gate() -> None:
    """gate-passed:X needs wave X to have a gate."""
    error = _error("fault_when_gate_of_a_wave_without_gate.toml")
    assert (error.key, error.line) == ("faults[0].when", 88)
    assert "wave 'pilot' has no gate to pass" in error.message


def test_fault_when_malformed() -> None:
    """`when` is '<event>:<wave>' with a known event."""
    error = _error("fault_when_malformed.toml")
    assert (error.key, error.line) == ("faults[0].when", 88)
    assert "expected '<event>:<wave>' with an event among wave-start, wave-connected, " in (
        error.message
    )
    assert "got 'after pilot'" in error.message


def test_gateway_crash_without_a_duration() -> None:
    """A gateway crash says how long the gateway stays down."""
    error = _error("fault_crash_without_duration.toml")
    assert (error.key, error.line) == ("faults[0].duration_hours", 85)
    assert "missing required key 'duration_hours' (how long the gateway stays down" in (
        error.message
    )


def test_gateway_crash_with_a_target() -> None:
    """A gateway crash hits the whole platform: it takes no target."""
    error = _error("fault_crash_with_target.toml")
    assert (error.key, error.line) == ("faults[0].target", 87)
    assert "a gateway-crash has no target (it hits the whole platform)" in error.message


def test_link_key_on_a_clock_skew() -> None:
    """toxicity belongs to link faults; a clock skew refuses it."""
    error = _error("fault_toxicity_on_clock_skew.toml")
    assert (error.key, error.line) == ("faults[0].toxicity", 90)
    assert "unknown key 'toxicity' for kind 'clock-skew'" in error.message


def test_latency_fault_without_latency_ms() -> None:
    """A latency fault says how much latency."""
    error = _error("fault_latency_without_latency_ms.toml")
    assert (error.key, error.line) == ("faults[0].latency_ms", 85)
    assert "missing required key 'latency_ms'" in error.message


def test_fault_toxicity_above_one() -> None:
    """toxicity is the share of connections the toxic hits."""
    error = _error("fault_toxicity_above_one.toml")
    assert (error.key, error.line) == ("faults[0].toxicity", 90)
    assert "must be a probability between 0 and 1, got 1.5" in error.message


def test_fault_on_an_unknown_stream() -> None:
    """stream is upstream, downstream or both."""
    error = _error("fault_unknown_stream.toml")
    assert (error.key, error.line) == ("faults[0].stream", 90)
    assert "unknown stream 'sideways' (expected one of: upstream, downstream, both)" in (
        error.message
    )
