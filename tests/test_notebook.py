"""A notebook runs headless in a real Jupyter kernel (nbclient + ipykernel): `import mechstudy
as ms`, `ms.run`, `.table` / `.chart` / `.tensor`, rich display, and the `%%study` cell magic
against the same cache (so the magic's run computes nothing)."""

from __future__ import annotations

import json
import re
import sys

import nbformat
import pytest
from nbclient import NotebookClient

import mechstudy as ms

BODY = """\
model m = zoo "mini"
dataset ioi = ioi(n=8, seed=0)

base  = evaluate m on ioi with logit_diff
heads = patch heads in all layers of m on ioi with logit_diff
"""


def _outputs(cell) -> tuple[str, dict]:
    """(stdout + text/plain results, {mimetype: joined data}) of one executed cell."""
    text, data = [], {}
    for o in cell.outputs:
        if o.output_type == "stream":
            text.append(o.text)
        elif o.output_type in ("execute_result", "display_data"):
            for k, v in o.data.items():
                data[k] = data.get(k, "") + (v if isinstance(v, str) else json.dumps(v))
            text.append(o.data.get("text/plain", ""))
        elif o.output_type == "error":
            pytest.fail(f"cell failed: {o.ename}: {o.evalue}\n" + "\n".join(o.traceback))
    return "".join(text), data


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    d = tmp_path_factory.mktemp("nb")
    (d / "x.study").write_text('study "notebook test"\n\n' + BODY)
    cache = str(d / "cache")
    cells = [
        f"import mechstudy as ms\nres = ms.run('x.study', cache={cache!r}, device='cpu')\nprint(res.summary())",
        "t = res['heads'].table\nprint(t.shape, round(t['effect'].max(), 6))",
        "print(type(res['heads'].chart).__name__, tuple(res['heads'].tensor.shape))",
        "res['heads']",
        "%load_ext mechstudy",
        f"%%study --cache {cache} --name again\n{BODY}",
        "print(again.summary()); print(again['heads'].table.equals(res['heads'].table))",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(d)}})
    client.execute()
    return nb, d


def test_run_table_chart_tensor(executed):
    nb, d = executed
    out, _ = _outputs(nb.cells[0])
    assert "computed" in out and "0 from cache" in out and (d / "out" / "x" / "report.html").is_file()
    # The kernel's numbers are the store's: read the same results here, in this process.
    here = ms.run(d / "x.study", cache=d / "cache", device="cpu", report=False)
    assert here.run.computed == 0
    t = here["heads"].table
    out, _ = _outputs(nb.cells[1])
    assert out.strip() == f"{t.shape} {round(t['effect'].max(), 6)}" and t.shape == (12, 4)
    out, _ = _outputs(nb.cells[2])
    assert out.strip() == "LayerChart (3, 4)"  # a 3 x 4 heatmap: cells and their printed values


def test_rich_display_shows_headline_chart_and_table(executed):
    nb, _ = executed
    _, data = _outputs(nb.cells[3])
    html = data["text/html"]
    assert '<aside class="headline">' in html and "largest |effect|" in html
    # The first chart of the session inlines the Vega bundle: it renders offline, nothing fetched.
    assert "vegaEmbed(" in html and len(html) > 500_000 and not re.search(r"<script[^>]+src=", html)
    assert "<table>" in html and "<th>layer" in html.replace('<th class="num">', "<th>")


def test_study_cell_magic_uses_the_same_cache(executed):
    nb, _ = executed
    _, data = _outputs(nb.cells[5])
    assert "0 computed" in data["text/html"]
    out, _ = _outputs(nb.cells[6])
    lines = out.strip().splitlines()
    assert lines[0].startswith("0 computed,") and lines[1] == "True"


def test_kernel_runs_this_interpreter():
    # ipykernel's native "python3" kernel is sys.executable, so the kernel sees this venv.
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.argv[0] in (sys.executable, "python") or spec.argv[0].endswith("python")
