"""The logit lens against a slow reference on every architecture, and its known fixed point: the
last layer's resid_post decoded is the model's own output."""

from __future__ import annotations

import pytest
import torch

import mechstudy.stdlib.models.sources  # noqa: F401  (registers the hf and zoo model sources)
import mechstudy.stdlib.ops.lens  # noqa: F401  (registers the operator under test)
from conftest import CIRCUIT_ARCHS
from mechstudy.engine import spec
from mechstudy.engine.context import Context

N = 6


@pytest.fixture(scope="module", params=CIRCUIT_ARCHS)
def m(request, circuit_models):
    from mechstudy.stdlib.datasets.ioi import generate

    got = circuit_models(request.param)
    got.ioi = generate(got.adapter.tokenizer, n=N, seed=5)
    return got


def _lens(m, **params):
    return spec.OPS["lens"].execute({"model": m.artifact, "dataset": m.ioi},
                                    {"layers": list(range(m.adapter.n_layers)), **params},
                                    Context(device="cpu", max_rows=4))


def _reference(m, layer: int) -> torch.Tensor:
    """Log-probabilities [N, S, V] of layer `layer`'s resid_post decoded by hand: HF's own hidden
    states (the stream after each block; the last one is the model's logits), the final norm and
    the unembedding applied as plain modules, outside any hook."""
    a, t = m.adapter, m.ioi.tensors
    with torch.no_grad():
        out = a.model(input_ids=t["clean_ids"], attention_mask=t["attention_mask"], output_hidden_states=True)
        if layer == a.n_layers - 1:
            logits = out.logits
        else:
            norm = a.model.get_submodule(a.table.final_norm)
            logits = a.model.get_output_embeddings()(norm(out.hidden_states[layer + 1]))
    return torch.log_softmax(logits.double(), -1)


def test_the_last_layer_is_the_models_own_output(m):
    out = _lens(m)
    t = m.ioi.tensors
    with torch.no_grad():
        own = m.adapter.forward(t["clean_ids"], t["attention_mask"], logits_at=t["answer_pos"]).logits
    p = torch.softmax(own.double(), -1)[torch.arange(N), t["io_id"]]
    torch.testing.assert_close(out.tensors["answer_prob"][-1].double(), p, atol=1e-5, rtol=0)
    assert out.tables["result"]["kl"][-1] < 1e-6 and out.tables["result"]["top1_agree"][-1] == 1.0
    assert out.tables["result"]["kl"][0] > 1e-3  # an early layer really is different


@pytest.mark.parametrize("positions", ["last", "all"])
def test_every_layer_equals_the_hand_decoded_stream(m, positions):
    out = _lens(m, positions=positions)
    t = m.ioi.tensors
    real, apos = t["attention_mask"].bool(), t["answer_pos"]
    final = _reference(m, m.adapter.n_layers - 1)
    kls, ranks = [], []
    for layer in range(m.adapter.n_layers):
        lp = _reference(m, layer)
        kl = (final.exp() * (final - lp)).sum(-1)  # [N, S]
        where = real if positions == "all" else torch.zeros_like(real).scatter_(1, apos[:, None], True)
        kls.append((kl * where).sum() / where.sum())
        at = lp[torch.arange(N), apos]
        ranks.append((at > at[torch.arange(N), t["io_id"]][:, None]).sum(-1).double())
    torch.testing.assert_close(out.tensors["kl"].double(), torch.stack(kls), atol=2e-5, rtol=1e-4)
    assert torch.equal(out.tensors["answer_rank"].double(), torch.stack(ranks))
    top = out.tables["top"]
    assert set(top["layer"]) == set(range(m.adapter.n_layers)) and top.height == m.adapter.n_layers * 4 * 5
    first = top.filter((top["layer"] == 0) & (top["prompt"] == 0)).sort("rank")
    want = _reference(m, 0)[0, apos[0]].exp().topk(5)
    assert first["prob"].to_list() == pytest.approx(want.values.tolist(), abs=1e-5)
    assert first["token"].to_list() == [m.adapter.tokenizer.decode([i]) for i in want.indices.tolist()]


def test_the_lens_is_refused_at_check_time_on_a_post_ln_encoder(tmp_path, stdlib_loaded):
    from mechstudy.lang import StudyErrors, check
    from tiny_models import build

    enc = build("bert", tmp_path / "bert")
    with pytest.raises(StudyErrors) as e:
        check(f'model enc = hf "{enc}"\ndataset ioi = ioi(n=4)\nlens resid_post in all layers of enc on ioi\n', "s.study")
    text = e.value.render()
    assert "s.study:3:" in text and "'lens' needs a pre-norm residual stream" in text and "model enc (bert)" in text
