"""The HTML report of a study run, and chart export to PNG / SVG / PDF.

The report is one self-contained file that opens offline: the Vega, Vega-Lite and
vega-embed JavaScript (vl-convert's bundle, ~900 KB) is inlined ONCE, and each chart is
embedded as its Vega-Lite JSON spec, rendered in the browser as SVG. Altair's
``save(inline=True)`` would embed the bundle once per chart. Nothing in the page refers to
the network: no CDN scripts, no web fonts, no chart data URLs.

>>> import polars as pl, tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> p = write_report(d / "r.html", title="demo", plan_rows=[],
...                  sections=[{"name": "t", "statement": "t = ...", "vega_lite": None,
...                             "table": pl.DataFrame({"a": [1, 2]}), "status": "cached", "seconds": 0.0}])
>>> "2 rows" in p.read_text()
True
"""

from __future__ import annotations

import functools
import html
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

MAX_TABLE_ROWS = 50  # rows shown per table; the full row count is printed beside it
OPEN_TABLE_ROWS = 12  # tables up to this many rows start unfolded
_CELL_CHARS = 80  # longer cells (lists, long strings) are cut, with an ellipsis

# ---------------------------------------------------------------------------- JavaScript


def _vl_version(schema_url: str | None) -> str | None:
    """'https://vega.github.io/schema/vega-lite/v6.4.1.json' -> '6.4' when vl-convert has it."""
    import vl_convert as vlc

    m = re.search(r"/v(\d+)\.(\d+)", schema_url or "")
    if not m:
        return None
    want = f"{m.group(1)}.{m.group(2)}"
    return want if want in vlc.get_vegalite_versions() else None


@functools.lru_cache(maxsize=None)
def vega_bundle() -> str:
    """Vega + Vega-Lite + vega-embed as one script, assigning `vegaEmbed` etc. to `window`.

    Built by vl-convert (no network); the Vega-Lite version matches the one Altair targets.
    """
    import os
    import tempfile

    import altair as alt
    import vl_convert as vlc

    vl = _vl_version(f"/{alt.SCHEMA_VERSION}")
    # Building the bundle takes ~7 s on a 2-core machine; it depends only on the versions, so it is
    # kept on disk (a warm rerun must take seconds, not be dominated by re-bundling JavaScript).
    cache_dir = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mechstudy"
    cached = cache_dir / f"vega-bundle-{getattr(vlc, '__version__', 'x')}-{vl}.js"
    try:
        return cached.read_text()
    except OSError:
        pass
    js = vlc.javascript_bundle(vl_version=vl)
    # A literal "</script" inside the inlined code would end the <script> element early.
    js = js.replace("</script", "<\\/script")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(js)
        os.replace(tmp, cached)
    except OSError:
        pass
    return js


_EMBED_JS = """
(function () {
  var specs = JSON.parse(document.getElementById("mechstudy-specs").textContent);
  var done = Object.keys(specs).map(function (id) {
    var el = document.getElementById(id);
    // Export buttons only: the source/editor actions would link to the web.
    return vegaEmbed(el, specs[id], {renderer: "svg", mode: "vega-lite",
                                     actions: {export: true, source: false, compiled: false, editor: false}})
      .then(function () {
        // The rendered size and page position, for readers of the DOM (the browser test).
        var svg = el.querySelector("svg"), box = svg ? svg.getBoundingClientRect() : null;
        if (box) {
          el.setAttribute("data-x", Math.round(box.left + window.scrollX));
          el.setAttribute("data-y", Math.round(box.top + window.scrollY));
          el.setAttribute("data-width", Math.round(box.width));
          el.setAttribute("data-height", Math.round(box.height));
        }
        el.setAttribute("data-rendered", "ok");
      })
      .catch(function (err) {
        el.setAttribute("data-rendered", "error");
        el.textContent = "This chart failed to render: " + err;
        console.error("mechstudy: chart " + id + " failed: " + err);
      });
  });
  Promise.all(done).then(function () {
    document.body.setAttribute("data-page-height", document.documentElement.scrollHeight);
    document.body.setAttribute("data-page-width", document.documentElement.scrollWidth);
  });
})();
"""


