"""Confinement: a study opened from a pack reads files only inside the pack.

A pack is somebody else's study. Run as written, `use "/home/me/.ssh/config"` or
`dataset d = file "/etc/passwd" prompt=...` would read (and echo into errors or the report) any
file the user can read. While `confined(root)` is active:

- `use "PATH"`: PATH must be relative and must stay inside `root` (symlinks resolved);
  `check_study_paths` refuses the others before the checker reads anything.
- `file` datasets: `data_path(path)` resolves PATH against `root` (not the current directory)
  and refuses absolute paths, `~` and paths that escape `root`.

Models are not confined: `hf "DIR"` and `zoo "NAME"` read weights the user installed, which is what
running a study means; a model directory is only ever read as a model (config, tokenizer, weights).

Which studies are "from a pack": `study unpack` (and `run --from`) lists the study files it
extracts in `.studypack.json` beside them (`mark`); `for_study(path)` confines a study that is
listed there, whatever cache it runs against. Deleting that file makes them ordinary studies.

The setting is process-wide (a run's Dask threads see it); `confined` restores the previous one.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_ROOT: Path | None = None
_GUARD = threading.Lock()


class Escape(ValueError):
    """A path that a confined study may not read. `.message`, `.option`, `.hint` as ColumnError."""

    def __init__(self, message: str, hint: str | None = None, option: str = "path") -> None:
        super().__init__(message)
        self.message, self.hint, self.option = message, hint, option


def root() -> Path | None:
    """The directory a confined study is limited to, or None when not confined."""
    return _ROOT


@contextmanager
def confined(directory: str | Path | None) -> Iterator[None]:
    """Confine file reads of studies to `directory` (None: no confinement) for the block."""
    global _ROOT
    with _GUARD:
        before, _ROOT = _ROOT, (Path(directory).resolve() if directory is not None else None)
    try:
        yield
    finally:
        with _GUARD:
            _ROOT = before


MARKER = ".studypack.json"


def mark(directory: Path, study_name: str, pack_id: str) -> None:
    """Record that `directory/study_name` was extracted from pack `pack_id`."""
    import json

    from mechstudy.engine.store import write_json_atomic

    p = directory / MARKER
    try:
        data = json.loads(p.read_text())
        data = data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        data = {}
    if data.get(study_name) != pack_id:
        write_json_atomic(p, {**data, study_name: pack_id})


def marked(study: str | Path) -> bool:
    """Whether `study` was extracted from a pack (listed in the marker beside it)."""
    import json

    p = Path(study)
    try:
        data = json.loads((p.parent / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and p.name in data


@contextmanager
def for_study(study: str | Path, from_pack: bool = False) -> Iterator[None]:
    """Confine to the study's directory when it comes from a pack (`from_pack`, or `marked`)."""
    with confined(Path(study).resolve().parent if from_pack or marked(study) else None):
        yield


def inside(path: Path, base: Path) -> bool:
    try:
        path.resolve().relative_to(base.resolve())
        return True
    except (ValueError, OSError, RuntimeError):
        return False


def data_path(path: str) -> Path:
    """The file a `file` dataset's `path` names: from the current directory, or, when confined,
    from the confinement root and only inside it (else `Escape`)."""
    r = _ROOT
    if r is None:
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path.cwd() / p
    p = Path(path)
    if path.startswith("~") or p.is_absolute():
        raise Escape(f"this study comes from a pack: it may not read {_short(path)} (an absolute path)",
                     "a pack's study reads only files inside the pack (relative paths)")
    full = r / p
    if not inside(full, r):
        raise Escape(f"this study comes from a pack: it may not read {_short(path)} (outside the pack)",
                     "a pack's study reads only files inside the pack (relative paths)")
    return full


def check_use(base: Path, target: str) -> Path:
    """The file a `use "TARGET"` in a file under `base` names, refused (`Escape`) when confined
    and TARGET is absolute or leaves the root."""
    r = _ROOT
    p = Path(target)
    if r is not None:
        if target.startswith("~") or p.is_absolute():
            raise Escape(f"this study comes from a pack: it may not use {_short(target)} (an absolute path)",
                         "a pack's study may use only study files inside the pack")
        if not inside(base / p, r):
            raise Escape(f"this study comes from a pack: it may not use {_short(target)} (outside the pack)",
                         "a pack's study may use only study files inside the pack")
    return base / p


def _short(s: str, n: int = 60) -> str:
    r = repr(s)
    return r if len(r) <= n else r[: n - 4] + "...'"


def used_files(study: str | Path) -> list[tuple[Path, object]]:
    """Every `use` statement reachable from `study`: (the file it is in, its ast.Use), depth first.
    Files that do not parse are skipped (the checker reports them)."""
    from mechstudy.lang import ast
    from mechstudy.lang.errors import StudyErrors
    from mechstudy.lang.parser import parse

    out: list[tuple[Path, object]] = []
    seen: set[Path] = set()

    def visit(path: Path, depth: int) -> None:
        try:
            key = path.resolve()
        except (OSError, RuntimeError):
            return
        if key in seen or depth > 32:
            return
        seen.add(key)
        try:
            text = path.read_text(encoding="utf-8")
            tree = parse(text, str(path))
        except (OSError, UnicodeDecodeError, StudyErrors, ValueError):
            return
        for stmt in tree.statements:
            if isinstance(stmt, ast.Use):
                out.append((path, stmt))
                target = path.parent / stmt.path.value
                if _ROOT is None or inside(target, _ROOT):
                    if target.is_file():
                        visit(target, depth + 1)

    visit(Path(study), 0)
    return out


def check_study_paths(study: str | Path) -> None:
    """Under confinement: refuse (as `StudyErrors`, with spans) every `use` that leaves the root.
    Does nothing when not confined."""
    if _ROOT is None:
        return
    from mechstudy.lang.errors import StudyErrors, StudyTypeError

    errors = []
    for path, stmt in used_files(study):
        try:
            check_use(path.parent, stmt.path.value)  # type: ignore[attr-defined]
        except Escape as e:
            errors.append(StudyTypeError(stmt.path.span, e.message, e.hint))  # type: ignore[attr-defined]
    if errors:
        raise StudyErrors(errors)
