"""Chart kinds of feature dashboards (`dashboard ...` results): `features` (per feature, Neuronpedia
style: top examples with every token shaded by the feature's activation, interval samples, the
activation histogram, the tokens its decoder promotes and suppresses), `feature_map` (decoder
directions in 2-D, searchable) and `feature_table` (every feature, searchable by token or
explanation).

They read the dashboard's tables: "result" (one row per feature), "examples", "histogram",
"logits". Search boxes are Vega-Lite parameters bound to an input, so they work in the offline
report. Data go in as named datasets (attached after Altair builds the spec: it validates inline
values one by one, which takes minutes for thousands of tokens).

>>> import polars as pl
>>> from mechstudy.engine.spec import Artifact
>>> r = pl.DataFrame({"feature": [0, 1], "density": [0.01, 0.0], "max": [2.0, 0.0], "top_tokens": ["' a' x3", ""],
...                   "x": [0.1, -0.2], "y": [0.3, 0.0]})
>>> spec = render_feature_map(Artifact(tables={"result": r}), None)
>>> len(spec["datasets"]["features"]), spec["params"][0]["name"]
(2, 'search')
"""

from __future__ import annotations

import math
from typing import Any

import altair as alt
import polars as pl

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact
from mechstudy.stdlib.charts import empty_chart
from mechstudy.stdlib.representations.charts import LINE_PX, token_row

SEARCH_FIELDS = ("top_tokens", "promotes", "explanation")


def _hints(artifact: Artifact) -> dict:
    return dict((artifact.data or {}).get("chart") or {})


def _search_param() -> Any:
    return alt.param(name="search", value="",
                     bind=alt.binding(input="search", placeholder="a token, a word of an explanation, or F12",
                                      name="find features: "))


def _search_expr(fields: list[str]) -> str:
    text = " + ' ' + ".join(f"(datum.{f} || '')" for f in fields)
    return f"search == '' || test(regexp(search, 'i'), 'F' + datum.feature + ' ' + {text})"


def shown_features(result: pl.DataFrame, n: int, order: str = "density") -> list[int]:
    """The features a dashboard chart draws: alive and not dense (density in (0, 0.1]), most
    frequent first (order "density") or strongest first ("max"); any alive ones when none are.

    >>> shown_features(pl.DataFrame({"feature": [0, 1, 2, 3], "density": [0.0, 0.5, 0.02, 0.05],
    ...                              "max": [0.0, 9.0, 3.0, 1.0]}), 2)
    [3, 2]
    """
    alive = result.filter(pl.col("density") > 0)
    pick = alive.filter(pl.col("density") <= 0.1)
    pick = pick if pick.height else alive
    col = order if order in pick.columns else "density"
    return pick.sort([col, "feature"], descending=[True, False]).head(n)["feature"].to_list()


def _example_values(sub: pl.DataFrame, prefix: str) -> tuple[list[dict], list[str], float]:
    """Token boxes of some examples, one line each (see `examples` in stdlib/representations/charts.py)."""
    peak = max([abs(a) for acts in sub["acts"].to_list() for a in acts] + [1e-12])
    values, lines, widest = [], [], 0.0
    for e in sub.iter_rows(named=True):
        label = f"{prefix}{e['rank'] + 1}  {e['activation']:.3g}" if e["group"] == "top" else \
            f"band {e['band'] + 1}  {e['activation']:.3g}"
        line = f"{label} ({e['row']}:{e['position']})"
        lines.append(line)
        row = token_row(line, e["tokens"], e["acts"], e["at"], peak)
        values += row
        widest = max(widest, row[-1]["x1"] if row else 0.0)
    return values, lines, widest


def _examples_chart(name: str, lines: list[str], widest: float, title: str) -> alt.LayerChart:
    base = alt.Chart(alt.NamedData(name=name))
    y = alt.Y("line", type="ordinal", sort=lines, title=None, axis=alt.Axis(labelFontSize=11, labelLimit=200))
    rect = base.mark_rect(stroke="#fff", strokeWidth=1).encode(
        x=alt.X("x0", type="quantitative", axis=None, scale=alt.Scale(domain=[0, max(widest, 1)], nice=False)),
        x2="x1", y=y,
        color=alt.Color("shade", type="quantitative", title="activation / max",
                        scale=alt.Scale(scheme="orangered", domain=[0, 1], clamp=True), legend=None),
        tooltip=[alt.Tooltip("token", type="nominal"), alt.Tooltip("activation", type="quantitative", format=".4g")])
    ring = base.transform_filter("datum.example").mark_rect(fill=None, stroke="#111", strokeWidth=1.5).encode(
        x=alt.X("x0", type="quantitative"), x2="x1", y=y)
    text = base.mark_text(align="left", baseline="middle", font="monospace", fontSize=12, color="#111").encode(
        x=alt.X("tx", type="quantitative"), y=y, text=alt.Text("token", type="nominal"))
    return alt.layer(rect, ring, text).properties(width=min(max(widest, 240), 640), height=LINE_PX * len(lines),
                                                  title=title)


