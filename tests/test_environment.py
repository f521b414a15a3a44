"""The installed environment is exactly the committed lock (requirements.lock).

`make demo`, `make test` and CI install with `pip install --no-deps -r requirements.lock`, so a
commit behaves the same on every fresh machine; this test fails when anything else got installed
(a package by hand, a different version, one the lock does not know) so a green run always means
"green on the locked versions".
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

from packaging.utils import canonicalize_name

LOCK = Path(__file__).resolve().parent.parent / "requirements.lock"
# Installer tooling and the project itself are not part of the lock.
NOT_LOCKED = {"pip", "wheel", "mechstudy"}


def _lock(path: Path = LOCK) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        assert m, f"{path.name}: not a pinned requirement: {line!r}"
        out[canonicalize_name(m.group(1))] = m.group(2)
    return out


def _installed() -> dict[str, str]:
    return {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}


def test_lock_pins_every_package_exactly():
    lock = _lock()
    assert "torch" in lock and lock["torch"].startswith("2.13.0"), "torch stays at the CPU build pip supplies here"
    assert len(lock) > 30  # transitive packages are pinned too, not just our direct ones


def test_benchmark_tl_requirements_are_exact_and_only_what_transformer_lens_adds():
    """benchmarks/requirements-tl.txt is written by `make lock` with the lock: TransformerLens and
    every package it adds or moves to another version, each pinned (installed with --no-deps)."""
    tl, lock = _lock(LOCK.parent / "benchmarks" / "requirements-tl.txt"), _lock()
    assert "transformer-lens" in tl and len(tl) > 5  # its dependencies are pinned too
    assert not [n for n, v in tl.items() if lock.get(n) == v], "a package the lock already pins at that version"


def test_installed_versions_are_the_locked_ones():
    lock, have = _lock(), _installed()
    wrong = {n: (have[n], v) for n, v in lock.items() if n in have and have[n] != v}
    missing = sorted(n for n in lock if n not in have)
    extra = sorted(n for n in have if n not in lock and n not in NOT_LOCKED)
    assert not wrong, f"installed (got, locked) differ from requirements.lock: {wrong}; run `make setup` in a new venv"
    assert not missing, f"locked but not installed: {missing}"
    assert not extra, f"installed but not in requirements.lock: {extra}; add them to pyproject.toml and run `make lock`"
