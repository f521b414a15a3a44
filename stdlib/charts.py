"""Chart kinds: `plot NAME as KIND`, each `render(artifact, title) -> dict` (a Vega-Lite spec).

The chart-table convention, which keeps every chart generic over every operator:

- A chart reads the artifact's main table, ``artifact.tables["result"]`` (operators name
  their main table "result"; an artifact with exactly one table may name it anything).
  The ``graph`` kind reads ``tables["nodes"]`` (node, layer, optional index) and
  ``tables["edges"]`` (src, dst, weight) instead.
- ``artifact.data["chart"]``, when present, is a dict of hints, all optional:
  ``{"x": col, "y": col, "value": col, "color": col, "label": col, "facet": col,
  "title": str}``. A hint names a column; without hints each kind picks its columns:

  =========  ===================================================================
  heatmap    y = ``layer``; x = ``head`` if present, else ``position``;
             colour = ``value`` hint, else ``effect``, else the one other numeric
             column; white at 0, spanning the data (`colour_scale`).
  line       x = ``layer`` (else the first numeric column); y = ``effect`` (else
             the next numeric column); colour by ``series`` if present.
  bar        x = the first non-numeric column (else the first column); y as line.
  histogram  x = ``value`` / ``x`` hint, else ``effect``, else the first numeric.
  scatter    x, y = the first two numeric columns; optional colour and text label;
             hint ``"diagonal": true`` draws y = x (e.g. AtP vs activation patching).
  graph      nodes at (layer, index within layer); edges as rules whose width is
             ``|weight|`` and whose colour is the weight's sign.
  =========  ===================================================================

- The title is the ``title`` argument (from the ``plot`` statement), else the hint's.
- Data is always inline (``values``), never a URL, so a spec renders offline; NaN and
  infinities become null (JSON has no NaN). List and struct columns are left out.

>>> import polars as pl
>>> from mechstudy.engine.spec import Artifact
>>> t = pl.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "effect": [0.5, -1.0, 0.0, 2.0]})
>>> spec = render_heatmap(Artifact(tables={"result": t}), "demo")
>>> cells, values = spec["layer"]  # a grid this small also prints each cell's value
>>> cells["mark"]["type"], cells["encoding"]["x"]["field"], cells["encoding"]["y"]["field"], values["mark"]["type"]
('rect', 'head', 'layer', 'text')
>>> cells["encoding"]["color"]["scale"]["domain"]
[-2.0, 2.0]
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any, Mapping

import altair as alt
import polars as pl

from mechstudy.engine import spec
from mechstudy.engine.spec import Artifact

VALUE = "effect"  # the default value column of operator result tables

# ---------------------------------------------------------------------------- helpers


def _hints(artifact: Artifact) -> dict:
    hints = (artifact.data or {}).get("chart") or {}
    if not isinstance(hints, Mapping):
        raise ValueError(f"artifact.data['chart'] must be a dict of hints, got {type(hints).__name__}")
    return dict(hints)


def _table(artifact: Artifact, name: str = "result") -> pl.DataFrame:
    tables = artifact.tables or {}
    if name in tables:
        df = tables[name]
    elif name == "result" and len(tables) == 1:
        df = next(iter(tables.values()))
    else:
        raise ValueError(f"chart needs table {name!r}; the artifact has tables {sorted(tables)}")
    if not isinstance(df, pl.DataFrame):
        raise TypeError(f"table {name!r} is a {type(df).__name__}, expected a polars DataFrame")
    return df


def _scalar_cols(df: pl.DataFrame) -> list[str]:
    """Columns a chart can encode: nested (list/struct/object) columns are left out."""
    return [c for c, t in df.schema.items() if not t.is_nested() and t != pl.Object]


def _is_numeric(df: pl.DataFrame, col: str) -> bool:
    return df.schema[col].is_numeric()


def _numeric_cols(df: pl.DataFrame) -> list[str]:
    return [c for c in _scalar_cols(df) if _is_numeric(df, c)]


def _vl_type(df: pl.DataFrame, col: str) -> str:
    t = df.schema[col]
    if t.is_numeric():
        return "quantitative"
    if t.is_temporal():
        return "temporal"
    return "nominal"


def _need(df: pl.DataFrame, col: str | None, role: str, kind: str) -> str:
    if col is None or col not in df.columns:
        what = f"column {col!r}" if col else "column"
        raise ValueError(f"{kind} chart: no {what} for {role}; table columns are {df.columns}"
                         f" (give one with artifact.data['chart'] = {{{role!r}: COLUMN}})")
    return col


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN / inf; Vega treats null as missing
    if isinstance(v, (_dt.date, _dt.datetime, _dt.time)):
        return v.isoformat()
    if isinstance(v, _dt.timedelta):
        return v.total_seconds()
    return v


def _values(df: pl.DataFrame) -> list[dict]:
    """Rows as inline Vega data, exactly the table's values (nested columns dropped)."""
    cols = _scalar_cols(df)
    return [{k: _clean(v) for k, v in row.items()} for row in df.select(cols).to_dicts()]


