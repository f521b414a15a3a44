"""The shortcuts sweeps take to compute less, each against the plain computation it replaces, on
tiny random models of every causal architecture (GPT-2, NeoX parallel and sequential, Llama with
grouped-query attention, Mistral, Qwen2):

- resuming a run at block L from the residual an unedited run had there (blocks 0..L-1 skipped),
  and replaying block L's attention from its z (q, k, v and the pattern not recomputed);
- the last block's output projection and MLP run at the answer position only (`only_at`);
- the fused attention kernel (sdpa) instead of eager attention, and HF's fused GELU for gelu_new;
- the unembedding of a few columns, and answer states unembedded many rows at a time;
- the sweep with every shortcut on, against the sweep with none and against the slow references
  of tests/patch_refs.py (done per operator in test_patch*.py / test_ablate.py).
"""

from __future__ import annotations

import pytest
import torch

from mechstudy.stdlib.models.base import REPLAY_KINDS, Edit, Resume, load_adapter
from mechstudy.stdlib.models.sites import Site
from tiny_models import L, build

CAUSAL = ("gpt2", "neox", "neox_seq", "llama", "mistral", "qwen2")


@pytest.fixture(scope="module", params=CAUSAL)
def adapter(request, tmp_path_factory, tiny_gpt2_dir):
    path = tiny_gpt2_dir if request.param == "gpt2" else build(request.param, tmp_path_factory.mktemp(request.param))
    return load_adapter(path)


