"""Chart kinds: each renders a valid Vega-Lite spec of exactly its table; export to PNG/SVG."""

from __future__ import annotations

import json
import math
import struct
import xml.etree.ElementTree as ET

import polars as pl
import pytest
import vl_convert as vlc

from mechstudy.engine import builtins  # noqa: F401  (registers the "chart" node kind)
from mechstudy.engine import spec
from mechstudy.engine.report import export_chart
from mechstudy.engine.spec import Artifact
from mechstudy.stdlib import charts  # noqa: F401  (registers the chart kinds)

HEADS = pl.DataFrame({"layer": [0, 0, 0, 1, 1, 1], "head": [0, 1, 2, 0, 1, 2],
                      "effect": [0.25, -3.0, 0.0, 1.5, -0.5, 2.75]})
POSITIONS = pl.DataFrame({"layer": [0, 0, 1, 1], "position": [0, 1, 0, 1], "token": ["A", "B", "A", "B"],
                          "effect": [0.1, -0.2, 0.3, 0.4], "logit_diff": [1.0, 2.0, 3.0, 4.0]})
SWEEP = pl.DataFrame({"layer": [0, 1, 2, 0, 1, 2], "effect": [0.0, 0.5, 1.0, 1.0, 0.5, 0.25],
                      "series": ["resid_pre"] * 3 + ["mlp_out"] * 3})
BARS = pl.DataFrame({"component": ["L9H6", "L9H9", "L10H0"], "effect": [0.9, 0.8, -0.3]})
SAMPLES = pl.DataFrame({"effect": [0.0, 0.1, 0.15, 0.2, 0.9, 1.0]})
ATP = pl.DataFrame({"atp": [0.5, -0.25, 1.0], "patching": [0.4, -0.2, 1.25], "name": ["L0H0", "L0H1", "L1H0"]})
NODES = pl.DataFrame({"node": ["embed", "L0H1", "mlp0", "logits"], "layer": [0, 1, 1, 2]})
EDGES = pl.DataFrame({"src": ["embed", "embed", "L0H1", "mlp0"], "dst": ["L0H1", "mlp0", "logits", "logits"],
                      "weight": [1.0, 0.25, -2.0, 0.5]})


def render(kind: str, tables: dict, hints: dict | None = None, title: str | None = None) -> dict:
    art = Artifact(tables=tables, data={"chart": hints} if hints else {})
    out = spec.CHARTS[kind].render(art, title)
    json.dumps(out, allow_nan=False)  # plain JSON: no NaN, no objects
    return out


def cells(spec: dict) -> dict:
    """The heatmap's rect view (small grids add a text layer with the values; the layers then
    share the data at the top)."""
    return spec if "mark" in spec else {"data": spec.get("data"), **spec["layer"][0]}


def values(view: dict) -> list[dict]:
    assert "url" not in view["data"]  # data is always inline
    return view["data"]["values"]


def test_all_kinds_registered_and_compile_to_vega():
    cases = {
        "heatmap": {"result": HEADS}, "line": {"result": SWEEP}, "bar": {"result": BARS},
        "histogram": {"result": SAMPLES}, "scatter": {"result": ATP},
        "graph": {"nodes": NODES, "edges": EDGES},
    }
    assert set(cases) <= set(spec.CHARTS)
    for kind, tables in cases.items():
        vg = vlc.vegalite_to_vega(render(kind, tables, title=kind))
        assert vg["marks"], kind  # Vega-Lite accepted the spec and produced marks
        assert '"url"' not in json.dumps(vg), kind


