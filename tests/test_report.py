"""The HTML report, opened in a real headless browser (Debian's chromium) with no network.

Unit tests of the HTML text run everywhere; the browser tests are skipped, with the reason
printed, only when no chromium binary exists (the Makefile installs it: apt-get install chromium).
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import polars as pl
import pytest

import browser
from mechstudy.engine.report import MAX_TABLE_ROWS, vega_bundle, write_report
from mechstudy.engine.spec import Artifact
from mechstudy.stdlib import charts

# ---------------------------------------------------------------------------- fixtures

# Layer x head values, all distinct; (2, 3) is the maximum +2, (1, 0) the minimum -2, (0, 0) exactly 0.
HEAT = {(layer, head): v for layer, row in enumerate([[0.0, 0.5, -0.25, 1.0],
                                                      [-2.0, 0.75, -1.5, 0.25],
                                                      [1.25, -0.5, -1.0, 2.0]])
        for head, v in enumerate(row)}
HEAT_TABLE = pl.DataFrame([{"layer": l, "head": h, "effect": v} for (l, h), v in sorted(HEAT.items())])
LINE_TABLE = pl.DataFrame({"layer": list(range(5)) * 2,
                           "effect": [0.0, 0.1, 0.4, 0.9, 1.6, 1.0, 0.8, 0.6, 0.4, 0.2],
                           "series": ["resid_pre"] * 5 + ["attn_out"] * 5})
NODES = pl.DataFrame({"node": ["embed", "L0H1", "L0H3", "L1H2", "logits"], "layer": [0, 1, 1, 2, 3]})
EDGES = pl.DataFrame({"src": ["embed", "embed", "L0H1", "L0H3", "L1H2"],
                      "dst": ["L0H1", "L0H3", "L1H2", "L1H2", "logits"],
                      "weight": [1.0, 0.5, 2.0, -0.7, 1.5]})
BIG_TABLE = pl.DataFrame({"i": list(range(120)), "x": [i / 7 for i in range(120)]})


def _sections() -> list[dict]:
    heat = charts.render_heatmap(Artifact(tables={"result": HEAT_TABLE}), "head effects")
    line = charts.render_line(Artifact(tables={"result": LINE_TABLE}), "per-layer sweep")
    graph = charts.render_graph(Artifact(tables={"nodes": NODES, "edges": EDGES}), "circuit")
    return [
        {"name": "heads", "statement": "heads = patch heads in all layers of m on ds with logit_diff",
         "vega_lite": heat, "table": HEAT_TABLE, "status": "computed", "seconds": 1.25},
        {"name": "sweep", "statement": "sweep = patch resid_pre in all layers of m on ds",
         "vega_lite": line, "table": LINE_TABLE, "status": "cached", "seconds": 0.0},
        {"name": "circuit", "statement": "circuit = acdc of m on ds threshold 0.01",
         "vega_lite": graph, "table": EDGES, "status": "cached", "seconds": 0.02},
        {"name": "big <table>", "statement": "big = ...", "vega_lite": None, "table": BIG_TABLE,
         "status": "computed", "seconds": 0.5},
    ]


PLAN = [
    {"key": "a3f9c2d1e0b4a5968776655443322110", "op": "model", "label": "m", "status": "cached", "seconds": 0.0},
    {"key": "77c1e0aa00bb11cc22dd33ee44ff5566", "op": "patch", "label": "heads", "status": "computed",
     "seconds": 1.25},
]
LOCK = "version = 1\n[nodes]\nheads = \"77c1e0aa\"\n"


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "study.html"
    return write_report(out, title="demo study", sections=_sections(), plan_rows=PLAN, lock=LOCK,
                        summary={"study": "demo.study", "device": "cpu"})


def _run_chromium(report: Path, tmp: Path, *extra: str):
    return browser.run(report, tmp, *extra)


@pytest.fixture(scope="module")
def dom(report, tmp_path_factory) -> str:
    res = _run_chromium(report, tmp_path_factory.mktemp("chromium"), "--dump-dom")
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def _chart_dom(dom: str, i: int) -> str:
    """The rendered content of chart container i (up to the next chart or section end)."""
    start = dom.index(f'id="chart-{i}"')
    end = dom.find("</section>", start)
    return dom[start:end]


def _labels(fragment: str, mark: str) -> list[str]:
    """aria-labels of the items of one mark type, e.g. 'head: 3; layer: 2; effect: 2'."""
    return re.findall(rf'aria-label="([^"]*)"[^>]*aria-roledescription="{mark}(?: mark)?"', fragment)


# ---------------------------------------------------------------------------- HTML text


def test_report_is_offline_and_inlines_the_bundle_once(report, tmp_path):
    text = report.read_text()
    bundle = vega_bundle()
    # Nothing is fetched: no external script, stylesheet, image, font or import.
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert "<link" not in text and "@import" not in text and not re.search(r"url\(\s*['\"]?https?:", text)
    assert text.count("<script") == 3  # bundle, specs JSON, embed code
    assert text.count(bundle[:2000]) == 1 and text.count(bundle[-2000:]) == 1
    # Three charts cost the bundle once plus their specs, not three bundles.
    one = write_report(tmp_path / "one.html", title="one", sections=_sections()[:1], plan_rows=[])
    assert len(bundle) > 500_000
    assert report.stat().st_size < len(bundle) + 150_000
    assert report.stat().st_size - one.stat().st_size < 100_000


def test_report_tables_plan_lock_and_escaping(report):
    text = report.read_text()
    assert f"first {MAX_TABLE_ROWS} of 120 rows" in text
    assert text.count("<tr>") >= MAX_TABLE_ROWS  # the big table shows exactly 50 body rows
    big = text[text.index('id="s-big-table"'):]
    big = big[: big.index("</section>")]
    assert big.count("<tr>") == MAX_TABLE_ROWS + 1  # + header row
    assert ">49<" in big and ">50<" not in big
    assert "big &lt;table&gt;" in text and "big <table>" not in text
    assert "12 rows" in text and "10 rows" in text
    assert "2 nodes \u00b7 1 hits \u00b7 1 misses \u00b7 1.25 s operator time" in text
    assert text.count(">hit</span>") == 1 and text.count(">miss</span>") == 1
    assert 'title="a3f9c2d1e0b4a5968776655443322110">a3f9c2d1e0b4a596<' in text
    assert "<details><summary>Lock file</summary>" in text and "[nodes]" in text
    assert "demo.study" in text


def test_report_without_charts_has_no_javascript(tmp_path):
    p = write_report(tmp_path / "r.html", title="t", sections=[{"name": "x", "statement": "x = y",
                     "vega_lite": None, "table": None, "status": "cached", "seconds": 0.0}], plan_rows=[])
    assert "<script" not in p.read_text() and p.stat().st_size < 20_000


# ---------------------------------------------------------------------------- in a browser


def test_heatmap_renders_every_cell_with_its_value_and_diverging_colour(dom):
    chart = _chart_dom(dom, 0)
    assert 'data-rendered="ok"' in chart and "<svg" in chart and 'class="mark-rect' in chart
    labels = _labels(chart, "rect")
    assert len(labels) == len(HEAT) == 12
    got = {}
    for lab in labels:
        kv = dict(part.split(": ") for part in lab.split("; "))
        got[(int(kv["layer"]), int(kv["head"]))] = float(kv["effect"].replace("\u2212", "-"))
    assert got == HEAT
    fills = {}
    for lab, fill in re.findall(r'aria-label="([^"]*)"[^>]*aria-roledescription="rect mark"[^>]*fill="rgb\(([^)]*)\)"',
                                chart):
        kv = dict(part.split(": ") for part in lab.split("; "))
        fills[(int(kv["layer"]), int(kv["head"]))] = tuple(int(c) for c in fill.split(","))
    r, g, b = fills[(2, 3)]  # +2: the blue end of redblue
    assert b > r + 60
    r, g, b = fills[(1, 0)]  # -2: the red end
    assert r > b + 60
    r, g, b = fills[(0, 0)]  # 0: the neutral middle
    assert abs(r - b) < 15 and min(r, g, b) > 200


def test_line_chart_renders_one_line_per_series(dom):
    chart = _chart_dom(dom, 1)
    assert 'data-rendered="ok"' in chart and 'class="mark-line' in chart
    paths = re.findall(r'aria-roledescription="line mark" d="([^"]*)"', chart)
    assert len(paths) == 2
    assert all(p.count("L") == 4 for p in paths)  # 5 layers -> 5 vertices per line
    assert sorted(re.findall(r"series: (\w+)", " ".join(_labels(chart, "line")))) == ["attn_out", "resid_pre"]
    assert len(_labels(chart, "point")) == 10


def test_graph_renders_nodes_and_weighted_edges(dom):
    chart = _chart_dom(dom, 2)
    assert 'data-rendered="ok"' in chart and 'class="mark-rule' in chart
    rules = re.findall(r'aria-label="([^"]*)"[^>]*aria-roledescription="rule mark"[^>]*stroke-width="([\d.]+)"',
                       chart)
    assert len(rules) == EDGES.height
    width = {re.search(r"src: (\w+); dst: (\w+)", lab).groups(): float(w) for lab, w in rules}
    # Width grows with |weight|: 2.0 (L0H1->L1H2) > 1.5 > 1.0 > 0.7 > 0.5.
    order = sorted(width, key=width.get)
    assert order == [("embed", "L0H3"), ("L0H3", "L1H2"), ("embed", "L0H1"), ("L1H2", "logits"), ("L0H1", "L1H2")]
    nodes = sorted(re.search(r"node: (\w+)", lab).group(1) for lab in _labels(chart, "circle"))
    assert nodes == sorted(NODES["node"])


def test_screenshot_shows_the_charts(report, tmp_path):
    """The charts are painted, not only present in the DOM: look for their colours by region."""
    shot = tmp_path / "report.png"
    # Half scale: the whole page down to the graph fits in 500 x 1200 pixels, cheap to decode.
    res = _run_chromium(report, tmp_path, "--hide-scrollbars", "--force-device-scale-factor=0.5",
                        "--window-size=1000,2400", f"--screenshot={shot}")
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    w, _, bpp, rows = browser.png_decode(shot.read_bytes())
    assert (w, len(rows)) == (500, 1200)

    def count(y0: int, y1: int, test) -> int:  # pixels in rows y0..y1 for which test(r, g, b)
        return sum(bool(test(row[x], row[x + 1], row[x + 2]))
                   for row in rows[y0:y1] for x in range(0, w * bpp, bpp))

    def dark_red(r, g, b):  # the heatmap's -2 cell
        return r > 100 and r > 2 * b and g < 90

    def dark_blue(r, g, b):  # the heatmap's +2 cell
        return b > 100 and r < 60

    def orange(r, g, b):  # the line chart's second series (#f58518); no other chart uses orange
        return r > 200 and 100 < g < 170 and b < 80

    assert count(0, len(rows), dark_red) > 300 and count(0, len(rows), dark_blue) > 300
    assert count(0, len(rows), orange) > 50


# ---------------------------------------------------------------------------- headline, notes, mode


def test_report_is_readable_by_others(report):
    mode = stat.S_IMODE(report.stat().st_mode)
    assert mode == 0o666 & ~_umask() and mode & stat.S_IROTH


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m


def test_headline_empty_and_clipping_notes_are_shown(tmp_path):
    clipped = charts.render_heatmap(Artifact(tables={"result": HEAT_TABLE}, data={"chart": {"domain": [-1, 1]}}), "c")
    empty = charts.render_graph(Artifact(tables={"nodes": NODES.head(0), "edges": EDGES.head(0)},
                                         data={"empty": "ACDC pruned every edge at threshold 100."}), None)
    secs = [
        {"name": "versus", "statement": "versus = compare a with b", "vega_lite": None, "table": None,
         "status": "computed", "seconds": 0.1,
         "headline": [{"label": "Spearman \u03c1", "value": "0.912", "detail": "rank correlation"}]},
        {"name": "circuit", "statement": "circuit = discover circuit ...", "vega_lite": empty, "table": EDGES.head(0),
         "status": "computed", "seconds": 0.1, "empty": None},
        {"name": "clip", "statement": "clip = ...", "vega_lite": clipped, "table": None, "status": "cached", "seconds": 0},
    ]
    text = write_report(tmp_path / "r.html", title="t", sections=secs, plan_rows=PLAN).read_text()
    assert "<dt>Spearman \u03c1</dt><dd>0.912<small>rank correlation</small></dd>" in text
    # The empty chart is not drawn: its reason is shown instead, and the TOC says "empty".
    assert "Nothing to draw.</strong>ACDC pruned every edge at threshold 100." in text
    specs = json.loads(re.search(r'id="mechstudy-specs">(.*?)</script>', text).group(1).replace("\\u003c", "<"))
    assert len(specs) == 1 and 'id="chart-1"' not in text
    # HEAT spans -2..2 on a fixed -1..1 scale: the 4 cells beyond it are counted and outlined.
    assert "Clipped: 4 cells beyond the fixed colour scale [-1, 1] (data -2 to 2)" in text
    ring = next(view for view in clipped["layer"] if "transform" in view)
    assert ring["mark"]["stroke"] and ring["transform"][0]["filter"] == 'datum["effect"] < -1.0 || datum["effect"] > 1.0'


def test_header_and_plan_timings_agree(tmp_path):
    rows = [{"key": "a" * 32, "op": "patch", "label": "x", "status": "computed", "seconds": 1.5},
            {"key": "b" * 32, "op": "patch", "label": "y", "status": "computed", "seconds": 2.0},
            {"key": "c" * 32, "op": "model", "label": "m", "status": "cached", "seconds": 0.0, "computed_seconds": 9.0}]
    text = write_report(tmp_path / "r.html", title="t", sections=[], plan_rows=rows,
                        run={"seconds": 2.5}).read_text()
    assert "3 nodes \u00b7 1 hits \u00b7 2 misses \u00b7 3.50 s operator time" in text
    assert "2 computed in this run, 1 from the cache (3 in the plan)" in text
    assert "2.5 s wall-clock" in text and "3.50 s inside operators" in text and "parallel threads" in text
    assert "(9.00 s)" in text  # a cache hit shows what it cost when it was computed
