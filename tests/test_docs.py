"""The docs cannot drift: docs/language.md is what the grammar and registries generate, and every
example in docs/ and the README runs as written.

Fenced blocks are examples by their language tag:
- ```study: a study. With a first line `# file: NAME` it is written to NAME (later blocks may
  rewrite it) for the console blocks to check and run (a deliberate mistake can only be shown
  this way: `$ study check typo.study  # exits 1`); without one it is checked here.
- ```console: `$ study ...` commands, run in order in the same folder; a command exits 0 unless
  its comment says `# exits N`; the lines after a command that do not start with `$` must
  appear in its output.
- ```python: run in order, in the same folder.
Other tags (```sh set-up commands that CI itself runs, ```text syntax summaries) are not run.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from pathlib import Path

import pytest

from mechstudy.engine import cli

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks(path: Path) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(path.read_text())]


def test_language_reference_is_generated(stdlib_loaded):
    from mechstudy.engine.docs import language_reference

    assert (ROOT / "docs/language.md").read_text() == language_reference(), (
        "regenerate it: .venv/bin/python -m mechstudy.engine.docs language > docs/language.md")


def test_language_reference_covers_the_grammar_and_registries(stdlib_loaded):
    from mechstudy.engine import spec
    from mechstudy.engine.docs import grammar_keywords

    text = (ROOT / "docs/language.md").read_text()
    lark = (ROOT / "lang/study.lark").read_text()
    assert set(grammar_keywords(lark)) >= {"study", "model", "dataset", "plot", "titled", "every", "last"}
    assert all(f"`{k}`" in text for k in grammar_keywords(lark))
    for s in spec.OPS.values():
        if s.verb:
            assert f"({s.name}, version {s.version})" in text and all(f"| `{p.name}` |" in text for p in s.params)
    assert all(f"### `{d}` (version" in text for d in spec.DATASETS)
    assert all(f"| `{m}` |" in text for m in spec.METRICS) and all(f"| `{c}` |" in text for c in spec.CHARTS)


def test_language_reference_examples_check(stdlib_loaded, monkeypatch):
    from mechstudy.engine import spec
    from mechstudy.lang import check

    monkeypatch.chdir(ROOT)  # the file dataset's example names studies/data/prompts.csv
    studies = [b for tag, b in blocks(ROOT / "docs/language.md") if tag == "study"]
    assert len(studies) == sum(1 for s in spec.OPS.values() if s.verb and s.example) + len(spec.DATASETS)
    for i, text in enumerate(studies):
        check(text, f"<docs/language.md example {i}>")


def run_examples(path: Path, workdir: Path, capsys) -> dict[str, int]:
    """Run the examples of one markdown file in `workdir`; counts of what ran, by tag."""
    from mechstudy.lang import check

    ran = {"study": 0, "console": 0, "python": 0}
    old = Path.cwd()
    os.chdir(workdir)
    try:
        for tag, body in blocks(path):
            if tag == "study":
                first = body.splitlines()[0]
                if first.startswith("# file: "):
                    (workdir / first[len("# file: "):].strip()).write_text(body)
                else:
                    check(body, f"<{path.name} study block>")
                ran["study"] += 1
            elif tag == "console":
                _console(body, capsys, path)
                ran["console"] += 1
            elif tag == "python":
                exec(compile(body, f"<{path.name} python block>", "exec"), {"__name__": "__docs__"})
                ran["python"] += 1
    finally:
        os.chdir(old)
    return ran


def _console(body: str, capsys, path: Path) -> None:
    cmd, out = None, ""
    for line in body.splitlines() + ["$"]:
        if line.startswith("$"):
            cmd = line[1:].strip()
            if not cmd:
                break
            words, _, comment = cmd.partition("#")
            expect = int(m.group(1)) if (m := re.search(r"exits (\d+)", comment)) else 0
            argv = shlex.split(words)
            assert argv[0] == "study", f"{path.name}: only `study` commands run in console blocks: {cmd}"
            capsys.readouterr()
            code = cli.main(argv[1:])
            got = capsys.readouterr()
            out = got.out + got.err
            assert code == expect, f"{path.name}: `{cmd}` exited {code}:\n{out[-3000:]}"
        elif line.strip():
            assert line.strip() in out, f"{path.name}: `{cmd}` did not print {line.strip()!r}:\n{out[-3000:]}"


def test_tutorial_runs_as_written(tmp_path, capsys):
    shutil.copytree(ROOT / "studies/data", tmp_path / "studies/data")  # as from the repository root
    ran = run_examples(ROOT / "docs/tutorial.md", tmp_path, capsys)
    assert ran["study"] >= 6 and ran["console"] >= 6 and ran["python"] >= 1
    assert (tmp_path / "out/circuit/circuit-threshold=100.0.svg").is_file()
    report = (tmp_path / "out/circuit/report.html").read_text()
    assert "ACDC pruned every edge" in report and "faithfulness" in report
    # What the SAE section promises: most planted directions recovered, read off the headline.
    sae = (tmp_path / "out/sae/report.html").read_text()
    got = re.search(r"<dt>planted directions recovered \(mean max cosine\)</dt><dd>([\d.]+)", sae)
    assert got and float(got.group(1)) >= 0.9


def test_tutorial_claims_hold(tmp_path, capsys):
    """What the tutorial's prose says about its examples: the edit recomputes only what `resid`
    needs, and two heads of layer 0 carry most of IOI on mini."""
    from mechstudy.engine.run import run_study

    studies = [b for tag, b in blocks(ROOT / "docs/tutorial.md") if tag == "study" and "file: first.study" in b]
    (tmp_path / "first.study").write_text(studies[0])
    a = run_study(tmp_path / "first.study", cache=tmp_path / "cache", device="cpu", report=False)
    (tmp_path / "first.study").write_text(studies[1])
    b = run_study(tmp_path / "first.study", cache=tmp_path / "cache", device="cpu", report=False)
    resid = {n.key for n in b.plan.results["resid"].nodes} | {c.key for c in b.plan.results["resid"].charts}
    computed = {k for k, o in b.outcomes.items() if o.status == "computed"}
    assert resid <= computed and not computed & {n.key for r in ("base", "heads") for n in a.plan.results[r].nodes}
    assert {o.op for k, o in b.outcomes.items() if o.status == "computed"} <= {"capture", "patch", "chart"}
    from mechstudy.engine.results import gather
    from mechstudy.engine.store import Store

    heads = next(p for p in gather(b.plan, Store(tmp_path / "cache")) if p.name == "heads").table
    top2 = heads.sort("effect", descending=True).head(2)
    assert top2["layer"].to_list() == [0, 0] and top2["effect"].sum() > 0.5 * heads["effect"].clip(0).sum()


def test_readme_examples_run(tmp_path, capsys):
    shutil.copytree(ROOT / "studies", tmp_path / "studies", ignore=shutil.ignore_patterns("*.lock"))
    ran = run_examples(ROOT / "README.md", tmp_path, capsys)
    assert ran["console"] >= 1 and ran["study"] >= 1 and ran["python"] >= 1
    assert (tmp_path / "out/quickstart/report.html").is_file()


def test_every_study_example_is_formatted():
    from mechstudy.engine.fmt import format_text

    for md in (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))):
        for tag, body in blocks(md):
            if tag == "study":
                assert format_text(body) == body, f"{md.name}: a study example is not `study fmt` canonical:\n{body}"