def _json_for_script(obj: Any) -> str:
    """JSON safe inside <script>: no NaN (invalid JSON), no '<' (could close the element)."""
    return json.dumps(_finite(obj), separators=(",", ":")).replace("<", "\\u003c")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------- HTML pieces

_CSS = """
:root { --fg:#1f2933; --muted:#5f6b7a; --line:#e4e7eb; --bg:#ffffff; --soft:#f5f7fa;
        --hit:#2f855a; --hitbg:#e6f4ea; --miss:#9c5d00; --missbg:#fdf3e1; --accent:#2b6cb0; --warn:#fff8e6; }
* { box-sizing: border-box; }
body { margin:0; background:var(--soft); color:var(--fg);
       font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif; }
.layout { display:flex; align-items:flex-start; max-width:1440px; margin:0 auto; }
nav.toc { position:sticky; top:0; flex:0 0 250px; max-height:100vh; overflow-y:auto; padding:28px 8px 24px 20px;
          font-size:13px; }
nav.toc h2 { font-size:12px; text-transform:uppercase; letter-spacing:.06em; color:var(--muted); margin:0 0 8px; }
nav.toc ol { list-style:none; margin:0; padding:0; }
nav.toc li { margin:0 0 6px; }
nav.toc a { color:var(--accent); text-decoration:none; font-weight:600; }
nav.toc a:hover { text-decoration:underline; }
nav.toc .hl { display:block; color:var(--muted); font-size:12px; overflow:hidden; text-overflow:ellipsis; white-space:nowrap; }
.dot { display:inline-block; width:8px; height:8px; border-radius:4px; margin-right:6px; vertical-align:middle; }
.dot.hit { background:var(--hit); } .dot.miss { background:#dd8a00; }
main { flex:1 1 auto; min-width:0; max-width:1160px; padding:24px 28px 64px; }
header h1 { margin:0 0 6px; font-size:26px; line-height:1.25; }
.runfacts { display:grid; grid-template-columns:max-content 1fr; gap:2px 16px; margin:10px 0 0; font-size:14px; }
.runfacts dt { font-weight:600; } .runfacts dd { margin:0; color:var(--muted); }
section.card { background:var(--bg); border:1px solid var(--line); border-radius:8px; padding:16px 20px; margin:18px 0; }
section.card h2 { margin:0; font-size:19px; display:flex; align-items:center; gap:10px; flex-wrap:wrap; }
.meta { font-size:13px; color:var(--muted); font-weight:400; }
pre { background:var(--soft); border:1px solid var(--line); border-radius:6px; padding:8px 12px; white-space:pre-wrap;
      word-break:break-word; font:13px/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; margin:10px 0; }
.figure { display:flex; flex-wrap:wrap; gap:16px 28px; align-items:flex-start; margin:12px 0 4px; }
.charts { flex:0 1 auto; min-width:0; max-width:100%; }
.chart { overflow-x:auto; min-height:40px; }
aside.headline { flex:0 0 270px; background:var(--soft); border:1px solid var(--line); border-radius:8px; padding:10px 14px; }
aside.headline h3 { margin:0 0 6px; font-size:12px; text-transform:uppercase; letter-spacing:.06em; color:var(--muted); }
aside.headline dl { margin:0; }
aside.headline dt { font-size:13px; color:var(--muted); margin-top:6px; }
aside.headline dd { margin:0; font-size:20px; font-weight:600; font-variant-numeric:tabular-nums; line-height:1.3; }
aside.headline dd.long { font-size:14px; font-weight:500; white-space:pre-line; }
aside.headline dd small { display:block; font-size:12px; font-weight:400; color:var(--muted); }
.empty { background:var(--warn); border:1px solid #f3d28b; border-radius:6px; padding:10px 14px; margin:12px 0; }
.empty strong { display:block; }
.note { font-size:12px; color:var(--muted); margin:4px 0 0; }
.note.clipped { color:#8a3b00; font-weight:600; }
.badge { display:inline-block; font-size:12px; font-weight:600; padding:1px 8px; border-radius:10px; }
.badge.hit { color:var(--hit); background:var(--hitbg); }
.badge.miss { color:var(--miss); background:var(--missbg); }
.badge.other { color:var(--muted); background:var(--soft); }
.tablewrap { display:inline-block; max-width:100%; overflow-x:auto; max-height:480px; overflow-y:auto;
             border:1px solid var(--line); border-radius:6px; }
table { border-collapse:collapse; font-size:13px; width:max-content; }
th, td { padding:4px 10px; border-bottom:1px solid var(--line); text-align:left; white-space:nowrap; }
th { position:sticky; top:0; background:var(--soft); font-weight:600; }
th .dtype { display:block; font-weight:400; color:var(--muted); font-size:11px; }
th.num, td.num { text-align:right; font-variant-numeric:tabular-nums; }
tbody tr:nth-child(even) { background:#fafbfc; }
.caption { font-size:12px; color:var(--muted); margin:6px 0 0; }
details.table { margin:10px 0 0; }
details > summary { cursor:pointer; font-weight:600; font-size:14px; margin-bottom:6px; }
#plan .tablewrap { display:block; max-height:none; overflow:visible; }
#plan table { width:100%; table-layout:fixed; }
#plan td, #plan th { white-space:normal; overflow-wrap:anywhere; vertical-align:top; }
#plan col.op { width:140px; } #plan col.key { width:150px; } #plan col.cache { width:90px; } #plan col.time { width:120px; }
#plan td.label { font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; }
footer { color:var(--muted); font-size:12px; margin-top:32px; }
@media (max-width: 1100px) { .layout { display:block; } nav.toc { position:static; max-height:none; padding:20px 28px 0; }
                             nav.toc ol { columns:2; } }
"""


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _badge(status: str | None, words: tuple[str, str] = ("cached", "computed")) -> str:
    """A coloured status label; `words` are the texts shown for a cache hit and a miss."""
    s = (status or "").lower()
    if s in ("cached", "hit"):
        return f'<span class="badge hit" title="read from the cache">{words[0]}</span>'
    if s in ("computed", "miss"):
        return f'<span class="badge miss" title="computed in this run">{words[1]}</span>'
    return f'<span class="badge other">{_esc(status or "?")}</span>'