def test_heatmap_layer_by_head():
    s = render("heatmap", {"result": HEADS}, title="heads")
    assert cells(s)["mark"]["type"] == "rect" and s["title"] == "heads"
    text = s["layer"][1]  # 6 cells: each prints its value, white on the dark ones
    assert text["mark"]["type"] == "text" and text["encoding"]["text"] == {
        "field": "effect", "type": "quantitative", "format": ".2f"}
    assert text["encoding"]["color"]["condition"]["test"] == 'abs(datum["effect"]) > 1.65'
    enc = cells(s)["encoding"]
    assert (enc["x"]["field"], enc["x"]["type"]) == ("head", "ordinal")
    assert (enc["y"]["field"], enc["y"]["type"]) == ("layer", "ordinal")
    assert enc["color"]["field"] == "effect"
    scale = enc["color"]["scale"]
    assert scale["domain"] == [-3.0, 3.0] and scale["domainMid"] == 0 and scale["scheme"] == "redblue"
    assert [t["field"] for t in enc["tooltip"]] == ["layer", "head", "effect"]
    assert values(cells(s)) == HEADS.to_dicts()


def test_heatmap_layer_by_position_and_value_hint():
    s = render("heatmap", {"result": POSITIONS}, {"value": "logit_diff", "title": "from hint"})
    enc = cells(s)["encoding"]
    assert enc["x"]["field"] == "position" and enc["color"]["field"] == "logit_diff"
    # logit_diff is 1..4, all positive: the blue half of the diverging scheme, from 0 (white) up.
    assert enc["color"]["scale"] == {"scheme": {"name": "redblue", "extent": [0.5, 1.0]}, "domain": [0.0, 4.0],
                                     "clamp": True, "nice": False}
    assert "token" in [t["field"] for t in enc["tooltip"]]
    assert s["title"] == "from hint"
    assert values(cells(s)) == POSITIONS.to_dicts()
    # The statement's title wins over the operator's hint.
    assert render("heatmap", {"result": POSITIONS}, {"title": "hint"}, title="plot")["title"] == "plot"


def test_heatmap_value_column_fallbacks_and_errors():
    only = HEADS.rename({"effect": "score"})
    assert cells(render("heatmap", {"result": only}))["encoding"]["color"]["field"] == "score"
    two = only.with_columns(other=pl.lit(1.0))
    with pytest.raises(ValueError, match=r"no column for value.*\['layer', 'head', 'score', 'other'\]"):
        render("heatmap", {"result": two})
    with pytest.raises(ValueError, match="'position'"):
        render("heatmap", {"result": HEADS.drop("head")})
    with pytest.raises(ValueError, match=r"table 'result'.*\['a', 'b'\]"):
        render("heatmap", {"a": HEADS, "b": HEADS})


def test_nan_becomes_null_and_nested_columns_are_dropped():
    t = HEADS.with_columns(effect=pl.Series([math.nan, 1.0, -2.0, 0.0, math.inf, 0.5]),
                           tokens=pl.Series([["a", "b"]] * 6))
    s = cells(render("heatmap", {"result": t}))
    vals = values(s)
    assert vals[0]["effect"] is None and vals[4]["effect"] is None and vals[2]["effect"] == -2.0
    assert all("tokens" not in v for v in vals)
    assert s["encoding"]["color"]["scale"]["domain"] == [-2.0, 2.0]  # NaN/inf ignored


def test_line_per_layer_sweep_by_series():
    s = render("line", {"result": SWEEP})
    assert s["mark"] == {"type": "line", "point": True}
    enc = s["encoding"]
    assert (enc["x"]["field"], enc["x"]["type"]) == ("layer", "quantitative")
    assert (enc["y"]["field"], enc["color"]["field"]) == ("effect", "series")
    assert values(s) == SWEEP.to_dicts()
    s = render("line", {"result": POSITIONS}, {"x": "position", "y": "logit_diff", "color": "layer"})
    assert [s["encoding"][k]["field"] for k in ("x", "y", "color")] == ["position", "logit_diff", "layer"]


def test_bar_keeps_table_order():
    s = render("bar", {"result": BARS})
    assert s["mark"]["type"] == "bar"
    enc = s["encoding"]
    assert enc["x"]["field"] == "component" and enc["x"]["sort"] is None and enc["y"]["field"] == "effect"
    assert values(s) == BARS.to_dicts()


def test_histogram_bins_counts():
    s = render("histogram", {"result": SAMPLES}, {"bins": 10})
    enc = s["encoding"]
    assert s["mark"]["type"] == "bar"
    assert enc["x"]["field"] == "effect" and enc["x"]["bin"] == {"maxbins": 10}
    assert enc["y"]["aggregate"] == "count"
    assert values(s) == SAMPLES.to_dicts()


