"""Option values are checked before anything runs: declared limits, ceilings, component indices
against the model, datasets against the model, and `compare` of results that match row by row."""

from __future__ import annotations

import polars as pl
import pytest

from mechstudy.engine import cli, spec
from mechstudy.engine.spec import Param

# Every value the issue found passing `study check` and failing (or running away) afterwards.
BAD = """\
model m = hf "{model}"
dataset ioi = ioi(n=4)
dataset z = ioi(n=0)
dataset neg = ioi(n=-1)
dataset huge = ioi(n=1000000000)
a = attribute edges of m on ioi with logit_diff ig_steps=0
b = attribute edges of m on ioi with logit_diff ig_steps=100000
t = train toy n=0 m=0 sparsity=[1.0] seeds=0 steps=0 batch=0 lr=-1
u = memorise toy n=100 m=2 sparsity=0.97 examples=[0]
h = patch neurons 100000..100002 in layer 0 of m on ioi with logit_diff
heads = patch heads in all layers of m on ioi with logit_diff
resid = patch resid at every position in all layers of m on ioi with logit_diff
c1 = compare heads with heads
c2 = compare heads with resid
c3 = compare heads with resid top=-1
"""
# (line, where the caret goes: the first character of this text on that line, words in the message).
WANT = [
    (3, "0)", "dataset ioi: 'n' must be at least 1; got 0"),
    (4, "-1)", "dataset ioi: 'n' must be at least 1; got -1"),
    (5, "1000000000", "dataset ioi: 'n' = 1,000,000,000 is over the ceiling of 10,000"),
    (6, "0\n", "'ig_steps' must be at least 1; got 0"),
    (7, "100000", "'ig_steps' = 100,000 is over the ceiling of 1000"),
    (8, "0 m=", "'n' must be at least 1; got 0"),
    (8, "0 sp", "'m' must be at least 1; got 0"),
    (8, "1.0]", "'sparsity' must be less than 1; got 1.0"),
    (8, "0 steps", "'seeds' must be at least 1; got 0"),
    (8, "0 batch", "'steps' must be at least 1; got 0"),
    (8, "0 lr", "'batch' must be at least 1; got 0"),
    (8, "-1\n", "'lr' must be greater than 0; got -1.0"),
    (9, "0]", "'examples' must be at least 1; got 0"),
    (10, "neurons", "neuron 100000 is out of range: model m has"),
    (13, "with heads", "'compare' compares heads with itself"),
    (14, "with resid", "'compare' joins rows one to one, but heads has one row per (layer, head) and resid one per "
                       "(layer, position)"),
    (15, "-1", "'top' must be at least 1; got -1"),
]


def test_every_bad_value_is_an_error_at_its_span(tmp_path, tiny_gpt2_dir, capsys, stdlib_loaded):
    p = tmp_path / "bad.study"
    p.write_text(BAD.format(model=tiny_gpt2_dir))
    assert cli.main(["check", str(p)]) == cli.STUDY_ERRORS
    err = capsys.readouterr().err
    assert "Traceback" not in err
    heads = [ln for ln in err.splitlines() if ln.startswith(str(p))]
    got = [(int(ln.split(":")[1]), int(ln.split(":")[2]), ln.split("error: ", 1)[1]) for ln in heads]
    assert len(got) == len(WANT), "\n".join(heads)
    lines = p.read_text().splitlines(keepends=True)
    for (line, mark, msg), (gl, gc, gmsg) in zip(WANT, got):
        col = lines[line - 1].index(mark) + 1
        assert (gl, gc) == (line, col) and msg in gmsg, (line, col, msg, gl, gc, gmsg)
    assert err.count("--no-ceilings") == 2  # the way to raise a ceiling, under each ceiling error
    assert "hint: neurons of m run 0..255" in err or "hint: neurons of m run 0.." in err


def test_no_ceilings_lifts_only_the_ceilings(tmp_path, tiny_gpt2_dir, capsys, stdlib_loaded):
    p = tmp_path / "big.study"
    p.write_text(f'model m = hf "{tiny_gpt2_dir}"\ndataset big = ioi(n=20000)\ndataset bad = ioi(n=0)\n')
    assert cli.main(["check", str(p)]) == cli.STUDY_ERRORS
    assert capsys.readouterr().err.count("error:") == 2
    assert cli.main(["check", "--no-ceilings", str(p)]) == cli.STUDY_ERRORS
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "must be at least 1" in err
    import os

    assert "MECHSTUDY_NO_CEILINGS" not in os.environ  # the flag lasts one command


