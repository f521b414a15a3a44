"""Zero, mean and resample ablation against a slow reference (tests/patch_refs.py): the ablation
values are built by explicit loops over prompts and positions, written with plain hooks, one
forward per variant."""

from __future__ import annotations

import pytest
import torch

import mechstudy.stdlib.models.sources  # noqa: F401  (registers the hf and zoo model sources)
import mechstudy.stdlib.ops.ablate  # noqa: F401  (registers the operator under test)
import patch_refs as R
from mechstudy.engine import spec
from mechstudy.engine.context import Context
from mechstudy.stdlib.ops.ablate import resample_order

N_PROMPTS = 6
KIND = {"heads": "z", "neurons": "mlp_post", "attn": "attn_out", "mlp": "mlp_out", "resid": "resid_pre"}


@pytest.fixture(scope="module")
def ioi(tiny_adapter):
    from mechstudy.stdlib.datasets.ioi import generate

    return generate(tiny_adapter.tokenizer, n=N_PROMPTS, seed=11)


@pytest.fixture(scope="module")
def ctx():
    return Context(device="cpu", max_rows=5)


def loop_mean(act: torch.Tensor, mask: torch.Tensor, pattern: bool) -> torch.Tensor:
    """Per position, the mean over the prompts that are real there, by loops; [N, ...] repeated."""
    out = torch.zeros_like(act)
    n, width = mask.shape
    for s in range(width):
        real = [i for i in range(n) if mask[i, s]]
        if not real:
            continue
        if pattern:
            m = sum(act[i, :, s] for i in real) / len(real)
            out[:, :, s] = m
        else:
            m = sum(act[i, s] for i in real) / len(real)
            out[:, s] = m
    return out


def reference(model, ds, word, positions, metric, method, index=None, mean_of="clean", seed=0):
    kind = KIND.get(word, word)
    t = ds.tensors
    clean, corr, mask = t["clean_ids"], t["corrupted_ids"], t["attention_mask"]
    lc, lk = R.logits(model, clean, mask), R.logits(model, corr, mask)
    m_clean, m_corr = R.metric(metric, lc, t, lc).mean(), R.metric(metric, lk, t, lc).mean()
    n_heads = model.config.n_head
    units = {"z": index or range(n_heads), "v": range(n_heads), "pattern": range(n_heads), "mlp_post": index}.get(kind, [None])
    values = []
    for layer in range(2):
        if method == "zero":
            src = torch.zeros_like(R.capture(model, clean, mask, kind, layer))
        elif method == "mean":
            act = R.capture(model, clean if mean_of == "clean" else corr, mask, kind, layer)
            src = loop_mean(act, mask, kind == "pattern")
        else:
            src = R.capture(model, corr, mask, kind, layer)[resample_order(mask, seed)]
        for sel in R.position_sets(positions, t, clean.shape[1]):
            for u in units:
                if kind == "pattern":
                    def fn(w, u=u, sel=sel, src=src):
                        w[:, u][sel] = src[:, u][sel]
                    lg = R.logits(model, clean, mask, pattern=(layer, fn))
                else:
                    lg = R.logits(model, clean, mask, [(kind, layer, R.write(kind, u, sel, src))])
                values.append(R.metric(metric, lg, t, lc))
    values = torch.stack(values)
    return values, (values.mean(1) - m_corr) / (m_clean - m_corr), m_clean


CASES = [
    ("heads", "all", "logit_diff", "mean", {}),
    ("heads", "last", "kl", "zero", {"component_index": [0, 2]}),
    ("mlp", "each", "prob", "resample", {}),
    ("neurons", "all", "loss", "mean", {"component_index": [2, 9]}),
    ("pattern", "all", "logit_diff", "mean", {}),
    ("pattern", "last", "kl", "zero", {}),
    ("pattern", "all", "loss", "resample", {"seed": 2}),
    ("resid", "last", "logit_diff", "resample", {"seed": 1}),
    ("v", "all", "kl", "mean", {"mean_of": "corrupted"}),
    ("attn", "all", "loss", "resample", {"seed": 3}),
]


