"""The Python API, for notebooks: run study files or text, read results, or build a study.

    import mechstudy as ms
    res = ms.run("studies/quickstart.study")     # the same cache and report as `study run`
    res["heads"].table                           # polars DataFrame (sweep points concatenated)
    res["heads"].chart                           # Altair chart (token labels on position axes)
    res["heads"].tensor                          # the main tensor ("effect" when there is one)
    res["heads"]                                 # in Jupyter: headline, chart and table
    ms.run_text('study "x"\nmodel m = zoo "mini"\n...')
    %load_ext mechstudy, then a %%study cell     # the cell is a study; its results display

The builder below writes study text statement by statement:

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

    def result(self) -> "Result":
        """The finished result (table, chart, tensor, rich display); needs a finished run()."""
        run = self.study.last_run
        if run is None:
            raise RuntimeError("call study.run() first")
        return Results(run, self.study.cache)[self.name]


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


# ---------------------------------------------------------------------------- running files and text


def run(path: str | Path, *, cache: str | Path | None = None, **kw: Any) -> "Results":
    """Run a study file exactly as `study run` does (same cache, report and lock); its results.

    Keywords go to `engine.run.run_study` (device, max_rows, out_dir, report, scheduler, log)."""
    from mechstudy.engine.run import run_study

    return Results(run_study(path, cache=cache, **kw), cache)


def run_text(text: str, *, name: str = "notebook", directory: str | Path | None = None,
             cache: str | Path | None = None, **kw: Any) -> "Results":
    """Run study text (a notebook cell): written to DIRECTORY/NAME.study (default: a fresh
    temporary folder), then run as a file. A text without a `study "..."` line gets one."""
    if not any(line.strip().startswith("study ") for line in text.splitlines()):
        text = f'study "{name}"\n' + text
    d = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="mechstudy-nb-"))
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{name}.study"
    path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    return run(path, cache=cache, **kw)


class Result:
    """One named result of a run: its sweep points' tables, charts, tensors and headline."""

    def __init__(self, name: str, points: list[Any]) -> None:
        self.name, self.points = name, points

    def __repr__(self) -> str:
        t = self.table
        shape = f"{t.height} rows x {t.width} columns" if t is not None else "no table"
        return f"<result {self.name}: {shape}, {len(self.points)} point{'s' if len(self.points) != 1 else ''}>"

    @property
    def table(self) -> Any:
        """The main table (polars); a sweep's points are concatenated, with a column per swept option."""
        import polars as pl

        frames = []
        for p in self.points:
            t = p.table
            if t is None:
                continue
            for k, v in p.point.items():
                t = t.with_columns(pl.lit(v).alias(k))
            frames.append(t)
        if not frames:
            return None
        return frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal")

    @property
    def specs(self) -> list[dict]:
        """Every chart of every point, as Vega-Lite dicts."""
        return [s for p in self.points for s in p.charts()]

    @property
    def chart(self) -> Any:
        """The first chart as an Altair chart (None when the result has no chart)."""
        specs = self.specs
        return to_altair(specs[0]) if specs else None

    @property
    def tensors(self) -> dict[str, Any]:
        """The first point's tensors by name (each point's: `points[i].artifact.tensors`)."""
        return dict(self.points[0].artifact.tensors)

    @property
    def tensor(self) -> Any:
        """The main tensor: "effect" when there is one, else the first; a sweep's points stacked."""
        import torch

        def main(p: Any) -> Any:
            ts = p.artifact.tensors
            return ts["effect"] if "effect" in ts else next(iter(ts.values()), None)

        got = [main(p) for p in self.points]
        if len(got) == 1 or any(t is None for t in got):
            return got[0]
        return torch.stack(got) if len({tuple(t.shape) for t in got}) == 1 else got

    @property
    def data(self) -> dict[str, Any]:
        return dict(self.points[0].artifact.data)

    @property
    def headline(self) -> list[Any]:
        return [h for p in self.points for h in p.headline()]

    def _repr_html_(self) -> str:
        from mechstudy.engine import report

        parts = [f"<h3 style='margin:8px 0'>{report._esc(self.name)}</h3>"]
        for p in self.points:
            if len(self.points) > 1:
                parts.append(f"<h4 style='margin:6px 0'>{report._esc(p.label)}</h4>")
            items = [(h.label, h.value, h.detail) for h in p.headline()]
            why = p.empty()
            if why:
                parts.append(f"<p><b>Nothing to draw.</b> {report._esc(why)}</p>")
            charts = "".join(_chart_html(s) for s in p.charts())
            parts.append(f"<div style='display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start'>"
                         f"<div>{charts}</div>{report._headline_html(items)}</div>")
            if p.table is not None:
                parts.append(report._table_html(p.table, open_rows=0))
        return f"<div class='mechstudy-result'><style>{_NB_CSS}</style>{''.join(parts)}</div>"


