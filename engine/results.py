"""A run's results as read back from the store: what the report, `study show`/`export` and
notebooks display. (The HTML page itself is engine/report.py.)

One `ResultPoint` per node of a named result (one per sweep point), with its main table, its
charts (Vega-Lite specs, position axes labelled with the prompt's tokens), its tensors, and its
headline: the few numbers a reader wants first.

The headline is declared by the operator, never special-cased here: ``artifact.data["headline"]``
is a list of ``{"label": str, "value": number | str, "detail": str}`` (or a ``{label: value}``
dict). For any result whose main table has an ``effect`` column over units (layer, head,
position, neuron), the largest effects are added as "largest |effect|".

>>> fmt_value(0.123456), fmt_value(1234567), fmt_value(float("nan")), fmt_value(True)
('0.123', '1,234,567', 'nan', 'yes')
"""

from __future__ import annotations

import copy
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

UNIT_COLUMNS = ("layer", "head", "position", "neuron")
TOP_UNITS = 3  # how many of the largest effects the headline lists


def main_table(artifact: Any) -> Any:
    """An operator's main table: "result" by convention, else its first table."""
    if "result" in artifact.tables:
        return artifact.tables["result"]
    return next(iter(artifact.tables.values()), None)


def statement_text(plan: Any, span: Any) -> str:
    lines = plan.study.text.splitlines()
    if span is None or not (1 <= span.line <= len(lines)):
        return ""
    return "\n".join(lines[span.line - 1 : span.end_line]).strip()


def fmt_value(v: Any) -> str:
    """A number as a reader wants it: 3 significant digits, thousands separated."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:,.3g}" if abs(v) >= 1000 else f"{v:.3g}"
    return str(v)


@dataclass(frozen=True)
class Headline:
    label: str
    value: str
    detail: str = ""


def declared_headline(data: Mapping[str, Any]) -> list[Headline]:
    """The operator's headline (``data["headline"]``), formatted.

    >>> [h.value for h in declared_headline({"headline": [{"label": "rho", "value": 0.91234}]})]
    ['0.912']
    """
    raw = data.get("headline")
    if not raw:
        return []
    items = raw.items() if isinstance(raw, Mapping) else [(e.get("label", ""), e) for e in raw]
    out = []
    for label, entry in items:
        if isinstance(entry, Mapping):
            out.append(Headline(str(entry.get("label", label)), fmt_value(entry.get("value")), str(entry.get("detail", ""))))
        else:
            out.append(Headline(str(label), fmt_value(entry)))
    return out


def unit_name(row: Mapping[str, Any], tokens: list[str] | None = None) -> str:
    """A compact unit label: L2H1, L0 pos 3 ' John', L2 N17.

    >>> unit_name({"layer": 2, "head": 1}), unit_name({"layer": 0, "position": 3}, ["a", "b", "c", " John"])
    ('L2H1', "L0 pos 3 ' John'")
    """
    parts = []
    if "layer" in row:
        parts.append(f"L{row['layer']}")
    if "head" in row:
        parts[-1:] = [(parts[-1] if parts else "") + f"H{row['head']}"]
    if "neuron" in row:
        parts.append(f"N{row['neuron']}")
    if "position" in row:
        p = row["position"]
        tok = f" {tokens[p]!r}" if tokens and isinstance(p, int) and 0 <= p < len(tokens) else ""
        parts.append(f"pos {p}{tok}")
    return " ".join(parts)


def largest_effects(table: Any, tokens: list[str] | None = None, k: int = TOP_UNITS,
                    noising: bool = False) -> Headline | None:
    """The k units with the largest |effect| in a unit-indexed table, as one headline line; for
    noising (corrupted into clean: 1 = the unit does not matter) the k smallest effects.

    >>> import polars as pl
    >>> t = pl.DataFrame({"layer": [0, 0, 1], "head": [0, 1, 0], "effect": [0.9, -0.2, 0.5]})
    >>> largest_effects(t, k=2).value, largest_effects(t, k=1, noising=True).label
    ('L0H0  0.9\\nL1H0  0.5', 'smallest effect (noising: low = necessary; of 3 units)')
    """
    if table is None or "effect" not in table.columns or table.height < 2:
        return None
    units = [c for c in UNIT_COLUMNS if c in table.columns and table.schema[c].is_integer()]
    if not units:
        return None
    import polars as pl

    finite = table.filter(pl.col("effect").is_finite())
    top = finite.sort("effect").head(k) if noising else finite.sort(pl.col("effect").abs(), descending=True).head(k)
    text = "\n".join(f"{unit_name(r, tokens)}  {fmt_value(r['effect'])}" for r in top.select(*units, "effect").to_dicts())
    label = ("smallest effect (noising: low = necessary; " if noising else "largest |effect| (") + f"of {table.height:,} units)"
    return Headline(label, text) if text else None


# ---------------------------------------------------------------------------- token labels


def _dataset_and_model(node: Any) -> tuple[Any, Any]:
    """The dataset node a result reads (directly, or through a capture/gradient it reads), and
    the model that dataset was tokenised by."""
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n.key in seen:
            continue
        seen.add(n.key)
        for _, child in n.inputs:
            if child.op == "dataset":
                model = next((c for k, c in child.inputs if k == "model"), None)
                return child, model
            if child.op not in ("model",):
                stack.append(child)
    return None, None


def position_tokens(store: Any, node: Any) -> list[str] | None:
    """Per position, the token most prompts have there (marked with * when prompts differ),
    decoded with the model's tokenizer; None when the result reads no tokenised dataset."""
    ds, model = _dataset_and_model(node)
    if ds is None or model is None or not store.has(ds.key) or not store.has(model.key):
        return None
    try:
        ids = store.get(ds.key, verify=False).tensors.get("clean_ids")
        mask = store.get(ds.key, verify=False).tensors.get("attention_mask")
        path = Path(store.get(model.key, verify=False).data["path"])
        if ids is None:
            return None
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    except Exception:  # noqa: BLE001 - labels are a nicety: no tokenizer.json, no labels
        return None
    rows = ids.tolist()
    live = mask.tolist() if mask is not None else [[1] * len(r) for r in rows]
    out = []
    for p in range(len(rows[0]) if rows else 0):
        counts = Counter(r[p] for r, m in zip(rows, live) if m[p])
        if not counts:
            out.append("")
            continue
        tid, n = counts.most_common(1)[0]
        text = tok.decode([tid], skip_special_tokens=False) or tok.id_to_token(tid) or "?"
        out.append(text + ("*" if n < len(rows) else ""))
    return out


