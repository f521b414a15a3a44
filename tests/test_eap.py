"""Edge attribution patching against a hand-computed reference, on every architecture.

The references (`circuits_reference`: GPT-2, GPT-NeoX parallel and sequential, Llama with
grouped-query attention) are independent float64 models in which every receiver's input is an
explicit sum over its parents; a zero tensor added to each receiver's input gives, by autograd,
the gradient at that receiver's private input. EAP's score of u -> v is then
(a_u(clean) - a_u(corrupted)) . grad_v summed over positions and d_model, averaged over prompts.
"""

from __future__ import annotations

import pytest
import torch

import mechstudy.stdlib.models.sources  # noqa: F401
import mechstudy.stdlib.ops.attribute_edges  # noqa: F401
import mechstudy.stdlib.ops.gradient  # noqa: F401
from circuits_reference import answer_logits, metric, reference
from conftest import CIRCUIT_ARCHS
from mechstudy.engine import spec
from mechstudy.engine.context import Context
from mechstudy.stdlib.circuits.gradients import receiver_gradients
from mechstudy.stdlib.circuits.graph import ComponentGraph
from mechstudy.stdlib.circuits.scores import scorer
from mechstudy.stdlib.datasets import Pairs
from mechstudy.stdlib.ops.attribute_edges import receiver_stack

N = 5


@pytest.fixture(scope="module", params=CIRCUIT_ARCHS)
def m(request, circuit_models):
    """One architecture's tiny model, its reference and an IOI set (the tiny word-level tokenizer)."""
    from mechstudy.stdlib.datasets.ioi import generate

    got = circuit_models(request.param)
    got.ref = reference(got.adapter64)
    got.ioi = generate(got.adapter.tokenizer, n=N, seed=11)
    return got


def ref_receiver_grads(ref, ds, ids, metric_name, input_value=None):
    t = ds.tensors
    with torch.no_grad():
        clean = answer_logits(ref.run(t["clean_ids"])[0], ds)
    b, s = ids.shape
    eps = {r: torch.zeros(b, s, ref.D, dtype=torch.float64, requires_grad=True) for r in ref.receivers()}
    logits, _ = ref.run(ids, eps=eps, input_value=input_value)
    total = metric(metric_name, answer_logits(logits, ds), ds, clean).sum()
    grads = torch.autograd.grad(total, list(eps.values()))
    return dict(zip(eps, grads))


def ref_scores(ref, ds, metric_name, direction="denoising", steps=1):
    """[U, R] reference EAP(-IG) scores, zero where there is no edge."""
    t = ds.tensors
    with torch.no_grad():
        _, out_clean = ref.run(t["clean_ids"])
        _, out_corr = ref.run(t["corrupted_ids"])
    base_ids, (base, other) = ((t["corrupted_ids"], (out_corr, out_clean)) if direction == "denoising"
                               else (t["clean_ids"], (out_clean, out_corr)))
    grads = {r: 0.0 for r in ref.receivers()}
    for j in range(steps):
        emb = base["input"] + (j / steps) * (other["input"] - base["input"])
        for r, g in ref_receiver_grads(ref, ds, base_ids, metric_name, input_value=emb).items():
            grads[r] = grads[r] + g / steps
    real = t["attention_mask"].bool()[:, :, None]
    senders, receivers = ref.senders(), ref.receivers()
    out = torch.zeros(len(senders), len(receivers), dtype=torch.float64)
    for v, r in enumerate(receivers):
        for u in ref.parents(r):
            delta = (other[u] - base[u]) * real
            out[senders.index(u), v] = (delta * grads[r]).sum() / ds.tensors["clean_ids"].shape[0]
    return out


def test_reference_is_the_hf_model(m):
    t = m.ioi.tensors
    with torch.no_grad():
        logits, _ = m.ref.run(t["clean_ids"])
        hf = m.adapter64.forward(t["clean_ids"], t["attention_mask"], logits_at=t["answer_pos"]).logits
    torch.testing.assert_close(answer_logits(logits, m.ioi), hf, atol=m.tol, rtol=m.tol)