def test_param_problem_and_limits_words():
    n = Param("n", int, 8, minimum=1, ceiling=1000, doc="")
    assert [n.problem(v) for v in (0, 1, 1000, 1001)] == ["must be at least 1", None, None, "is over the ceiling of 1000"]
    s = Param("s", float, 0.5, minimum=0.0, below=1.0)
    assert [s.problem(v) for v in (-0.1, 0.0, 0.999, 1.0, float("nan"))] == [
        "must be at least 0", None, None, "must be less than 1", "must be a number (not NaN)"]
    lr = Param("lr", float, 0.1, above=0.0, maximum=10)
    assert (lr.problem(0.0), lr.problem(10.0), lr.problem(10.5)) == ("must be greater than 0", None, "must be at most 10")
    assert n.limits() == ">= 1, <= 1000 unless --no-ceilings" and Param("x", list, None, nonempty=True).limits() == "not empty"
    assert Param("p", float, 0.5, **spec.PROBABILITY).problem(1.5) == "must be at most 1"


# Options whose every finite value means something.
UNBOUNDED = {("steer", "scale"): "a negative scale steers the other way"}


def test_every_numeric_option_declares_its_limits(stdlib_loaded):
    """No int/float option without a declared range (booleans, words and references have theirs)."""
    missing = [f"{s.name}.{p.name}" for s in spec.OPS.values() if s.verb for p in s.params
               if p.type in (int, float) and p.keyed and not p.bounded and (s.name, p.name) not in UNBOUNDED]
    missing += [f"dataset {n}.{p.name}" for n, d in spec.DATASETS.items() for p in d.params
                if p.type in (int, float) and not p.bounded and not spec.is_corpus(n)]
    # Corpus sources check their sizes together in `prepare` (context >= 2, context <= tokens <= their cap).
    assert missing == []


@pytest.mark.parametrize("stmt", [
    "patch heads in all layers of m on ioi with logit_diff",
    "patch heads at every position in layer 1 of m on ioi with logit_diff",
    "patch resid in all layers of m on ioi with logit_diff",
    "patch resid at last position in all layers of m on ioi with logit_diff",
    "patch attn at all positions in layer 0 of m on ioi with logit_diff",
    "patch neurons 0..2 in layer 1 of m on ioi with logit_diff",
    "ablate heads in layer 0 of m on ioi with logit_diff using mean",
    "attribute heads in all layers of m on ioi with logit_diff",
    "attribute resid in all layers of m on ioi with logit_diff",
    "attribute neurons 0..3 at last position in layer 0 of m on ioi with logit_diff",
])
def test_result_keys_are_the_tables_key_columns(tmp_path, tiny_gpt2_dir, stmt, stdlib_loaded):
    """What the checker assumes about a result's rows (`OpSpec.result_keys`) is what the run makes."""
    from mechstudy.engine.run import run_study
    from mechstudy.engine.store import Store
    from mechstudy.stdlib.ops.compare import KEYS

    p = tmp_path / "k.study"
    p.write_text(f'model m = hf "{tiny_gpt2_dir}"\ndataset ioi = ioi(n=3, seed=0)\nr = {stmt}\n')
    res = run_study(p, cache=tmp_path / "cache", report=False, device="cpu")
    call = res.plan.results["r"].call
    want = spec.OPS[call.op].result_keys(dict(call.points[0]))
    table = Store(tmp_path / "cache").get(res.plan.results["r"].nodes[0].key).tables["result"]
    got = []
    for k in KEYS:
        if k in table.columns:
            got.append(k if table.schema[k] != pl.String else f"{k}={table[k][0]}")
    assert tuple(got) == want and table.select(got and [c.split("=")[0] for c in got]).is_unique().all()


def test_datasets_that_do_not_fit_the_model_are_refused(tmp_path, tiny_gpt2_dir, stdlib_loaded):
    from mechstudy.lang import check
    from mechstudy.lang.errors import StudyErrors

    text = (f'model m = hf "{tiny_gpt2_dir}"\ndataset long = induction(n=4, length=600)\n'
            "dataset narrow = induction(n=4, length=10, vocab_min=5, vocab_max=20)\n"
            "dataset past = induction(n=4, length=10, vocab_max=100000)\n"
            "a = lens resid_post in layer 0 of m on long\nb = lens resid_post in layer 0 of m on narrow\n"
            "c = lens resid_post in layer 0 of m on past\n")
    with pytest.raises(StudyErrors) as e:
        check(text, str(tmp_path / "x.study"))
    msgs = [x.message for x in e.value.errors]
    assert len(msgs) == 3
    assert "sequences of 1201 tokens (1 + 2 * length) are longer than its 64 positions" in msgs[0]
    assert "token ids 5..19 hold 15 tokens; length=10 needs 20 distinct ones" in msgs[1]
    assert "vocab_max=100000 is past its vocabulary" in msgs[2]
    assert all(x.span.line in (5, 6, 7) for x in e.value.errors)
