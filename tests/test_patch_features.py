"""`patch features ...` (op patch_features): each feature's patched metric against a hand-written
forward hook on the native block that moves one feature from the clean run into the corrupted one
(denoising) or back (noising), on GPT-2 and Llama tiny models; variants packed along the batch give
the same numbers as one feature per forward; check-time errors."""

from __future__ import annotations

import pytest
import torch

import mechstudy.stdlib.models.sources  # noqa: F401  (registers the hf and zoo model sources)
import mechstudy.stdlib.ops.patch_features  # noqa: F401  (registers the operator under test)
from mechstudy.engine import cli, spec
from mechstudy.engine.context import Context
from mechstudy.engine.spec import Artifact
from mechstudy.stdlib.dictionary.model import Dictionary, Shape
from mechstudy.stdlib.models.sites import Site

FEATS = [0, 3, 5, 17, 30]


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def m(request, circuit_models):
    from mechstudy.stdlib.datasets.ioi import generate

    got = circuit_models(request.param)
    got.ioi = generate(got.adapter.tokenizer, n=6, seed=8)
    d = got.adapter.d_model
    sae = Dictionary(Shape("relu", d, d, 32), torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.W_dec.mul_(30.0)  # decoder rows of norm 3: a patched feature moves the logits visibly
        sae.b_enc.add_(0.05)  # most features fire somewhere, so clean and corrupted values differ
    got.sae = sae
    got.art = Artifact(tensors=sae.tensors(), data={"shape": sae.shape.as_dict(), "kind": "sae",
                                                    "site": [Site(0, "resid_post").name]})
    return got


def _block0(model):
    inner = model.transformer.h if hasattr(model, "transformer") else model.model.layers
    return inner[0]


def _run(model, ids, mask, t, hook=None):
    """logit_diff per prompt at the answer position, with `hook` on block 0's output (= resid_post 0)."""
    handle = _block0(model).register_forward_hook(hook) if hook else None
    try:
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
    finally:
        if handle:
            handle.remove()
    b = torch.arange(logits.shape[0])
    at = logits[b, t["answer_pos"]].double()
    return at[b, t["io_id"]] - at[b, t["s_id"]]


def _reference(m, noising: bool) -> torch.Tensor:
    """[features, prompts]: one hooked forward per feature, by hand."""
    model, t, sae = m.adapter.model, m.ioi.tensors, m.sae
    mask = t["attention_mask"]
    seen = {}

    def grab(name):
        def hook(_mod, _args, out):
            seen[name] = (out[0] if isinstance(out, tuple) else out).detach().float()
        return hook
    _run(model, t["clean_ids"], mask, t, grab("clean"))
    _run(model, t["corrupted_ids"], mask, t, grab("corrupted"))
    source = seen["corrupted" if noising else "clean"]
    base_ids = t["clean_ids" if noising else "corrupted_ids"]
    out = []
    for i in FEATS:
        def patch(_mod, _args, out_, i=i):
            h = out_[0] if isinstance(out_, tuple) else out_
            f_here = sae.encode(h.float())[..., i]
            f_there = sae.encode(source)[..., i]
            h = h + ((f_there - f_here)[..., None] * sae.W_dec[i]).to(h.dtype)
            return (h, *out_[1:]) if isinstance(out_, tuple) else h
        out.append(_run(model, base_ids, mask, t, patch))
    return torch.stack(out)


@pytest.mark.parametrize("direction", ["denoising", "noising"])
@pytest.mark.parametrize("max_rows", [2, 64])  # one feature per forward / many packed along the batch
def test_each_patched_feature_equals_a_hand_written_hook(m, direction, max_rows):
    ctx = Context(device="cpu", max_rows=max_rows)
    out = spec.OPS["patch_features"].execute({"model": m.artifact, "dataset": m.ioi, "dictionary": m.art},
                                             {"component_index": FEATS, "direction": direction}, ctx)
    want = _reference(m, direction == "noising")
    torch.testing.assert_close(out.tensors["per_prompt"].double(), want, atol=1e-4, rtol=1e-4)
    t = m.ioi.tensors
    clean = _run(m.adapter.model, t["clean_ids"], t["attention_mask"], t)
    corrupted = _run(m.adapter.model, t["corrupted_ids"], t["attention_mask"], t)
    torch.testing.assert_close(out.tensors["clean"].double(), clean, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.tensors["corrupted"].double(), corrupted, atol=1e-4, rtol=1e-4)
    effect = (want.mean(1) - corrupted.mean()) / (clean.mean() - corrupted.mean())
    torch.testing.assert_close(out.tensors["effect"].double(), effect, atol=1e-3, rtol=1e-3)
    base = corrupted if direction == "denoising" else clean
    assert (want.mean(1) - base.mean()).abs().max() > 1e-2  # patching does something the hook agrees on
    assert out.tables["result"]["feature"].to_list() == FEATS


def test_check_time_errors(tmp_path, tiny_gpt2_dir, capsys):
    p = tmp_path / "bad.study"
    p.write_text(f'model m = hf "{tiny_gpt2_dir}"\n'
                 'corpus web = text "README.md" tokens=256 context=32\n'
                 "dataset ioi = ioi(n=4)\n"
                 "s = train sae in layer 0 of m over web width=16 k=2 batch=64 steps=2 checkpoint=2\n"
                 "a = patch features -1 s of m on ioi with logit_diff\n"
                 "b = patch features s of m on ioi with logit_diff direction=sideways\n")
    assert cli.main(["check", str(p)]) == cli.STUDY_ERRORS
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{p}:6:" in err and "sideways" in err
