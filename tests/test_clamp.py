"""`clamp features ...` (op clamp): the clamped metric against a hand-written forward hook on the
native block that clamps the features inline; greedy generation with the clamp against HF's own
`generate` (KV cache) with that hook, in float64; ablation (scale 0) and scale 1 (nothing changes);
check-time errors."""

from __future__ import annotations

import pytest
import torch

import mechstudy.stdlib.models.sources  # noqa: F401  (registers the hf and zoo model sources)
import mechstudy.stdlib.ops.clamp  # noqa: F401  (registers the operator under test)
from mechstudy.engine import spec
from mechstudy.engine.context import Context
from mechstudy.engine.spec import Artifact
from mechstudy.stdlib.dictionary.model import Dictionary, Shape
from mechstudy.stdlib.models.sites import Site
from mechstudy.stdlib.representations import generation as gen

CTX = Context(device="cpu", max_rows=4)
FEATS = [3, 17]


@pytest.fixture(scope="module")
def m(circuit_models):
    from mechstudy.stdlib.datasets.ioi import generate

    got = circuit_models("gpt2")
    got.ioi = generate(got.adapter.tokenizer, n=6, seed=8)
    d = got.adapter.d_model
    sae = Dictionary(Shape("topk", d, d, 32, k=6), torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.W_dec.mul_(30.0)  # decoder rows of norm 3: a clamp moves the logits visibly
    got.sae = sae
    got.art = Artifact(tensors=sae.tensors(), data={"shape": sae.shape.as_dict(), "kind": "sae",
                                                    "site": [Site(0, "resid_post").name]})
    return got


def _hook(sae, value=None, scale=None):
    """A forward hook on block 0 (GPT-2: its output is resid_post 0) clamping FEATS at every position."""
    feats = torch.tensor(FEATS)

    def hook(_mod, _args, out):
        h = out[0] if isinstance(out, tuple) else out
        f = sae.encode(h.float())[..., feats]
        new = torch.full_like(f, value) if value is not None else f * scale
        h = h + ((new - f) @ sae.W_dec[feats]).to(h.dtype)
        return (h, *out[1:]) if isinstance(out, tuple) else h
    return hook


def _logit_diff(model, t, hook=None):
    handle = model.transformer.h[0].register_forward_hook(hook) if hook else None
    try:
        with torch.no_grad():
            logits = model(input_ids=t["clean_ids"], attention_mask=t["attention_mask"]).logits
    finally:
        if handle:
            handle.remove()
    b = torch.arange(logits.shape[0])
    at = logits[b, t["answer_pos"]].double()
    return at[b, t["io_id"]] - at[b, t["s_id"]]


@pytest.mark.parametrize("how", [{"value": 4.0}, {"scale": 0.0}, {"scale": 3.0}])
def test_the_clamped_metric_equals_a_hand_written_hook(m, how):
    out = spec.OPS["clamp"].execute({"model": m.artifact, "dataset": m.ioi, "dictionary": m.art},
                                    {"component_index": FEATS, **how, "generate": 0, "seeds": 0, "show": 0}, CTX)
    t = m.ioi.tensors
    want = _logit_diff(m.adapter.model, t, _hook(m.sae, how.get("value"), how.get("scale")))
    torch.testing.assert_close(out.tensors["clamped"].double(), want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.tensors["original"].double(), _logit_diff(m.adapter.model, t), atol=1e-4, rtol=1e-4)
    shift = out.tensors["shift"].abs().max()
    assert shift > 1e-2, shift  # the clamp does something measurable (the hook agrees to 1e-4)


def test_scale_one_changes_nothing_and_ablation_is_scale_zero(m):
    one = spec.OPS["clamp"].execute({"model": m.artifact, "dataset": m.ioi, "dictionary": m.art},
                                    {"component_index": FEATS, "scale": 1.0, "generate": 3, "seeds": 1, "show": 2}, CTX)
    assert float(one.tensors["shift"].abs().max()) < 1e-5
    g = one.tables["generations"]
    assert g["original"].to_list() == g["clamped"].to_list()
    default = spec.OPS["clamp"].execute({"model": m.artifact, "dataset": m.ioi, "dictionary": m.art},
                                        {"component_index": FEATS, "generate": 0, "seeds": 0, "show": 0}, CTX)
    zero = spec.OPS["clamp"].execute({"model": m.artifact, "dataset": m.ioi, "dictionary": m.art},
                                     {"component_index": FEATS, "scale": 0.0, "generate": 0, "seeds": 0, "show": 0}, CTX)
    assert default.tensors["clamped"].tolist() == zero.tensors["clamped"].tolist()


def test_greedy_generation_with_a_clamp_equals_hf_generate_with_the_hook(m):
    from mechstudy.stdlib.dictionary.evaluate import Sites
    from mechstudy.stdlib.ops.clamp import clamp_edits

    a = m.adapter64
    prompt = a.tokenizer("Then , Mary and John went to the store")["input_ids"]
    sites = Sites([Site(0, "resid_post")], [Site(0, "resid_post")])
    feats = torch.tensor(FEATS)
    toks, _ = gen.generate(a, prompt, 8, [None, None],
                           edits_at=lambda ids: clamp_edits(a, m.sae, sites, feats, 6.0, 0.0, ids, None, [1])[0])
    h = a.model.transformer.h[0].register_forward_hook(_hook(m.sae, value=6.0))
    try:
        with torch.no_grad():
            hf = a.model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, pad_token_id=0)
    finally:
        h.remove()
    with torch.no_grad():
        plain = a.model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert toks[1].tolist() == hf[0, len(prompt):].tolist()
    assert toks[0].tolist() == plain[0, len(prompt):].tolist()
    assert toks[0].tolist() != toks[1].tolist()


@pytest.mark.parametrize("line, message, mark", [
    ("clamp features [-1] s of m on neg", "must be at least 0", "-1"),
    ("clamp features 3 s of m on neg value 2 scale 3", "not both", "scale"),
    ("clamp features 3 s of m on neg temperature 0", "'temperature' must be greater than 0", "0"),
    ("clamp features 3 s of m on neg value -2", "'value' must be at least 0", "-2"),
])
def test_mistakes_are_check_errors(stdlib_loaded, line, message, mark):
    from mechstudy.lang import StudyErrors, check

    head = ('model m = zoo "mini"\ncorpus web = text "README.md" tokens=256 context=16\n'
            "dataset neg = sentiment(polarity=negative, n=4)\n"
            "s = train sae in layer 1 of m over web width=64 k=4 steps=20 checkpoint=10\n")
    with pytest.raises(StudyErrors) as e:
        check(head + line + "\n", "t.study")
    err = e.value.errors[0]
    assert message in err.message and (err.span.line, err.span.column) == (5, line.index(mark) + 1), e.value.render()
