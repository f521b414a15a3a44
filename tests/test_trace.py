"""Noise causal tracing (the `trace` operator) and the `recall` dataset: every restoration effect
equals a slow reference written with plain hooks on HF's modules in float64, on every
architecture; the draws are seeded and batch-independent; subjects are marked whole."""

from __future__ import annotations

import pytest
import torch

import mechstudy.stdlib.models.sources  # noqa: F401  (registers the hf and zoo model sources)
import mechstudy.stdlib.ops.trace  # noqa: F401  (registers the operator under test)
from conftest import CIRCUIT_ARCHS
from mechstudy.engine import spec
from mechstudy.engine.context import Context
from mechstudy.engine.spec import Artifact
from mechstudy.stdlib.models.sites import Site
from mechstudy.stdlib.ops import trace as T


def _reference(a, ids, subject, answer, kind, layer_of, noise):
    """p_clean, p_noised and effect [L, S] by hand: noise added to block 0's input at the subject,
    one forward per (draw, layer, position) with a hook writing the clean state back."""
    S = ids.shape[0]
    L = a.n_layers
    blocks = [a.module(a.table.points["resid_pre"].module, l) for l in range(L)]

    def run(noise_s=None, restore=None):
        hooks = []
        if noise_s is not None:
            def add(_m, args, kwargs):
                if args:
                    return (args[0] + noise_s[None],) + args[1:], kwargs
                kwargs["hidden_states"] = kwargs["hidden_states"] + noise_s[None]
                return args, kwargs
            hooks.append(blocks[0].register_forward_pre_hook(add, with_kwargs=True))
        if restore is not None:
            l, p, value = restore

            def put(_m, _i, out):
                h = (out[0] if isinstance(out, tuple) else out).clone()
                h[:, p] = value
                return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h
            hooks.append(blocks[l].register_forward_hook(put))
        try:
            # The adapter's kernel (sdpa): HF's eager Llama attention takes its softmax in float32
            # even in a float64 model, which alone moves p by ~1e-8.
            with torch.no_grad(), a.attention(a.kernel):
                return torch.softmax(a.model(input_ids=ids[None]).logits[0, -1].double(), -1)[answer].item()
        finally:
            for h in hooks:
                h.remove()

    with torch.no_grad(), a.attention(a.kernel):
        hs = a.model(input_ids=ids[None], output_hidden_states=True).hidden_states
    clean_post = {l: hs[l + 1][0] for l in range(L - 1)}
    p_clean = run()
    noised = [run(noise[s]) for s in range(noise.shape[0])]
    effect = torch.zeros(L - 1, S, dtype=torch.float64)
    for l in range(L - 1):  # resid_post of the last layer is normed in HF's hidden states: not compared
        for p in range(S):
            effect[l, p] = sum(run(noise[s], (l, p, clean_post[l][p])) for s in range(noise.shape[0])) / noise.shape[0]
    p_noised = sum(noised) / len(noised)
    return p_clean, p_noised, effect - p_noised


@pytest.mark.parametrize("arch", CIRCUIT_ARCHS)
def test_restoration_effects_equal_a_hook_reference(circuit_models, arch):
    from mechstudy.stdlib.datasets.ioi import generate

    m = circuit_models(arch)
    a = m.adapter64
    art = generate(a.tokenizer, n=1, seed=13)
    ids = art.tensors["clean_ids"][0]
    S = ids.shape[0]
    subject = torch.zeros(S, dtype=torch.bool)
    subject[1:3] = True
    answer = int(art.tensors["io_id"][0])
    layers = list(range(a.n_layers))
    with torch.no_grad():
        acts = a.capture(ids[None], None, [Site(l, "resid_post") for l in layers])
    clean = {l: acts[Site(l, "resid_post")][0] for l in layers}
    g = torch.Generator().manual_seed(5)
    pc, pn, eff = T.trace_prompt(a, ids, subject, answer, "resid_post", layers, clean, 0.7, 3, g, max_rows=7)
    noise = (torch.randn(3, S, a.d_model, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 0.7)
    noise = noise * subject[None, :, None]
    rc, rn, reff = _reference(a, ids, subject, answer, "resid_post", layers, noise)
    assert pc == pytest.approx(rc, abs=1e-9) and pn == pytest.approx(rn, abs=1e-9)
    torch.testing.assert_close(eff[:-1], reff, atol=1e-9, rtol=0)
    assert abs(float(eff[:, -1].max())) > 1e-6 or pc == pytest.approx(pn)  # the last position matters


def test_operator_tables_are_means_of_the_per_prompt_effects(circuit_models):
    m = circuit_models("gpt2")
    from mechstudy.stdlib.datasets.ioi import generate

    art = generate(m.adapter.tokenizer, n=3, seed=1)
    t = dict(art.tensors)
    mask = torch.zeros_like(t["clean_ids"], dtype=torch.bool)
    mask[:, 2:4] = True  # two "subject" tokens per prompt
    t["subject_mask"] = mask
    ds = Artifact(tensors=t, tables=art.tables, data=art.data)
    runs = [spec.OPS["trace"].execute({"model": m.artifact, "dataset": ds}, {"samples": 2, "noise": 2.0},
                                      Context(device="cpu", max_rows=r)) for r in (5, 64)]
    assert runs[0].tables["per_prompt"]["effect"].to_list() == pytest.approx(
        runs[1].tables["per_prompt"]["effect"].to_list(), abs=1e-6)  # the draws do not depend on batching
    out = runs[0]
    pp = out.tables["per_prompt"]
    res = out.tables["result"]
    for row in res.iter_rows(named=True):
        sub = pp.filter((pp["layer"] == row["layer"]) & (pp["position_kind"] == row["position"]))
        assert row["effect"] == pytest.approx(sum(sub["effect"]) / sub.height, abs=1e-12)
        assert row["tokens"] == sub.height
    assert set(res["position"]) == {T.KINDS[0], T.KINDS[2], T.KINDS[3], T.KINDS[4], T.KINDS[5]}


def test_recall_marks_whole_subjects():
    from mechstudy.stdlib.datasets.recall import generate
    from mechstudy.stdlib.models.base import load_adapter
    from mechstudy.stdlib.zoo import MODELS_DIR

    tok = load_adapter(MODELS_DIR / "mini").tokenizer
    art = generate(tok, n=40, seed=0, relation="landmark")
    t = art.tensors
    for i, r in enumerate(art.tables["prompts"].to_dicts()):
        marked = t["clean_ids"][i][t["subject_mask"][i]].tolist()
        assert tok.decode(marked).strip() == r["subject"]
        first, last = int(t["subject_first"][i]), int(t["subject_last"][i])
        assert t["subject_mask"][i, first:last + 1].all() and int(t["subject_mask"][i].sum()) == last - first + 1


def test_trace_checks(stdlib_loaded):
    from mechstudy.lang import StudyErrors, check

    head = 'model m = zoo "mini"\ndataset rec = recall(n=4)\ndataset ioi = ioi(n=4)\n'
    check(head + "trace mlp_out in all layers of m on rec noise 3 samples 2\n", "s.study")
    with pytest.raises(StudyErrors) as e:
        check(head + "trace resid_post in all layers of m on ioi\n", "s.study")
    assert "s.study:4:" in e.value.render() and "subjects" in e.value.render() and "rec" in e.value.render()
