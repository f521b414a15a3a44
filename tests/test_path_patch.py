"""Path patching against a slow reference (plain hooks, one sender at a time, whole batch) and
against the direct path worked out by hand."""

from __future__ import annotations

import pytest
import torch

import mechstudy.stdlib.models.sources  # noqa: F401  (registers the hf and zoo model sources)
import mechstudy.stdlib.ops.path_patch  # noqa: F401  (registers the operator under test)
import patch_refs as R
from mechstudy.engine import spec
from mechstudy.engine.context import Context

N_PROMPTS = 6
L, H = 2, 4
RECV_KINDS = {"heads": ("q", "k", "v"), "q": ("q",), "k": ("k",), "v": ("v",)}


@pytest.fixture(scope="module")
def ioi(tiny_adapter):
    from mechstudy.stdlib.datasets.ioi import generate

    return generate(tiny_adapter.tokenizer, n=N_PROMPTS, seed=7)


@pytest.fixture(scope="module")
def ctx():
    return Context(device="cpu", max_rows=7)


def _sel(positions, t, width):
    sets = R.position_sets(positions, t, width)
    return torch.stack(sets).any(0)  # receivers: one set of positions at once


def reference(model, ds, sender, receiver, metric, direction, freeze_mlps=False):
    """[V, N] metric values and [V] effects, senders in the op's order (layer, position, head)."""
    t = ds.tensors
    clean, corr, mask = t["clean_ids"], t["corrupted_ids"], t["attention_mask"]
    base_ids, src_ids = (clean, corr) if direction == "noising" else (corr, clean)
    width = clean.shape[1]
    lc, lk = R.logits(model, clean, mask), R.logits(model, corr, mask)
    m_clean, m_corr = R.metric(metric, lc, t, lc).mean(), R.metric(metric, lk, t, lc).mean()
    word = sender["component"]
    src_kind = "mlp_out" if word == "mlp" else "z"
    base_z = [R.capture(model, base_ids, mask, "z", l) for l in range(L)]
    src = [R.capture(model, src_ids, mask, src_kind, l) for l in range(L)]
    base_mlp = [R.capture(model, base_ids, mask, "mlp_out", l) for l in range(L)]
    units = (sender.get("component_index") or range(H)) if word == "heads" else [None]
    values = []
    for layer in sender.get("layers", range(L)):
        for sel in R.position_sets(sender.get("positions", "all"), t, width):
            for u in units:
                step1 = []
                for l in range(L):
                    def freeze(v, l=l, layer=layer, u=u, sel=sel):
                        v[:] = base_z[l]
                        if word != "mlp" and l == layer:
                            if u is None:
                                v[sel] = src[l][sel]
                            else:
                                v[:, :, u][sel] = src[l][:, :, u][sel]
                    step1.append(("z", l, freeze))
                    if freeze_mlps:
                        step1.append(("mlp_out", l, lambda v, l=l: v.copy_(base_mlp[l])))
                if word == "mlp":
                    step1.append(("mlp_out", layer, R.write("mlp_out", None, sel, src[layer])))
                if receiver is None:
                    lg = R.logits(model, base_ids, mask, step1)
                else:
                    got = {}
                    for rl in receiver["layers"]:
                        for k in RECV_KINDS[receiver["component"]]:
                            step1.append((k, rl, lambda v, key=(k, rl): got.__setitem__(key, v.clone())))
                    R.logits(model, base_ids, mask, step1)
                    rsel = _sel(receiver.get("positions", "all"), t, width)
                    step2 = [(k, rl, R.write(k, h, rsel, got[(k, rl)]))
                             for (k, rl) in got for h in (receiver.get("component_index") or range(H))]
                    lg = R.logits(model, base_ids, mask, step2)
                values.append(R.metric(metric, lg, t, lc))
    values = torch.stack(values)
    return values, (values.mean(1) - m_corr) / (m_clean - m_corr)


CASES = [
    ({"component": "heads", "layers": [0]}, {"component": "heads", "layers": [1]}, "logit_diff", "noising", False),
    ({"component": "heads", "layers": [0], "positions": "each"},
     {"component": "q", "layers": [1], "positions": "last", "component_index": [1, 2]}, "kl", "denoising", False),
    ({"component": "attn"}, None, "prob", "noising", False),
    ({"component": "mlp", "layers": [0]}, None, "loss", "noising", True),
    ({"component": "heads", "layers": [0], "component_index": [3]},
     {"component": "v", "layers": [1], "positions": [2, 5]}, "logit_diff", "noising", False),
    ({"component": "heads"}, {"component": "k", "layers": [1]}, "kl", "noising", True),
]


@pytest.mark.parametrize("sender,receiver,metric,direction,freeze", CASES)
def test_path_patching_equals_slow_reference(sender, receiver, metric, direction, freeze, tiny_adapter,
                                             tiny_model_artifact, ioi, ctx):
    params = dict(sender=sender, receiver=receiver, metric=metric, direction=direction, freeze_mlps=freeze)
    out = spec.OPS["path_patch"].execute({"model": tiny_model_artifact, "dataset": ioi}, params, ctx)
    values, effects = reference(tiny_adapter.model, ioi, sender, receiver, metric, direction, freeze)
    got = out.tensors["per_prompt"].reshape(-1, N_PROMPTS).double()
    assert got.shape == values.shape
    assert torch.allclose(got, values, atol=1e-5, rtol=0), (got - values).abs().max()
    torch.testing.assert_close(out.tensors["effect"].reshape(-1).double(), effects, atol=1e-4, rtol=1e-4)


