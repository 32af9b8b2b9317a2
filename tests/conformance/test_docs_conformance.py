"""The conformance docs stay true to the kit: every check documented, counts right."""

from __future__ import annotations

import re
from pathlib import Path

from pasarela.conformance import CHECKS, PROBLEM_CODES, Side
from tests.conformance.test_example_connectors_kit import broken

ROOT = Path(__file__).resolve().parents[2]


def test_every_check_has_a_row_in_docs_conformance() -> None:
    text = (ROOT / "docs" / "conformance.md").read_text()
    rows = re.findall(r"^\| `((?:provider|consumer)\.[a-z0-9-]+)` \|", text, re.MULTILINE)
    assert rows == [check.id for check in CHECKS]
    assert f"for each of the {len(PROBLEM_CODES)} refusals" in text


def test_the_counts_in_the_readme_and_cli_reference_are_the_kits() -> None:
    provider = sum(check.side is Side.PROVIDER for check in CHECKS)
    consumer = len(CHECKS) - provider
    assert f"runs {len(CHECKS)} named checks" in (ROOT / "README.md").read_text()
    cli = (ROOT / "docs" / "cli.md").read_text()
    assert f"It runs {len(CHECKS)} named checks, {provider} as provider" in cli
    assert f"and {consumer} as consumer" in cli


def test_every_defect_of_the_broken_connector_is_documented() -> None:
    text = (ROOT / "examples" / "connectors" / "broken" / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z0-9-]+)` \| `([a-z.0-9-]+)` \|", text, re.MULTILINE))
    assert rows == broken.DEFECTS