def _tooltips(df: pl.DataFrame) -> list[alt.Tooltip]:
    out = []
    for c in _scalar_cols(df):
        if df.schema[c].is_float():
            out.append(alt.Tooltip(c, type="quantitative", format=".4~g"))
        else:
            out.append(alt.Tooltip(c, type=_vl_type(df, c)))
    return out


def _value_col(df: pl.DataFrame, hints: dict, exclude: tuple, kind: str) -> str:
    """The value column: the hint, else `effect`, else the only other numeric column."""
    # In a heatmap "y" is an axis (layer), so only "value" names the colour column.
    col = hints.get("value") if kind == "heatmap" else (hints.get("value") or hints.get("y"))
    if col:
        return _need(df, col, "value", kind)
    if VALUE in df.columns:
        return VALUE
    rest = [c for c in _numeric_cols(df) if c not in exclude]
    if len(rest) == 1 or (rest and kind != "heatmap"):
        return rest[0]
    return _need(df, None, "value", kind)


def _finish(chart: alt.Chart, df: pl.DataFrame, hints: dict, title: str | None, columns: int | None = None) -> dict:
    facet = hints.get("facet")
    if facet:
        _need(df, facet, "facet", "faceted")
        if columns:  # wrap the panels into rows instead of one long row that scrolls sideways
            chart = chart.facet(facet=alt.Facet(facet, type=_vl_type(df, facet)), columns=columns)
        else:
            chart = chart.facet(column=alt.Column(facet, type=_vl_type(df, facet)))
    title = title or hints.get("title")
    if title:
        chart = chart.properties(title=title)
    return chart.to_dict()


def _finite_values(df: pl.DataFrame, col: str) -> pl.Series:
    vals = df.get_column(col).cast(pl.Float64)
    return vals.filter(vals.is_finite())


def _symmetric_domain(df: pl.DataFrame, col: str) -> list[float]:
    vals = _finite_values(df, col)
    m = float(vals.abs().max()) if len(vals) else 0.0
    m = m if m > 0 else 1.0  # an all-zero map still needs a non-empty domain
    return [-m, m]


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def meta(chart_spec: Mapping) -> dict:
    """The notes a chart leaves for the report in ``usermeta.mechstudy``: ``empty`` (why nothing
    is drawn), ``clipped`` (values beyond the colour scale), ``scale`` (what the colours span).

    >>> meta(empty_chart("no edges"))["empty"]
    'no edges'
    """
    return dict((chart_spec.get("usermeta") or {}).get("mechstudy") or {})


def _with_meta(chart_spec: dict, **notes: Any) -> dict:
    um = dict(chart_spec.get("usermeta") or {})
    um["mechstudy"] = {**(um.get("mechstudy") or {}), **{k: v for k, v in notes.items() if v is not None}}
    chart_spec["usermeta"] = um
    return chart_spec


def empty_chart(reason: str, title: str | None = None) -> dict:
    """A one-line chart that says why there is nothing to draw (the report shows the reason)."""
    chart = alt.Chart(alt.Data(values=[{"text": reason}])).mark_text(
        fontSize=13, color="#616e7c", align="left", baseline="middle", x=0, y=16).encode(
        text=alt.Text("text", type="nominal"))
    chart = chart.properties(width=480, height=32)
    if title:
        chart = chart.properties(title=title)
    return _with_meta(chart.configure_view(stroke=None).to_dict(), empty=reason)


# Heatmap cells: as large as legible, shrinking for wide grids, within the report's width.
CELL_MAX, CELL_MIN, ROW_MAX, ROW_MIN = 64, 18, 48, 16
PLOT_W, PLOT_H = 720, 520  # a heatmap's plot area at most (the report's content is ~1000 px wide)


