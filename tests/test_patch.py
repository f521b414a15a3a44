"""Batched activation patching against a slow, obviously correct reference.

The reference is written independently of the adapter: plain PyTorch hooks on the HF modules,
one forward per variant over the whole padded batch, full logits, metrics by their formulas.
"""

from __future__ import annotations

import pytest
import torch

import mechstudy.stdlib.models.sources  # noqa: F401  (registers the hf and zoo model sources)
import mechstudy.stdlib.ops.capture  # noqa: F401  (registers the operators under test)
import mechstudy.stdlib.ops.patch  # noqa: F401
from mechstudy.engine import spec
from mechstudy.engine.context import Context
from mechstudy.engine.spec import Artifact

N_PROMPTS = 6


@pytest.fixture(scope="module")
def ioi(tiny_adapter):
    from mechstudy.stdlib.datasets.ioi import generate

    return generate(tiny_adapter.tokenizer, n=N_PROMPTS, seed=5)  # mixed templates: mixed lengths


@pytest.fixture(scope="module")
def ctx():
    return Context(device="cpu", max_rows=7)  # chunks that cut variants in the middle


# ---- the slow reference -------------------------------------------------------------------
def _point(model, kind, layer):
    """(module, "pre" | "out") a kind is read/written at, by hand."""
    blk = model.transformer.h[layer]
    return {"z": (blk.attn.c_proj, "pre"), "resid_pre": (blk, "pre"), "resid_post": (blk, "out"),
            "attn_out": (blk.attn, "out"), "mlp_out": (blk.mlp, "out")}[kind]


def _get(out):
    return out[0] if isinstance(out, tuple) else out


def _put(out, new):
    return (new, *out[1:]) if isinstance(out, tuple) else new


def ref_capture(model, ids, mask, kind, layer):
    got = {}
    if kind == "resid_mid":  # the input of ln_2
        h = model.transformer.h[layer].ln_2.register_forward_pre_hook(lambda m, a: got.__setitem__("x", a[0].clone()))
    else:
        mod, on = _point(model, kind, layer)
        if on == "pre":
            h = mod.register_forward_pre_hook(lambda m, a: got.__setitem__("x", a[0].clone()))
        else:
            h = mod.register_forward_hook(lambda m, a, o: got.__setitem__("x", _get(o).clone()))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    h.remove()
    return got["x"]


def ref_patched_logits(model, ids, mask, kind, layer, head, pos_sel, src):
    """Full logits with `src` written at (pos_sel: [B, S] bool) of one site (and head)."""
    n_heads = model.config.n_head

    def write(x):
        x = x.clone()
        if kind == "z":
            x4, s4 = x.view(*x.shape[:2], n_heads, -1), src.view(*src.shape[:2], n_heads, -1)
            x4[:, :, head][pos_sel] = s4[:, :, head][pos_sel]
        else:
            x[pos_sel] = src[pos_sel]
        return x

    hooks = []
    blk = model.transformer.h[layer]
    if kind == "resid_mid":  # resid_mid = resid_pre + attn_out: write attn_out := src - resid_pre
        seen = {}
        hooks.append(blk.register_forward_pre_hook(lambda m, a: seen.__setitem__("pre", a[0])))

        def attn_hook(m, a, o):
            out = o[0].clone()
            out[pos_sel] = (src - seen["pre"])[pos_sel]
            return (out, *o[1:])

        hooks.append(blk.attn.register_forward_hook(attn_hook))
    else:
        mod, on = _point(model, kind, layer)
        if on == "pre":
            hooks.append(mod.register_forward_pre_hook(lambda m, a: (write(a[0]), *a[1:])))
        else:
            hooks.append(mod.register_forward_hook(lambda m, a, o: _put(o, write(_get(o)))))
    try:
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask).logits
    finally:
        for h in hooks:
            h.remove()


def ref_metric(name, logits, ds, clean_logits):
    t = ds.tensors
    vals = []
    for i in range(logits.shape[0]):
        p = int(t["answer_pos"][i])
        lg = logits[i, p].double()
        if name == "logit_diff":
            vals.append((lg[t["io_id"][i]] - lg[t["s_id"][i]]).item())
        elif name == "prob":
            vals.append((lg.exp() / lg.exp().sum())[t["io_id"][i]].item())
        else:
            pc = torch.softmax(clean_logits[i, p].double(), -1)
            q = torch.softmax(lg, -1)
            vals.append((pc * (pc.log() - q.log())).sum().item())
    return torch.tensor(vals, dtype=torch.float64)