def label_positions(vega_lite: Mapping, tokens: list[str] | None) -> dict:
    """A copy of the spec whose `position` axes read "3 John" (the token at each position)."""
    spec = copy.deepcopy(dict(vega_lite))
    if not tokens:
        return spec
    names = json.dumps([t.strip() or repr(t) for t in tokens])  # " John" reads "3 John"
    expr = f"datum.value + ' ' + ({names}[datum.value] || '')"

    def visit(obj: Any) -> None:
        if isinstance(obj, dict):
            enc = obj.get("encoding")
            if isinstance(enc, dict):
                for ch in ("x", "y"):
                    e = enc.get(ch)
                    if isinstance(e, dict) and e.get("field") == "position" and e.get("type") in ("ordinal", "nominal"):
                        axis = e.get("axis") if isinstance(e.get("axis"), dict) else {}
                        e["axis"] = {**axis, "labelExpr": expr, "labelAngle": -45 if ch == "x" else 0,
                                     "labelLimit": 110}
                        e["title"] = "position (token; * = differs across prompts)"
            for v in obj.values():
                visit(v)
        elif isinstance(obj, list):
            for v in obj:
                visit(v)

    visit(spec)
    return spec


# ---------------------------------------------------------------------------- result points


@dataclass
class ResultPoint:
    """One node of a named result: a sweep point, or the whole result when there is no sweep."""

    name: str  # the statement's name
    label: str  # name, plus "[threshold=0.01]" for a sweep point
    point: dict[str, Any]  # the swept options' values, e.g. {"threshold": 0.01}; {} without a sweep
    node: Any
    chart_nodes: list[Any]
    statement: str
    store: Any
    status: str = "cached"  # "computed" in this run, "cached", or "imported" (from an untrusted pack)
    seconds: float = 0.0  # compute time (for a cache hit: when it was computed)
    _artifact: Any = field(default=None, repr=False)
    _tokens: Any = field(default=False, repr=False)

    @property
    def artifact(self) -> Any:
        if self._artifact is None:
            # graph.needed() checksum-verified every root of the run; don't re-hash here.
            self._artifact = self.store.get(self.node.key, verify=False)
        return self._artifact

    @property
    def table(self) -> Any:
        return main_table(self.artifact)

    @property
    def tokens(self) -> list[str] | None:
        if self._tokens is False:
            self._tokens = position_tokens(self.store, self.node)
        return self._tokens

    def charts(self) -> list[dict]:
        """The result's charts (Vega-Lite), position axes labelled with tokens."""
        out = []
        for c in self.chart_nodes:
            if self.store.has(c.key):
                out.append(label_positions(self.store.get(c.key, verify=False).data["vega_lite"], self.tokens))
        return out

    def headline(self) -> list[Headline]:
        noising = (self.artifact.data or {}).get("direction") == "noising"
        top = largest_effects(self.table, self.tokens, noising=noising)
        return ([top] if top else []) + declared_headline(self.artifact.data or {})

    def empty(self) -> str | None:
        """Why the result is empty, when it is (the operator's words, else a generic line)."""
        why = (self.artifact.data or {}).get("empty")
        if why:
            return str(why)
        t = self.table
        if t is not None and t.height == 0:
            return "The result's table has no rows."
        return None