def test_scatter_with_labels_and_diagonal():
    s = render("scatter", {"result": ATP}, {"x": "atp", "y": "patching", "label": "name", "diagonal": True})
    diag, points, labels = s["layer"]
    assert points["mark"]["type"] == "circle" and labels["mark"]["type"] == "text"
    assert (points["encoding"]["x"]["field"], points["encoding"]["y"]["field"]) == ("atp", "patching")
    assert labels["encoding"]["text"]["field"] == "name"
    assert values(points) == ATP.to_dicts() == values(labels)
    assert values(diag) == [{"d": -0.25}, {"d": 1.25}]  # y = x across the range of both columns
    plain = render("scatter", {"result": ATP})  # first two numeric columns, no layers
    assert plain["mark"]["type"] == "circle" and plain["encoding"]["x"]["field"] == "atp"


def test_graph_nodes_by_layer_and_edges_by_weight():
    s = render("graph", {"nodes": NODES, "edges": EDGES}, title="circuit")
    edges, nodes, names = s["layer"]
    assert [edges["mark"]["type"], nodes["mark"]["type"], names["mark"]["type"]] == ["rule", "circle", "text"]
    assert edges["encoding"]["strokeWidth"]["field"] == "abs_weight"
    assert {k: edges["encoding"][k]["field"] for k in ("x", "y", "x2", "y2")} == {
        "x": "x", "y": "y", "x2": "x2", "y2": "y2"}
    ev = values(edges)
    assert [(e["src"], e["dst"], e["weight"]) for e in ev] == list(EDGES.iter_rows())
    layer = dict(NODES.iter_rows())
    assert all(e["x"] == layer[e["src"]] and e["x2"] == layer[e["dst"]] for e in ev)
    assert [e["abs_weight"] for e in ev] == [1.0, 0.25, 2.0, 0.5]
    assert [e["sign"] for e in ev] == ["positive", "positive", "negative", "positive"]
    # Layer 1 holds two nodes, stacked and centred on 0; lone nodes sit at 0.
    ys = {v["node"]: v["_y"] for v in values(nodes)}
    assert ys == {"embed": 0.0, "L0H1": -0.5, "mlp0": 0.5, "logits": 0.0}
    assert names["encoding"]["text"]["field"] == "node"
    with pytest.raises(ValueError, match=r"missing from the nodes table: \['ghost'\]"):
        render("graph", {"nodes": NODES, "edges": EDGES.with_columns(dst=pl.lit("ghost"))})


def test_facet_hint():
    t = pl.concat([SWEEP.with_columns(component=pl.lit(c)) for c in ("attn", "mlp")])
    s = render("line", {"result": t}, {"facet": "component"})
    assert s["facet"]["column"]["field"] == "component" and s["spec"]["mark"]["type"] == "line"
    assert len(values(s)) == 12


def test_chart_node_kind_uses_the_registry():
    out = spec.OPS["chart"].execute({"result": Artifact(tables={"result": HEADS})}, {"kind": "heatmap", "title": "t"},
                                None)
    assert out.data["vega_lite"] == render("heatmap", {"result": HEADS}, title="t")


def test_export_chart_png_svg(tmp_path):
    s = render("heatmap", {"result": HEADS}, title="heads")
    png = export_chart(s, tmp_path / "heads.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    w, h = struct.unpack(">II", png[16:24])
    # 3 heads x 2 layers at the heatmap's minimum plot size (200 x 140) plus axes/legend, at scale 2.
    assert 400 < w < 1000 and 280 < h < 800
    svg = export_chart(s, tmp_path / "heads.svg").read_text()
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    assert svg.count('aria-roledescription="rect mark"') == HEADS.height
    pdf = export_chart(s, tmp_path / "heads.pdf").read_bytes()
    assert pdf[:5] == b"%PDF-"
    with pytest.raises(ValueError, match=r"\.png, \.svg or \.pdf"):
        export_chart(s, tmp_path / "heads.jpg")
