"""The report of a real study (the zoo's mini on IOI) in headless chromium, as a reader sees it.

Per chart: rendered, at a legible size (heatmap cells at least 24 px wide and 16 px tall, the
whole chart at least 200 x 100 px), and no console message at all. The headline beside each
chart shows the numbers the operator stored; an ACDC result that pruned every edge says so
instead of drawing an empty box; position axes carry the prompt's tokens; the page never scrolls
sideways. Screenshots (the whole page, and each chart cropped) are left in out/screenshots/.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import browser
from mechstudy.engine.results import gather
from mechstudy.engine.run import run_study
from mechstudy.engine.store import Store

STUDY = """\
study "Report showcase"

model m = zoo "mini"
dataset ioi = ioi(n=8, seed=0, template=0)

base    = evaluate m on ioi with logit_diff
heads   = patch heads in all layers of m on ioi with logit_diff
resid   = patch resid at every position in all layers of m on ioi with logit_diff
atp     = attribute heads in all layers of m on ioi with logit_diff noising
heads_n = patch heads in all layers of m on ioi with logit_diff noising
versus  = compare atp with heads_n
circuit = discover circuit of m on ioi with kl threshold [0.03, 100]
"""
WIDTH = 1400


@pytest.fixture(scope="module")
def showcase(tmp_path_factory):
    d = tmp_path_factory.mktemp("showcase")
    (d / "showcase.study").write_text(STUDY)
    res = run_study(d / "showcase.study", cache=d / "cache", device="cpu", out_dir=d / "out")
    return res, Store(d / "cache")


@pytest.fixture(scope="module")
def page(showcase, tmp_path_factory):
    res, _ = showcase
    tmp = tmp_path_factory.mktemp("chromium")
    got = browser.run(res.report, tmp, "--dump-dom", f"--window-size={WIDTH},1200")
    assert got.returncode == 0, got.stderr[-2000:]
    return got.stdout, browser.console(got.stderr)


def test_every_chart_renders_legibly_without_console_messages(page):
    dom, console = page
    assert console == []
    boxes = browser.chart_boxes(dom)
    # heads, resid, atp, heads_n, versus, circuit[0.03]; circuit[100] is empty and not drawn.
    assert len(boxes) == 6
    for b in boxes:
        assert b.rendered == "ok", b
        assert b.width >= 200 and b.height >= 100, b
        assert b.x >= 0 and b.x + b.width <= WIDTH, b
    assert int(re.search(r'data-page-width="(\d+)"', dom).group(1)) <= WIDTH  # no sideways scrolling


def _cells(dom: str, chart_id: str) -> list[tuple[float, float]]:
    start = dom.index(f'id="{chart_id}"')
    frag = dom[start:dom.find("</section>", start)]
    return [(float(w), float(h)) for w, h in
            re.findall(r'aria-roledescription="rect mark" d="M[\d.-]+,[\d.-]+h([\d.]+)v([\d.]+)', frag)]


def test_heatmap_cells_are_legible(page, showcase):
    dom, _ = page
    res, store = showcase
    n_resid = next(p for p in gather(res.plan, store) if p.name == "resid").table.height
    heads = _cells(dom, "chart-0")
    assert len(heads) == 12  # 3 layers x 4 heads
    assert all(w >= 24 and h >= 16 for w, h in heads), heads[:3]
    resid = _cells(dom, "chart-1")
    assert len(resid) == n_resid and n_resid % 3 == 0 and all(w >= 18 and h >= 16 for w, h in resid)


def test_position_axis_shows_the_tokens(page, showcase):
    dom, _ = page
    res, store = showcase
    resid = next(p for p in gather(res.plan, store) if p.name == "resid")
    tokens = resid.tokens
    assert tokens and len(tokens) == resid.table["position"].n_unique()
    # template=0: prompts share every word but the names, place and object (those are marked *).
    assert 0 < sum(t.endswith("*") for t in tokens) < len(tokens) // 2
    start = dom.index('id="chart-1"')
    labels = re.findall(r'<text[^>]*>([^<]*)</text>', dom[start:dom.find("</section>", start)])
    for p in (3, 7):
        assert f"{p} {tokens[p]}".replace("  ", " ").strip() in [re.sub(r"\s+", " ", t).strip() for t in labels]


def test_headline_shows_the_stored_numbers(page, showcase):
    dom, _ = page
    res, store = showcase
    points = {p.label: p for p in gather(res.plan, store)}
    versus = points["versus"].artifact.data
    sec = dom[dom.index('id="s-versus"'):]
    sec = sec[:sec.index("</section>")]
    assert f"<dd>{versus['spearman']:.3g}<small>" in sec and f"<dd>{versus['pearson']:.3g}</dd>" in sec
    kept = points["circuit [threshold=0.03]"].artifact.data
    sec = dom[dom.index('id="s-circuit-threshold-0-03"'):]
    assert f"{kept['edges_kept']} of {kept['edges_total']}" in sec[:sec.index("</section>")]
    # The result that pruned everything explains itself instead of drawing an empty box.
    sec = dom[dom.index('id="s-circuit-threshold-100-0"'):]
    sec = sec[:sec.index("</section>")]
    assert points["circuit [threshold=100.0]"].artifact.data["edges_kept"] == 0
    assert "Nothing to draw." in sec and "ACDC pruned every edge" in sec and 'class="chart"' not in sec
    # The patching result's headline names its largest units, as the table has them.
    top = points["heads"].table.sort("effect", descending=True, nulls_last=True).row(0, named=True)
    sec = dom[dom.index('id="s-heads"'):]
    assert f"L{top['layer']}H{top['head']}" in sec[:sec.index("</section>")]


def test_header_timing_matches_the_run(showcase):
    res, _ = showcase
    text = Path(res.report).read_text()
    assert f"{res.seconds:.1f} s wall-clock" in text
    assert f"{res.computed} computed in this run, {res.from_cache} from the cache" in text


def test_screenshots(page, showcase, tmp_path):
    """The page as painted: charts where the DOM says they are, in colour. Saved for people."""
    dom, _ = page
    res, _ = showcase
    height = min(browser.page_height(dom), 12000)
    shot = tmp_path / "page.png"
    got = browser.run(res.report, tmp_path, f"--window-size={WIDTH},{height}", f"--screenshot={shot}")
    assert got.returncode == 0 and shot.exists(), got.stderr[-2000:]
    png = browser.png_decode(shot.read_bytes())
    browser.SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, browser.SHOTS / "report-full.png")
    for b in browser.chart_boxes(dom):
        box = (b.x, b.y, b.width, b.height)
        (browser.SHOTS / f"report-{b.id}.png").write_bytes(browser.crop(png, *box))
        # Every chart paints something other than white / near-white background inside its box.
        assert browser.count(png, lambda r, g, bl: max(r, g, bl) < 200, box) > 200, b
    heads = browser.chart_boxes(dom)[0]
    blue = browser.count(png, lambda r, g, b: b > 120 and r < 90, (heads.x, heads.y, heads.width, heads.height))
    assert blue > 400  # the strongest heads are dark blue cells, each at least 24 x 16 px


def test_study_export_png_and_svg(showcase, tmp_path, capsys):
    from mechstudy.engine.cli import main

    res, store = showcase
    study, cache = res.plan.study.path, str(store.root)
    assert main(["export", study, "resid", "--cache", cache, "-o", str(tmp_path), "--format", "svg"]) == 0
    svg = (tmp_path / "resid.svg").read_text()
    resid = next(p for p in gather(res.plan, store) if p.name == "resid")
    assert svg.count('aria-roledescription="rect mark"') == resid.table.height
    assert f">3 {resid.tokens[3].strip()}<" in svg.replace("&#39;", "'")  # token labels come along
    assert main(["export", study, "circuit", "--cache", cache, "-o", str(tmp_path)]) == 0
    png = (tmp_path / "circuit-threshold=0.03.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "circuit-threshold=100.0.png").exists()
    assert main(["export", study, "circuits", "--cache", cache]) == 1
    assert "did you mean 'circuit'?" in capsys.readouterr().err
    assert main(["export", study, "base", "--cache", cache, "-o", str(tmp_path)]) == 1  # no chart


def test_study_show_prints_the_headline_before_the_table(showcase, capsys):
    from mechstudy.engine.cli import main

    res, store = showcase
    versus = next(p for p in gather(res.plan, store) if p.name == "versus").artifact.data
    assert main(["show", res.plan.study.path, "versus", "--cache", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert f"  Spearman \u03c1: {versus['spearman']:.3g}  (rank correlation)" in out
    assert out.index("Spearman") < out.index("shape: (")
    assert main(["show", res.plan.study.path, "circuit", "--cache", str(store.root)]) == 0
    assert "circuit [threshold=100.0]: empty: ACDC pruned every edge" in capsys.readouterr().out


def test_noising_headline_lists_the_smallest_effects(page, showcase):
    dom, _ = page
    res, store = showcase
    t = next(p for p in gather(res.plan, store) if p.name == "heads_n").table
    low = t.sort("effect").row(0, named=True)
    sec = dom[dom.index('id="s-heads_n"'):]
    sec = sec[:sec.index("</section>")]
    assert "smallest effect (noising: low = necessary" in sec and f"L{low['layer']}H{low['head']}" in sec
    assert low["effect"] < 0.8  # on mini a head of layer 0 is necessary; the rest stay near 1