def gather(plan: Any, store: Any, outcomes: Mapping[str, Any] | None = None) -> list[ResultPoint]:
    """Every result point of the plan, in statement order (needs them in the store)."""
    outcomes = outcomes or {}
    out = []
    for name, res in plan.results.items():
        text = statement_text(plan, res.span)
        for i, node in enumerate(res.nodes):
            # the swept options' values at this point (the other options are the same for all)
            point = {k: res.points[i][k] for k in res.call.sweep} if res.call and res.call.sweep else {}
            label = name + ("" if not point else " [" + ", ".join(f"{k}={point[k]}" for k in res.call.sweep) + "]")
            o = outcomes.get(node.key)
            computed = bool(o and o.status == "computed")
            seconds = o.seconds if computed else float((store.manifest(node.key) or {}).get("seconds", 0.0))
            out.append(ResultPoint(name, label, dict(point), node, res.charts_for(i), text, store,
                                   "computed" if computed else _hit(o), seconds))
    return out


def _hit(outcome: Any) -> str:
    """"imported" for an untrusted pack's entry (engine/pack.py), else "cached"."""
    return "imported" if outcome is not None and outcome.status == "imported" else "cached"


def plan_rows(plan: Any, store: Any, outcomes: Mapping[str, Any]) -> list[dict]:
    """One row per plan node: key, op, label, status, this run's seconds, and for a cache hit the
    seconds it took when it was computed."""
    from mechstudy.engine.explain import node_label

    rows = []
    for n in plan.nodes():
        o = outcomes.get(n.key)
        computed = bool(o and o.status == "computed")
        before = None if computed else (store.manifest(n.key) or {}).get("seconds")
        rows.append({"key": n.key, "op": n.op, "label": node_label(n), "status": "computed" if computed else _hit(o),
                     "seconds": round(o.seconds, 3) if computed else 0.0, "computed_seconds": before})
    return rows


def build_report(plan: Any, store: Any, outcomes: Mapping[str, Any], path: Path, lock: Path | None,
                 run: Mapping[str, Any] | None = None) -> Path:
    """Write the HTML report of a run (see engine/report.py) and return its path.

    `run` describes the run for the header: {"study", "seconds" (wall time until the report),
    "device", ...}; the plan's operator time is added here."""
    from mechstudy.engine.report import write_report

    sections = []
    for rp in gather(plan, store, outcomes):
        charts = rp.charts()
        sections.append({
            "name": rp.label, "result": rp.name, "statement": rp.statement,
            "vega_lite": charts[0] if charts else None, "more_charts": charts[1:],
            "table": rp.table, "status": rp.status, "seconds": rp.seconds,
            "headline": rp.headline(), "empty": rp.empty(),
        })
    rows = plan_rows(plan, store, outcomes)
    return write_report(path, title=plan.study.title, sections=sections, plan_rows=rows,
                        lock=lock.read_text() if lock else None, run=dict(run or {}))

