"""The Python API, for notebooks: builds the same plan the language builds.

Every call appends one statement to a study text, which goes through the very same checker
and planner as a `.study` file, so a notebook and a file with the same statements share node
keys, cache entries and error messages. Values do not exist until `run()`: the handles refuse
`bool()` so nobody writes Python control flow over a result that has not been computed.

>>> s = Study("notebook")
>>> m = s.model("m", zoo="mini")
>>> d = s.dataset("ioi", "ioi", n=8)
>>> h = s.patch("heads", layers=[0, 1], model=m, dataset=d, metric="logit_diff", name="h")
>>> print(s.text().splitlines()[-1])
h = patch heads in layers [0, 1] of m on ioi with logit_diff
>>> bool(h)
Traceback (most recent call last):
...
TypeError: h is a deferred result: call study.run() and read h.table() instead of testing it
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

# keyword -> clause word, per the table in engine/spec.py
_CLAUSES = {"model": "of", "dataset": "on", "metric": "with", "method": "using"}


def _lit(v: Any) -> str:
    if isinstance(v, Handle):
        return v.name
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v if v.isidentifier() else '"' + v.replace('"', '\\"') + '"'
    if isinstance(v, range):
        return f"{v.start}..{v.stop - 1}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_lit(x) for x in v) + "]"
    return repr(v)


def _layers(v: Any) -> str:
    if v == "all":
        return "all layers"
    if isinstance(v, int):
        return f"layer {v}"
    return f"layers {_lit(v)}"


def _positions(v: Any) -> str:
    words = {"each": "every position", "all": "all positions", "last": "last position"}
    if v in words:
        return words[v]
    return f"position {v}" if isinstance(v, int) else f"positions {_lit(v)}"


class Handle:
    """A declared model / dataset, or a deferred result."""

    def __init__(self, study: "Study", name: str, kind: str) -> None:
        self.study, self.name, self.kind = study, name, kind

    def __bool__(self) -> bool:
        raise TypeError(f"{self.name} is a deferred result: call study.run() and read {self.name}.table() instead of testing it")

    def __repr__(self) -> str:
        return f"<{self.kind} {self.name}>"

    def artifacts(self) -> list[Any]:
        """The stored artifacts of this result (one per sweep point); needs a finished run()."""
        run = self.study.last_run
        if run is None:
            raise RuntimeError("call study.run() first")
        from mechstudy.engine.store import Store

        store = Store(self.study.cache)
        return [store.get(n.key) for n in run.plan.results[self.name].nodes]

    def table(self) -> Any:
        """The main table (polars); sweep points are concatenated."""
        import polars as pl

        from mechstudy.engine.results import main_table

        frames = [main_table(a) for a in self.artifacts()]
        return frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal")


class Study:
    def __init__(self, title: str, cache: str | Path | None = None) -> None:
        self.title = title
        self.cache = cache
        self.lines: list[str] = [f'study "{title}"', ""]
        self._anon = 0
        self.last_run: Any = None

    # ---- declarations ---------------------------------------------------------------------
    def model(self, name: str, *, hf: str | None = None, zoo: str | None = None, **options: Any) -> Handle:
        kind, ref = ("hf", hf) if hf is not None else ("zoo", zoo)
        opts = "".join(f" {k}={_lit(v)}" for k, v in options.items())
        self.lines.append(f'model {name} = {kind} "{ref}"{opts}')
        return Handle(self, name, "model")

    def dataset(self, name: str, generator: str, **params: Any) -> Handle:
        args = ", ".join(f"{k}={_lit(v)}" for k, v in params.items())
        self.lines.append(f"dataset {name} = {generator}({args})")
        return Handle(self, name, "dataset")

    # ---- statements -----------------------------------------------------------------------
    def op(self, verb: str, component: str | None = None, *, name: str | None = None, flags: tuple[str, ...] = (), **kw: Any) -> Handle:
        """One operator statement: `name = VERB component [in ...] [at ...] of .. on .. with ..`."""
        if name is None:
            self._anon += 1
            name = f"r{self._anon}"
        parts = [f"{name} = {verb}"]
        if component:
            parts.append(component)
        if "layers" in kw:
            parts.append("in " + _layers(kw.pop("layers")))
        if "positions" in kw:
            parts.append("at " + _positions(kw.pop("positions")))
        for key, word in _CLAUSES.items():
            if key in kw:
                parts.append(f"{word} {_lit(kw.pop(key))}")
        parts.extend(flags)
        parts.extend(f"{k}={_lit(v)}" for k, v in kw.items())
        self.lines.append(" ".join(parts))
        return Handle(self, name, "result")

    def __getattr__(self, verb: str) -> Any:
        if verb.startswith("_"):
            raise AttributeError(verb)
        return lambda component=None, **kw: self.op(verb, component, **kw)

    def plot(self, result: Handle, kind: str, title: str | None = None) -> None:
        self.lines.append(f"plot {result.name} as {kind}" + (f' titled "{title}"' if title else ""))

    # ---- doing ----------------------------------------------------------------------------
    def text(self) -> str:
        return "\n".join(self.lines) + "\n"

    def _file(self, directory: str | Path | None) -> Path:
        d = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="mechstudy-nb-"))
        p = d / "notebook.study"
        p.write_text(self.text())
        return p

    def plan(self) -> Any:
        """Check and plan (raises StudyErrors exactly as `study check` reports them)."""
        from mechstudy.engine.run import check_and_plan

        return check_and_plan(self._file(None))

    def run(self, directory: str | Path | None = None, **kw: Any) -> Any:
        from mechstudy.engine.run import run_study

        kw.setdefault("cache", self.cache)
        self.cache = kw["cache"]
        self.last_run = run_study(self._file(directory), **kw)
        return self.last_run