@pytest.mark.parametrize("word,positions,metric,method,extra", CASES)
def test_batched_ablation_equals_slow_reference(word, positions, metric, method, extra, tiny_adapter,
                                                tiny_model_artifact, ioi, ctx):
    params = dict(component=word, layers="all", positions=positions, metric=metric, method=method, **extra)
    out = spec.OPS["ablate"].execute({"model": tiny_model_artifact, "dataset": ioi}, params, ctx)
    values, effects, m_clean = reference(tiny_adapter.model, ioi, word, positions, metric, method,
                                         extra.get("component_index"), extra.get("mean_of", "clean"), extra.get("seed", 0))
    got = out.tensors["per_prompt"].reshape(-1, N_PROMPTS).double()
    assert got.shape == values.shape
    assert torch.allclose(got, values, atol=1e-5, rtol=0), (got - values).abs().max()
    torch.testing.assert_close(out.tensors["effect"].reshape(-1).double(), effects, atol=1e-4, rtol=1e-4)
    table = out.tables["result"]
    torch.testing.assert_close(torch.tensor(table["change"].to_list(), dtype=torch.float64),
                               values.mean(1) - m_clean, atol=1e-5, rtol=0)


def test_resample_order_is_a_seeded_permutation_within_lengths(ioi):
    mask = ioi.tensors["attention_mask"]
    lengths = mask.sum(1)
    assert lengths.unique().numel() > 1
    for seed in range(5):
        order = resample_order(mask, seed)
        assert sorted(order.tolist()) == list(range(N_PROMPTS))
        assert torch.equal(lengths[order], lengths)  # positions line up
        assert torch.equal(order, resample_order(mask, seed))
    assert len({tuple(resample_order(torch.ones(8, 3), s).tolist()) for s in range(6)}) > 1


def test_zero_ablating_the_residual_at_the_answer_kills_the_prediction(tiny_model_artifact, ioi, ctx):
    # resid_post of the last layer at the answer position is all the unembedding sees: zeroing it
    # leaves logits equal to ln_f(0) @ W_U = bias @ W_U, the same for every prompt.
    out = spec.OPS["ablate"].execute({"model": tiny_model_artifact, "dataset": ioi},
                                 dict(component="resid_post", layers=[1], positions="last", metric="logit_diff",
                                      method="zero"), ctx)
    adapter = ctx.model(tiny_model_artifact)
    w = adapter.model.lm_head.weight
    const = adapter.model.transformer.ln_f.bias @ w.T
    t = ioi.tensors
    want = (const[t["io_id"]] - const[t["s_id"]]).double()
    torch.testing.assert_close(out.tensors["per_prompt"].reshape(-1).double(), want, atol=1e-5, rtol=0)


def test_plan_shares_captures_with_patch():
    import mechstudy.engine.builtins  # noqa: F401
    import mechstudy.stdlib.ops.patch  # noqa: F401
    from mechstudy.engine.build import Builder

    b = Builder()
    m = b.node("model", {"source": "hf", "ref": "x", "options": {}, "fingerprint": "f", "libs": {}})
    d = b.node("dataset", {"generator": "ioi", "generator_version": 1, "params": {"n": 8}}, {"model": m})
    base = {"model": m, "dataset": d, "metric": "logit_diff", "positions": None, "layers": "all",
            "component_index": None, "seed": 0, "mean_of": "clean"}
    mean = spec.OPS["ablate"].plan({**base, "component": "heads", "method": "mean"}, b)
    res = spec.OPS["ablate"].plan({**base, "component": "heads", "method": "resample"}, b)
    zero = spec.OPS["ablate"].plan({**base, "component": "heads", "method": "zero"}, b)
    den = spec.OPS["patch"].plan({**base, "component": "heads", "direction": "denoising"}, b)
    noi = spec.OPS["patch"].plan({**base, "component": "heads", "direction": "noising"}, b)
    assert mean.input("source") == den.input("source")  # mean of clean z: the denoising capture
    assert res.input("source") == noi.input("source")  # corrupted z: the noising capture
    assert "source" not in dict(zero.inputs)
    pat = spec.OPS["ablate"].plan({**base, "component": "pattern", "method": "mean"}, b)
    assert pat.input("values").param("site") == "v" and pat.input("values").param("which") == "clean"