def _seconds(s: Any) -> str:
    if s is None:
        return ""
    try:
        return f"{float(s):.2f} s"
    except (TypeError, ValueError):
        return _esc(s)


def _cell(v: Any) -> tuple[str, bool]:
    """(escaped text, is_number) for one table cell."""
    if v is None:
        return '<span class="meta">null</span>', False
    if isinstance(v, bool):
        return str(v).lower(), False
    if isinstance(v, float):
        return (f"{v:.6g}" if math.isfinite(v) else str(v)), True
    if isinstance(v, int):
        return str(v), True
    text = str(v)
    if len(text) > _CELL_CHARS:
        text = text[: _CELL_CHARS - 1] + "\u2026"
    return _esc(text), False


def _table_html(df: Any, open_rows: int = OPEN_TABLE_ROWS) -> str:
    """A polars DataFrame as a (collapsible) HTML table: the first MAX_TABLE_ROWS rows and the
    row count. Tables of up to `open_rows` rows start open."""
    n = df.height
    head = df.head(MAX_TABLE_ROWS)
    num_th = '<th class="num">'
    cols = "".join(f'{num_th if t.is_numeric() else "<th>"}{_esc(c)}<span class="dtype">{_esc(t)}</span></th>'
                   for c, t in df.schema.items())
    rows = []
    for row in head.iter_rows():
        cells = []
        for v in row:
            text, num = _cell(v)
            cells.append(f'<td class="num">{text}</td>' if num else f"<td>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    shown = f"first {head.height} of {n:,} rows" if n > head.height else f"{n:,} row{'s' if n != 1 else ''}"
    size = f"{shown} \u00b7 {df.width} column{'s' if df.width != 1 else ''}"
    return (f'<details class="table"{" open" if n <= open_rows else ""}><summary>Table \u00b7 {size}</summary>'
            f'<div class="tablewrap"><table><thead><tr>{cols}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>'
            f'<p class="caption">{size}</p></details>')


def _slug(name: str, seen: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "section"
    slug, i = f"s-{base}", 2
    while slug in seen:
        slug, i = f"s-{base}-{i}", i + 1
    seen.add(slug)
    return slug


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'s' if n != 1 else ''}"


def _timing(plan_rows: list[Mapping]) -> tuple[int, int, float]:
    """(computed, cached, operator seconds of the computed nodes) of a plan."""
    computed = [r for r in plan_rows if str(r.get("status", "")).lower() in ("computed", "miss")]
    op_s = sum(float(r.get("seconds") or 0.0) for r in computed)
    return len(computed), len(plan_rows) - len(computed), op_s


def _header_html(title: str, run: Mapping, plan_rows: list[Mapping], summary: Any) -> str:
    facts: list[tuple[str, str]] = []
    if run.get("study"):
        facts.append(("study", str(run["study"])))
    n_comp, n_cached, op_s = _timing(plan_rows)
    if plan_rows:
        facts.append(("nodes", f"{n_comp} computed in this run, {n_cached} from the cache "
                               f"({len(plan_rows)} in the plan)"))
    if run.get("seconds") is not None:
        wall = float(run["seconds"])
        why = ("more than the wall time because nodes ran in parallel threads" if op_s > wall else
               "the rest of the wall time is checking, planning and reading and writing the cache")
        facts.append(("time", f"{wall:.1f} s wall-clock for the run (until this report was written); "
                              f"{op_s:.2f} s inside operators, summed over the nodes computed (the plan's total "
                              f"below): {why}."))
    elif plan_rows:
        facts.append(("time", f"{op_s:.2f} s inside operators"))
    for k in ("device", "cache", "when"):
        if run.get(k):
            facts.append((k, str(run[k])))
    if isinstance(summary, Mapping):
        facts.extend((str(k), str(v)) for k, v in summary.items())
    dl = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in facts)
    para = "" if summary is None or isinstance(summary, Mapping) else "".join(
        f'<p class="meta">{_esc(p)}</p>' for p in str(summary).split("\n\n") if p.strip())
    return f"<header><h1>{_esc(title)}</h1>{para}" + (f'<dl class="runfacts">{dl}</dl>' if dl else "") + "</header>"


