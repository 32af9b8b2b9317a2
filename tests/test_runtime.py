"""Live wiring: the agency host follows the gateway's state through revisions."""

from __future__ import annotations

from pathlib import Path

from gateway.clock import SeededRandomness
from gateway.state import StateDir, init_state
from pasarela.runtime import StateWatcher


def _state(tmp_path: Path) -> Path:
    root = tmp_path / "state"
    init_state(root, agencies=2, randomness=SeededRandomness(5), now=1_430_000_000.0)
    return root


def test_watcher_sees_a_revocation_after_persist(tmp_path: Path) -> None:
    """A revocation persisted by the gateway's side drops the key from the host's directory."""
    root = _state(tmp_path)
    watcher = StateWatcher(root, interval=0.0)
    state = StateDir(root)
    kid = state.trust.current_keys("AG001")[0].kid
    assert watcher().agency_key(kid) is not None
    state.trust.revoke(kid)
    state.persist()
    state.close()
    assert watcher().agency_key(kid) is None


def test_watcher_does_not_reload_without_a_new_revision(tmp_path: Path) -> None:
    """Writes that are not a persisted change (log traffic) leave the directory object as is."""
    root = _state(tmp_path)
    watcher = StateWatcher(root, interval=0.0)
    first = watcher()
    state = StateDir(root)
    state.documents.put("unrelated", b"x")
    state.close()
    assert watcher() is first


def test_watcher_checks_at_most_once_per_interval(tmp_path: Path) -> None:
    """Within the interval the cached directory is returned without reading the file."""
    root = _state(tmp_path)
    watcher = StateWatcher(root, interval=3600.0)
    state = StateDir(root)
    kid = state.trust.current_keys("AG001")[0].kid
    state.trust.revoke(kid)
    state.persist()
    state.close()
    assert watcher().agency_key(kid) is not None