def reference_sweep(model, ds, component, layers, positions, metric, direction):
    """Returns (per-variant per-prompt values [V, N], effects [V]) in the op's variant order."""
    kind = {"heads": "z", "resid": "resid_pre", "attn": "attn_out", "mlp": "mlp_out"}.get(component, component)
    t = ds.tensors
    clean, corr, mask = t["clean_ids"], t["corrupted_ids"], t["attention_mask"]
    base, srcids = (corr, clean) if direction == "denoising" else (clean, corr)
    with torch.no_grad():
        lc = model(input_ids=clean, attention_mask=mask).logits
        lk = model(input_ids=corr, attention_mask=mask).logits
    m_clean, m_corr = ref_metric(metric, lc, ds, lc).mean(), ref_metric(metric, lk, ds, lc).mean()
    b, s = clean.shape
    n_heads = model.config.n_head if component == "heads" else 1
    if positions == "all":
        pos_list = [None]
    elif positions == "last":
        pos_list = ["last"]
    elif positions == "each":
        pos_list = list(range(s))
    else:
        pos_list = list(positions)
    values = []
    for layer in layers:
        src = ref_capture(model, srcids, mask, kind, layer)
        for p in pos_list:
            sel = torch.zeros(b, s, dtype=torch.bool)
            if p is None:
                sel[:] = True
            elif p == "last":
                sel[torch.arange(b), t["answer_pos"]] = True
            else:
                sel[:, p] = True
            for head in range(n_heads):
                logits = ref_patched_logits(model, base, mask, kind, layer, head, sel, src)
                values.append(ref_metric(metric, logits, ds, lc))
    values = torch.stack(values)
    return values, (values.mean(1) - m_corr) / (m_clean - m_corr)


def run_patch(model_art, ds, ctx, **params):
    return spec.OPS["patch"].execute({"model": model_art, "dataset": ds}, params, ctx)


CASES = [
    ("heads", "all", "logit_diff", "denoising"),
    ("heads", "all", "prob", "denoising"),
    ("heads", "all", "kl", "denoising"),
    ("heads", "all", "logit_diff", "noising"),
    ("heads", "all", "kl", "noising"),
    ("heads", "last", "prob", "noising"),
    ("heads", [2, 5], "logit_diff", "denoising"),
    ("resid", "each", "logit_diff", "denoising"),
    ("resid", "each", "kl", "noising"),
    ("resid_mid", "each", "prob", "denoising"),
    ("resid_post", "last", "logit_diff", "noising"),
    ("attn", "each", "prob", "denoising"),
    ("attn", "all", "kl", "noising"),
    ("mlp", "each", "logit_diff", "noising"),
    ("mlp", [3], "kl", "denoising"),
]


@pytest.mark.parametrize("component,positions,metric,direction", CASES)
def test_batched_patch_equals_slow_reference(component, positions, metric, direction, tiny_adapter,
                                             tiny_model_artifact, ioi, ctx):
    out = run_patch(tiny_model_artifact, ioi, ctx, component=component, layers="all", positions=positions,
                    metric=metric, direction=direction)
    values, effects = reference_sweep(tiny_adapter.model, ioi, component, range(2), positions, metric, direction)
    got = out.tensors["per_prompt"].reshape(-1, N_PROMPTS).double()
    assert got.shape == values.shape
    assert torch.allclose(got, values, atol=1e-5, rtol=0), (got - values).abs().max()
    torch.testing.assert_close(out.tensors["effect"].reshape(-1).double(), effects, atol=1e-4, rtol=1e-4)
    table = out.tables["result"]
    assert table.height == values.shape[0] and "effect" in table.columns and "patched" in table.columns


def test_whole_residual_restores_exactly(tiny_model_artifact, ioi, ctx):
    # Patching the whole clean residual stream in at layer 0 makes the corrupted run the clean run.
    den = run_patch(tiny_model_artifact, ioi, ctx, component="resid", layers=[0], positions="all",
                    metric="logit_diff", direction="denoising")
    noi = run_patch(tiny_model_artifact, ioi, ctx, component="resid_post", layers=[1], positions="last",
                    metric="kl", direction="noising")
    assert den.tensors["effect"].shape == (1,) and abs(den.tensors["effect"].item() - 1) < 1e-5
    assert abs(noi.tensors["effect"].item()) < 1e-5  # the corrupted last residual: fully corrupted output