@spec.chart("features")
def render_features(artifact: Artifact, title: str | None) -> dict:
    """Feature dashboards, one block per feature: its top examples and interval samples (tokens shaded
    by the feature's activation, the example's own token outlined), the histogram of its non-zero
    activations, and the tokens its decoder direction promotes (+) and suppresses (-). Hints:
    ``show`` (features drawn, default 6), ``order`` ("density" or "max"), ``per_unit`` (top
    examples each, default 6), ``intervals`` (interval samples each, default 4)."""
    tables, hints = artifact.tables or {}, _hints(artifact)
    title = title or hints.get("title")
    result, exs = tables.get("result"), tables.get("examples")
    if result is None or exs is None or exs.height == 0:
        return empty_chart((artifact.data or {}).get("empty") or "No feature fired on the corpus.", title)
    hist, logits = tables.get("histogram"), tables.get("logits")
    shown = shown_features(result, int(hints.get("show", 6)), str(hints.get("order", "density")))
    info = {r["feature"]: r for r in result.to_dicts()}
    blocks, datasets = [], {}
    for f in shown:
        r = info[f]
        sub = exs.filter(pl.col("feature") == f)
        top = sub.filter(pl.col("group") == "top").sort("rank").head(int(hints.get("per_unit", 6)))
        iv = sub.filter(pl.col("group") == "interval").sort(["band", "rank"], descending=[True, False])
        iv = iv.head(int(hints.get("intervals", 4)))
        vals, lines, widest = _example_values(pl.concat([top, iv]) if iv.height else top, "#")
        datasets[f"ex{f}"] = vals
        left = _examples_chart(f"ex{f}", lines, widest, "top examples, then interval samples")
        right = []
        if hist is not None:
            h = hist.filter((pl.col("feature") == f) & (pl.col("count") > 0))
            datasets[f"h{f}"] = [{"lo": a, "hi": b, "count": c} for a, b, c in h.select("lo", "hi", "count").iter_rows()]
            right.append(alt.Chart(alt.NamedData(name=f"h{f}")).mark_bar(color="#dd6b20").encode(
                x=alt.X("lo", type="quantitative", bin="binned", title="activation (non-zero)"), x2="hi",
                y=alt.Y("count", type="quantitative", title="tokens"),
                tooltip=[alt.Tooltip("lo", type="quantitative", format=".3g"),
                         alt.Tooltip("count", type="quantitative")]).properties(width=230, height=90,
                                                                                  title="activation histogram"))
        if logits is not None and logits.height:
            lg = logits.filter(pl.col("feature") == f).sort("weight", descending=True)
            lg = pl.concat([lg.filter(pl.col("sign") == "+").head(5), lg.filter(pl.col("sign") == "-").sort("weight").head(5)])
            order = [f"{t!r}" for t in lg["token"].to_list()]
            datasets[f"l{f}"] = [{"token": repr(t), "weight": w} for t, w in lg.select("token", "weight").iter_rows()]
            right.append(alt.Chart(alt.NamedData(name=f"l{f}")).mark_bar().encode(
                y=alt.Y("token", type="nominal", sort=order, title=None, axis=alt.Axis(labelLimit=120)),
                x=alt.X("weight", type="quantitative", title="logit weight"),
                color=alt.condition("datum.weight > 0", alt.value("#2b6cb0"), alt.value("#c53030")),
                tooltip=[alt.Tooltip("token", type="nominal"), alt.Tooltip("weight", type="quantitative", format=".3g")],
            ).properties(width=230, height=14 * len(order), title="promotes (+) / suppresses (-)"))
        dens = r["density"]
        head = (f"F{f}   density {dens:.3%}   max {r['max']:.3g}   top tokens {r.get('top_tokens') or '-'}"
                + (f"   explanation: {r['explanation']}" if r.get("explanation") else ""))
        block = alt.hconcat(left, alt.vconcat(*right)) if right else left
        blocks.append(block.properties(title=alt.TitleParams(head, anchor="start", fontSize=13)))
    chart = alt.vconcat(*blocks, spacing=28).resolve_scale(color="independent")
    if title:
        chart = chart.properties(title=title)
    out = chart.to_dict()
    out.setdefault("datasets", {}).update(datasets)
    return out


def _features_table(artifact: Artifact) -> pl.DataFrame | None:
    t = (artifact.tables or {}).get("result")
    return t if t is not None and "feature" in t.columns else None


