"""`dashboard sae s over held` (op dashboard): every number of a feature dashboard against a slow
reference built from a plain forward hook on the tiny GPT-2's native block and a full sort: top
examples (value, place, token, highlighted context), density, histogram, interval samples, logit
weights (full sort of W_dec W_U), the 2-D map (numpy SVD); the charts render; bad options are
check errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechstudy.engine.context import Context
from mechstudy.engine.spec import Artifact


@pytest.fixture(scope="module")
def dash(stdlib_loaded, tiny_model_artifact, tiny_adapter):
    from mechstudy.engine import spec
    from mechstudy.stdlib.datasets.corpus import pack

    docs = ["John went to the store and Mary gave a drink to John", "Then Mary went to the office",
            "The cat sat on the mat while the dog slept"] * 12
    corpus = Artifact(tensors=pack(docs, tiny_adapter.tokenizer, context=10, tokens=300))
    ctx = Context(device="cpu", max_rows=4)
    shard = spec.OPS["activations"].execute({"model": tiny_model_artifact, "corpus": corpus},
                                            {"site": "resid_post", "layer": 0}, ctx)
    sae = spec.OPS["train_dictionary"].execute(
        {"shard0_000": shard, "model": tiny_model_artifact, "corpus": corpus},
        {"layers": [0], "model": "m", "corpus": "c", "width": 48, "k": 6, "batch": 64, "steps": 40}, ctx)
    out = spec.OPS["dashboard"].execute(
        {"dictionary": sae, "model": tiny_model_artifact, "corpus": corpus},
        {"dictionary": "s", "corpus": "c", "tokens": 300, "top": 5, "before": 3, "after": 2, "bands": 3,
         "per_band": 2, "bins": 6, "logits": 4}, Context(device="cpu", max_rows=3))
    return corpus, sae, out


def _features(adapter, sae, ids, mask):
    """[N, S, F] feature activations, one row at a time through a hook on block 0 (its output is resid_post)."""
    block = adapter.model.transformer.h[0]
    got = []

    def hook(mod, args, out):
        got.append((out[0] if isinstance(out, tuple) else out).detach())

    h = block.register_forward_hook(hook)
    with torch.no_grad():
        for r in range(ids.shape[0]):
            n = int(mask[r].sum())
            adapter.model(input_ids=ids[r:r + 1, :n])
    h.remove()
    S = ids.shape[1]
    f = torch.zeros(ids.shape[0], S, sae.shape.width, dtype=torch.float64)
    for r, a in enumerate(got):
        f[r, : a.shape[1]] = sae.encode(a[0].float()).detach().double()
    return f


def test_dashboards_equal_a_hook_and_a_full_sort(dash, tiny_adapter):
    from mechstudy.stdlib.ops.train_dictionary import load

    corpus, sae_art, out = dash
    sae = load(sae_art)
    ids, mask = corpus.tensors["input_ids"], corpus.tensors["attention_mask"].bool()
    f = _features(tiny_adapter, sae, ids, mask)
    res = out.tables["result"]
    exs = out.tables["examples"]
    tok = tiny_adapter.tokenizer
    real = mask.sum().item()
    assert out.data["tokens"] == real
    dens = ((f > 0) & mask[..., None]).sum((0, 1)).double() / real
    assert res["density"].to_list() == pytest.approx(dens.tolist(), abs=1e-12)
    alive = [u for u in range(sae.shape.width) if dens[u] > 0]
    assert len(alive) >= 10
    for u in alive:
        items = sorted(((float(f[r, p, u]), r, p) for r in range(ids.shape[0]) for p in range(ids.shape[1])
                        if mask[r, p] and f[r, p, u] > 0), reverse=True)
        top = exs.filter((exs["feature"] == u) & (exs["group"] == "top")).sort("rank")
        assert top.height == min(5, len(items))
        for e, (v, r, p) in zip(top.iter_rows(named=True), items):
            assert e["activation"] == pytest.approx(v, rel=1e-5)
            r, p = e["row"], e["position"]  # the place holds that value (repeated text ties; any of them)
            assert float(f[r, p, u]) == pytest.approx(v, rel=1e-5) and bool(mask[r, p])
            assert e["token"] == tok.decode([int(ids[r, p])])
            lo = max(0, p - 3)
            assert e["tokens"] == [tok.decode([int(i)]) for i in ids[r, lo:p + 3][mask[r, lo:p + 3]]]
            assert e["acts"] == pytest.approx(f[r, lo:p + 3, u][mask[r, lo:p + 3]].tolist(), abs=1e-4)
        row = res.filter(res["feature"] == u).row(0, named=True)
        assert row["max"] == pytest.approx(items[0][0], rel=1e-5)
        # histogram of the non-zero activations: every active token counted once
        h = out.tables["histogram"].filter(out.tables["histogram"]["feature"] == u)
        assert sum(h["count"].to_list()) == len(items)
        # interval samples lie in their band of (0, max]
        for e in exs.filter((exs["feature"] == u) & (exs["group"] == "interval")).iter_rows(named=True):
            w = items[0][0] / 3
            assert e["band"] * w - 1e-5 <= e["activation"] <= (e["band"] + 1) * w + 1e-5
    for u in range(sae.shape.width):
        if dens[u] == 0:
            assert exs.filter(exs["feature"] == u).height == 0


def test_logit_weights_and_the_map(dash, tiny_adapter):
    from mechstudy.stdlib.ops.train_dictionary import load

    _, sae_art, out = dash
    sae = load(sae_art)
    W = sae.W_dec.detach().double().numpy() @ tiny_adapter.model.lm_head.weight.detach().double().numpy().T  # [F, V]
    lg = out.tables["logits"]
    tok = tiny_adapter.tokenizer
    for u in (0, 7, 31):
        order = np.argsort(-W[u], kind="stable")
        plus = lg.filter((lg["feature"] == u) & (lg["sign"] == "+")).sort("rank")
        minus = lg.filter((lg["feature"] == u) & (lg["sign"] == "-")).sort("rank")
        assert plus["weight"].to_list() == pytest.approx(W[u, order[:4]].tolist(), rel=1e-4)
        assert minus["weight"].to_list() == pytest.approx(W[u, order[::-1][:4]].tolist(), rel=1e-4)
        assert plus["token"][0] == tok.decode([int(order[0])])
    d = sae.directions().detach().double().numpy()
    c = d - d.mean(0)
    _, _, vt = np.linalg.svd(c, full_matrices=False)
    ref = c @ vt[:2].T
    res = out.tables["result"]
    for j, col in enumerate(("x", "y")):
        got = np.array(res[col].to_list())
        sign = np.sign(got @ ref[:, j])
        assert got == pytest.approx(sign * ref[:, j], abs=1e-5)
    assert float(np.var(ref[:, 0])) >= float(np.var(ref[:, 1]))


def test_the_charts_render(dash):
    from mechstudy.engine import spec

    _, _, out = dash
    feats = spec.CHARTS["features"].render(out, None)
    shown = [k for k in feats["datasets"] if k.startswith("ex")]
    assert 1 <= len(shown) <= 6
    assert feats["datasets"][shown[0]] and all("shade" in v for v in feats["datasets"][shown[0]])
    table = spec.CHARTS["feature_table"].render(out, None)
    assert len(table["datasets"]["table"]) == 48 and table["params"][0]["name"] == "search"
    m = spec.CHARTS["feature_map"].render(out, None)
    assert len(m["datasets"]["features"]) == 48


@pytest.mark.parametrize("line, message, mark", [
    ("d = dashboard sae s over web top 0", "'top' must be at least 1; got 0", "0"),
    ("d = dashboard sae s over web features [-1]", "'features' must be at least 0", "-1"),
    ("d = dashboard sae s over web bands=0", "'bands' must be at least 1", "0"),
])
def test_mistakes_are_check_errors(stdlib_loaded, line, message, mark):
    from mechstudy.lang import StudyErrors, check

    head = ('model m = zoo "mini"\ncorpus web = text "README.md" tokens=256 context=16\n'
            "s = train sae in layer 1 of m over web width=64 k=4 steps=20 checkpoint=10\n")
    with pytest.raises(StudyErrors) as e:
        check(head + line + "\n", "t.study")
    err = e.value.errors[0]
    assert message in err.message and (err.span.line, err.span.column) == (4, line.index(mark) + 1), e.value.render()
