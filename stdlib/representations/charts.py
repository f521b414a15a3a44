"""Chart kinds of the representation operators: text with tokens shaded by activation
(`examples`), token x token attention maps with token labels (`attention`).

Both are sized to their content so the report shows them legibly: tokens are laid out in a
monospace font with their real widths, one example per line; attention cells are 18-28 px with
each query and key token written on its axis.

>>> import polars as pl
>>> from mechstudy.engine.spec import Artifact
>>> t = pl.DataFrame({"neuron": [3], "group": ["top"], "band": [-1], "rank": [0], "activation": [2.0],
...                   "at": [1], "tokens": [["The", " cat", " sat"]], "acts": [[0.0, 2.0, 1.0]]})
>>> spec = render_examples(Artifact(tables={"examples": t}), None)
>>> [v["token"] for v in spec["datasets"]["examples"]], [v["example"] for v in spec["datasets"]["examples"]]
(['The', 'cat', 'sat'], [False, True, False])
"""

from __future__ import annotations

import math
from typing import Any

import altair as alt
import polars as pl

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact

CHAR_PX = 7.3  # width of one character of the 12 px monospace font the tokens are drawn in
LINE_PX = 22
UNIT_LABELS = (("layer", "L"), ("head", "H"), ("neuron", " N"), ("feature", "F"), ("unit", "#"), ("direction", " "))


def unit_label(row: dict[str, Any], keys: list[str]) -> str:
    """A short name for a unit from its identifying columns: "L2 N17", "F12", "#3".

    >>> unit_label({"layer": 2, "neuron": 17}, ["layer", "neuron"]), unit_label({"feature": 12}, ["feature"])
    ('L2 N17', 'F12')
    """
    parts = []
    for k, prefix in UNIT_LABELS:
        if k in keys:
            parts.append(f"{prefix}{row[k]}")
    return "".join(parts).strip() or " ".join(f"{k}={row[k]}" for k in keys)


def _empty(reason: str, title: str | None) -> dict:
    from mechstudy.stdlib.charts import empty_chart

    return empty_chart(reason, title)


def _inline(spec_dict: dict, name: str, values: list[dict]) -> dict:
    """Attach the values of the named dataset `name` to a finished spec. Altair validates inline
    data against the Vega-Lite schema value by value (a minute for a few thousand cells), so the
    charts here are built on a named dataset and its values added afterwards as top-level datasets."""
    spec_dict.setdefault("datasets", {})[name] = values
    return spec_dict


def _shown(token: str) -> tuple[str, int]:
    """(the text drawn for a token, its width in characters): leading spaces become width, newlines a ⏎."""
    text = token.replace("\n", "⏎").replace("\t", " ")
    lead = len(text) - len(text.lstrip(" "))
    return text.strip(" "), max(1, len(text)) if text.strip(" ") else max(1, lead)


def token_row(line: str, tokens: list[str], acts: list[float], at: int, peak: float) -> list[dict]:
    """One example drawn as a row of token boxes (an `examples` chart's line): x extents, the shown
    text, the activation and its shade (act / peak), and which box is the example's token."""
    out, x = [], 0.0
    for j, (tok, act) in enumerate(zip(tokens, acts)):
        text, width = _shown(tok)
        w = width * CHAR_PX + 4
        out.append({"line": line, "x0": x, "x1": x + w, "tx": x + 2 + (width - len(text)) * CHAR_PX,
                    "token": text, "activation": act, "shade": act / peak, "example": j == at})
        x += w
    return out