def test_mixed_lengths_match_each_prompt_alone(tiny_model_artifact, ioi, ctx):
    t = ioi.tensors
    lengths = t["attention_mask"].sum(1)
    assert lengths.unique().numel() > 1
    for component, positions in (("heads", "all"), ("resid", "each")):
        batch = run_patch(tiny_model_artifact, ioi, ctx, component=component, positions=positions, metric="kl")
        for i in range(N_PROMPTS):
            n = int(lengths[i])
            alone = Artifact(tensors={k: (v[i : i + 1, :n] if v.ndim == 2 else v[i : i + 1]) for k, v in t.items()})
            one = run_patch(tiny_model_artifact, alone, ctx, component=component, positions=positions, metric="kl")
            mine = batch.tensors["per_prompt"][..., i]
            if positions == "each":
                torch.testing.assert_close(mine[:, :n], one.tensors["per_prompt"][..., 0], atol=1e-5, rtol=0)
                # past its end a position is padding: patching it changes nothing for this prompt
                torch.testing.assert_close(mine[:, n:], batch.tensors["corrupted"][i].expand_as(mine[:, n:]),
                                           atol=1e-5, rtol=0)
            else:
                torch.testing.assert_close(mine, one.tensors["per_prompt"][..., 0], atol=1e-5, rtol=0)


def test_chunk_size_does_not_change_numbers(tiny_model_artifact, ioi):
    outs = [run_patch(tiny_model_artifact, ioi, Context(device="cpu", max_rows=r), component="heads",
                      metric="logit_diff") for r in (1, 5, 1000)]
    for o in outs[1:]:
        torch.testing.assert_close(o.tensors["per_prompt"], outs[0].tensors["per_prompt"], atol=1e-5, rtol=0)


def test_plan_shares_one_capture_node():
    import mechstudy.engine.builtins  # noqa: F401  (the model and dataset node kinds)
    from mechstudy.engine.build import Builder

    b = Builder()
    m = b.node("model", {"source": "hf", "ref": "x", "options": {}, "fingerprint": "f", "libs": {}})
    d = b.node("dataset", {"generator": "ioi", "generator_version": 1, "params": {"n": 8}}, {"model": m})
    plan = spec.OPS["patch"].plan
    base = {"model": m, "dataset": d, "metric": "logit_diff", "direction": "denoising", "positions": None}
    p9 = plan({**base, "component": "heads", "layers": [1]}, b)
    pall = plan({**base, "component": "heads", "layers": "all", "metric": "kl"}, b)
    pnoise = plan({**base, "component": "heads", "layers": "all", "direction": "noising"}, b)
    presid = plan({**base, "component": "resid", "layers": "all"}, b)
    assert p9.input("source") == pall.input("source")  # one capture for both statements
    assert pnoise.input("source") != p9.input("source")  # corrupted activations, another node
    assert presid.input("source").param("site") == "resid_pre"
    assert p9.param("positions") == "all" and presid.param("positions") == "each"  # defaults keyed explicitly
    explicit = plan({**base, "component": "heads", "layers": [1], "positions": "all"}, b)
    assert explicit == p9


def test_capture_op_output(tiny_model_artifact, ioi, ctx):
    out = spec.OPS["capture"].execute({"model": tiny_model_artifact, "dataset": ioi}, {"site": "z", "which": "corrupted"}, ctx)
    assert sorted(out.tensors) == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]
    z = out.tensors["blocks.1.attn.hook_z"]
    assert z.shape == (N_PROMPTS, ioi.tensors["clean_ids"].shape[1], 4, 16)
    mask = ioi.tensors["attention_mask"].bool()
    assert (z[~mask] == 0).all()  # padding stays zero


def test_positions_past_every_prompt_are_no_ops(tiny_model_artifact, ioi, ctx):
    width = ioi.tensors["clean_ids"].shape[1]
    out = run_patch(tiny_model_artifact, ioi, ctx, component="mlp", layers=[0], positions=[2, width + 5],
                    metric="logit_diff", direction="denoising")
    assert out.tables["result"]["position"].to_list() == [2, width + 5]
    assert abs(out.tensors["effect"][0, 1].item()) < 1e-5
    torch.testing.assert_close(out.tensors["per_prompt"][0, 1], out.tensors["corrupted"], atol=1e-5, rtol=0)
