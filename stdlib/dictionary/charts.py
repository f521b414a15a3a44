"""Chart kinds of dictionary learning: training curves (`loss_curve`), the feature-density histogram
(`density`), and attribution graphs drawn over the prompt's tokens (`attribution`).

Each reads named tables of its artifact (below) and returns a Vega-Lite spec; the report renders
any spec. Data are inline and small: histograms are binned here, not in the browser.

>>> import polars as pl
>>> from mechstudy.engine.spec import Artifact
>>> h = pl.DataFrame({"step": [10, 20], "loss": [2.0, 1.0], "mse": [1.5, 0.8], "fvu": [0.5, 0.2],
...                   "l0": [30.0, 16.0], "dead_fraction": [0.0, 0.1]})
>>> spec = render_loss_curve(Artifact(tables={"history": h}), None)
>>> [c["title"] for c in spec["hconcat"]]
['FVU (training batches)', 'L0 (active features per token)', 'dead fraction', 'loss']
"""

from __future__ import annotations

import json
import math
from typing import Any

import altair as alt
import polars as pl

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact
from mechstudy.stdlib.charts import empty_chart

CURVES = (("fvu", "FVU (training batches)", True), ("l0", "L0 (active features per token)", False),
          ("dead_fraction", "dead fraction", False), ("loss", "loss", True))


def _hints(artifact: Artifact) -> dict:
    return dict((artifact.data or {}).get("chart") or {})


@spec.chart("loss_curve")
def render_loss_curve(artifact: Artifact, title: str | None) -> dict:
    """A dictionary's training curves, one panel each: FVU and loss (log scale), L0 and the dead
    fraction, against the step. Reads table "history" (step, fvu, l0, dead_fraction, loss)."""
    hist = (artifact.tables or {}).get("history")
    title = title or _hints(artifact).get("title")
    if hist is None or hist.height == 0:
        return empty_chart("No training history: the dictionary took no steps.", title)
    rows = hist.to_dicts()
    panels = []
    for col, label, log in CURVES:
        if col not in hist.columns:
            continue
        vals = [{"step": r["step"], "value": r[col]} for r in rows
                if r[col] is not None and math.isfinite(r[col]) and (r[col] > 0 or not log)]
        scale = alt.Scale(type="log") if log else alt.Scale(zero=True)
        panels.append(alt.Chart(alt.Data(values=vals)).mark_line(point=len(vals) <= 40).encode(
            x=alt.X("step", type="quantitative", title="step"),
            y=alt.Y("value", type="quantitative", title=col, scale=scale),
            tooltip=[alt.Tooltip("step", type="quantitative"), alt.Tooltip("value", type="quantitative", format=".4g")],
        ).properties(width=210, height=180, title=label))
    chart = alt.hconcat(*panels)
    if title:
        chart = chart.properties(title=title)
    return chart.to_dict()


