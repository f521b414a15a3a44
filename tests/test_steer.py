"""Steering: `contrast` (mean difference) and `actadd` vectors against HF hidden states, `steer`'s
steered metric against a hand-written hook, generation against HF's own `generate`, seeded
sampling that does not depend on the batch, and on mini the known effect on held-out sentences."""

from __future__ import annotations

import pytest
import torch

import mechstudy.stdlib.models.sources  # noqa: F401  (registers the hf and zoo model sources)
import mechstudy.stdlib.ops.actadd  # noqa: F401
import mechstudy.stdlib.ops.contrast  # noqa: F401
import mechstudy.stdlib.ops.steer  # noqa: F401  (registers the operators under test)
from conftest import CIRCUIT_ARCHS
from mechstudy.engine import spec
from mechstudy.engine.context import Context
from mechstudy.engine.spec import Artifact
from mechstudy.stdlib.representations import generation as gen
from mechstudy.stdlib.representations import steering

CTX = Context(device="cpu", max_rows=4)


def _hidden(adapter, ids, mask=None):
    with torch.no_grad():
        return adapter.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states


@pytest.fixture(scope="module", params=CIRCUIT_ARCHS)
def m(request, circuit_models):
    from mechstudy.stdlib.datasets.ioi import generate

    got = circuit_models(request.param)
    got.ioi = generate(got.adapter.tokenizer, n=6, seed=8)
    return got


@pytest.mark.parametrize("positions", ["last", "all"])
def test_contrast_is_the_mean_difference_of_hf_hidden_states(m, positions):
    out = spec.OPS["contrast"].execute({"model": m.artifact, "dataset": m.ioi},
                                       {"component": "resid_pre", "layers": [1], "positions": positions}, CTX)
    t = m.ioi.tensors
    hc = _hidden(m.adapter, t["clean_ids"], t["attention_mask"])[1].double()
    hr = _hidden(m.adapter, t["corrupted_ids"], t["attention_mask"])[1].double()
    if positions == "last":
        b = torch.arange(6)
        want = (hc[b, t["answer_pos"]] - hr[b, t["answer_pos"]]).mean(0)
    else:
        w = t["attention_mask"].double()[..., None]
        want = (((hc - hr) * w).sum(1) / w.sum(1)).mean(0)
    st = steering.read(out)
    assert st.layers == [1] and st.site == "resid_pre" and st.method == "mean_difference"
    torch.testing.assert_close(st.vectors[0].double(), want, atol=1e-5, rtol=1e-5)
    assert out.tables["result"]["norm"][0] == pytest.approx(float(want.norm()), rel=1e-5)


def test_actadd_is_the_difference_of_two_prompts(m):
    out = spec.OPS["actadd"].execute({"model": m.artifact},
                                     {"component": "resid_pre", "layers": [0, 1], "positive": " Mary", "negative": " John"},
                                     CTX)
    tok = m.adapter.tokenizer
    hp = _hidden(m.adapter, torch.tensor([tok(" Mary")["input_ids"]]))
    hn = _hidden(m.adapter, torch.tensor([tok(" John")["input_ids"]]))
    st = steering.read(out)
    for i, layer in enumerate([0, 1]):
        torch.testing.assert_close(st.vectors[i].double(), (hp[layer][0, -1] - hn[layer][0, -1]).double(), atol=1e-5, rtol=0)


def test_steered_metric_equals_a_hand_written_hook(m):
    a = m.adapter
    g = torch.Generator().manual_seed(3)
    vec = torch.randn(1, a.d_model, generator=g)
    v = steering.vector_artifact(vec, [1], "resid_pre", "test", m.artifact.data, {})
    out = spec.OPS["steer"].execute({"model": m.artifact, "dataset": m.ioi, "vector": v},
                                    {"scale": 2.5, "generate": 0, "seeds": 0, "show": 0}, CTX)
    t = m.ioi.tensors
    block = a.module(a.table.points["resid_pre"].module, 1)

    def add(_mod, args, kwargs):  # resid_pre is block 1's input
        if args:
            return (args[0] + 2.5 * vec,) + args[1:], kwargs
        kwargs["hidden_states"] = kwargs["hidden_states"] + 2.5 * vec
        return args, kwargs

    h = block.register_forward_pre_hook(add, with_kwargs=True)
    try:
        with torch.no_grad():
            logits = a.model(input_ids=t["clean_ids"], attention_mask=t["attention_mask"]).logits
    finally:
        h.remove()
    b = torch.arange(6)
    at = logits[b, t["answer_pos"]].double()
    want = at[b, t["io_id"]] - at[b, t["s_id"]]
    torch.testing.assert_close(out.tensors["steered"].double(), want, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        plain = a.model(input_ids=t["clean_ids"], attention_mask=t["attention_mask"]).logits[b, t["answer_pos"]].double()
    torch.testing.assert_close(out.tensors["unsteered"].double(), plain[b, t["io_id"]] - plain[b, t["s_id"]],
                               atol=1e-4, rtol=1e-4)
    zero = spec.OPS["steer"].execute({"model": m.artifact, "dataset": m.ioi, "vector": v},
                                     {"scale": 0.0, "generate": 0, "seeds": 0, "show": 0}, CTX)
    assert not zero.tensors["shift"].any()


def test_greedy_generation_equals_hf_generate(circuit_models):
    m = circuit_models("gpt2")
    a = m.adapter64
    prompt = a.tokenizer("Then , Mary and John went to the store")["input_ids"]
    toks, first = gen.generate(a, prompt, 8, [None, None])
    with torch.no_grad():
        hf = a.model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False,
                              pad_token_id=a.tokenizer.pad_token_id or 0)
    assert toks[0].tolist() == hf[0, len(prompt):].tolist() == toks[1].tolist()
    with torch.no_grad():
        torch.testing.assert_close(first[0].double(), a.model(torch.tensor([prompt])).logits[0, -1].double())