def _plan_html(plan_rows: list[Mapping]) -> str:
    n_comp, n_cached, op_s = _timing(plan_rows)
    rows = []
    for r in plan_rows:
        key = str(r.get("key", ""))
        computed = str(r.get("status", "")).lower() in ("computed", "miss")
        before = r.get("computed_seconds")
        time = (_seconds(r.get("seconds")) if computed else
                (f'<span class="meta" title="compute time when it was computed">({_seconds(before)})</span>'
                 if before is not None else '<span class="meta">\u2013</span>'))
        rows.append(
            f'<tr><td>{_esc(r.get("op", ""))}</td><td class="label">{_esc(r.get("label", ""))}</td>'
            f'<td><code title="{_esc(key)}">{_esc(key[:16])}</code></td>'
            f'<td>{_badge(r.get("status"), ("hit", "miss"))}</td><td class="num">{time}</td></tr>')
    return (f'<section class="card" id="plan"><h2>Plan <span class="meta">{_plural(len(plan_rows), "node")} \u00b7 '
            f'{n_cached} hits \u00b7 {n_comp} misses \u00b7 {op_s:.2f} s operator time</span></h2>'
            '<p class="note">Operator time is the sum of the times of the nodes computed in this run; a cache hit '
            'costs nothing now (its original compute time is shown in brackets).</p>'
            '<div class="tablewrap"><table><colgroup><col class="op"><col><col class="key"><col class="cache">'
            '<col class="time"></colgroup><thead><tr><th>op</th><th>node</th><th>key</th><th>cache</th>'
            f'<th class="num">time</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div></section>')