@pytest.mark.parametrize("metric_name", ["logit_diff", "kl"])
def test_receiver_gradients_equal_the_reference(metric_name, m):
    pairs = Pairs.of(m.ioi)
    with torch.no_grad():
        clean = m.adapter64.forward(pairs.clean_ids, pairs.attention_mask, logits_at=pairs.answer_pos).logits
    got, _ = receiver_gradients(m.adapter64, pairs.corrupted_ids, pairs.attention_mask, pairs.answer_pos,
                                scorer(metric_name, pairs, None, clean))
    want = ref_receiver_grads(m.ref, m.ioi, m.ioi.tensors["corrupted_ids"], metric_name)
    graph = ComponentGraph.of_model(m.adapter64)
    assert graph.parallel == m.ref.parallel and [r.name for r in graph.receivers] == m.ref.receivers()
    stack = receiver_stack(got, graph)
    real = pairs.attention_mask.bool()[:, :, None]
    for v, r in enumerate(graph.receivers):
        assert r.name in want
        scale = want[r.name].abs().max()
        torch.testing.assert_close(stack[v] * real, want[r.name] * real, atol=max(1e-10, m.tol * scale), rtol=1e-8 + m.tol)
        assert scale > 1e-3


def _eap(model_art, ds, ctx=None, **params):
    ctx = ctx or Context(device="cpu", max_rows=2)
    io = {"model": model_art, "dataset": ds}
    base = "corrupted" if params.get("direction", "denoising") == "denoising" else "clean"
    grad = spec.OPS["gradient"].execute(io, {"site": "receivers", "which": base, "metric": params["metric"],
                                         "ig_steps": params.get("ig_steps", 1)}, ctx)
    p = {"direction": "denoising", "ig_steps": 1, "top": 10, **params}
    return spec.OPS["attribute_edges"].execute({**io, "gradient": grad}, p, ctx)


@pytest.mark.parametrize("params", [
    {"metric": "logit_diff"},
    {"metric": "kl"},
    {"metric": "prob", "direction": "noising"},
    {"metric": "logit_diff", "ig_steps": 3},
])
def test_eap_scores_equal_the_reference(params, m):
    out = _eap(m.artifact, m.ioi, **params)  # the float32 model, as a study runs it
    want = ref_scores(m.ref, m.ioi, params["metric"], params.get("direction", "denoising"), params.get("ig_steps", 1))
    got = out.tensors["scores"].double()
    scale = want.abs().max()
    assert scale > 1e-3
    torch.testing.assert_close(got, want, atol=2e-5 * scale, rtol=1e-4)
    table = out.tables["result"]
    graph = ComponentGraph.of_model(m.adapter)
    assert table.height == len(graph.edges) == int(out.tensors["edge_mask"].sum())
    top = table.row(0, named=True)
    u, v = graph.sender_index(top["src"]), graph.receiver_index(top["dst"])
    assert abs(top["score"] - want[u, v].item()) < 1e-4 * scale
    assert abs(top["score"]) >= abs(table["score"]).max() - 1e-12  # sorted by |score|
    assert out.tables["edges"].height == 10 and set(out.tables["edges"]["src"]) <= set(out.tables["nodes"]["node"])


def test_ig_moves_away_from_plain_eap(circuit_models):
    from mechstudy.stdlib.datasets.ioi import generate

    g = circuit_models("gpt2")
    ioi = generate(g.adapter.tokenizer, n=N, seed=11)
    plain = _eap(g.artifact, ioi, metric="logit_diff").tensors["scores"]
    ig = _eap(g.artifact, ioi, metric="logit_diff", ig_steps=4).tensors["scores"]
    assert (plain - ig).abs().max() > 1e-4 * plain.abs().max()  # the path points are really used
