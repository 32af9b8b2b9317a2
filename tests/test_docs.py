"""The docs stay true: the worked example in docs/protocol.md is what the code produces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.protocol import ProblemCode

ROOT = Path(__file__).resolve().parent.parent


def test_protocol_worked_example_is_current() -> None:
    """Regenerating the example from its seed gives exactly what the doc shows."""
    result = subprocess.run(
        [sys.executable, "docs/examples/make_protocol_example.py", "--check", "docs/protocol.md"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("code", list(ProblemCode))
def test_every_problem_code_is_documented(code: ProblemCode) -> None:
    """Each problem code appears in the problems table with its status."""
    text = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    assert f"| `{code.value}` | {code.status} |" in text