def _batch(seed: int, lengths=(7, 5, 9, 4), vocab: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(2, vocab, (len(lengths), width), generator=g)
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask


def _edits(a, layer: int) -> dict[str, list[Edit]]:
    """One edit per kind a sweep writes, at `layer`, on some rows and positions only."""
    g = torch.Generator().manual_seed(layer)
    out = {}
    for kind in ("z", "resid_pre", "mlp_out", "mlp_post", "attn_out", "q", "v", "resid_post"):
        site = Site(layer, kind, head=1) if kind in ("z", "q") else Site(layer, kind)
        shape = a.shape(site, 4, 9)
        out[kind] = [Edit(site, torch.randn(shape, generator=g), rows=[0, 2], positions=[1, 3, 6])]
    return out


def test_resume_and_replay_equal_the_full_run(adapter):
    a = adapter
    ids, mask = _batch(0)
    apos = mask.sum(1) - 1
    assert a.can_resume and a.can_replay
    base = a.capture(ids, mask, a.sites("resid_pre") + a.sites("z"))
    for layer in range(L):
        for kind, edits in _edits(a, layer).items():
            full = a.forward(ids, mask, edits=edits, logits_at=apos).logits
            resid, z = base[Site(layer, "resid_pre")], base[Site(layer, "z")]
            resumed = a.forward(ids, mask, edits=edits, logits_at=apos, resume=Resume(layer, resid)).logits
            torch.testing.assert_close(resumed, full, atol=1e-5, rtol=0, msg=f"{kind} at {layer}")
            assert (full - a.forward(ids, mask, logits_at=apos).logits).abs().max() > 1e-4  # the edit matters
            if kind in REPLAY_KINDS:
                replayed = a.forward(ids, mask, edits=edits, logits_at=apos, resume=Resume(layer, resid, z)).logits
                torch.testing.assert_close(replayed, full, atol=1e-5, rtol=0, msg=f"{kind} at {layer}, replayed")
            else:
                with pytest.raises(ValueError, match="replayed"):
                    a.forward(ids, mask, edits=edits, logits_at=apos, resume=Resume(layer, resid, z))
    with pytest.raises(ValueError, match="before the resumed layer"):
        a.forward(ids, mask, edits=_edits(a, 0)["z"], resume=Resume(1, base[Site(1, "resid_pre")]))
    # the model is whole again afterwards: its own block list and attention modules
    assert torch.equal(a.forward(ids, mask).logits, a.forward(ids, mask).logits)
    assert sum(1 for m in a.model.modules() if type(m).__name__ == "_Replay") == 0


def test_answer_tail_equals_the_full_run(adapter):
    """The last block's output projection and MLP at the answer position only: the answer logits
    (and the final norm there) are the full run's, with edits anywhere, the last layer included."""
    a = adapter
    ids, mask = _batch(1)
    apos = mask.sum(1) - 1
    final = Site(None, "ln_final")
    for layer in range(L):
        for kind, edits in _edits(a, layer).items():
            full = a.forward(ids, mask, edits=edits, logits_at=apos, capture=[final])
            tail = a.forward(ids, mask, edits=edits, logits_at=apos, capture=[final], only_at=apos)
            torch.testing.assert_close(tail.logits, full.logits, atol=1e-5, rtol=0, msg=f"{kind} at {layer}")
            rows = torch.arange(4)
            torch.testing.assert_close(tail.acts[final][rows, apos], full.acts[final][rows, apos], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="only_at"):
        a.forward(ids, mask, capture=[Site(L - 1, "mlp_out")], only_at=apos)


def test_fused_kernels_agree_with_eager(adapter):
    """sdpa (what a forward that touches no pattern runs) and eager attention: the same logits to
    float rounding; the pattern is read with eager attention."""
    a = adapter
    ids, mask = _batch(2)
    assert a.fused and a.kernel == "sdpa"
    with a.attention("eager"):
        eager = a.forward(ids, mask, capture=[Site(0, "pattern")]).logits  # eager by need, too
    fused = a.forward(ids, mask).logits
    real = mask.bool()
    torch.testing.assert_close(fused[real], eager[real], atol=2e-5, rtol=0)
    assert a.model.config._attn_implementation == "eager"  # the model rests as loaded


def test_fused_gelu_matches_gelu_new():
    from transformers.activations import GELUTanh, NewGELUActivation

    x = torch.linspace(-8, 8, 10001)
    torch.testing.assert_close(GELUTanh()(x), NewGELUActivation()(x), atol=5e-7, rtol=0)


def test_gpt2_models_load_with_the_fused_gelu(tiny_adapter):
    from transformers.activations import GELUTanh, NewGELUActivation

    acts = [type(m) for m in tiny_adapter.model.modules() if isinstance(m, (GELUTanh, NewGELUActivation))]
    assert acts and set(acts) == {GELUTanh}


def test_unembed_columns(adapter):
    a = adapter
    h = torch.randn(5, a.d_model)
    cols = torch.tensor([3, 17, 3, 40])
    torch.testing.assert_close(a.unembed(h, columns=cols), a.unembed(h)[:, cols], atol=1e-5, rtol=0)


@pytest.mark.parametrize("word,metric", [("heads", "logit_diff"), ("resid", "kl"), ("mlp", "prob"), ("q", "logit_diff")])
def test_sweep_shortcuts_equal_the_plain_sweep(adapter, word, metric):
    """The batched sweep with every shortcut (resume, replay, answer tail, columns, 256-row
    unembedding, length-sorted chunks) against the same sweep run the plain way: one full forward
    per chunk, rows in order, full answer logits."""
    from mechstudy.stdlib import interventions as iv
    from mechstudy.stdlib.datasets import Pairs
    from mechstudy.stdlib.datasets.ioi import generate
    from mechstudy.stdlib.models.batching import capture_all
    from mechstudy.stdlib.models.sites import component

    a = adapter
    pairs = Pairs.of(generate(a.tokenizer, n=5, seed=1))
    kind = component(word).kind.name
    caps = lambda which, k: {s.layer: t for s, t in capture_all(a, pairs.ids(which), pairs.attention_mask, a.sites(k)).items()}
    source = caps("clean", kind)
    clean_logits, _, _ = iv.baselines(a, pairs, metric, 32)
    units = iv.units(word, a, None)
    g = iv.grid(word, "all", None, a.n_layers, units, int(pairs.clean_ids.shape[1]))
    fast = iv.sweep(a, pairs, kind, source, g, metric, "corrupted", clean_logits, max_rows=7,
                    resume=caps("corrupted", "resid_pre"), replay=caps("corrupted", "z"))
    plain = iv.sweep(a, pairs, kind, source, g, metric, "corrupted", clean_logits, max_rows=7, plain=True)
    scale = float(plain.abs().max())
    torch.testing.assert_close(fast, plain, atol=1e-5 * scale, rtol=0)
    assert float(plain.max() - plain.min()) > 0.05 * scale  # variants differ: a real sweep


def test_row_chunks_cover_every_row_once_by_layer():
    from mechstudy.stdlib import interventions as iv

    g = iv.grid("resid", "all", "each", n_layers=3, unit_ids=[-1], width=6)
    lengths = torch.tensor([6, 3, 5, 3])
    chunks = iv.row_chunks(g, lengths, 5, by_layer=True)
    rows = torch.cat([r for _, r in chunks])
    assert sorted(rows.tolist()) == list(range(len(g) * 4))
    for layer, r in chunks:
        assert (g.layer[r // 4] == layer).all() and len(r) <= 5
        assert (lengths[r % 4].diff() >= 0).all()  # shortest prompts first: little padding per chunk


def test_one_baseline_node_per_model_dataset_and_metric(stdlib_loaded, tmp_path, tiny_gpt2_dir):
    from mechstudy.engine.run import check_and_plan

    p = tmp_path / "s.study"
    p.write_text(f'model m = hf "{tiny_gpt2_dir}"\ndataset ioi = ioi(n=6)\n'
                 "e = evaluate m on ioi with logit_diff\n"
                 "h = patch heads in all layers of m on ioi with logit_diff\n"
                 "r = patch resid at every position in layer 1 of m on ioi with logit_diff\n"
                 "a = ablate mlp in all layers of m on ioi with logit_diff using zero\n"
                 "k = patch heads in layer 1 of m on ioi with kl\n")
    plan = check_and_plan(p)
    bases = [n for n in plan.nodes() if n.op == "baseline"]
    assert sorted(n.param("metric") for n in bases) == ["kl", "logit_diff"]
    ev = plan.results["e"].nodes[0]
    assert ev.input("baseline") is next(n for n in bases if n.param("metric") == "logit_diff")
    assert "model" not in dict(ev.inputs)  # evaluate summarises the baseline: no model of its own