def _cells(n: int, cap: int, most: int, least: int) -> int:
    """Pixels per cell for n cells: `most` when they fit, shrinking to fill `cap`, never under
    `least` unless the grid would then be over twice the cap (hundreds of neurons).

    >>> _cells(4, 720, 56, 18), _cells(20, 720, 56, 18), _cells(128, 720, 56, 18)
    (56, 36, 11)
    """
    size = max(least, min(most, cap // max(n, 1)))
    return size if size * n <= 2 * cap else max(3, (2 * cap) // n)


def _js_str(s: str) -> str:
    import json

    return json.dumps(s)


# ---------------------------------------------------------------------------- kinds


@spec.chart("heatmap")
def render_heatmap(artifact: Artifact, title: str | None) -> dict:
    """Layer x head (or layer x position) heatmap; the colour of 0 is white.

    The colour scale spans the data: diverging (red negative, blue positive) and symmetric about
    0 when the data have both signs, from 0 to the largest value (the scheme's blue half, or its
    red half for negative data) when they have one. Hints may fix a scale with ``"domain": [lo, hi]``; cells beyond it
    are drawn at its end colour, outlined, and counted in the chart's notes (`meta`). Cells are
    sized to the grid; small grids print each cell's value."""
    df, hints = _table(artifact), _hints(artifact)
    title = title or hints.get("title")
    if artifact.data.get("empty") or df.height == 0:
        return empty_chart(artifact.data.get("empty") or "The result has no rows, so there is nothing to draw.", title)
    y = _need(df, hints.get("y") or "layer", "y", "heatmap")
    x = hints.get("x") or ("head" if "head" in df.columns else "position")
    _need(df, x, "x", "heatmap")
    value = _value_col(df, hints, (x, y), "heatmap")
    facet = hints.get("facet")
    n_x = max(df.get_column(x).n_unique(), 1)
    n_y = max(df.get_column(y).n_unique(), 1)
    n_panels = df.get_column(facet).n_unique() if facet and facet in df.columns else 1
    cap_w = PLOT_W if n_panels == 1 else max(160, PLOT_W // min(n_panels, 4))
    cw, ch = _cells(n_x, cap_w, CELL_MAX, CELL_MIN), _cells(n_y, PLOT_H, ROW_MAX, ROW_MIN)
    vals = _finite_values(df, value)
    lo, hi = (float(vals.min()), float(vals.max())) if len(vals) else (0.0, 0.0)
    domain, scale = colour_scale(lo, hi, hints.get("domain"))
    beyond = int(((vals < domain[0]) | (vals > domain[1])).sum()) if len(vals) else 0
    ticks = sorted({domain[0], domain[1], *([0.0] if domain[0] < 0 < domain[1] else [])})
    legend = alt.Legend(values=ticks, format=".3~g", title=value, gradientLength=max(100, min(ch * n_y, 300)),
                        labelFontSize=12)
    colour = alt.Color(value, type="quantitative", legend=legend, scale=scale)
    upright = cw >= 40 or (df.schema[x].is_numeric() and cw >= 24)
    x_axis = alt.Axis(labelAngle=0 if upright else -45, labelOverlap="greedy" if cw < 14 else False,
                      labelFontSize=12, titleFontSize=13, labelLimit=100)
    base = alt.Chart(alt.Data(values=_values(df)))
    enc = dict(x=alt.X(x, type="ordinal", title=x, axis=x_axis),
               y=alt.Y(y, type="ordinal", title=y, axis=alt.Axis(labelFontSize=12, titleFontSize=13)))
    layers: list[Any] = [base.mark_rect().encode(**enc, color=colour, tooltip=_tooltips(df))]
    v = f"datum[{_js_str(value)}]"
    if n_x * n_y * n_panels <= MAX_LABELLED and cw >= 40 and ch >= 24:
        dark = round(0.55 * max(abs(domain[0]), abs(domain[1])), 6)  # white text on the darker cells
        layers.append(base.mark_text(fontSize=11).encode(
            **enc, text=alt.Text(value, type="quantitative", format=".2f"),
            color=alt.condition(f"abs({v}) > {dark!r}", alt.value("white"), alt.value("#1f2933"))))
    clipped = None
    if beyond:
        layers.append(base.transform_filter(f"{v} < {domain[0]!r} || {v} > {domain[1]!r}").mark_rect(
            fill=None, stroke="#111", strokeWidth=2).encode(**enc))
        clipped = (f"{beyond} cell{'s' if beyond != 1 else ''} beyond the fixed colour scale "
                   f"[{_fmt(domain[0])}, {_fmt(domain[1])}] (data {_fmt(lo)} to {_fmt(hi)}) "
                   "drawn at its end colours and outlined")
    chart = (layers[0] if len(layers) == 1 else alt.layer(*layers)).properties(width=cw * n_x, height=ch * n_y)
    note = (f"{value}: colour from {_fmt(domain[0])} to {_fmt(domain[1])}, white at 0"
            f"{' (symmetric)' if domain[0] == -domain[1] else ''}; data from {_fmt(lo)} to {_fmt(hi)}")
    out = _finish(chart, df, {**hints, "facet": facet}, title, columns=max(1, 900 // (cw * n_x + 50)))
    return _with_meta(out, clipped=clipped, scale=note)


MAX_LABELLED = 64  # grids of at most this many cells print their values


def colour_scale(lo: float, hi: float, fixed: Any = None) -> tuple[list[float], alt.Scale]:
    """(domain, scale) for data from lo to hi: white at 0, spanning the data.

    >>> colour_scale(-0.5, 2.0)[0], colour_scale(0.59, 1.14)[0], colour_scale(-3.0, -1.0)[0]
    ([-2.0, 2.0], [0.0, 1.14], [-3.0, 0.0])
    """
    if fixed:
        d = [float(fixed[0]), float(fixed[1])]
        mid = 0.0 if d[0] < 0 < d[1] else (d[0] + d[1]) / 2
        return d, alt.Scale(scheme="redblue", domain=d, domainMid=mid, clamp=True, nice=False)
    # One sign: the diverging scheme's half for that sign, so 0 is the same near-white and a value
    # the same colour as on a symmetric scale of the same extent.
    if lo >= 0 and hi > 0:
        return [0.0, hi], alt.Scale(scheme=alt.SchemeParams(name="redblue", extent=[0.5, 1.0]),
                                    domain=[0.0, hi], clamp=True, nice=False)
    if hi <= 0 and lo < 0:
        return [lo, 0.0], alt.Scale(scheme=alt.SchemeParams(name="redblue", extent=[0.0, 0.5]),
                                    domain=[lo, 0.0], clamp=True, nice=False)
    m = max(abs(lo), abs(hi)) or 1.0  # both signs (or all zero): symmetric, so equal colours mean equal sizes
    return [-m, m], alt.Scale(scheme="redblue", domain=[-m, m], domainMid=0.0, clamp=True, nice=False)


def _xy_defaults(df: pl.DataFrame, hints: dict, kind: str, x_default: str | None) -> tuple[str, str]:
    x = hints.get("x") or x_default
    _need(df, x, "x", kind)
    y = _value_col(df, hints, (x,), kind)
    return x, y


@spec.chart("line")
def render_line(artifact: Artifact, title: str | None) -> dict:
    """Per-layer sweep: x = layer (or another numeric column), y = value, colour by series."""
    df, hints = _table(artifact), _hints(artifact)
    if artifact.data.get("empty") or df.height == 0:
        return empty_chart(artifact.data.get("empty") or "The result has no rows, so there is nothing to draw.",
                           title or hints.get("title"))
    nums = _numeric_cols(df)
    x, y = _xy_defaults(df, hints, "line", "layer" if "layer" in df.columns else (nums[0] if nums else None))
    color = hints.get("color") or ("series" if "series" in df.columns else None)
    enc: dict[str, Any] = {
        "x": alt.X(x, type=_vl_type(df, x), title=x,
                   axis=alt.Axis(tickMinStep=1) if df.schema[x].is_integer() else alt.Axis()),
        "y": alt.Y(y, type="quantitative", title=y),
        "tooltip": _tooltips(df),
    }
    if color:
        enc["color"] = alt.Color(_need(df, color, "color", "line"), type="nominal", title=color)
    chart = alt.Chart(alt.Data(values=_values(df))).mark_line(point=True).encode(**enc)
    return _finish(chart.properties(width=480, height=280), df, hints, title)


@spec.chart("bar")
def render_bar(artifact: Artifact, title: str | None) -> dict:
    """One bar per row (or per category): x = category, y = value, in table order."""
    df, hints = _table(artifact), _hints(artifact)
    if artifact.data.get("empty") or df.height == 0:
        return empty_chart(artifact.data.get("empty") or "The result has no rows, so there is nothing to draw.",
                           title or hints.get("title"))
    cats = [c for c in _scalar_cols(df) if not _is_numeric(df, c)]
    x, y = _xy_defaults(df, hints, "bar", cats[0] if cats else (df.columns[0] if df.columns else None))
    enc: dict[str, Any] = {
        "x": alt.X(x, type="nominal" if not _is_numeric(df, x) else "ordinal", title=x, sort=None),
        "y": alt.Y(y, type="quantitative", title=y),
        "tooltip": _tooltips(df),
    }
    if hints.get("color"):
        enc["color"] = alt.Color(_need(df, hints["color"], "color", "bar"), type="nominal")
    chart = alt.Chart(alt.Data(values=_values(df))).mark_bar().encode(**enc)
    n = max(df.get_column(x).n_unique(), 1)
    return _finish(chart.properties(width=min(720, max(160, 22 * n)), height=280), df, hints, title)


@spec.chart("histogram")
def render_histogram(artifact: Artifact, title: str | None) -> dict:
    """Distribution of one numeric column (binned counts), optionally split by colour."""
    df, hints = _table(artifact), _hints(artifact)
    if artifact.data.get("empty") or df.height == 0:
        return empty_chart(artifact.data.get("empty") or "The result has no rows, so there is nothing to draw.",
                           title or hints.get("title"))
    nums = _numeric_cols(df)
    x = hints.get("value") or hints.get("x") or (VALUE if VALUE in df.columns else (nums[0] if nums else None))
    _need(df, x, "value", "histogram")
    enc: dict[str, Any] = {
        "x": alt.X(x, type="quantitative", bin=alt.Bin(maxbins=int(hints.get("bins", 40))), title=x),
        "y": alt.Y("count()", type="quantitative", title="count", stack=None),
        "tooltip": [alt.Tooltip("count()", type="quantitative", title="count")],
    }
    mark = alt.Chart(alt.Data(values=_values(df))).mark_bar()
    if hints.get("color"):
        enc["color"] = alt.Color(_need(df, hints["color"], "color", "histogram"), type="nominal")
        mark = alt.Chart(alt.Data(values=_values(df))).mark_bar(opacity=0.6)
    return _finish(mark.encode(**enc).properties(width=480, height=280), df, hints, title)


@spec.chart("scatter")
def render_scatter(artifact: Artifact, title: str | None) -> dict:
    """x vs y points (e.g. attribution patching vs activation patching), optional colour/labels."""
    df, hints = _table(artifact), _hints(artifact)
    if artifact.data.get("empty") or df.height == 0:
        return empty_chart(artifact.data.get("empty") or "The result has no rows, so there is nothing to draw.",
                           title or hints.get("title"))
    nums = _numeric_cols(df)
    x = _need(df, hints.get("x") or (nums[0] if nums else None), "x", "scatter")
    y = _need(df, hints.get("y") or next((c for c in nums if c != x), None), "y", "scatter")
    # The axes span the data (not from 0): AtP against patching often lies far from the origin.
    enc: dict[str, Any] = {
        "x": alt.X(x, type="quantitative", title=x, scale=alt.Scale(zero=False)),
        "y": alt.Y(y, type="quantitative", title=y, scale=alt.Scale(zero=False)),
        "tooltip": _tooltips(df),
    }
    if hints.get("color"):
        c = _need(df, hints["color"], "color", "scatter")
        few = df.schema[c].is_integer() and df.get_column(c).n_unique() <= 12  # layers: categories, not a ramp
        enc["color"] = (alt.Color(c, type="ordinal", scale=alt.Scale(scheme="tableau10")) if few
                        else alt.Color(c, type=_vl_type(df, c)))
    base = alt.Chart(alt.Data(values=_values(df)))
    layers = [base.mark_circle(size=60, opacity=0.8).encode(**enc)]
    if hints.get("label"):
        lab = _need(df, hints["label"], "label", "scatter")
        layers.append(base.mark_text(align="left", dx=6, fontSize=10).encode(x=enc["x"], y=enc["y"], text=alt.Text(lab, type="nominal")))
    if hints.get("diagonal"):
        col = pl.concat([df.get_column(x).cast(pl.Float64), df.get_column(y).cast(pl.Float64)])
        col = col.filter(col.is_finite())
        lo, hi = (float(col.min()), float(col.max())) if len(col) else (0.0, 1.0)
        diag = alt.Chart(alt.Data(values=[{"d": lo}, {"d": hi}])).mark_line(color="#999", strokeDash=[4, 4])
        layers.insert(0, diag.encode(x=alt.X("d", type="quantitative", scale=alt.Scale(zero=False)),
                                     y=alt.Y("d", type="quantitative", scale=alt.Scale(zero=False))))
    chart = layers[0] if len(layers) == 1 else alt.layer(*layers)
    return _finish(chart.properties(width=400, height=400), df, hints, title)


@spec.chart("graph")
def render_graph(artifact: Artifact, title: str | None) -> dict:
    """Circuit graph: nodes placed by layer (x) and index (y); edges as rules, width = |weight|."""
    hints = _hints(artifact)
    nodes = _table(artifact, hints.get("nodes", "nodes"))
    edges = _table(artifact, hints.get("edges", "edges"))
    for col in ("node", "layer"):
        _need(nodes, col, col, "graph")
    for col in ("src", "dst", "weight"):
        _need(edges, col, col, "graph")
    if artifact.data.get("empty") or edges.height == 0:
        return empty_chart(artifact.data.get("empty") or "The graph has no edges, so there is nothing to draw.",
                           title or hints.get("title"))
    node_tips = _tooltips(nodes)
    if "index" not in nodes.columns:
        # Without an explicit index, stack the nodes of each layer in table order.
        nodes = nodes.with_columns(pl.int_range(pl.len()).over("layer").alias("index"))
    # Centre each layer's column of nodes on 0, so a lone node sits between its neighbours
    # and fewer straight edges run through unrelated nodes.
    nodes = nodes.with_columns((pl.col("index") - (pl.col("index").min() + pl.col("index").max()).over("layer") / 2).alias("_y"))
    pos = nodes.select(pl.col("node").cast(pl.Utf8), "layer", "_y")
    known = set(pos.get_column("node").to_list())
    missing = sorted({str(n) for n in edges.get_column("src").to_list() + edges.get_column("dst").to_list()} - known)
    if missing:
        raise ValueError(f"graph chart: edges name nodes missing from the nodes table: {missing[:10]}")
    e = (edges.with_columns(pl.col("src").cast(pl.Utf8), pl.col("dst").cast(pl.Utf8))
         .join(pos.rename({"node": "src", "layer": "x", "_y": "y"}), on="src", how="left")
         .join(pos.rename({"node": "dst", "layer": "x2", "_y": "y2"}), on="dst", how="left")
         .with_columns(pl.col("weight").abs().alias("abs_weight"),
                       pl.when(pl.col("weight") >= 0).then(pl.lit("positive"))
                       .otherwise(pl.lit("negative")).alias("sign")))
    n_layers = max(nodes.get_column("layer").n_unique(), 1)
    n_rows = int(nodes.group_by("layer").len().get_column("len").max() or 1)  # the tallest layer
    x_scale = alt.Scale(zero=False, nice=False, padding=20)
    y_scale = alt.Scale(zero=False, nice=False, padding=20, reverse=True)
    edge_layer = alt.Chart(alt.Data(values=_values(e))).mark_rule(opacity=0.7).encode(
        x=alt.X("x", type="quantitative", title="layer", scale=x_scale, axis=alt.Axis(tickMinStep=1)),
        y=alt.Y("y", type="quantitative", title=None, scale=y_scale, axis=None),
        x2="x2", y2="y2",
        strokeWidth=alt.StrokeWidth("abs_weight", type="quantitative", title="|weight|",
                                    scale=alt.Scale(range=[0.5, 8], zero=True)),
        color=alt.Color("sign", type="nominal", title="weight",
                        scale=alt.Scale(domain=["positive", "negative"], range=["#2b6cb0", "#c53030"])),
        tooltip=_tooltips(edges),
    )
    node_base = alt.Chart(alt.Data(values=_values(nodes)))
    node_enc = dict(x=alt.X("layer", type="quantitative", scale=x_scale),
                    y=alt.Y("_y", type="quantitative", scale=y_scale))
    node_layer = node_base.mark_circle(size=180, color="#1a202c", opacity=1).encode(
        **node_enc, tooltip=node_tips)
    label_layer = node_base.mark_text(dy=-12, fontSize=10).encode(**node_enc, text=alt.Text("node", type="nominal"))
    chart = alt.layer(edge_layer, node_layer, label_layer).properties(
        width=min(900, max(240, 90 * n_layers)), height=min(700, max(160, 50 * n_rows)))
    return _finish(chart, nodes, {k: v for k, v in hints.items() if k != "facet"}, title)
