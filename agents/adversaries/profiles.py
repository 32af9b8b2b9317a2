"""Adversary profiles: ordered techniques with parameters, in TOML like scenarios.

    schema = 1

    [profile]
    name = "compromised agency flooding"
    description = "..."

    [[steps]]
    technique = "request-flood"
    params = { messages = 600 }

Profiles ship in ``scenarios/library/attacks/``; ``--profile NAME`` finds ``NAME.toml``
there, ``--profile PATH`` reads a file, ``--profile all`` is the whole catalogue. A mistake
is a :class:`~scenarios.toml_source.ScenarioError` naming the file, the key and the line.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from agents.adversaries.catalogue import CATALOGUE, everything
from agents.adversaries.model import Technique
from scenarios.toml_source import (
    ScenarioError,
    SourceIndex,
    TableReader,
    describe,
    read_source,
    syntax_error,
)

__all__ = ["LIBRARY", "Profile", "Step", "load_profile", "profile_names", "resolve_profile"]

LIBRARY: Final = Path(__file__).resolve().parents[2] / "scenarios" / "library" / "attacks"
SCHEMA: Final = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    technique: Technique
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    name: str
    description: str
    steps: tuple[Step, ...]
    path: Path | None = None

    @property
    def destructive(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.technique.destructive)


def profile_names() -> list[str]:
    """The shipped profiles (file stems), and ``all``."""
    return ["all", *sorted(p.stem for p in LIBRARY.glob("*.toml"))]


def resolve_profile(name: str) -> Profile:
    """``all``, a shipped profile's name, or a path to a profile file."""
    if name == "all":
        steps = tuple(Step(technique=t) for t in everything())
        return Profile(name="all", description="every technique in the catalogue", steps=steps)
    path = Path(name)
    if not path.suffix:
        path = LIBRARY / f"{name}.toml"
        if not path.is_file():
            known = ", ".join(profile_names())
            raise ScenarioError(Path(name), "", None, f"no profile {name!r} (known: {known})")
    return load_profile(path)


def load_profile(path: Path) -> Profile:
    text = read_source(path)
    index = SourceIndex(text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise syntax_error(exc, text=text, path=path, index=index) from exc
    root = TableReader(data, path=path, index=index)
    root.only("schema", "profile", "steps")
    schema = root.integer("schema")
    if schema != SCHEMA:
        raise root.error("schema", f"unsupported schema {schema}; this is schema {SCHEMA}")
    head = root.table("profile")
    head.only("name", "description")
    steps = [_step(s) for s in root.tables("steps")]
    if not steps:
        raise root.error("steps", "a profile needs at least one [[steps]] entry")
    return Profile(
        name=head.text("name", nonempty=True),
        description=head.text("description", default=""),
        steps=tuple(steps),
        path=path,
    )


def _step(r: TableReader) -> Step:
    r.only("technique", "params")
    technique_id = r.choice("technique", tuple(CATALOGUE), what="technique")
    technique = CATALOGUE[technique_id]
    params: dict[str, Any] = {}
    if r.has("params"):
        table = r.table("params")
        for name, value in table.data.items():
            if name not in technique.params:
                known = ", ".join(technique.params) or "none"
                raise table.error(name, f"unknown parameter '{name}' of {technique_id} "
                                  f"(known: {known})")  # fmt: skip
            default = technique.params[name]
            if type(value) is not type(default) and not (
                isinstance(default, float) and type(value) is int
            ):
                raise table.error(name, f"expected {describe(default)}, got {describe(value)}")
            if isinstance(value, int | float) and value <= 0:
                raise table.error(name, f"must be > 0, got {value}")
            params[name] = value
    return Step(technique=technique, params=params)
