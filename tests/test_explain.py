"""`explain dash over held` (op explain) and stdlib/dictionary/autointerp.py: the offline explainer
and the simulator on known cases (a token feature scores 1, a wrong explanation ~0), every score
of the operator against a slow reference (the simulator run token by token in Python on activations
from a plain hook, numpy's corrcoef), a pluggable explainer, check-time errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mechstudy.engine.context import Context
from mechstudy.engine.spec import Artifact
from mechstudy.stdlib.dictionary import autointerp as ai


def fixed_explainer(examples):
    """A pluggable explainer (named `test_explain:fixed_explainer`): always 'John' (the tiny GPT-2's
    tokenizer splits on spaces)."""
    return "fires on 'John'"


def test_a_token_feature_is_explained_and_scores_one():
    g = torch.Generator().manual_seed(0)
    words = [" the", " cat", " sat", " on", " a", " mat", " of"]
    seq = [words[int(i)] for i in torch.randint(0, len(words), (400,), generator=g)]
    truth = [2.0 if t == " the" else 0.0 for t in seq]  # fires on ' the', at one strength
    examples = [{"tokens": seq[max(0, i - 2):i + 2], "at": min(i, 2), "activation": truth[i]}
                for i in range(len(seq)) if truth[i] > 0][:10]
    text = ai.explain_tokens(examples, terms=3, cover=0.8)
    assert text.startswith("fires on ' the' (1)")
    assert ai.pearson(ai.simulate(text, seq), truth) == pytest.approx(1.0, abs=1e-12)
    # a feature on the token after ' of': the bigram part of the explanation carries it
    truth2 = [1.0 if i > 0 and seq[i - 1] == " of" else 0.0 for i in range(len(seq))]
    ex2 = [{"tokens": seq[i - 1:i + 1], "at": 1, "activation": 1.0} for i in range(1, len(seq)) if truth2[i]][:10]
    t2 = ai.explain_tokens(ex2, terms=1, cover=0.5)
    assert "after ' of' (1)" in t2
    assert ai.pearson(ai.simulate("after ' of'", seq), truth2) == pytest.approx(1.0, abs=1e-12)
    wrong = ai.pearson(ai.simulate("fires on ' cat'", seq), truth)
    assert wrong < 0  # ' cat' never co-occurs with ' the' at one position


@pytest.fixture(scope="module")
def explained(stdlib_loaded, tiny_model_artifact, tiny_adapter):
    from mechstudy.engine import spec
    from mechstudy.stdlib.datasets.corpus import pack

    tok = tiny_adapter.tokenizer
    train = ["John went to the store and Mary gave a drink to John", "Then Mary went to the office",
             "The cat sat on the mat while the dog slept"] * 12
    held = ["Mary and John went to the park", "The dog sat on the office mat", "John gave the cat a drink"] * 8
    a = Artifact(tensors=pack(train, tok, context=10, tokens=300))
    b = Artifact(tensors=pack(held, tok, context=10, tokens=200))
    ctx = Context(device="cpu", max_rows=4)
    shard = spec.OPS["activations"].execute({"model": tiny_model_artifact, "corpus": a}, {"site": "resid_post", "layer": 0}, ctx)
    sae = spec.OPS["train_dictionary"].execute(
        {"shard0_000": shard, "model": tiny_model_artifact, "corpus": a},
        {"layers": [0], "model": "m", "corpus": "c", "width": 48, "k": 6, "batch": 64, "steps": 40}, ctx)
    dash = spec.OPS["dashboard"].execute({"dictionary": sae, "model": tiny_model_artifact, "corpus": a},
                                         {"dictionary": "s", "corpus": "c", "tokens": 300, "top": 8}, ctx)
    inputs = {"dashboard": dash, "dictionary": sae, "model": tiny_model_artifact, "corpus": b}
    out = spec.OPS["explain"].execute(inputs, {"dashboard": "d", "corpus": "h", "tokens": 200, "limit": 20}, ctx)
    return sae, dash, b, inputs, out


def _activations(adapter, sae, ids, mask):
    """Per row, [n_real, F] feature activations through a plain hook on block 0 (resid_post 0)."""
    got = []
    h = adapter.model.transformer.h[0].register_forward_hook(lambda m, a, o: got.append(o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        for r in range(ids.shape[0]):
            adapter.model(input_ids=ids[r:r + 1, : int(mask[r].sum())])
    h.remove()
    return [sae.encode(g[0].float()).detach().double() for g in got]


def test_every_score_equals_the_simulator_run_by_hand(explained, tiny_adapter):
    from mechstudy.stdlib.ops.train_dictionary import load

    sae_art, dash, held, _, out = explained
    sae = load(sae_art)
    res = out.tables["result"]
    assert 10 <= res.height <= 20
    ids, mask = held.tensors["input_ids"], held.tensors["attention_mask"]
    acts = _activations(tiny_adapter, sae, ids, mask)
    tok = tiny_adapter.tokenizer
    rows = [[tok.decode([int(i)]) for i in ids[r, : int(mask[r].sum())]] for r in range(ids.shape[0])]
    scored = 0
    for r in res.iter_rows(named=True):
        f, text = r["feature"], r["explanation"]
        top = dash.tables["examples"].filter((dash.tables["examples"]["feature"] == f)
                                             & (dash.tables["examples"]["group"] == "top")).sort("rank")
        assert text == ai.explain_tokens(top.to_dicts(), terms=4, cover=0.8)
        sim = [v for row in rows for v in ai.simulate(text, row)]
        true = np.concatenate([a[:, f].numpy() for a in acts])
        if np.std(true) == 0 or np.std(sim) == 0:
            assert math.isnan(r["score"])
            continue
        assert r["score"] == pytest.approx(float(np.corrcoef(sim, true)[0, 1]), abs=1e-6)  # float32 activations, batched vs one row
        scored += 1
    assert scored >= 5
    assert out.data["mean_score"] > out.data["mean_baseline"]


def test_a_pluggable_explainer(explained, tiny_adapter):
    from mechstudy.engine import spec
    from mechstudy.stdlib.ops.train_dictionary import load

    sae_art, _, held, inputs, _ = explained
    out = spec.OPS["explain"].execute(inputs, {"dashboard": "d", "corpus": "h", "tokens": 200, "limit": 5,
                                               "explainer": "test_explain:fixed_explainer"}, Context(device="cpu"))
    res = out.tables["result"]
    assert set(res["explanation"].to_list()) == {"fires on 'John'"}
    ids, mask = held.tensors["input_ids"], held.tensors["attention_mask"]
    acts = _activations(tiny_adapter, load(sae_art), ids, mask)
    tok = tiny_adapter.tokenizer
    john = np.array([float(tok.decode([int(i)]) == "John") for r in range(ids.shape[0]) for i in ids[r, : int(mask[r].sum())]])
    assert john.sum() >= 8
    for r in res.iter_rows(named=True):
        true = np.concatenate([a[:, r["feature"]].numpy() for a in acts])
        want = float(np.corrcoef(john, true)[0, 1]) if np.std(true) > 0 else float("nan")
        assert r["score"] == pytest.approx(want, abs=1e-6, nan_ok=True)


@pytest.mark.parametrize("line, message, mark", [
    ("e = explain d over web limit=0", "'limit' must be at least 1", "0"),
    ("e = explain d over web cover=1.5", "'cover' must be at most 1", "1.5"),
    ("e = explain d over web explainer=\"nocolon\"", "explainer is `tokens` or a callable", "explainer"),
])
def test_mistakes_are_check_errors(stdlib_loaded, line, message, mark):
    from mechstudy.lang import StudyErrors, check

    head = ('model m = zoo "mini"\ncorpus web = text "README.md" tokens=256 context=16\n'
            "s = train sae in layer 1 of m over web width=64 k=4 steps=20 checkpoint=10\n"
            "d = dashboard sae s over web\n")
    with pytest.raises(StudyErrors) as e:
        check(head + line + "\n", "t.study")
    err = e.value.errors[0]
    assert message in err.message and (err.span.line, err.span.column) == (5, line.index(mark) + 1), e.value.render()
