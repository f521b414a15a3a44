"""The patch operator's components beyond heads/resid/attn/mlp (q, k, v, pattern, neurons, the
aliases), its newer metrics (loss), and how statements reach it, against the slow references of
tests/patch_refs.py (plain hooks on the HF modules, one forward per variant)."""

from __future__ import annotations

import pytest
import torch

import mechstudy.stdlib.models.sources  # noqa: F401  (registers the hf and zoo model sources)
import mechstudy.stdlib.ops.patch  # noqa: F401  (registers the operator under test)
import patch_refs as R
from mechstudy.engine import spec
from mechstudy.engine.context import Context

N_PROMPTS = 6
KIND = {"heads": "z", "neurons": "mlp_post", "attn": "attn_out", "mlp": "mlp_out", "resid": "resid_pre"}


@pytest.fixture(scope="module")
def ioi(tiny_adapter):
    from mechstudy.stdlib.datasets.ioi import generate

    return generate(tiny_adapter.tokenizer, n=N_PROMPTS, seed=5)  # mixed templates: mixed lengths


@pytest.fixture(scope="module")
def ctx():
    return Context(device="cpu", max_rows=7)  # chunks that cut variants in the middle


def reference(model, ds, word, layers, positions, metric, direction, index=None):
    """(per-variant per-prompt values [V, N], effects [V]) in the op's variant order."""
    kind = KIND.get(word, word)
    t = ds.tensors
    clean, corr, mask = t["clean_ids"], t["corrupted_ids"], t["attention_mask"]
    base, src_ids = (corr, clean) if direction == "denoising" else (clean, corr)
    lc, lk = R.logits(model, clean, mask), R.logits(model, corr, mask)
    m_clean, m_corr = R.metric(metric, lc, t, lc).mean(), R.metric(metric, lk, t, lc).mean()
    n_heads = model.config.n_head
    units = {"z": index or range(n_heads), "q": range(n_heads), "k": range(n_heads), "v": range(n_heads),
             "pattern": range(n_heads), "mlp_post": index}.get(kind, [None])
    values = []
    for layer in layers:
        src = R.capture(model, src_ids, mask, kind, layer)
        for sel in R.position_sets(positions, t, clean.shape[1]):
            for u in units:
                if kind == "pattern":
                    def fn(w, u=u, sel=sel, src=src):
                        w[:, u][sel] = src[:, u][sel]
                    lg = R.logits(model, base, mask, pattern=(layer, fn))
                else:
                    lg = R.logits(model, base, mask, [(kind, layer, R.write(kind, u, sel, src))])
                values.append(R.metric(metric, lg, t, lc))
    values = torch.stack(values)
    return values, (values.mean(1) - m_corr) / (m_clean - m_corr)


CASES = [
    ("q", "all", "logit_diff", "denoising", None),
    ("k", "each", "kl", "noising", None),
    ("v", "last", "prob", "denoising", None),
    ("pattern", "all", "logit_diff", "denoising", None),
    ("pattern", [3, 7], "kl", "noising", None),
    ("pattern", "last", "loss", "noising", None),
    ("neurons", "all", "logit_diff", "denoising", [0, 5, 17]),
    ("neurons", "each", "loss", "noising", [3]),
    ("heads", "all", "loss", "denoising", [1, 3]),
    ("attn_out", "last", "loss", "denoising", None),
    ("mlp_out", "all", "prob", "noising", None),
]


@pytest.mark.parametrize("word,positions,metric,direction,index", CASES)
def test_batched_patch_equals_slow_reference(word, positions, metric, direction, index, tiny_adapter,
                                             tiny_model_artifact, ioi, ctx):
    params = dict(component=word, layers="all", positions=positions, metric=metric, direction=direction)
    if index is not None:
        params["component_index"] = index
    out = spec.OPS["patch"].execute({"model": tiny_model_artifact, "dataset": ioi}, params, ctx)
    values, effects = reference(tiny_adapter.model, ioi, word, range(2), positions, metric, direction, index)
    got = out.tensors["per_prompt"].reshape(-1, N_PROMPTS).double()
    assert got.shape == values.shape
    assert torch.allclose(got, values, atol=1e-5, rtol=0), (got - values).abs().max()
    torch.testing.assert_close(out.tensors["effect"].reshape(-1).double(), effects, atol=1e-4, rtol=1e-4)
    table = out.tables["result"]
    assert table.height == values.shape[0]
    unit = {"neurons": "neuron", "q": "head", "k": "head", "v": "head", "pattern": "head", "heads": "head"}.get(word)
    if unit:
        assert table[unit].unique().sort().to_list() == sorted(index or range(4))