class Results:
    """A run's results by name (`res["heads"]`), with the report's path and the run summary."""

    def __init__(self, run_result: Any, cache: str | Path | None = None) -> None:
        from mechstudy.engine.results import gather
        from mechstudy.engine.store import Store

        self.run, self.plan, self.report = run_result, run_result.plan, run_result.report
        points = gather(self.plan, Store(cache), run_result.outcomes)
        self._by_name = {n: Result(n, [p for p in points if p.name == n]) for n in self.plan.results}

    def __getitem__(self, name: str) -> Result:
        if name not in self._by_name:
            from mechstudy.engine.spec import suggest

            hint = suggest(name, self._by_name)
            raise KeyError(f"no result named {name!r}" + (f"; did you mean {hint!r}?" if hint else ""))
        return self._by_name[name]

    def __iter__(self):  # noqa: ANN204
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def keys(self) -> list[str]:
        return list(self._by_name)

    def summary(self) -> str:
        return self.run.summary()

    def __repr__(self) -> str:
        return f"<results of {self.plan.study.title!r}: {', '.join(self._by_name)}; {self.summary()}>"

    def _repr_html_(self) -> str:
        from mechstudy.engine import report

        head = (f"<p><b>{report._esc(self.plan.study.title)}</b>: {report._esc(self.summary())}"
                + (f" \u00b7 report: <code>{report._esc(self.report)}</code>" if self.report else "") + "</p>")
        return head + "".join(r._repr_html_() for r in self._by_name.values())


def to_altair(spec: dict) -> Any:
    """A Vega-Lite dict as the matching Altair chart class (layer, facet, concat or single)."""
    import altair as alt

    for key, cls in (("layer", alt.LayerChart), ("facet", alt.FacetChart), ("vconcat", alt.VConcatChart),
                     ("hconcat", alt.HConcatChart), ("concat", alt.ConcatChart)):
        if key in spec:
            return cls.from_dict(spec, validate=False)
    return alt.Chart.from_dict(spec, validate=False)


_NB_CSS = ("aside.headline{background:#f5f7fa;border:1px solid #e4e7eb;border-radius:8px;padding:8px 12px;"
           "min-width:220px}aside.headline h3{margin:0 0 4px;font-size:11px;text-transform:uppercase;color:#5f6b7a}"
           "aside.headline dt{font-size:12px;color:#5f6b7a;margin-top:4px}aside.headline dd{margin:0;font-size:17px;"
           "font-weight:600;white-space:pre-line}aside.headline dd small{display:block;font-size:11px;"
           "font-weight:400;color:#5f6b7a}")
_BUNDLE_SENT = [False]


def _chart_html(spec: dict) -> str:
    """A chart that renders offline in a notebook: the Vega bundle is inlined in the first chart
    shown in a session (about 1 MB once), later ones reuse it."""
    import json
    import uuid

    from mechstudy.engine import report

    div = f"mechstudy-{uuid.uuid4().hex[:12]}"
    bundle = "" if _BUNDLE_SENT[0] else f"<script>{report.vega_bundle()}</script>"
    _BUNDLE_SENT[0] = True
    spec_js = report._json_for_script(spec)
    return (f'{bundle}<div id="{div}"></div><script>(function(){{var go=function(){{'
            f'vegaEmbed("#{div}",{spec_js},{{renderer:"svg",actions:{{export:true,source:false,compiled:false,'
            f'editor:false}}}});}};if(window.vegaEmbed){{go();}}else{{setTimeout(go,200);}}}})();</script>')


# ---------------------------------------------------------------------------- IPython


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext mechstudy`: the `%%study` cell magic.

        %%study [--cache DIR] [--name NAME]
        model m = zoo "mini"
        dataset ioi = ioi(n=16)
        heads = patch heads in all layers of m on ioi with logit_diff

    runs the cell as a study (the same cache as `study run`; a mistake prints the usual
    file:line:col error), displays its results, and leaves them in the variable `study_results`
    (`--name NAME`: the study file's name, and the variable too)."""
    from IPython.core.magic import register_cell_magic

    @register_cell_magic
    def study(line: str, cell: str) -> Any:  # noqa: ANN001 - IPython's signature
        import shlex

        from mechstudy.lang.errors import StudyErrors

        args = shlex.split(line)
        opts = {"cache": None, "name": "cell"}
        while args:
            flag = args.pop(0)
            if flag in ("--cache", "--name") and args:
                opts[flag[2:]] = args.pop(0)
            else:
                raise ValueError(f"%%study: unknown option {flag!r} (use --cache DIR, --name NAME)")
        try:
            res = run_text(cell, name=opts["name"], cache=opts["cache"], directory=Path.cwd() / ".mechstudy")
        except StudyErrors as e:
            print(e.render())
            return None
        ipython.user_ns["study_results" if opts["name"] == "cell" else opts["name"]] = res
        return res
