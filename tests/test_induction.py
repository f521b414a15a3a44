"""Induction heads and the in-context learning score (the `induction` operator): scores equal a
loop-by-hand reference on HF's attention, per-position losses equal HF's logits, and on the zoo's
attn2 the known result: four layer-1 induction heads and the layer-0 previous-token head."""

from __future__ import annotations

import pytest
import torch

import mechstudy.stdlib.models.sources  # noqa: F401  (registers the hf and zoo model sources)
import mechstudy.stdlib.ops.induction  # noqa: F401  (registers the operator under test)
from conftest import CIRCUIT_ARCHS
from mechstudy.engine import spec
from mechstudy.engine.context import Context
from mechstudy.stdlib.representations import heads as hs
from repr_refs import reference_scores


def _run(model_artifact, dataset, **params):
    return spec.OPS["induction"].execute({"model": model_artifact, "dataset": dataset}, params,
                                         Context(device="cpu", max_rows=3))


@pytest.mark.parametrize("arch", CIRCUIT_ARCHS)
def test_scores_and_losses_equal_hf(circuit_models, arch):
    from mechstudy.stdlib.datasets.induction import generate

    m = circuit_models(arch)
    rep = generate(m.adapter.tokenizer, n=5, length=6, seed=1)
    out = _run(m.artifact, rep, layers=list(range(m.adapter.n_layers)))
    ids = rep.tensors["clean_ids"]
    with torch.no_grad():
        hf = m.adapter.model(input_ids=ids, output_attentions=True)
    res = out.tables["result"]
    for layer, A in enumerate(hf.attentions):
        want = reference_scores(A.double(), ids, torch.ones_like(ids))
        got = res.filter(res["layer"] == layer).sort("head")
        for name in hs.SCORES:
            assert got[name].to_list() == pytest.approx(want[name], abs=1e-5), (layer, name)
    lp = torch.log_softmax(hf.logits.double(), -1)
    nll = -lp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]  # [N, S-1]
    torch.testing.assert_close(out.tensors["loss_by_position"].double(), nll.mean(0), atol=1e-5, rtol=0)
    early, late = hs.icl_positions(ids.shape[1])
    want_icl = float(nll[:, late].mean() - nll[:, early].mean())
    assert out.data["icl_score"] == pytest.approx(want_icl, abs=1e-5)


def test_attn2_has_four_induction_heads_and_a_previous_token_head():
    from mechstudy.engine.fingerprint import model_fingerprint
    from mechstudy.engine.spec import Artifact
    from mechstudy.stdlib.datasets.induction import generate
    from mechstudy.stdlib.models.base import load_adapter
    from mechstudy.stdlib.zoo import MODELS_DIR

    path = MODELS_DIR / "attn2"
    art = Artifact(data={"source": "zoo", "ref": "attn2", "options": {"dtype": "float32"}, "path": str(path),
                         "fingerprint": model_fingerprint(path), "libs": {}})
    adapter = load_adapter(path)
    rep = generate(adapter.tokenizer, n=16, length=30, seed=1, limit=adapter.model.config.vocab_size)
    out = _run(art, rep)
    res = out.tables["result"]
    layer1 = res.filter(res["layer"] == 1)
    assert layer1["prefix_matching"].min() > 0.8 and layer1["induction"].all()
    assert res.filter(res["layer"] == 0)["prefix_matching"].max() < 0.05
    assert sorted(map(tuple, out.data["induction_heads"])) == [(1, 0), (1, 1), (1, 2), (1, 3)]
    prev = res.sort("previous_token", descending=True).row(0, named=True)
    assert (prev["layer"], prev["head"]) == (0, 0) and prev["previous_token"] > 0.6
    assert out.data["icl_score"] < -3  # the repeated half is predicted far better than the first


def test_induction_needs_a_causal_model(tmp_path, stdlib_loaded):
    from mechstudy.lang import StudyErrors, check
    from tiny_models import build

    enc = build("bert", tmp_path / "bert")
    head = f'model enc = hf "{enc}"\nmodel m = zoo "attn2"\ndataset rep = induction(n=4, model=m)\n'
    check(head + "induction heads in all layers of m on rep\n", "s.study")
    with pytest.raises(StudyErrors) as e:
        check(head + "induction heads in all layers of enc on rep\n", "s.study")
    assert "s.study:4:" in e.value.render() and "causal" in e.value.render()