def _plan_base():
    import mechstudy.engine.builtins  # noqa: F401  (the model and dataset node kinds)
    from mechstudy.engine.build import Builder

    b = Builder()
    m = b.node("model", {"source": "hf", "ref": "x", "options": {}, "fingerprint": "f", "libs": {}})
    d = b.node("dataset", {"generator": "ioi", "generator_version": 1, "params": {"n": 8}}, {"model": m})
    return b, {"model": m, "dataset": d, "metric": "logit_diff", "direction": "denoising", "positions": None,
               "layers": "all", "component_index": None}


def test_plan_captures_and_keys():
    from mechstudy.engine.plan import make_node

    b, base = _plan_base()
    plan = spec.OPS["patch"].plan
    pat = plan({**base, "component": "pattern"}, b)
    assert (pat.input("source").param("site"), pat.input("source").param("which")) == ("pattern", "clean")
    assert (pat.input("values").param("site"), pat.input("values").param("which")) == ("v", "corrupted")
    noise = plan({**base, "component": "pattern", "direction": "noising"}, b)
    assert noise.input("values").param("which") == "clean"
    neu = plan({**base, "component": "neurons", "component_index": (10, 11)}, b)
    assert neu.input("source").param("site") == "mlp_post" and neu.param("component_index") == [10, 11]
    assert plan({**base, "component": "neurons", "component_index": (10, 12)}, b).key != neu.key
    assert plan({**base, "component": "q"}, b).input("source").param("site") == "q"
    # no component_index: an ordinary keyed param whose default (None: every unit) is spelled out
    heads = plan({**base, "component": "heads"}, b)
    before = make_node("patch", {"component": "heads", "direction": "denoising", "layers": "all",
                                 "metric": "logit_diff", "positions": "all"},
                       {"model": base["model"], "dataset": base["dataset"], "source": heads.input("source"),
                        "resume": heads.input("resume"), "replay": heads.input("replay"),
                        "baseline": heads.input("baseline")})
    assert heads.key == before.key and dict(heads.params)["component_index"] is None
    # resumed from the base run's residual stream (and, for heads, its z: the patched layer's
    # attention is not recomputed); normalised by the shared baseline node
    assert (heads.input("resume").param("site"), heads.input("resume").param("which")) == ("resid_pre", "corrupted")
    assert (heads.input("replay").param("site"), heads.input("replay").param("which")) == ("z", "corrupted")
    assert heads.input("baseline").op == "baseline" and heads.input("baseline") is plan({**base, "component": "mlp"}, b).input("baseline")
    q0 = dict(plan({**base, "component": "q", "layers": (0,)}, b).inputs)
    assert "resume" not in q0 and "replay" not in q0  # nothing to skip before layer 0's q
    assert "replay" not in dict(plan({**base, "component": "resid"}, b).inputs)  # resid_pre: its attention runs


def test_statements_reach_the_right_operator(stdlib_loaded, tmp_path, tiny_gpt2_dir):
    from mechstudy.lang import check

    src = (f'model m = hf "{tiny_gpt2_dir}"\ndataset ioi = ioi(n=4)\n'
           "a = patch neurons 10..20 in layer 1 of m on ioi with loss\n"
           "b = patch heads in layer 1 of m on ioi with logit_diff\n"
           "c = patch path from heads [1, 2] in layer 0 to v [0, 3] in layer 1 at last position of m on ioi\n"
           "d = patch from attn in all layers of m on ioi with kl\n"
           "e = patch pattern at last position in all layers of m on ioi with kl noising\n")
    study = check(src, "s.study")
    calls = {c.name: (c.op, dict(c.points[0])) for c in study.calls}
    assert len(study.calls[0].points) == 1  # a neuron range is one node, not a sweep
    assert calls["a"][0] == "patch" and calls["a"][1]["component_index"] == tuple(range(10, 21))
    assert calls["b"][0] == "patch" and calls["c"][0] == calls["d"][0] == "path_patch"
    assert calls["c"][1]["sender"] == {"component": "heads", "component_index": (1, 2), "layers": (0,)}
    assert calls["c"][1]["receiver"] == {"component": "v", "component_index": (0, 3), "layers": (1,), "positions": "last"}
    assert calls["d"][1]["receiver"] is None and calls["e"][1]["direction"] == "noising"