@spec.chart("feature_map")
def render_feature_map(artifact: Artifact, title: str | None) -> dict:
    """The dictionary's decoder directions in 2-D (table "result": feature, x, y, density, max,
    top_tokens, ...), coloured by log10 density; a search box highlights the features whose top
    tokens, promoted tokens or explanation match."""
    df = _features_table(artifact)
    title = title or "Decoder directions (first two principal components), coloured by log10 density"
    if df is None or df.height == 0 or "x" not in df.columns:
        return empty_chart("No features to map.", title)
    fields = [c for c in SEARCH_FIELDS if c in df.columns]
    keep = ["feature", "x", "y", "density", "max", *fields]
    values = []
    for r in df.select(keep).to_dicts():
        r["log10_density"] = math.log10(r["density"]) if r["density"] and r["density"] > 0 else -8.0
        values.append({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()})
    match = _search_expr(fields)
    pts = alt.Chart(alt.NamedData(name="features")).mark_circle(size=36).encode(
        x=alt.X("x", type="quantitative", title="PC 1", scale=alt.Scale(zero=False)),
        y=alt.Y("y", type="quantitative", title="PC 2", scale=alt.Scale(zero=False)),
        color=alt.Color("log10_density", type="quantitative", title="log10 density (-8: dead)",
                        scale=alt.Scale(scheme="viridis")),
        opacity=alt.condition(match, alt.value(0.95), alt.value(0.08)),
        tooltip=[alt.Tooltip("feature", type="quantitative"), alt.Tooltip("density", type="quantitative", format=".3%"),
                 alt.Tooltip("max", type="quantitative", format=".3g"),
                 *[alt.Tooltip(f, type="nominal") for f in fields]],
    ).add_params(_search_param()).properties(width=560, height=420, title=title)
    out = pts.to_dict()
    out.setdefault("datasets", {})["features"] = values
    return out


@spec.chart("feature_table")
def render_feature_table(artifact: Artifact, title: str | None) -> dict:
    """Every feature as a row (table "result"), most frequent first, filtered as you type in the
    search box (matched against "F12", its top tokens, promoted tokens and explanation); the first
    `rows` matches are shown (hint, default 40)."""
    df = _features_table(artifact)
    title = title or "Features (type to filter)"
    if df is None or df.height == 0:
        return empty_chart("No features.", title)
    cols = [c for c in ("feature", "density", "max", "top_tokens", "promotes", "explanation", "score") if c in df.columns]
    widths = {"feature": 60, "density": 80, "max": 60, "top_tokens": 300, "promotes": 260, "explanation": 320,
              "score": 60}
    df = df.sort(["density", "feature"], descending=[True, False])
    values = []
    for r in df.select(cols).to_dicts():
        row = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
        row["density_text"] = f"{r['density']:.3%}" if r.get("density") is not None else ""
        row["max_text"] = f"{r['max']:.3g}" if r.get("max") is not None else ""
        if "score" in r:
            row["score_text"] = "" if r["score"] is None or not math.isfinite(r["score"]) else f"{r['score']:.2f}"
        values.append(row)
    n = int(_hints(artifact).get("rows", 40))
    fields = [c for c in SEARCH_FIELDS if c in df.columns]
    base = alt.Chart(alt.NamedData(name="table")).transform_filter(_search_expr(fields)).transform_window(
        row="row_number()").transform_filter(f"datum.row <= {n}")
    text_of = {"feature": "'F' + datum.feature", "density": "datum.density_text", "max": "datum.max_text",
               "score": "datum.score_text"}
    layers, x = [], 0
    for c in cols:
        layers.append(base.transform_calculate(cell=text_of.get(c, f"datum.{c} || ''")).mark_text(
            align="left", baseline="middle", fontSize=11, limit=widths[c] - 8).encode(
            y=alt.Y("row", type="ordinal", axis=None), text=alt.Text("cell", type="nominal"),
            x=alt.value(x), tooltip=[alt.Tooltip(f, type="nominal") for f in fields]))
        x += widths[c]
    header = alt.Chart(alt.Data(values=[{"c": c, "x": sum(widths[k] for k in cols[:i])} for i, c in enumerate(cols)])
                       ).mark_text(align="left", fontWeight="bold", fontSize=11, dy=-10).encode(
        x=alt.X("x", type="quantitative", axis=None, scale=alt.Scale(domain=[0, x], range=[0, x])),
        text=alt.Text("c", type="nominal"), y=alt.value(0))
    table = alt.layer(*layers).properties(width=x, height=18 * min(n, df.height))
    chart = alt.vconcat(header.properties(width=x, height=8), table, spacing=2).add_params(_search_param())
    out = chart.properties(title=title).to_dict()
    out.setdefault("datasets", {})["table"] = values
    return out
