"""The warm path of `study run`: an unchanged study with every result in the store finishes in a
fraction of a second, without importing torch, transformers, dask or the standard library.

Checking and planning a study imports every operator module (and with them torch and
transformers: seconds), so a run with nothing to compute would spend nearly all its time on
imports it does not need. Instead, every complete run remembers what its plan was derived from
(`remember`, a small JSON file under the store's `plans/`):

- the study file and every file it `use`s (size and mtime);
- every file the plan fingerprinted (model configs, weights and tokenizers, dataset and corpus
  files) and the directories they were listed from (`engine.fingerprint.recording`);
- the mechstudy source tree (size and mtime of every file: any edit of an operator, the
  language or the engine invalidates it), the Python version, the versions of the libraries that
  enter node keys, the environment variables that steer model resolution, the working directory;
- the plan's node keys, and the size and mtime of the lock file and report that run wrote.

The next `study run` of the same file with the same store and output directory (`warm_run`)
re-stats all of that and checks every node's store entry by sizes and mtimes
(`store.unchanged_since_written`); when everything holds, nothing can differ from what a full
check, plan and run would do except the timings, so it reports "0 computed, N from cache" and
leaves the report as that run wrote it. Anything else (an edit anywhere, a missing or changed
entry, a pack serving the study, a hub model id, no memo) takes the full path, whose checks,
error messages and results are exactly those of a cold run. Full checksums stay where they
belong: `study cache verify`, and every read of an imported pack entry.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import xxhash

MEMO_FORMAT = 1
_ENV = ("HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TRANSFORMERS_CACHE")
_CODE_DIRS = ("engine", "lang", "stdlib", "mechstudy")
_NUMERIC_LIBS = ("torch", "transformers")  # engine/build.py keys model nodes with their versions


@dataclass
class WarmResult:
    """What `study run` prints for a warm run (the same lines as RunResult)."""

    nodes: int
    seconds: float
    report: Path | None
    lock: Path
    computed: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def from_cache(self) -> int:
        return self.nodes

    def summary(self) -> str:
        return f"0 computed, {self.nodes} from cache, {self.seconds:.1f} s"


def _stat(p: str) -> list[int] | None:
    try:
        st = os.stat(p)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _dir_stat(p: str) -> int | None:
    try:
        return os.stat(p).st_mtime_ns
    except OSError:
        return None


def code_fingerprint() -> str:
    """Size and mtime of every file of the mechstudy source tree (package data included)."""
    root = Path(__file__).resolve().parent.parent
    h = xxhash.xxh3_128()
    for top in _CODE_DIRS:
        for dirpath, dirnames, filenames in os.walk(root / top):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
            for f in sorted(filenames):
                if f.endswith((".pyc", ".lock")):
                    continue
                full = os.path.join(dirpath, f)
                st = os.stat(full)
                h.update(f"{os.path.relpath(full, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def environment() -> dict[str, Any]:
    import importlib.metadata as md

    libs = {}
    for lib in _NUMERIC_LIBS:
        try:
            libs[lib] = md.version(lib)
        except md.PackageNotFoundError:
            libs[lib] = None
    return {"python": sys.version, "libs": libs, "cwd": os.getcwd(),
            "env": {k: v for k, v in sorted(os.environ.items()) if k in _ENV or k.startswith("MECHSTUDY_")}}


def _memo_path(root: Path, study: Path, out: Path | None) -> Path:
    who = f"{study.resolve()}\0{out.resolve() if out else ''}"
    return root / "plans" / f"{xxhash.xxh3_128_hexdigest(who.encode())}.json"


def _out_dir(study: str | Path, out_dir: str | Path | None) -> Path:
    return Path(out_dir) if out_dir else Path("out") / Path(study).stem


def remember(study: str | Path, store: Any, out_dir: str | Path | None, plan: Any, deps: dict[str, set[str]],
             lock: Path, report: Path | None) -> Path | None:
    """After a complete run: write the memo `warm_run` checks (see the module doc). Returns its
    path, or None when this study cannot take the warm path (a hub model id, resolved through
    the Hugging Face cache's refs rather than files the plan fingerprints)."""
    from mechstudy.engine import spec

    for m in plan.models.values():
        src, ref = m.param("source"), m.param("ref")
        if src == "hf" and not Path(str(ref)).expanduser().is_dir():
            return None
    files = {str(Path(study).resolve())} | set(deps.get("files", ()))
    for part in (*plan.study.models.values(), *plan.study.datasets.values(), *plan.study.calls, *plan.study.plots):
        path = getattr(getattr(part, "span", None), "file", None)
        if path and not str(path).startswith("<"):
            files.add(str(Path(path).resolve()))
    nodes = plan.nodes()
    memo = {
        "format": MEMO_FORMAT,
        "study": str(Path(study).resolve()),
        "code": code_fingerprint(),
        "environment": environment(),
        "files": {f: _stat(f) for f in sorted(files)},
        "dirs": {d: _dir_stat(d) for d in sorted(deps.get("dirs", ()))},
        "nodes": [[n.key, n.op] for n in nodes],
        "roots": [n.key for n in plan.roots()],
        "lock": [str(lock.resolve()), _stat(str(lock))],
        "report": None if report is None else [str(Path(report).resolve()), _stat(str(report))],
        "ops": sorted({n.op for n in nodes if n.op in spec.OPS}),
    }
    from mechstudy.engine.store import write_json_atomic

    path = _memo_path(store.root, Path(study), _out_dir(study, out_dir))
    write_json_atomic(path, memo)
    return path


def warm_run(study: str | Path, *, cache: str | Path | None = None, out_dir: str | Path | None = None,
             events: Callable[[dict[str, Any]], None] | None = None) -> WarmResult | None:
    """`study run` of an unchanged, fully cached study (see the module doc), or None: take the
    full path."""
    from mechstudy.engine.store import Store, record_study

    t0 = time.perf_counter()
    if not Path(study).is_file():
        return None
    store = Store(str(cache)) if cache is not None else Store()  # a directory, or a URL (its mirror)
    memo_file = _memo_path(store.root, Path(study), _out_dir(study, out_dir))
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(memo, dict) or memo.get("format") != MEMO_FORMAT:
        return None
    try:
        if any(_stat(f) != v for f, v in memo["files"].items()):
            return None
        if any(_dir_stat(d) != v for d, v in memo["dirs"].items()):
            return None
        lock_path, lock_stat = memo["lock"]
        if _stat(lock_path) != lock_stat:
            return None
        report = None
        if memo["report"] is not None:
            report, report_stat = memo["report"]
            if _stat(report) != report_stat:
                return None
        if memo["environment"] != json.loads(json.dumps(environment())):
            return None
        if memo["code"] != code_fingerprint():
            return None
    except (KeyError, TypeError, ValueError):
        return None
    from mechstudy.engine.pack import serving

    if serving(store, study):
        return None  # a pack serves this study: its entries are checksummed on every read
    from mechstudy.engine.store import MANIFEST, unchanged_since_written

    for key, _op in memo["nodes"]:
        d = store.local_path(key)
        try:
            m = json.loads((d / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(m, dict) or not unchanged_since_written(d, m):
            return None
    # Everything a full run would derive is as it was: report it like a warm full run.
    emit = events or (lambda e: None)
    roots = memo["roots"]
    ops = dict((k, op) for k, op in memo["nodes"])
    emit({"event": "start", "study": str(study), "nodes": len(memo["nodes"]), "tasks": len(roots)})
    for i, key in enumerate(roots, 1):
        store.mark_used(key)
        emit({"event": "node", "key": key, "op": ops.get(key, "?"), "status": "cached", "seconds": 0.0,
              "done": i, "total": len(roots)})
    record_study(store, Path(study), Path(lock_path), [k for k, _ in memo["nodes"]])
    res = WarmResult(len(memo["nodes"]), time.perf_counter() - t0, Path(report) if report else None, Path(lock_path))
    emit({"event": "finish", "computed": 0, "cached": res.from_cache, "seconds": round(res.seconds, 3),
          "report": str(res.report) if res.report else None})
    return res