def test_seeded_sampling_does_not_depend_on_the_batch(circuit_models):
    a = circuit_models("llama").adapter
    prompt = a.tokenizer("Mary and John went to the store")["input_ids"]
    alone, _ = gen.generate(a, prompt, 10, [7])
    mixed, _ = gen.generate(a, prompt, 10, [None, 3, 7, 7])
    assert torch.equal(alone[0], mixed[2]) and torch.equal(mixed[2], mixed[3])
    assert not torch.equal(mixed[1], mixed[2])  # another seed, another continuation


def test_steering_mini_toward_positive_flips_held_out_negative_sentences():
    from mechstudy.engine.fingerprint import model_fingerprint
    from mechstudy.stdlib.datasets.sentiment import generate
    from mechstudy.stdlib.models.base import load_adapter
    from mechstudy.stdlib.zoo import MODELS_DIR

    path = MODELS_DIR / "mini"
    art = Artifact(data={"source": "zoo", "ref": "mini", "options": {"dtype": "float32"}, "path": str(path),
                         "fingerprint": model_fingerprint(path), "libs": {}})
    tok = load_adapter(path).tokenizer
    pos = generate(tok, split="train", polarity="positive")
    neg = generate(tok, split="heldout", polarity="negative", n=16, seed=1)
    v = spec.OPS["contrast"].execute({"model": art, "dataset": pos}, {"layers": [1]}, CTX)
    runs = [spec.OPS["steer"].execute({"model": art, "dataset": neg, "vector": v},
                                      {"scale": 1.0, "generate": 4, "seeds": 2, "show": 4}, CTX) for _ in range(2)]
    out = runs[0]
    assert out.tables["generations"].equals(runs[1].tables["generations"])  # seeded: the same table every run
    r = out.tables["result"]
    assert r["mean"][0] > 5 and out.tensors["shift"].mean() < -5 and (out.tensors["shift"] < 0).all()
    ft = out.tables["first_tokens"]
    assert (ft["answer_unsteered"] == 1.0).all() and (ft["other_steered"] > ft["other_unsteered"]).all()


def test_steering_an_encoder_is_refused_at_check_time(tmp_path, stdlib_loaded):
    from mechstudy.lang import StudyErrors, check
    from tiny_models import build

    enc = build("bert", tmp_path / "bert")
    head = f'model e = hf "{enc}"\ndataset d = ioi(n=4)\nv = contrast resid_pre in layer 1 of e on d\n'
    check(head, "s.study")  # a vector can be found in an encoder
    with pytest.raises(StudyErrors) as e:
        check(head + "steer v of e on d\n", "s.study")
    assert "s.study:4:" in e.value.render() and "causal" in e.value.render()


def test_steer_statement_checks(stdlib_loaded):
    from mechstudy.lang import StudyErrors, check

    head = ('model m = zoo "mini"\ndataset neg = sentiment(polarity=negative, n=4)\n'
            'w = actadd resid_pre in layer 1 of m positive " good" negative " bad"\n')
    check(head + "steer w of m on neg scale [1, 4] generate 5 seeds 2\n", "s.study")
    with pytest.raises(StudyErrors) as e:
        check(head + "w2 = actadd resid_pre in layer 1 of m positive \" good\"\n", "s.study")
    assert "negative" in e.value.render()
    with pytest.raises(StudyErrors) as e:
        check(head + "v = contrast resid_pre in layer 1 of m on ioi\n", "s.study")
    with pytest.raises(StudyErrors) as e:
        check('model m = zoo "mini"\ncorpus web = text "README.md" tokens=256 context=64\n'
              "v = contrast resid_pre in layer 1 of m on web\n", "s.study")
    assert "corrupted prompts" in e.value.render()
