"""Patchscopes: a state patched into its own prompt at its own layer and position reproduces the
unpatched run exactly; patched states and generations equal a hand-written hook on HF's modules;
on mini, factual prompts' last states decode to their answers."""

from __future__ import annotations

import pytest
import torch

import mechstudy.stdlib.models.sources  # noqa: F401  (registers the hf and zoo model sources)
import mechstudy.stdlib.ops.patchscope  # noqa: F401  (registers the operator under test)
from conftest import CIRCUIT_ARCHS
from mechstudy.engine import spec
from mechstudy.engine.context import Context
from mechstudy.stdlib.datasets.ioi import generate

CTX = Context(device="cpu", max_rows=4)


@pytest.fixture(scope="module", params=CIRCUIT_ARCHS)
def m(request, circuit_models):
    return circuit_models(request.param)


def _run(m, dataset, **params):
    return spec.OPS["patchscope"].execute({"model": m.artifact, "dataset": dataset}, params, CTX)


@pytest.mark.parametrize("kind", ["resid_pre", "resid_post"])
def test_source_equal_to_target_reproduces_the_unpatched_run_exactly(m, kind):
    one = generate(m.adapter.tokenizer, n=1, seed=11)
    text = one.tables["prompts"]["clean"][0]
    ids = one.tensors["clean_ids"][0]
    out = _run(m, one, component=kind, target=text, generate=3, top=5)
    with torch.no_grad():
        # the unpatched run, through the same forward (HF's own full-logits forward agrees to 1e-5)
        plain = m.adapter.forward(ids[None], None, logits_at=torch.tensor([len(ids) - 1])).logits[0]
        hf = m.adapter.model(input_ids=ids[None]).logits[0, -1]
        torch.testing.assert_close(plain, hf, atol=1e-5, rtol=0)
        greedy = m.adapter.model.generate(ids[None], max_new_tokens=3, do_sample=False,
                                          pad_token_id=m.adapter.tokenizer.pad_token_id or 0)[0, len(ids):]
    p, top = torch.log_softmax(plain.double(), -1).exp().topk(5)  # as the operator computes them
    tok = m.adapter.tokenizer
    dec = out.tables["decoded"]
    for layer in range(m.adapter.n_layers):
        row = dec.filter(dec["layer"] == layer).row(0, named=True)
        assert row["top"] == [tok.decode([int(i)]) for i in top]
        assert row["probs"] == p.tolist()  # the same numbers, bit for bit
        assert row["continuation"] == tok.decode(greedy.tolist())


def test_patched_logits_equal_a_hand_written_hook(m):
    a = m.adapter
    src = generate(a.tokenizer, n=3, seed=12)
    target = "Then , Mary and John went to the store"
    out = _run(m, src, component="resid_post", layers=[0], target_layers=[1], target=target, generate=0, top=3)
    t = src.tensors
    with torch.no_grad():
        hs = a.model(input_ids=t["clean_ids"], attention_mask=t["attention_mask"], output_hidden_states=True).hidden_states
    states = hs[1][torch.arange(3), t["answer_pos"]]  # resid_post of layer 0 = input of block 1
    tids = torch.tensor(a.tokenizer(target)["input_ids"])
    block = a.module(a.table.points["resid_post"].module, 1)
    dec = out.tables["decoded"]
    for r in range(3):
        def put(_mod, _inp, output, r=r):  # resid_post of layer 1 is block 1's output
            h = output[0] if isinstance(output, tuple) else output
            h = h.clone()
            h[:, -1] = states[r]
            return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h

        hook = block.register_forward_hook(put)
        try:
            with torch.no_grad():
                lp = torch.softmax(a.model(input_ids=tids[None]).logits[0, -1].double(), -1)
        finally:
            hook.remove()
        row = dec.filter(dec["prompt"] == r).row(0, named=True)
        assert row["probs"] == pytest.approx(lp.topk(3).values.tolist(), abs=1e-5)
        assert row["source_token"] == a.tokenizer.decode([int(t["clean_ids"][r, t["answer_pos"][r]])])


def test_on_mini_fact_states_decode_to_their_answers():
    from mechstudy.engine.fingerprint import model_fingerprint
    from mechstudy.engine.spec import Artifact
    from mechstudy.stdlib.datasets.facts import generate as facts
    from mechstudy.stdlib.models.base import load_adapter
    from mechstudy.stdlib.zoo import MODELS_DIR

    path = MODELS_DIR / "mini"
    art = Artifact(data={"source": "zoo", "ref": "mini", "options": {"dtype": "float32"}, "path": str(path),
                         "fingerprint": model_fingerprint(path), "libs": {}})
    f = facts(load_adapter(path).tokenizer, n=12, seed=3)
    out = spec.OPS["patchscope"].execute({"model": art, "dataset": f},
                                         {"target": " lamp lamp, coin coin, river river, x", "generate": 2}, CTX)
    res = out.tables["result"]
    assert res["answer_prob"][-1] > 0.9 and res["answer_rank"][-1] == 0.0
    assert res["answer_prob"].to_list() == sorted(res["answer_prob"].to_list())  # later layers carry it further


def test_patchscope_checks(stdlib_loaded, tmp_path):
    from mechstudy.lang import StudyErrors, check
    from tiny_models import build

    head = 'model m = zoo "mini"\ndataset ioi = ioi(n=4)\n'
    check(head + 'patchscope resid_post in all layers of m on ioi target "x" target_layers=2\n', "s.study")
    with pytest.raises(StudyErrors) as e:
        check(head + 'patchscope resid_post in all layers of m on ioi target "x" target_layers=7\n', "s.study")
    assert "s.study:3:" in e.value.render() and "layer 7 is out of range" in e.value.render()
    with pytest.raises(StudyErrors) as e:
        check(head + "patchscope resid_post in all layers of m on ioi\n", "s.study")
    assert "target" in e.value.render()
    enc = build("bert", tmp_path / "bert")
    with pytest.raises(StudyErrors) as e:
        check(f'model e = hf "{enc}"\ndataset d = ioi(n=4)\npatchscope resid_post of e on d target "x"\n', "s.study")
    assert "causal" in e.value.render()
