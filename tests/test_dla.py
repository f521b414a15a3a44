"""Direct logit attribution on every architecture: the terms add up to the logit difference, and
each term equals the frozen-scale formula applied to the reference model's component outputs
(LayerNorm: centred, divided by sigma, times the gain; RMSNorm: divided by the root mean square,
times the gain; the norm's bias and the unembedding's bias as constants)."""

from __future__ import annotations

import pytest
import torch

import mechstudy.stdlib.models.sources  # noqa: F401
import mechstudy.stdlib.ops.logit_attribution  # noqa: F401
from circuits_reference import answer_logits, metric, reference
from conftest import CIRCUIT_ARCHS
from mechstudy.engine import spec
from mechstudy.engine.context import Context

N = 7


@pytest.fixture(scope="module", params=CIRCUIT_ARCHS)
def m(request, circuit_models):
    from mechstudy.stdlib.datasets.ioi import generate

    got = circuit_models(request.param)
    got.ioi = generate(got.adapter.tokenizer, n=N, seed=4)
    return got


class Ctx64(Context):
    def __init__(self, adapter):
        super().__init__(device="cpu", max_rows=3)
        self.adapter = adapter

    def model(self, artifact):
        return self.adapter


def _dla(model_art, ds, ctx, run="clean"):
    return spec.OPS["logit_attribution"].execute({"model": model_art, "dataset": ds}, {"run": run}, ctx)


@pytest.mark.parametrize("run", ["clean", "corrupted"])
def test_terms_add_up_to_the_logit_difference(run, m):
    out = _dla(m.artifact, m.ioi, Ctx64(m.adapter64), run)
    ld, total = out.tensors["logit_diff"].double(), out.tensors["per_prompt"].double().sum(0)
    assert torch.allclose(total, ld, atol=1e-5, rtol=0) and out.data["max_abs_gap"] < max(1e-10, m.tol)
    assert ld.abs().max() > 0.1
    comp = out.tables["components"]
    assert abs(comp["contribution"].sum() - ld.mean().item()) < max(1e-10, m.tol)
    assert comp.height == 1 + 2 * (4 + 2) + 1  # embed, per layer 4 heads + bias + mlp, final norm bias
    f32 = _dla(m.artifact, m.ioi, Context(device="cpu", max_rows=3), run)
    assert f32.data["max_abs_gap"] < 1e-5  # the float32 model: exact up to float32 rounding


def test_each_term_is_the_frozen_scale_formula(m):
    ref = reference(m.adapter64)
    t = m.ioi.tensors
    with torch.no_grad():
        logits, outs = ref.run(t["clean_ids"])
    rows, pos = torch.arange(N), t["answer_pos"]
    at = {k: v[rows, pos] for k, v in outs.items()}  # [N, D] at the answer positions
    biases = [ref.attn_bias(l) for l in range(ref.L)]
    x = sum(at.values()) + sum(biases)  # the final residual stream
    sigma = ref.final_scale(x)
    gain, bias, centres = ref.final_norm_affine()
    w_u = ref.w_u()
    direction = gain * (w_u[t["io_id"]] - w_u[t["s_id"]])

    def dla(c):
        return ((c - c.mean(-1, keepdim=True) if centres else c) * direction).sum(-1) / sigma

    out = _dla(m.artifact, m.ioi, Ctx64(m.adapter64))
    names = out.data["terms"]
    per = out.tensors["per_prompt"].double()
    tol = 1e-6 + 10 * m.tol
    for name, c in at.items():
        want = dla(c)
        got = per[names.index("embed" if name == "input" else name)]
        torch.testing.assert_close(got, want.float().double(), atol=tol, rtol=1e-5)
    for l in range(ref.L):
        torch.testing.assert_close(per[names.index(f"attn_bias{l}")], dla(biases[l].expand(N, -1)).float().double(),
                                   atol=tol, rtol=1e-5)
    const = (bias * (w_u[t["io_id"]] - w_u[t["s_id"]])).sum(-1) if bias is not None else torch.zeros(N, dtype=torch.float64)
    torch.testing.assert_close(per[names.index("ln_final_bias")], const.float().double(), atol=tol, rtol=1e-5)
    ld = metric("logit_diff", answer_logits(logits, m.ioi), m.ioi)
    torch.testing.assert_close(per.sum(0), ld, atol=1e-5, rtol=0)
    heads = out.tables["result"]
    assert heads.columns == ["layer", "head", "effect"] and heads.height == ref.L * ref.H
    assert abs(heads.filter((heads["layer"] == 1) & (heads["head"] == 2))["effect"].item()
               - dla(at["a1.h2"]).mean().item()) < tol