def _headline_items(sec: Mapping) -> list[tuple[str, str, str]]:
    out = []
    for h in sec.get("headline") or ():
        if isinstance(h, Mapping):
            out.append((str(h.get("label", "")), str(h.get("value", "")), str(h.get("detail", ""))))
        elif isinstance(h, (tuple, list)):
            out.append((str(h[0]), str(h[1]), str(h[2]) if len(h) > 2 else ""))
        else:
            out.append((str(getattr(h, "label", "")), str(getattr(h, "value", "")), str(getattr(h, "detail", ""))))
    return out


def _headline_html(items: list[tuple[str, str, str]]) -> str:
    if not items:
        return ""
    parts = []
    for label, value, detail in items:
        cls = ' class="long"' if len(value) > 14 else ""
        small = f"<small>{_esc(detail)}</small>" if detail else ""
        parts.append(f"<dt>{_esc(label)}</dt><dd{cls}>{_esc(value)}{small}</dd>")
    return f'<aside class="headline"><h3>Headline</h3><dl>{"".join(parts)}</dl></aside>'


def _chart_notes(spec: Mapping) -> dict:
    return dict((spec.get("usermeta") or {}).get("mechstudy") or {})


def _section_html(sec: Mapping, slug: str, charts: list[tuple[str, Mapping]]) -> str:
    parts = [f'<section class="card" id="{slug}"><h2>{_esc(sec.get("name", ""))} {_badge(sec.get("status"))}'
             f'<span class="meta">{_seconds(sec.get("seconds"))}</span></h2>']
    if sec.get("statement"):
        parts.append(f'<pre class="statement">{_esc(sec["statement"])}</pre>')
    empty = sec.get("empty") or next((_chart_notes(s).get("empty") for _, s in charts if _chart_notes(s).get("empty")), None)
    if empty:
        parts.append(f'<div class="empty"><strong>Nothing to draw.</strong>{_esc(empty)}</div>')
    drawn = [(cid, s) for cid, s in charts if not _chart_notes(s).get("empty")]
    head = _headline_html(_headline_items(sec))
    if drawn or head:
        boxes = "".join(f'<div class="chart" id="{cid}"></div>' for cid, _ in drawn)
        parts.append('<div class="figure">' + (f'<div class="charts">{boxes}</div>' if boxes else "") + f"{head}</div>")
    for _, s in drawn:
        notes = _chart_notes(s)
        if notes.get("clipped"):
            parts.append(f'<p class="note clipped">Clipped: {_esc(notes["clipped"])}.</p>')
        if notes.get("scale"):
            parts.append(f'<p class="note">{_esc(notes["scale"])}.</p>')
    if sec.get("table") is not None:
        parts.append(_table_html(sec["table"]))
    parts.append("</section>")
    return "".join(parts)


def _toc_html(entries: list[tuple[str, str, str | None, str]]) -> str:
    items = []
    for slug, name, status, hl in entries:
        dot = ""
        if status:
            dot = f'<span class="dot {"hit" if status in ("cached", "hit") else "miss"}" title="{_esc(status)}"></span>'
        items.append(f'<li>{dot}<a href="#{slug}">{_esc(name)}</a>'
                     + (f'<span class="hl">{_esc(hl)}</span>' if hl else "") + "</li>")
    return f'<nav class="toc" aria-label="Contents"><h2>Contents</h2><ol>{"".join(items)}</ol></nav>'