@spec.chart("examples")
def render_examples(artifact: Artifact, title: str | None) -> dict:
    """Top-activating examples, one per line, each token shaded by the unit's activation on it
    (relative to the unit's maximum) and the example's own token outlined. Hints: ``units``
    (how many units, default 4), ``per_unit`` (examples each, default 6), ``group`` ("top")."""
    hints = dict((artifact.data or {}).get("chart") or {})
    title = title or hints.get("title")
    df = (artifact.tables or {}).get("examples")
    if df is None or df.height == 0:
        return _empty((artifact.data or {}).get("empty") or "No examples: the units never saw a token.", title)
    keys = list(df.columns[: df.columns.index("group")])
    df = df.filter(pl.col("group") == hints.get("group", "top"))
    n_units, per_unit = int(hints.get("units", 4)), int(hints.get("per_unit", 6))
    order = df.select(keys).unique(maintain_order=True).head(n_units)
    values: list[dict[str, Any]] = []
    lines: list[str] = []
    widest = 0.0
    for unit in order.iter_rows(named=True):
        sub = df.filter(pl.all_horizontal([pl.col(k) == v for k, v in unit.items()])).sort("rank").head(per_unit)
        peak = max([abs(a) for acts in sub["acts"].to_list() for a in acts] + [1e-12])
        name = unit_label(unit, keys)
        for ex in sub.iter_rows(named=True):
            line = f"{name}  #{ex['rank'] + 1}  {ex['activation']:.3g}"
            lines.append(line)
            row = token_row(line, ex["tokens"], ex["acts"], ex["at"], peak)
            values += row
            widest = max(widest, row[-1]["x1"] if row else 0.0)
    if not values:
        return _empty("No examples to draw.", title)
    base = alt.Chart(alt.NamedData(name="examples"))
    y = alt.Y("line", type="ordinal", sort=lines, title=None, axis=alt.Axis(labelFontSize=12, labelLimit=240))
    rect = base.mark_rect(stroke="#fff", strokeWidth=1).encode(
        x=alt.X("x0", type="quantitative", axis=None, scale=alt.Scale(domain=[0, widest], nice=False)),
        x2="x1", y=y,
        color=alt.Color("shade", type="quantitative", title="activation / unit max",
                        scale=alt.Scale(scheme="orangered", domain=[0, 1], clamp=True), legend=alt.Legend(format=".1f")),
        tooltip=[alt.Tooltip("token", type="nominal"), alt.Tooltip("activation", type="quantitative", format=".4g")])
    ring = base.transform_filter("datum.example").mark_rect(fill=None, stroke="#111", strokeWidth=2).encode(
        x=alt.X("x0", type="quantitative"), x2="x1", y=y)
    text = base.mark_text(align="left", baseline="middle", font="monospace", fontSize=12, color="#111").encode(
        x=alt.X("tx", type="quantitative"), y=y, text=alt.Text("token", type="nominal"))
    chart = alt.layer(rect, ring, text).properties(width=min(max(widest, 200), 900), height=LINE_PX * len(lines))
    if title:
        chart = chart.properties(title=title)
    return _inline(chart.configure_view(stroke=None).to_dict(), "examples", values)


@spec.chart("attention")
def render_attention(artifact: Artifact, title: str | None) -> dict:
    """Token x token attention patterns (query down, key across), one panel per head, with each
    token written on the axes. Reads the ``maps`` table (layer, head, prompt, query, key, weight,
    query_token, key_token); hints ``prompt`` (which prompt, default the first) and ``heads``
    (how many panels, default 8). Cells are 12-24 px, panels wrap to fit the report's width."""
    hints = dict((artifact.data or {}).get("chart") or {})
    title = title or hints.get("title")
    df = (artifact.tables or {}).get("maps")
    if df is None or df.height == 0:
        return _empty("No attention maps in this result.", title)
    prompt = hints.get("prompt", int(df["prompt"].min()))
    df = df.filter(pl.col("prompt") == prompt)
    panels = df.select("layer", "head").unique(maintain_order=True).head(int(hints.get("heads", 8)))
    df = df.join(panels, on=["layer", "head"], how="semi")
    n = int(df["query"].max()) + 1
    tokens = df.filter(pl.col("query") == 0).sort("key").select("key", "key_token").unique(maintain_order=True)
    words = {int(k): t for k, t in tokens.iter_rows()} | {
        int(q): t for q, t in df.select("query", "query_token").unique().iter_rows()}
    labels = [f"{i} {words.get(i, '').replace(chr(10), '⏎')}" for i in range(n)]
    cell = max(12, min(24, 390 // max(n, 1)))  # two panels side by side when the prompt is short enough
    per_row = max(1, 1000 // (cell * n + 110))
    values = [{"panel": f"layer {l}, head {h}", "q": labels[q], "k": labels[k], "w": round(float(w), 4)}
              for l, h, q, k, w in df.select("layer", "head", "query", "key", "weight").iter_rows()
              if w == w]
    order = [f"layer {l}, head {h}" for l, h in panels.iter_rows()]
    base = alt.Chart(alt.NamedData(name="attention")).mark_rect().encode(
        x=alt.X("k", type="ordinal", sort=labels, title="key",
                axis=alt.Axis(labelAngle=-60, labelFontSize=11, labelLimit=90)),
        y=alt.Y("q", type="ordinal", sort=labels, title="query", axis=alt.Axis(labelFontSize=11, labelLimit=90)),
        color=alt.Color("w", type="quantitative", scale=alt.Scale(scheme="blues", domain=[0, 1]),
                        legend=alt.Legend(format=".1f", title="attention")),
        tooltip=[alt.Tooltip("panel", type="nominal"), alt.Tooltip("q", type="nominal", title="query"),
                 alt.Tooltip("k", type="nominal", title="key"),
                 alt.Tooltip("w", type="quantitative", format=".3f", title="weight")],
    ).properties(width=cell * n, height=cell * n)
    chart = base.facet(facet=alt.Facet("panel", type="nominal", sort=order, title=None), columns=per_row)
    if title:
        chart = chart.properties(title=title)
    return _inline(chart.configure_view(stroke=None).to_dict(), "attention", values)
