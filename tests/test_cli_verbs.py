"""The researcher-facing verbs: --help everywhere, exit codes, `datasets`, `fmt`, `new`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mechstudy.engine import cli
from mechstudy.engine.fmt import format_text, tokens

ROOT = Path(__file__).resolve().parent.parent
STUDIES = sorted(ROOT.glob("studies/**/*.study"))


def _verbs() -> list[str]:
    sub = next(a for a in cli._parser()._actions if a.dest == "cmd")
    return sorted(sub.choices)


@pytest.mark.parametrize("verb", _verbs())
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([verb, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: study {verb}") and "exit codes:" in out
    assert len(out.split("\n\n")[1].strip()) > 10  # a description, not only the usage line


def test_exit_codes_are_documented_and_used(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and all(re.search(rf"^  {k}\s", out, re.M) for k in cli.EXIT_CODES)
    with pytest.raises(SystemExit) as e:
        cli.main(["nonsense"])
    assert e.value.code == 2
    assert cli.main(["check", str(ROOT / "studies/broken.study")]) == 1
    assert cli.main(["check", str(ROOT / "studies/quickstart.study")]) == 0
    assert cli.main(["show", str(ROOT / "studies/quickstart.study"), "heads", "--cache", str(tmp_path)]) == cli.UNAVAILABLE
    assert "not computed yet" in capsys.readouterr().err


# ---------------------------------------------------------------------------- datasets


def test_datasets_reference_lists_every_generator_option_and_a_checked_example(stdlib_loaded, capsys, tmp_path,
                                                                             monkeypatch):
    from mechstudy.engine import spec
    from mechstudy.engine.docs import dataset_example
    from mechstudy.lang import check_file

    assert cli.main(["datasets"]) == 0
    out = capsys.readouterr().out
    for ds in spec.DATASETS.values():
        block = out[out.index(f"\n{ds.name} (v{ds.version})"):]
        block = block[:block.find("\n\n", 1)]
        for p in ds.params:
            assert f"    {p.name}: " in block, (ds.name, p.name)
        example = dataset_example(ds)
        assert f"  example: {example}" in block
        # The example is a declaration `study check` accepts, as printed.
        monkeypatch.chdir(ROOT)  # the file example names a path in the repository
        f = tmp_path / f"{ds.name}.study"
        f.write_text(f'study "x"\nmodel m = zoo "mini"\n{example}\n')
        check_file(str(f))
    assert "corrupted: str" in out[out.index("\nfile (v"):]  # the option the README needs


# ---------------------------------------------------------------------------- fmt


def _code_tokens(text: str) -> list[tuple[str, str]]:
    return [(t.kind, t.text) for line in text.split("\n") for t in tokens(line)]


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: str(p.relative_to(ROOT)))
def test_studies_are_formatted_and_fmt_only_moves_whitespace(path, stdlib_loaded, monkeypatch):
    from mechstudy.engine.build import build_plan
    from mechstudy.engine.explain import explain
    from mechstudy.lang import check as check_text

    monkeypatch.chdir(ROOT)  # studies name data files relative to the repository root

    text = path.read_text()
    assert format_text(text) == text, "run: study fmt " + str(path.relative_to(ROOT))
    # Squash the layout, format it back: the same tokens and comments, the same plan, the file.
    squashed = "\n".join(" ".join(t.text for t in tokens(line)) for line in text.split("\n"))
    again = format_text(squashed)
    assert again == text and _code_tokens(again) == _code_tokens(text)
    if path.name != "broken.study":
        a = explain(build_plan(check_text(text, str(path))), keys=False)
        b = explain(build_plan(check_text(again, str(path))), keys=False)
        assert a == b


def test_fmt_rules_and_cli(tmp_path, capsys):
    messy = ('study   "x"   # title\n\n\n\nmodel m=zoo "mini"\n  # about the data\ndataset d = ioi( n = 8 ,seed=0 )\n'
             "a=patch heads in layers [ 0,1 ] of m on d with kl chunk = 4\nlonger_name = evaluate m on d # base\n"
             "s = patch resid in layers 0 .. 1 of m on d \\\n   with kl\n\n\n")
    want = ('study "x"  # title\n\nmodel m = zoo "mini"\n# about the data\ndataset d = ioi(n=8, seed=0)\n'
            "a           = patch heads in layers [0, 1] of m on d with kl chunk=4\n"
            "longer_name = evaluate m on d  # base\ns           = patch resid in layers 0..1 of m on d \\\n"
            "    with kl\n")
    assert format_text(messy) == want and format_text(want) == want
    f = tmp_path / "m.study"
    f.write_text(messy)
    assert cli.main(["fmt", "--check", str(f)]) == 1 and f.read_text() == messy
    assert "would be reformatted" in capsys.readouterr().out
    assert cli.main(["fmt", str(f)]) == 0 and f.read_text() == want
    assert cli.main(["fmt", "--check", str(f)]) == 0
    bad = tmp_path / "bad.study"
    bad.write_text('model m = zoo "mini"\nh = patch heads in layer ( of m\n')
    assert cli.main(["fmt", str(bad)]) == 1 and bad.read_text().startswith("model m")
    assert "bad.study:2:" in capsys.readouterr().err


# ---------------------------------------------------------------------------- new


def test_every_starter_checks_and_is_formatted(stdlib_loaded, tmp_path):
    from mechstudy.engine.starters import STARTERS, starter
    from mechstudy.lang import check_file

    for t in STARTERS:
        text = starter(t, f"{t}.study")
        assert format_text(text) == text and text.count("\n#") >= 4  # commented
        f = tmp_path / f"{t}.study"
        f.write_text(text)
        check_file(str(f))


def test_new_writes_a_study_that_runs_on_mini(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["new", "-o", "mine.study"]) == 0
    assert cli.main(["new", "circuit", "-o", "mine.study"]) == 1  # never overwrites
    assert "exists" in capsys.readouterr().err
    assert "study run mine.study" in Path("mine.study").read_text()
    assert cli.main(["run", "mine.study", "--cache", "cache"]) == 0
    out = capsys.readouterr().out
    assert "report: out/mine/report.html" in out and Path("out/mine/report.html").is_file()
    assert cli.main(["show", "mine.study", "heads", "--cache", "cache", "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith("layer,head,effect")


def test_fmt_binds_every_declaration_keyword():
    text = 'corpus  web=text "notes.txt"  tokens = 64\nlens resid_post in all layers of m over web\n'
    assert format_text(text) == 'corpus web = text "notes.txt" tokens=64\nlens resid_post in all layers of m over web\n'
