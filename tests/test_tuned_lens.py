"""The tuned lens (`lens ... over CORPUS`, stdlib/ops/tuned_lens.py): its decoding equals translated
HF hidden states decoded by hand on every architecture, its last layer is the model's output, its
training recovers a known linear distortion, and on mini its KL on held-out text is below the logit
lens's at every layer but the last."""

from __future__ import annotations

import pytest
import torch

import mechstudy.stdlib.models.sources  # noqa: F401  (registers the hf and zoo model sources)
import mechstudy.stdlib.ops.lens  # noqa: F401
import mechstudy.stdlib.ops.tuned_lens  # noqa: F401  (registers the translators' op)
from conftest import CIRCUIT_ARCHS
from mechstudy.engine import spec
from mechstudy.engine.context import Context
from mechstudy.engine.spec import Artifact
from mechstudy.stdlib.ops import tuned_lens as TL

CTX = Context(device="cpu", max_rows=4)


def _corpus(tokenizer, docs, context=12, tokens=240):
    from mechstudy.stdlib.datasets.corpus import pack

    return Artifact(tensors=pack(docs, tokenizer, context=context, tokens=tokens))


@pytest.mark.parametrize("arch", CIRCUIT_ARCHS)
def test_tuned_lens_decodes_translated_hidden_states(circuit_models, arch):
    from mechstudy.stdlib.datasets.ioi import generate

    m = circuit_models(arch)
    tok = m.adapter.tokenizer
    web = _corpus(tok, ["John and Mary went to the store", "Mary gave a drink to John", "the cat sat on the mat"] * 8)
    tr = spec.OPS["tuned_lens"].execute({"model": m.artifact, "corpus": web}, {"kind": "resid_pre", "steps": 20}, CTX)
    W, b = tr.tensors["W"], tr.tensors["b"]
    assert tr.data["kl_after"][0] < tr.data["kl_before"][0]  # training lowered layer 0's KL
    ioi = generate(tok, n=5, seed=9)
    out = spec.OPS["lens"].execute({"model": m.artifact, "dataset": ioi, "translators": tr},
                                   {"component": "resid_pre", "layers": list(range(m.adapter.n_layers)),
                                    "positions": "all"}, CTX)
    t = ioi.tensors
    a = m.adapter
    with torch.no_grad():
        hf = a.model(input_ids=t["clean_ids"], attention_mask=t["attention_mask"], output_hidden_states=True)
        final = torch.log_softmax(hf.logits.double(), -1)
        norm, head = a.model.get_submodule(a.table.final_norm), a.model.get_output_embeddings()
        real = t["attention_mask"].bool()
        res = out.tables["result"]
        for layer in range(a.n_layers):
            h = hf.hidden_states[layer] @ W[layer] + b[layer]  # resid_pre of `layer`, translated
            lp = torch.log_softmax(head(norm(h)).double(), -1)
            kl = ((final.exp() * (final - lp)).sum(-1))[real].mean()
            got = res.filter((res["layer"] == layer) & (res["lens"] == "tuned"))["kl"][0]
            assert got == pytest.approx(float(kl), abs=2e-5, rel=1e-4)
    logit = res.filter(res["lens"] == "logit")["kl"].to_list()
    assert logit == pytest.approx(out.tensors["kl"].tolist(), abs=1e-6)  # both lenses on the same tokens


def test_the_last_resid_post_keeps_the_identity_and_equals_the_model(circuit_models):
    from mechstudy.stdlib.datasets.ioi import generate

    m = circuit_models("gpt2")
    web = _corpus(m.adapter.tokenizer, ["John and Mary went to the store", "the cat sat on the mat"] * 8)
    tr = spec.OPS["tuned_lens"].execute({"model": m.artifact, "corpus": web}, {"steps": 30, "lr": 0.01}, CTX)
    last = m.adapter.n_layers - 1
    assert torch.equal(tr.tensors["W"][last], torch.eye(m.adapter.d_model)) and not tr.tensors["b"][last].any()
    assert not torch.equal(tr.tensors["W"][0], torch.eye(m.adapter.d_model))
    ioi = generate(m.adapter.tokenizer, n=4, seed=2)
    out = spec.OPS["lens"].execute({"model": m.artifact, "dataset": ioi, "translators": tr},
                                   {"layers": list(range(m.adapter.n_layers))}, CTX)
    res = out.tables["result"].filter(pl_col_eq("lens", "tuned"))
    assert res["kl"][-1] < 1e-9 and res["top1_agree"][-1] == 1.0


def pl_col_eq(col, value):
    import polars as pl

    return pl.col(col) == value


def test_training_inverts_a_known_distortion(circuit_models):
    """States that are the final stream through a random invertible map: the translator that
    undoes it is the optimum, and training gets there (KL near 0, far below the logit lens)."""
    m = circuit_models("gpt2")
    a = m.adapter
    g = torch.Generator().manual_seed(0)
    final = torch.randn(600, a.d_model, generator=g) * 2
    M = torch.eye(a.d_model) + 0.3 * torch.randn(a.d_model, a.d_model, generator=g) / a.d_model ** 0.5
    states = torch.stack([final @ M, final])  # layer 0 distorted, layer 1 the final stream itself
    fixed = torch.tensor([False, True])
    with torch.enable_grad():
        fit = TL.train(a, states, final, steps=400, lr=0.01, batch=256, seed=0, fixed=fixed)
    assert fit["kl_before"][0] > 0.05 and fit["kl_after"][0] < 0.1 * fit["kl_before"][0]
    assert fit["kl_after"][1] == 0.0 and torch.equal(fit["W"][1], torch.eye(a.d_model))


def test_on_mini_the_tuned_lens_beats_the_logit_lens_on_held_out_text(tmp_path):
    from mechstudy.engine.run import check_and_plan, run_study
    from mechstudy.engine.store import Store

    study = tmp_path / "tl.study"
    root = __import__("pathlib").Path(__file__).resolve().parent.parent / "studies" / "data"
    study.write_text(
        'model m = zoo "mini"\n'
        f'corpus web = text "{root / "mini_docs_a.txt"}" unit=line tokens=4096 context=64\n'
        f'corpus held = text "{root / "mini_docs_b.txt"}" unit=line tokens=2048 context=64\n'
        "tl = lens resid_post in all layers of m on held over web at all positions steps=200\n")
    run_study(study, cache=tmp_path / "cache", device="cpu", report=False)
    res = Store(tmp_path / "cache").get(check_and_plan(study).results["tl"].nodes[0].key).tables["result"]
    logit = res.filter(pl_col_eq("lens", "logit"))["kl"].to_list()
    tuned = res.filter(pl_col_eq("lens", "tuned"))["kl"].to_list()
    assert all(t < 0.7 * lg for t, lg in zip(tuned[:-1], logit[:-1])), (tuned, logit)
    assert logit[-1] == 0.0 and tuned[-1] == 0.0