def render_report(*, title: str, sections: Iterable[Mapping], plan_rows: Iterable[Mapping],
                  lock: str | Mapping | None = None, summary: str | Mapping | None = None,
                  run: Mapping | None = None) -> str:
    """The report as an HTML string (see `write_report`)."""
    sections, plan_rows, run = list(sections), list(plan_rows), dict(run or {})
    seen: set[str] = {"plan", "lock"}
    specs: dict[str, Any] = {}
    body, toc = [], []
    for sec in sections:
        slug = _slug(str(sec.get("name", "section")), seen)
        charts = []
        for spec in [sec.get("vega_lite"), *sec.get("more_charts", ())]:
            if spec:
                cid = f"chart-{len(specs)}"
                charts.append((cid, spec))
                if not _chart_notes(spec).get("empty"):
                    specs[cid] = spec
        body.append(_section_html(sec, slug, charts))
        items = _headline_items(sec)
        hl = ""
        if items:
            label, value = items[0][0], items[0][1].splitlines()[0] if items[0][1] else ""
            hl = f"top: {value}" if label.startswith(("largest", "smallest")) else f"{label} {value}"
        elif sec.get("empty"):
            hl = "empty"
        toc.append((slug, str(sec.get("name", "")), sec.get("status"), hl))
    toc.append(("plan", "Plan", None, f"{len(plan_rows)} nodes"))
    body.append(_plan_html(plan_rows))
    if lock is not None:
        text = lock if isinstance(lock, str) else json.dumps(lock, indent=2, sort_keys=True, default=str)
        toc.append(("lock", "Lock file", None, ""))
        body.append(f'<section class="card" id="lock"><details><summary>Lock file</summary>'
                    f"<pre>{_esc(text)}</pre></details></section>")
    scripts = ""
    if specs:  # a report without charts needs no JavaScript at all
        scripts = (f"<script>{vega_bundle()}</script>\n"
                   f'<script type="application/json" id="mechstudy-specs">{_json_for_script(specs)}</script>\n'
                   f"<script>{_EMBED_JS}</script>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head>\n<body><div class=\"layout\">"
        + _toc_html(toc) + "<main>" + _header_html(title, run, plan_rows, summary) + "\n"
        + "\n".join(body)
        + '<footer>Written by mechstudy. Opens offline: all scripts are inlined. Each chart\u2019s menu '
          '(\u2026) saves it as PNG or SVG; so does <code>study export STUDY NAME</code>.</footer>'
        f"</main></div>\n{scripts}\n</body></html>\n"
    )


def write_report(path: str | os.PathLike, *, title: str, sections: Iterable[Mapping],
                 plan_rows: Iterable[Mapping], lock: str | Mapping | None = None,
                 summary: str | Mapping | None = None, run: Mapping | None = None) -> Path:
    """Write the study's HTML report (readable by others: mode 0644 under the usual umask).

    Args:
        path: the .html file to write (parent folders are created; written atomically).
        title: page title, usually the study's title.
        sections: one dict per result: {name, statement (source text), vega_lite (dict or
            None), more_charts, table (polars DataFrame or None), status ("computed" |
            "cached"), seconds, headline (items with label, value, detail), empty (why the
            result is empty, or None)}.
        plan_rows: one dict per plan node: {key, op, label, status, seconds, computed_seconds}.
        lock: the lock file's text (or its dict), shown collapsed.
        summary: a paragraph (str) or a {label: value} mapping shown under the title.
        run: facts about the run for the header: study, seconds (wall time), device, cache.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = render_report(title=title, sections=sections, plan_rows=plan_rows, lock=lock, summary=summary, run=run)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a report is meant to be shared
        os.replace(tmp, path)  # a crash never leaves a half-written report
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def export_chart(vega_lite: Mapping, path: str | os.PathLike, *, scale: float = 2.0) -> Path:
    """Render a Vega-Lite spec to PNG, SVG or PDF (chosen by the suffix) with vl-convert, offline.

    `scale` multiplies the PNG's pixel size (2.0: sharp on high-density screens).
    """
    import vl_convert as vlc

    path = Path(path)
    spec = _finite(dict(vega_lite))
    version = _vl_version(spec.get("$schema"))
    suffix = path.suffix.lower()
    if suffix == ".png":
        payload: bytes | str = vlc.vegalite_to_png(spec, vl_version=version, scale=scale)
    elif suffix == ".svg":
        payload = vlc.vegalite_to_svg(spec, vl_version=version)
    elif suffix == ".pdf":
        payload = vlc.vegalite_to_pdf(spec, vl_version=version)
    else:
        raise ValueError(f"cannot export a chart to {path.name!r}: use a .png, .svg or .pdf file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(payload, str):
        path.write_text(payload, encoding="utf-8")
    else:
        path.write_bytes(payload)
    return path
