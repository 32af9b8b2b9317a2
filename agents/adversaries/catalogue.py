"""Every technique, by id, in the order ``--profile all`` runs them (destructive ones last)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from agents.adversaries.model import Technique
from agents.adversaries.platform import PLATFORM_TECHNIQUES
from agents.adversaries.tokens import TOKEN_TECHNIQUES

__all__ = ["CATALOGUE", "everything"]


def _ordered() -> dict[str, Technique]:
    techniques = (*TOKEN_TECHNIQUES, *PLATFORM_TECHNIQUES)
    ordered = [t for t in techniques if not t.destructive] + [
        t for t in techniques if t.destructive
    ]
    catalogue: dict[str, Technique] = {}
    for technique in ordered:
        if technique.id in catalogue:
            raise ValueError(f"technique id {technique.id!r} is used twice")
        catalogue[technique.id] = technique
    return catalogue


CATALOGUE: Final[Mapping[str, Technique]] = _ordered()


def everything() -> list[Technique]:
    """The whole catalogue (the ``all`` profile)."""
    return list(CATALOGUE.values())
