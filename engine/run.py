"""The pipeline every verb shares: text -> resolved study -> plan -> Dask run -> report + lock."""

from __future__ import annotations

import importlib.metadata
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mechstudy.engine import fingerprint
from mechstudy.engine.build import Plan, build_plan
from mechstudy.engine.graph import Outcome, run_nodes
from mechstudy.engine.plan import Node, walk
from mechstudy.engine.store import Store, record_study, write_text_atomic

LOCK_FORMAT = 1
_LOCK_PACKAGES = ("mechstudy", "torch", "transformers", "dask", "polars", "safetensors", "lark", "altair")


def load_stdlib() -> None:
    """Fill the registries (operators, models, datasets, metrics, charts)."""
    import mechstudy.engine.builtins  # noqa: F401
    import mechstudy.stdlib as stdlib

    stdlib.load_all()


def check_and_plan(path: str | Path) -> Plan:
    """Parse, check and plan a study file; raises lang's StudyErrors for any mistake in it.
    Under `confine.confined(root)` (a study opened from a pack) its `use`s must stay in root."""
    from mechstudy.engine.confine import check_study_paths
    from mechstudy.lang import check_file

    load_stdlib()
    check_study_paths(path)
    return build_plan(check_file(str(path)))


def pack_view(path: str | Path, store: Store) -> list[Any]:
    """Give `store` the entries of the imported packs whose own study is `path` (engine/pack.py);
    returns their records (empty for a study that no pack serves)."""
    from mechstudy.engine.pack import serving

    recs = serving(store, path)
    store.overlays = [r.overlay() for r in recs]
    return recs


@dataclass
class RunResult:
    plan: Plan
    outcomes: dict[str, Outcome]
    seconds: float
    report: Path | None = None
    lock: Path | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def computed(self) -> int:
        return sum(1 for o in self.outcomes.values() if o.status == "computed")

    @property
    def from_cache(self) -> int:
        return len(self.plan.nodes()) - self.computed

    def summary(self) -> str:
        return f"{self.computed} computed, {self.from_cache} from cache, {self.seconds:.1f} s"


def run_study(
    path: str | Path,
    *,
    cache: str | Path | None = None,
    device: str | None = None,
    scheduler: str | None = None,
    max_rows: int | None = None,
    out_dir: str | Path | None = None,
    report: bool = True,
    log: Callable[[str], None] = lambda s: None,
    events: Callable[[dict[str, Any]], None] | None = None,
) -> RunResult:
    """Check, plan and run a study; write its lock and (unless report=False) its report.

    `log` gets a line per computed node and per warning; `events` gets the structured events
    of engine/progress.py (start, node, progress, warning, finish), which the CLI's displays show.
    A study that an imported pack serves (engine/pack.py) reads that pack's entries, and only
    files inside its own directory (engine/confine.py)."""
    from mechstudy.engine import nodeprogress
    from mechstudy.engine.confine import for_study
    from mechstudy.engine.context import auto_device

    emit = events or (lambda e: None)

    t0 = time.perf_counter()
    nodeprogress.clear_stop()
    store = Store(cache)
    packs = pack_view(path, store)
    warnings: list[str] = []

    def warn(msg: str) -> None:
        warnings.append(msg)
        log(f"warning: {msg}")
        emit({"event": "warning", "message": msg})

    # A study opened from a pack reads files only inside the pack's directory.
    with for_study(path, from_pack=bool(packs)):
        with fingerprint.recording() as deps:  # what the plan was derived from (engine/warm.py)
            plan = check_and_plan(path)
        store.clean_tmp()

        def on_done(o: Outcome, done: int, total: int) -> None:
            if o.status == "computed":
                log(f"  [{done}/{total}] {o.op}-{o.key[:16]} computed in {o.seconds:.2f} s")
            emit({"event": "node", "key": o.key, "op": o.op, "status": o.status, "seconds": round(o.seconds, 4),
                  "done": done, "total": total})

        def start(tasks: int) -> None:
            emit({"event": "start", "study": str(path), "nodes": len(plan.nodes()), "tasks": tasks})

        def inside(e: nodeprogress.ProgressEvent) -> None:  # ctx.progress inside a node
            emit({"event": "progress", "key": e.key, "op": e.op, "done": e.done, "total": e.total, "note": e.note})

        unsubscribe = nodeprogress.subscribe(inside)
        try:
            outcomes = run_nodes(
                plan.roots(), store, device=device or auto_device(), max_rows=max_rows, scheduler=scheduler,
                warn=warn, progress=on_done, on_start=start,
            )
        finally:
            unsubscribe()
    served = [o for o in outcomes.values() if o.status == "imported"]
    if served:
        names = ", ".join(r.name for r in packs)
        warn(f"{len(served)} result(s) come from pack {names}, imported and not computed here; "
             f"`study verify {path}` recomputes them")
    res = RunResult(plan, outcomes, 0.0, warnings=warnings)
    res.lock = write_lock(plan, Path(str(path) + ".lock"))
    record_study(store, Path(path), res.lock, [n.key for n in plan.nodes()])
    # The run's time is taken before the report is written, so the report and the summary line
    # printed after it quote the same number.
    res.seconds = time.perf_counter() - t0
    if report:
        from mechstudy.engine.results import build_report

        out = Path(out_dir) if out_dir else Path("out") / Path(path).stem
        info = {"study": str(path), "seconds": res.seconds, "device": device or auto_device(), "cache": str(getattr(store, "url", store.root))}
        res.report = build_report(plan, store, outcomes, out / "report.html", res.lock, info)
    if not packs and all(o.status in ("computed", "cached") for o in outcomes.values()):
        from mechstudy.engine.warm import remember

        remember(path, store, out_dir, plan, deps, res.lock, res.report)
    emit({"event": "finish", "computed": res.computed, "cached": res.from_cache, "seconds": round(res.seconds, 3),
          "report": str(res.report) if res.report else None})
    return res


# ---- lock ---------------------------------------------------------------------------------


def describe_node(n: Node) -> dict[str, Any]:
    return {"op": n.op, "version": n.version, "params": dict(n.params), "inputs": {k: c.key for k, c in n.inputs}}


def lock_data(plan: Plan) -> dict[str, Any]:
    versions = {}
    for pkg in _LOCK_PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {
        "lock_format": LOCK_FORMAT,
        "study": plan.study.title,
        "grammar_version": plan.study.grammar_version,
        "results": {name: [n.key for n in r.nodes] for name, r in plan.results.items()},
        "charts": {name: [n.key for n in r.charts] for name, r in plan.results.items() if r.charts},
        "models": {name: {"key": n.key, "fingerprint": n.param("fingerprint"), "ref": n.param("ref")} for name, n in plan.models.items()},
        "datasets": {name: n.key for name, n in plan.datasets.items()},
        "nodes": {n.key: describe_node(n) for n in plan.nodes()},
        "packages": versions,
    }


def write_lock(plan: Plan, path: Path) -> Path:
    """Write the lock file atomically (temp file + rename): a reader never sees half of it."""
    write_text_atomic(path, json.dumps(lock_data(plan), indent=1, sort_keys=True) + "\n")
    return path


def read_lock(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