def density_bins(density: list[float], bins: int = 30, lo: float = -7.0) -> tuple[list[dict], int]:
    """Histogram of log10(density) over [lo, 0] in `bins` equal bins (features below 10^lo fall in
    the first) and the count of dead features (density 0), which a log axis cannot show.

    >>> rows, dead = density_bins([0.0, 1e-3, 1e-3, 0.5], bins=7)
    >>> dead, [r["count"] for r in rows if r["count"]]
    (1, [2, 1])
    """
    width = -lo / bins
    counts = [0] * bins
    dead = 0
    for d in density:
        if d is None or not d > 0:
            dead += 1
            continue
        i = min(bins - 1, max(0, int((math.log10(d) - lo) // width)))
        counts[i] += 1
    return [{"lo": lo + i * width, "hi": lo + (i + 1) * width, "count": c} for i, c in enumerate(counts)], dead


@spec.chart("density")
def render_density(artifact: Artifact, title: str | None) -> dict:
    """The feature-density histogram: log10 of each feature's firing frequency (from the table
    "density": feature, density), with dead features as a separate bar and the dense threshold
    (a tenth of all tokens) marked."""
    table = (artifact.tables or {}).get("density")
    title = title or _hints(artifact).get("title") or "Feature density (log10 of the fraction of tokens it fires on)"
    if table is None or table.height == 0:
        return empty_chart("No features to count.", title)
    rows, dead = density_bins(table["density"].to_list())
    bars = alt.Chart(alt.Data(values=rows)).mark_bar(color="#2b6cb0").encode(
        x=alt.X("lo", type="quantitative", bin="binned", title="log10 density", scale=alt.Scale(domain=[-7, 0])),
        x2="hi", y=alt.Y("count", type="quantitative", title="features"),
        tooltip=[alt.Tooltip("lo", type="quantitative", format=".2f", title="from"),
                 alt.Tooltip("hi", type="quantitative", format=".2f", title="to"),
                 alt.Tooltip("count", type="quantitative")])
    dense = alt.Chart(alt.Data(values=[{"x": -1.0}])).mark_rule(color="#c53030", strokeDash=[4, 3]).encode(
        x=alt.X("x", type="quantitative"), tooltip=[alt.Tooltip("x", type="quantitative", title="dense above")])
    hist = alt.layer(bars, dense).properties(width=460, height=240)
    dead_bar = alt.Chart(alt.Data(values=[{"what": "dead", "count": dead}])).mark_bar(color="#718096").encode(
        x=alt.X("what", type="nominal", title=None), y=alt.Y("count", type="quantitative", title="features"),
        tooltip=[alt.Tooltip("count", type="quantitative", title="dead features")]).properties(width=40, height=240)
    return alt.hconcat(dead_bar, hist).properties(title=title).to_dict()


KIND_COLOURS = {"embedding": "#4a5568", "feature": "#dd6b20", "error": "#a0aec0", "logit": "#2f855a"}
KIND_SHAPES = {"embedding": "square", "feature": "circle", "error": "diamond", "logit": "triangle-up"}


@spec.chart("attribution")
def render_attribution(artifact: Artifact, title: str | None) -> dict:
    """An attribution graph over the prompt: nodes at (token position, layer) (embeddings at -1,
    logits above the last layer; several nodes of one cell in a small grid), edges as lines whose
    width is their share of the target's input and colour their sign. Reads tables "nodes" (node,
    kind, layer, position, token, label, influence) and "edges" (src, dst, weight). Drawn: the
    `features` most influential features (hint, default 24), the logits, and the `edges` strongest
    edges among them (by share of their target's input; hint, default 150) with the embeddings and
    error nodes they need; the tables hold the whole pruned graph."""
    tables, hints = artifact.tables or {}, _hints(artifact)
    nodes, edges = tables.get("nodes"), tables.get("edges")
    title = title or hints.get("title")
    if nodes is None or edges is None or edges.height == 0:
        return empty_chart((artifact.data or {}).get("empty") or "The pruned graph has no edges.", title)
    n_feat_all = int((nodes["kind"] == "feature").sum())
    feats = nodes.filter(pl.col("kind") == "feature").sort("influence", descending=True).head(int(hints.get("features", 24)))
    core = set(feats["node"]) | set(nodes.filter(pl.col("kind") == "logit")["node"])
    e = edges.filter(pl.col("dst").is_in(list(core)))
    e = e.with_columns((pl.col("weight").abs() / pl.col("weight").abs().sum().over("dst")).alias("share"))
    e = e.filter(pl.col("src").is_in(list(core)) | pl.col("src").str.starts_with("emb") | pl.col("src").str.starts_with("err"))
    e = e.sort("share", descending=True).head(int(hints.get("edges", 150)))
    drawn = core | set(e["src"]) | set(nodes.filter(pl.col("kind") == "embedding")["node"])
    nodes = nodes.filter(pl.col("node").is_in(list(drawn)))
    nodes = nodes.sort(["layer", "position", "influence"], descending=[False, False, True])
    per_row = 5
    nodes = nodes.with_columns(pl.int_range(pl.len()).over(["layer", "position"]).alias("_i"),
                               pl.len().over(["layer", "position"]).alias("_n"))
    nodes = nodes.with_columns(
        (pl.col("position") + ((pl.col("_i") % per_row) - (pl.col("_n").clip(upper_bound=per_row) - 1) / 2) * 0.17).alias("x"),
        (pl.col("layer").cast(pl.Float64) + (pl.col("_i") // per_row) * 0.2).alias("y"))
    pos = {r["node"]: (r["x"], r["y"]) for r in nodes.select("node", "x", "y").to_dicts()}
    evals = []
    for r in e.to_dicts():
        (x, y), (x2, y2) = pos[r["src"]], pos[r["dst"]]
        evals.append({"x": x, "y": y, "x2": x2, "y2": y2, "weight": r["weight"], "share": r["share"],
                      "sign": "positive" if r["weight"] >= 0 else "negative", "src": r["src"], "dst": r["dst"]})
    tokens = nodes.filter(pl.col("kind") == "embedding").sort("position").select("position", "token").to_dicts()
    labels = {int(t["position"]): f"{t['position']} {t['token'].strip() or repr(t['token'])}" for t in tokens}
    n_pos = max(labels) + 1 if labels else int(nodes["position"].max()) + 1
    names = [labels.get(i, str(i)) for i in range(n_pos)]
    label_expr = f"({json.dumps(names)})[round(datum.value)] || ''"
    y_min, y_max = float(nodes["y"].min()), float(nodes["y"].max())
    xs = alt.Scale(domain=[-0.6, n_pos - 0.4], nice=False)
    ys = alt.Scale(domain=[y_min - 0.4, y_max + 0.5], nice=False)
    rules = alt.Chart(alt.Data(values=evals)).mark_rule(opacity=0.6).encode(
        x=alt.X("x", type="quantitative", scale=xs, title="token",
                axis=alt.Axis(values=list(range(n_pos)), labelExpr=label_expr, labelAngle=-40, grid=False)),
        y=alt.Y("y", type="quantitative", scale=ys, title="layer (-1: embeddings; top: logits)",
                axis=alt.Axis(tickMinStep=1, grid=False)),
        x2="x2", y2="y2",
        strokeWidth=alt.StrokeWidth("share", type="quantitative", scale=alt.Scale(range=[0.3, 5], domain=[0, 1]),
                                    title="share of the target's input"),
        color=alt.Color("sign", type="nominal", scale=alt.Scale(domain=["positive", "negative"],
                                                                range=["#3182ce", "#e53e3e"]), title="edge"),
        tooltip=[alt.Tooltip("src", type="nominal"), alt.Tooltip("dst", type="nominal"),
                 alt.Tooltip("weight", type="quantitative", format=".3g"),
                 alt.Tooltip("share", type="quantitative", format=".2f")])
    nvals = [{k: r[k] for k in ("node", "kind", "x", "y", "label", "influence", "token", "activation")}
             for r in nodes.to_dicts()]
    dots = alt.Chart(alt.Data(values=nvals)).mark_point(size=150, filled=True, opacity=1).encode(
        x=alt.X("x", type="quantitative", scale=xs), y=alt.Y("y", type="quantitative", scale=ys),
        shape=alt.Shape("kind", type="nominal", scale=alt.Scale(domain=list(KIND_SHAPES), range=list(KIND_SHAPES.values())),
                        title="node"),
        fill=alt.Fill("kind", type="nominal", scale=alt.Scale(domain=list(KIND_COLOURS), range=list(KIND_COLOURS.values())),
                      title="node"),
        tooltip=[alt.Tooltip("label", type="nominal"), alt.Tooltip("kind", type="nominal"),
                 alt.Tooltip("token", type="nominal"), alt.Tooltip("activation", type="quantitative", format=".3g"),
                 alt.Tooltip("influence", type="quantitative", format=".3g")])
    top = sorted((v for v in nvals if v["kind"] == "feature"), key=lambda v: -(v["influence"] or 0))[:int(hints.get("labels", 10))]
    text = alt.Chart(alt.Data(values=top + [v for v in nvals if v["kind"] == "logit"])).mark_text(
        dy=-12, fontSize=10, color="#1a202c").encode(
        x=alt.X("x", type="quantitative", scale=xs), y=alt.Y("y", type="quantitative", scale=ys),
        text=alt.Text("label", type="nominal"))
    note = (f"drawn: the {feats.height} most influential of {n_feat_all} kept features and {len(evals)} of "
            f"{edges.height} kept edges (the strongest inputs of each); the tables hold the whole pruned graph")
    chart = alt.layer(rules, dots, text).resolve_scale(color="independent").properties(
        width=min(980, max(360, 120 * n_pos)), height=min(640, max(260, 130 * (y_max - y_min + 1))))
    chart = chart.properties(title=alt.TitleParams(title or "Attribution graph", subtitle=note))
    return chart.to_dict()
