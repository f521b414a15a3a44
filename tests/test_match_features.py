"""`match features a b over text` (op match_features): a dictionary matched with a permuted copy of
itself finds the permutation (cosine 1, correlation 1); a planted split (one feature replaced by two
rotated copies) is found as two children; every correlation equals numpy's corrcoef on activations
from a plain hook; check-time errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechstudy.engine.context import Context
from mechstudy.engine.spec import Artifact
from mechstudy.stdlib.dictionary.model import Dictionary, Shape

CTX = Context(device="cpu", max_rows=4)


@pytest.fixture(scope="module")
def trained(stdlib_loaded, tiny_model_artifact, tiny_adapter):
    from mechstudy.engine import spec
    from mechstudy.stdlib.datasets.corpus import pack

    docs = ["John went to the store and Mary gave a drink to John", "Then Mary went to the office",
            "The cat sat on the mat while the dog slept"] * 12
    corpus = Artifact(tensors=pack(docs, tiny_adapter.tokenizer, context=10, tokens=300))
    shard = spec.OPS["activations"].execute({"model": tiny_model_artifact, "corpus": corpus},
                                            {"site": "resid_post", "layer": 0}, CTX)

    def train(width, seed):
        return spec.OPS["train_dictionary"].execute(
            {"shard0_000": shard, "model": tiny_model_artifact, "corpus": corpus},
            {"layers": [0], "model": "m", "corpus": "c", "width": width, "k": 4, "batch": 64, "steps": 40,
             "seed": seed}, CTX)

    return corpus, train(24, 0), train(48, 1)


def _variant(art: Artifact, sae: Dictionary) -> Artifact:
    return Artifact(tensors=sae.tensors(), data={**art.data, "shape": sae.shape.as_dict()})


def _match(tiny_model_artifact, corpus, a, b, **params):
    from mechstudy.engine import spec

    inputs = {"a": a, "b": b, "model_a": tiny_model_artifact, "model_b": tiny_model_artifact,
              "corpus_a": corpus, "corpus_b": corpus}
    return spec.OPS["match_features"].execute(inputs, {"a": "a", "b": "b", "tokens": 300, **params}, CTX)


def test_a_permuted_copy_is_matched_exactly(trained, tiny_model_artifact):
    from mechstudy.stdlib.ops.train_dictionary import load

    corpus, art, _ = trained
    sae = load(art)
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(5))
    t = {k: v.clone() for k, v in sae.tensors().items()}
    t["W_dec"], t["W_enc"], t["b_enc"] = t["W_dec"][perm], t["W_enc"][:, perm], t["b_enc"][perm]
    other = _variant(art, Dictionary.of(sae.shape, t))
    out = _match(tiny_model_artifact, corpus, art, other)
    a = out.tables["a"]
    inv = torch.argsort(perm).tolist()  # feature i of a is feature inv[i] of b
    assert a["best_b_cosine"].to_list() == inv
    assert a["cosine"].to_list() == pytest.approx([1.0] * 24, abs=1e-6)
    alive = [i for i, c in enumerate(a["corr"].to_list()) if c == c]
    assert len(alive) >= 12
    assert [a["best_b_corr"][i] for i in alive] == [inv[i] for i in alive]
    assert [a["corr"][i] for i in alive] == pytest.approx([1.0] * len(alive), abs=1e-9)
    s = dict(zip(out.tables["result"]["metric"], out.tables["result"]["value"]))
    assert s["mean max cosine a->b"] == pytest.approx(1.0, abs=1e-6)
    assert s["features of a that split (>= 2 children)"] == 0


def test_a_planted_split_is_found(trained, tiny_model_artifact):
    from mechstudy.stdlib.ops.train_dictionary import load

    corpus, art, _ = trained
    sae = load(art)
    t = {k: v.clone() for k, v in sae.tensors().items()}
    d0 = t["W_dec"][0]
    e = torch.randn(d0.shape[0], generator=torch.Generator().manual_seed(1))
    e = e - (e @ d0) / (d0 @ d0) * d0
    e = e / e.norm() * d0.norm() * 0.5
    W = torch.cat([t["W_dec"][1:], (d0 + e)[None], (d0 - e)[None]])  # feature 0 -> two children at cos 0.89
    t["W_dec"] = W
    t["W_enc"] = torch.cat([t["W_enc"][:, 1:], t["W_enc"][:, :1], t["W_enc"][:, :1]], 1)
    t["b_enc"] = torch.cat([t["b_enc"][1:], t["b_enc"][:1], t["b_enc"][:1]])
    big = _variant(art, Dictionary.of(Shape(**{**sae.shape.as_dict(), "width": 25}), t))
    out = _match(tiny_model_artifact, corpus, art, big, threshold=0.8)
    a = out.tables["a"]
    assert a["children"][0].to_list() == [23, 24] or sorted(a["children"][0].to_list()) == [23, 24]
    assert a["child_cosines"][0].to_list() == pytest.approx([1 / np.sqrt(1.25)] * 2, abs=1e-5)
    assert all(a["children"][i].to_list() == [i - 1] for i in range(1, 24))
    s = dict(zip(out.tables["result"]["metric"], out.tables["result"]["value"]))
    assert s["features of a that split (>= 2 children)"] == 1


def test_correlations_equal_numpy_on_hook_activations(trained, tiny_model_artifact, tiny_adapter):
    from mechstudy.stdlib.ops.train_dictionary import load

    corpus, a_art, b_art = trained
    out = _match(tiny_model_artifact, corpus, a_art, b_art)
    ids, mask = corpus.tensors["input_ids"], corpus.tensors["attention_mask"]
    got = []
    h = tiny_adapter.model.transformer.h[0].register_forward_hook(
        lambda m, a, o: got.append(o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        for r in range(ids.shape[0]):
            tiny_adapter.model(input_ids=ids[r:r + 1, : int(mask[r].sum())])
    h.remove()
    x = torch.cat([g[0] for g in got]).float()
    fa = load(a_art).encode(x).detach().double().numpy()
    fb = load(b_art).encode(x).detach().double().numpy()
    a = out.tables["a"]
    for i in range(24):
        if fa[:, i].std() == 0:
            assert a["corr"][i] != a["corr"][i]  # nan
            continue
        c = [np.corrcoef(fa[:, i], fb[:, j])[0, 1] if fb[:, j].std() > 0 else -np.inf for j in range(48)]
        assert a["corr"][i] == pytest.approx(max(c), abs=1e-6)  # float32 activations, batched vs one row
        assert a["best_b_corr"][i] == int(np.argmax(c))
    da, db = load(a_art).directions().detach().double().numpy(), load(b_art).directions().detach().double().numpy()
    assert a["cosine"].to_list() == pytest.approx((da @ db.T).max(1).tolist(), abs=1e-9)


@pytest.mark.parametrize("line, message, mark", [
    ("u = match features a b over web threshold=2", "'threshold' must be at most 1", "2"),
    ("u = match features a b over web tokens=1", "'tokens' must be at least 2", "1"),
])
def test_mistakes_are_check_errors(stdlib_loaded, line, message, mark):
    from mechstudy.lang import StudyErrors, check

    head = ('model m = zoo "mini"\ncorpus web = text "README.md" tokens=256 context=16\n'
            "a = train sae in layer 1 of m over web width=64 k=4 steps=20 checkpoint=10\n"
            "b = train sae in layer 1 of m over web width=128 k=4 steps=20 checkpoint=10\n")
    with pytest.raises(StudyErrors) as e:
        check(head + line + "\n", "t.study")
    err = e.value.errors[0]
    assert message in err.message and (err.span.line, err.span.column) == (5, line.index(mark) + 1), e.value.render()