def test_no_path_from_a_later_sender(tiny_model_artifact, ioi, ctx):
    # A head in layer 1 cannot reach layer 1's queries, keys or values: the metric is the clean one.
    out = spec.OPS["path_patch"].execute({"model": tiny_model_artifact, "dataset": ioi},
                                     dict(sender={"component": "heads", "layers": [1]},
                                          receiver={"component": "heads", "layers": [1]}, metric="logit_diff"), ctx)
    clean = out.tensors["clean"].double()
    torch.testing.assert_close(out.tensors["per_prompt"].double(), clean.expand(1, H, N_PROMPTS), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.tensors["effect"].double(), torch.ones(1, H, dtype=torch.float64), atol=1e-5, rtol=0)


def test_direct_path_to_the_logits_by_hand(tiny_adapter, tiny_model_artifact, ioi, ctx):
    # With every other head and every MLP frozen, a sender head changes the final residual by
    # exactly (z_corrupted - z_clean) of that head through its rows of W_O; the logits follow.
    out = spec.OPS["path_patch"].execute({"model": tiny_model_artifact, "dataset": ioi},
                                     dict(sender={"component": "heads"}, receiver=None, metric="logit_diff",
                                          freeze_mlps=True), ctx)
    model, t = tiny_adapter.model, ioi.tensors
    clean, corr, mask = t["clean_ids"], t["corrupted_ids"], t["attention_mask"]
    final = R.capture(model, clean, mask, "resid_post", L - 1)
    dh = model.config.n_embd // H
    want = []
    for layer in range(L):
        zc, zk = R.capture(model, clean, mask, "z", layer), R.capture(model, corr, mask, "z", layer)
        w_o = model.transformer.h[layer].attn.c_proj.weight  # Conv1D: [d_in, d_out]
        for h in range(H):
            resid = final + (zk[:, :, h] - zc[:, :, h]) @ w_o[h * dh:(h + 1) * dh]
            with torch.no_grad():
                logits = model.lm_head(model.transformer.ln_f(resid))
            want.append(R.metric("logit_diff", logits, t, logits))
    torch.testing.assert_close(out.tensors["per_prompt"].reshape(-1, N_PROMPTS).double(), torch.stack(want),
                               atol=1e-5, rtol=0)


def test_plan_and_endpoints(tiny_model_artifact, ioi, ctx):
    import mechstudy.engine.builtins  # noqa: F401
    from mechstudy.engine.build import Builder

    b = Builder()
    m = b.node("model", {"source": "hf", "ref": "x", "options": {}, "fingerprint": "f", "libs": {}})
    d = b.node("dataset", {"generator": "ioi", "generator_version": 1, "params": {"n": 8}}, {"model": m})
    base = {"model": m, "dataset": d, "metric": "kl", "direction": "noising", "freeze_mlps": False, "component": "path"}
    node = spec.OPS["path_patch"].plan({**base, "sender": {"component": "heads", "layers": (0,)}, "receiver": None}, b)
    assert {k: (n.param("site"), n.param("which")) for k, n in node.inputs if n.op == "capture"} == {
        "base_z": ("z", "clean"), "source": ("z", "corrupted")}
    run = spec.OPS["path_patch"].execute
    inputs = {"model": tiny_model_artifact, "dataset": ioi}
    # receivers without layers: every layer's heads
    every = run(inputs, dict(sender={"component": "heads", "layers": [0]}, receiver={"component": "v"}), ctx)
    both = run(inputs, dict(sender={"component": "heads", "layers": [0]}, receiver={"component": "v", "layers": [0, 1]}), ctx)
    torch.testing.assert_close(every.tensors["per_prompt"], both.tensors["per_prompt"], atol=0, rtol=0)
    with pytest.raises(ValueError, match="one set of positions"):
        run(inputs, dict(sender={"component": "heads"}, receiver={"component": "q", "positions": "each"}), ctx)


def test_checker_knows_senders_and_receivers(stdlib_loaded, tiny_gpt2_dir):
    from mechstudy.lang import StudyErrors, check

    head = f'model m = hf "{tiny_gpt2_dir}"\ndataset ioi = ioi(n=4)\n'
    for stmt, msg in [("patch path from heads in layer 0 to mlp in layer 1 of m on ioi\n", "takes no 'mlp' after `to`"),
                      ("patch path from q in layer 0 of m on ioi\n", "takes no 'q' after `from`"),
                      ("patch path from heads in layer 0 to heads in layer 5 of m on ioi\n", "out of range")]:
        with pytest.raises(StudyErrors) as e:
            check(head + stmt, "s.study")
        assert msg in e.value.render(), e.value.render()
    check(head + "patch path from attn in all layers to logits of m on ioi with kl\n", "s.study")
